//! `spilo verify-backup`: restore drills of a local cluster's archive on real PostgreSQL 15.
//! A healthy archive after a failover (two timelines) is verified with the user's query and
//! an RPO no older than the last commit; a WAL segment removed from the middle, a backup part
//! altered, and a page corrupted inside a relation of the backup each fail the drill (exit 2)
//! naming what is wrong.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{ports, proc, wait};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(240);

fn member(status: &serde_json::Value, role: &str) -> Option<serde_json::Value> {
    status["clusters"].as_array()?.first()?["members"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == role)
        .cloned()
}

/// The member `spilo verify-backup --etcd` asks, from `spilo list` (etcd, as it reads): the
/// first running replica by name, else the leader.
fn designated(repo: &LocalRepo) -> Option<String> {
    let (_, out, _) = repo.spilo(&["list", "dr", "--format", "json"]).ok()?;
    let list: serde_json::Value = serde_json::from_str(&out).ok()?;
    let mut replicas: Vec<&str> = list["members"]
        .as_array()?
        .iter()
        .filter(|m| m["role"] == "replica" && m["state"] == "running")
        .filter_map(|m| m["name"].as_str())
        .collect();
    replicas.sort();
    replicas
        .first()
        .copied()
        .or(list["leader"].as_str())
        .map(str::to_string)
}

/// Runs the drill; returns the exit status, the JSON report (when one was printed) and
/// everything printed.
fn drill(repo: &LocalRepo, extra: &[&str]) -> anyhow::Result<(i32, serde_json::Value, String)> {
    let mut args = vec!["verify-backup", "dr", "--format", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = repo.spilo(&args)?;
    let report = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    Ok((code, report, format!("{out}{err}")))
}

fn failed_check<'a>(report: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    report["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name && c["ok"] == false)?["detail"]
        .as_str()
}

/// Files under `dir` whose name contains `part`, sorted.
fn files(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drills_verify_a_healthy_archive_and_name_each_fault() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario(&mut repo).await;
    repo.finish(r)
}

async fn scenario(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    let mut y = LocalRepo::cluster_yaml("dr", 2, base);
    y.push_str("  ha: {ttl: 10, loopWait: 2, retryTimeout: 3}\n");
    y.push_str("  backup: {bucket: b, schedule: \"0 0 1 1 *\", retention: 2}\n");
    repo.write("dr.yaml", &y)?;
    repo.up()?;
    repo.wait_printed("cluster dr is ready", READY).await?;
    let dsn = repo.dsn("dr", base)?;

    // `cold` is written before the backup and never again (its pages in the backup are what
    // a restore gets: no full-page image replaces them).
    let c = connect_dsn(&dsn).await?;
    c.batch_execute(
        "CREATE TABLE cold (id int PRIMARY KEY, pad text);
         INSERT INTO cold SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g;
         CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 100);
         CHECKPOINT",
    )
    .await?;
    let cold_path: String = c
        .query_one("SELECT pg_relation_filepath('cold')", &[])
        .await?
        .get(0);
    drop(c);
    let (code, out, err) = repo.spilo(&["backup", "dr"])?;
    assert_eq!(code, 0, "{out}{err}");

    // A failover: the archive continues on timeline 2.
    let status = repo.status()?;
    let primary = member(&status, "primary").ok_or_else(|| anyhow::anyhow!("{status}"))?;
    proc::kill_group(primary["governor_pid"].as_u64().unwrap_or(0) as u32);
    proc::kill_postgres(primary["postmaster_pid"].as_u64().unwrap_or(0) as u32);
    // The killed member, started again by `spilo up` at once, may win the election itself
    // (its WAL is as far as the other's): either way the promotion begins timeline 2.
    wait::until("a primary on timeline 2", READY, || async {
        let p = member(&repo.status().ok()?, "primary")?;
        (p["state"] == "running" && p["timeline"].as_u64()? >= 2).then_some(())
    })
    .await?;
    // Rows on the new timeline in two segments, each switched out (so timeline 2 has one
    // segment before its newest), the last commit's archived. `before` is a moment on the new
    // timeline before any of them.
    let (c, before) = wait::until("the new primary to take writes", READY, || async {
        let c = connect_dsn(&dsn).await.ok()?;
        let before: String = c
            .query_one(
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .ok()?
            .get(0);
        c.batch_execute("INSERT INTO orders SELECT generate_series(101, 125)")
            .await
            .ok()?;
        Some((c, before))
    })
    .await?;
    c.batch_execute("SELECT pg_switch_wal(); INSERT INTO orders SELECT generate_series(126, 150)")
        .await?;
    let switched: String = c
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await?
        .get(0);
    drop(c);
    let last_commit = Instant::now();
    wait::until("the switched segment to be archived", READY, || async {
        let c = connect_dsn(&dsn).await.ok()?;
        let last: Option<String> = c
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .ok()?
            .get(0);
        last.filter(|l| *l >= switched).map(|_| ())
    })
    .await?;

    // Healthy: every check passes, across both timelines, with the user's query, and the
    // newest restored commit is the last one made.
    let (code, report, text) = drill(
        repo,
        &[
            "--sql",
            "SELECT count(*) = 150 AND max(id) = 150 FROM orders",
        ],
    )?;
    assert_eq!(code, 0, "{text}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        ["backup", "wal", "replay", "amcheck", "sql", "checksums"],
        "{text}"
    );
    let wal = report["checks"][1]["detail"].as_str().unwrap_or_default();
    assert!(wal.contains("timelines 1, 2"), "{wal}");
    let rpo = report["rpo_seconds"].as_f64().unwrap_or(f64::MAX);
    let since_last = last_commit.elapsed().as_secs_f64();
    assert!(
        rpo <= since_last + 1.0,
        "the newest restored commit is older than the last commit: RPO {rpo}s, last commit {since_last}s ago"
    );
    let rto = report["rto_seconds"].as_f64().unwrap_or(0.0);
    assert!(rto > 0.0, "{report}");
    println!(
        "healthy archive: RPO {rpo:.1}s (last commit {since_last:.1}s before the report), RTO {rto:.1}s"
    );

    // The same drill through the REST API (`--etcd`: how a cluster that spilo up does not
    // run here is drilled, e.g. on AWS): the designated member runs it, with the same checks,
    // and records it in etcd.
    wait::until(
        "the replica to run again, and be the designated member",
        READY,
        || async {
            let replica = member(&repo.status().ok()?, "replica")?;
            let name = replica["name"].as_str()?.to_string();
            (replica["state"] == "running").then_some(())?;
            designated(repo).filter(|m| *m == name)
        },
    )
    .await?;
    let status = repo.status()?;
    let etcd = status["clusters"][0]["etcd"][0]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no etcd in {status}"))?
        .to_string();
    let tls = repo.state().join("dr/tls");
    let (ca, cert, key) = (
        tls.join("ca.crt").display().to_string(),
        tls.join("spilo.crt").display().to_string(),
        tls.join("spilo.key").display().to_string(),
    );
    let remote = [
        "--etcd",
        &etcd,
        "--etcd-cacert",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    let (code, report, text) = drill(
        repo,
        &[
            &remote[..],
            &["--sql"],
            &["SELECT count(*) = 150 AND max(id) = 150 FROM orders"],
        ]
        .concat(),
    )?;
    assert_eq!(code, 0, "{text}");
    let remote_names: Vec<&str> = report["checks"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(remote_names, names, "{text}");
    let runner = designated(repo).ok_or_else(|| anyhow::anyhow!("no member"))?;
    assert!(
        text.contains(&format!("{runner} runs the restore drill")),
        "the first running replica by name, else the leader, runs it: {runner}\n{text}"
    );
    // With a query of its own the drill is not the cluster's record.
    let recorded = repo.status()?["clusters"][0]["drill"].clone();
    assert!(recorded.is_null(), "{recorded}");

    // At a terminal the drill shows its progress: the parts restored, the WAL replayed.
    let screen = drill_at_terminal(repo)?;
    assert!(
        screen.contains("restoring: part 1 of") && screen.contains("verified"),
        "{screen}"
    );

    // To a target time on timeline 2 before its rows: only the first 100.
    let (code, report, text) = drill(
        repo,
        &[
            "--target-time",
            &before,
            "--sql",
            "SELECT count(*) = 100 FROM orders",
        ],
    )?;
    assert_eq!(code, 0, "{text}");
    assert!(
        report["checks"][2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("replayed to the target ")),
        "{text}"
    );

    // A segment removed from the middle of the archive: named with its timeline.
    let bucket = repo.state().join("dr/bucket");
    let segments = files(&bucket, "wal_005/0000000");
    let middle = segments
        .iter()
        .find(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.starts_with("00000002") && !n.contains("partial") && !n.contains("history")
        })
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no segment of timeline 2: {segments:?}"))?;
    let name = middle
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .unwrap_or_default()
        .to_string();
    let aside = middle.with_extension("aside");
    std::fs::rename(&middle, &aside)?;
    let local = drill(repo, &[]);
    let by_api = drill(repo, &remote);
    std::fs::rename(&aside, &middle)?;
    for (code, report, text) in [local?, by_api?] {
        assert_eq!(code, 2, "{text}");
        let why = failed_check(&report, "wal").unwrap_or_default();
        assert!(
            why.contains(&format!("segment {name} of timeline 2 is missing")),
            "{why}\n{text}"
        );
    }
    let recorded = repo.status()?["clusters"][0]["drill"].clone();
    assert_eq!(recorded["last"]["ok"], false, "{recorded}");
    assert!(
        recorded["last"]["failed"][0]
            .as_str()
            .is_some_and(|f| f.contains(&name)),
        "{recorded}"
    );

    // A byte flipped in a stored backup part: the part is named.
    let part = files(&bucket, "part_001")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no backup part"))?;
    let original = std::fs::read(&part)?;
    let mut altered = original.clone();
    let at = altered.len() / 2;
    altered[at] ^= 0xff;
    std::fs::write(&part, &altered)?;
    let (code, report, text) = drill(repo, &[])?;
    std::fs::write(&part, &original)?;
    assert_eq!(code, 2, "{text}");
    let why = failed_check(&report, "backup").unwrap_or_default();
    assert!(why.contains("part_001.tar.lz4"), "{why}\n{text}");

    // A page of `cold` corrupted inside the backup (as if the primary's disk had a bad block
    // when the backup was taken): the part is rewritten whole, with a valid frame and the
    // sentinel's sizes, so only PostgreSQL's checks can find it.
    let sentinel = files(&bucket, "_backup_stop_sentinel.json")
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no sentinel"))?;
    let sentinel_text = std::fs::read_to_string(&sentinel)?;
    let corrupted = corrupt_page(&original, &cold_path)?;
    let mut s: serde_json::Value = serde_json::from_str(&sentinel_text)?;
    let grown = corrupted.len() as i64 - original.len() as i64;
    s["compressed_size"] = serde_json::json!(s["compressed_size"].as_i64().unwrap_or(0) + grown);
    std::fs::write(&part, &corrupted)?;
    std::fs::write(&sentinel, serde_json::to_string(&s)?)?;
    let r = drill(repo, &[]);
    std::fs::write(&part, &original)?;
    std::fs::write(&sentinel, &sentinel_text)?;
    let (code, report, text) = r?;
    assert_eq!(code, 2, "{text}");
    assert!(failed_check(&report, "backup").is_none(), "{text}");
    let amcheck = failed_check(&report, "amcheck").unwrap_or_default();
    assert!(
        amcheck.contains("public.cold"),
        "pg_amcheck did not name the corrupted relation: {amcheck}\n{text}"
    );
    let checksums = failed_check(&report, "checksums").unwrap_or_default();
    assert!(
        checksums.contains("checksum verification failed"),
        "pg_checksums did not fail: {checksums}\n{text}"
    );
    println!("corrupted page: {amcheck}");

    // The archive as it was verifies again, here and through the REST API (which records
    // the success).
    let (code, _, text) = drill(repo, &[])?;
    assert_eq!(code, 0, "{text}");
    let (code, _, text) = drill(repo, &remote)?;
    assert_eq!(code, 0, "{text}");
    let recorded = repo.status()?["clusters"][0]["drill"].clone();
    assert_eq!(recorded["last"]["ok"], true, "{recorded}");
    assert_eq!(recorded["last"]["member"], runner.as_str(), "{recorded}");
    Ok(())
}

/// `spilo verify-backup dr` with a terminal for its output; returns what it showed.
fn drill_at_terminal(repo: &LocalRepo) -> anyhow::Result<String> {
    let pty = nix::pty::openpty(None, None)?;
    let slave = std::fs::File::from(pty.slave);
    let mut child = std::process::Command::new(proc::installed("spilo")?)
        .args(["verify-backup", "dr", "--state-dir"])
        .arg(repo.state())
        .current_dir(repo.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(slave.try_clone()?))
        .stderr(std::process::Stdio::from(slave))
        .spawn()?;
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child has exited and the slave is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = child.wait()?;
    let screen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the terminal reader panicked"))?;
    anyhow::ensure!(status.success(), "{status}: {screen}");
    Ok(screen)
}

/// `part` (an LZ4 frame of a tar stream) with bytes flipped in the middle of the first page of
/// the file at `rel` (`base/<db>/<relfilenode>`), compressed again.
fn corrupt_page(part: &[u8], rel: &str) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    lz4::Decoder::new(part)?.read_to_end(&mut raw)?;
    let mut at = None;
    let mut archive = tar::Archive::new(&raw[..]);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.to_string_lossy() == rel {
            at = Some(entry.raw_file_position() as usize);
            break;
        }
    }
    let start = at.ok_or_else(|| anyhow::anyhow!("{rel} is not in the first part"))?;
    for b in &mut raw[start + 4000..start + 4016] {
        *b ^= 0x5a;
    }
    let mut enc = lz4::EncoderBuilder::new()
        .checksum(lz4::ContentChecksum::ChecksumEnabled)
        .build(Vec::new())?;
    enc.write_all(&raw)?;
    let (out, r) = enc.finish();
    r?;
    Ok(out)
}

/// `backup.verify` in the cluster file: a replica runs a drill every 4 seconds and records it
/// in etcd (`spilo list` shows it). Under `spilo watch --target local`, a segment removed from
/// the archive raises one `backup_unverified` alert, putting it back resolves it, and the
/// metrics carry the last drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_drills_raise_one_alert_and_resolve_under_watch() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scheduled(&mut repo).await;
    repo.finish(r)
}

async fn scheduled(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    let mut y = LocalRepo::cluster_yaml("sched", 2, base);
    y.push_str("  ha: {ttl: 10, loopWait: 2, retryTimeout: 3}\n");
    y.push_str(
        "  backup:\n    bucket: b\n    schedule: \"0 0 1 1 *\"\n    retention: 2\n    \
         verify: {schedule: \"*/4 * * * * *\", maxAge: 1h, sql: \"SELECT count(*) = 10 FROM t\"}\n",
    );
    repo.write("sched.yaml", &y)?;
    let receiver = spilo_e2e::webhook::Receiver::start(0).await?;
    std::fs::write(
        repo.path().join("alerts.yaml"),
        format!("webhooks:\n  - url: {}\n", receiver.url),
    )?;
    repo.commit_all("a cluster with restore drills")?;
    repo.up()?;
    repo.wait_printed("cluster sched is ready", READY).await?;
    let dsn = repo.dsn("sched", base)?;
    let c = connect_dsn(&dsn).await?;
    c.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)")
        .await?;
    let (code, out, err) = repo.spilo(&["backup", "sched"])?;
    assert_eq!(code, 0, "{out}{err}");
    // Two more segments after the backup, archived, the first with a commit (one statement
    // per call: a multi-statement call is one transaction).
    c.batch_execute("CREATE TABLE u (x int)").await?;
    c.batch_execute("SELECT pg_switch_wal()").await?;
    c.batch_execute("CREATE TABLE v (x int)").await?;
    c.batch_execute("SELECT pg_switch_wal()").await?;
    wait::until("a passed drill in spilo list", READY, || async {
        let (code, out, _) = repo.spilo(&["list", "sched"]).ok()?;
        (code == 0 && out.contains("Last restore drill: verified") && out.contains("by sched-"))
            .then_some(())
    })
    .await?;

    let (_, text, _) = repo.spilo(&["status", "sched"])?;
    assert!(text.contains("Drill:    verified at"), "{text}");
    let http = ports::free();
    let watching = repo.watch_local(http)?;
    let count = |event: &str| receiver.count(event, "sched", "backup_unverified");
    let metrics = || async {
        reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    wait::until(
        "the drill gauges in the watcher's metrics",
        READY,
        || async {
            let m = metrics().await?;
            (m.contains("spilo_backup_verify_ok{cluster=\"sched\"} 1")
                && m.contains("spilo_backup_verified_timestamp{cluster=\"sched\"}")
                && m.contains("spilo_backup_verify_rpo_seconds{cluster=\"sched\"}")
                && m.contains("spilo_backup_verify_rto_seconds{cluster=\"sched\"}"))
            .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}", repo.spilo(&["list", "sched"])))?;
    assert_eq!(count("drift"), 0, "{:?}", receiver.bodies());

    // A segment between the backup and the newest one goes missing.
    let segments: Vec<PathBuf> = files(&repo.state().join("sched/bucket"), "wal_005/0000000")
        .into_iter()
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !n.contains("partial") && !n.contains("history") && !n.contains("backup")
        })
        .collect();
    let gone = segments
        .len()
        .checked_sub(2)
        .and_then(|i| segments.get(i))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("fewer than two segments: {segments:?}"))?;
    let aside = gone.with_extension("aside");
    std::fs::rename(&gone, &aside)?;
    let raised = wait::until("one backup_unverified alert", READY, || async {
        (count("drift") == 1).then_some(())
    })
    .await;
    // While the segment is missing every drill fails, and `spilo list` says why.
    let listed = repo.spilo(&["list", "sched"]);
    std::fs::rename(&aside, &gone)?;
    raised.map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}\n{}",
            receiver.bodies(),
            std::fs::read_to_string(&watching.log).unwrap_or_default()
        )
    })?;
    let (_, out, _) = listed?;
    // A drill that listed the archive just before the segment went fails fetching it
    // ("vanished"); the next ones find it missing. Either names it.
    let name = gone
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        out.contains("Last restore drill: FAILED")
            && out.contains(&name)
            && (out.contains("of timeline 1 is missing") || out.contains("vanished")),
        "{out}"
    );
    wait::until(
        "the alert resolved after the next passed drill",
        READY,
        || async { (count("resolved") == 1).then_some(()) },
    )
    .await?;
    assert_eq!(count("drift"), 1, "one alert while it lasted");
    let bodies = format!("{:?}", receiver.bodies());
    assert!(bodies.contains("of timeline 1 is missing"), "{bodies}");
    drop(watching);
    Ok(())
}
