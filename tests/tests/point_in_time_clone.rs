//! A point-in-time clone declared the way a user declares it: a cluster file with
//! `bootstrap.clone: {from, targetTime}` added to `clusters/` while `spilo up` runs. The
//! source takes backups on demand (`spilo backup`), before and after the target; the clone must start from the backup that precedes its target, hold exactly the
//! rows committed before it, accept writes and stream to its replicas, whichever way the
//! target time is written. A target before the oldest backup fails once, clearly, and stays
//! failed instead of looping.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{ports, wait};
use std::time::Duration;

const READY: Duration = Duration::from_secs(240);

fn ports_yaml(base: u16) -> String {
    format!(
        "  local:\n    ports: {{primary: {base}, replica: {}, etcd: {}, postgres: {}, api: {}, proxy: {}}}\n",
        base + 1,
        base + 2,
        base + 10,
        base + 20,
        base + 25
    )
}

fn common(name: &str, instances: u32) -> String {
    format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n  \
         postgresql: {{parameters: {{shared_buffers: 16MB, max_connections: 40}}}}\n  \
         endpoints: {{replica: {{enabled: true, port: 5433}}, healthCheck: {{interval: 1}}}}\n"
    )
}

fn clone_yaml(name: &str, instances: u32, target: &str, base: u16) -> String {
    format!(
        "{}  bootstrap:\n    clone: {{from: src, targetTime: \"{target}\"}}\n{}",
        common(name, instances),
        ports_yaml(base)
    )
}

/// `(rows of phase a, rows of phase b)` through the cluster's primary port.
async fn phases(dsn: &str) -> Option<(i64, i64)> {
    let c = connect_dsn(dsn).await.ok()?;
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE phase = 'a'), count(*) FILTER (WHERE phase = 'b') FROM t",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

fn member<'a>(status: &'a serde_json::Value, cluster: &str) -> Vec<&'a serde_json::Value> {
    status["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == cluster))
        .and_then(|c| c["members"].as_array())
        .map(|ms| ms.iter().collect())
        .unwrap_or_default()
}

fn backup(repo: &LocalRepo) -> anyhow::Result<String> {
    let (code, out, err) = repo.spilo(&["backup", "src"])?;
    anyhow::ensure!(code == 0, "spilo backup src: {out}{err}");
    anyhow::ensure!(out.contains("src: backup base_"), "{out}");
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_file_recovers_to_its_target_from_the_backup_before_it_in_every_time_form()
-> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario(&mut repo).await;
    repo.finish(r)
}

async fn scenario(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let src_base = ports::free_block(30);
    repo.write(
        "src.yaml",
        &format!(
            // Backups only on demand here (the yearly schedule does not fire), so which one
            // precedes the targets is known exactly; backups.rs covers the schedule.
            "{}  backup: {{bucket: b, schedule: \"0 0 1 1 *\", retention: 20}}\n{}",
            common("src", 1),
            ports_yaml(src_base)
        ),
    )?;
    repo.up()?;
    repo.wait_printed("cluster src is ready", READY).await?;
    let src = repo.dsn("src", src_base)?;

    // A backup before anything, then rows A, the targets, rows B, two more backups.
    let first = backup(repo)?;
    let c = connect_dsn(&src).await?;
    c.batch_execute(
        "CREATE TABLE t (x int, phase text); INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g",
    )
    .await?;
    let row = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                    to_char(date_trunc('second', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 second', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    to_char((date_trunc('second', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 second') + interval '2 hours', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+02:00\"'), \
                    date_trunc('second', clock_timestamp()) + interval '1 second'",
            &[],
        )
        .await?;
    let with_fraction: String = row.get(0);
    let whole: String = row.get(1);
    let offset: String = row.get(2);
    let whole_ts: std::time::SystemTime = row.get(3);
    // Rows B are committed only after every target has passed.
    wait::until("the database clock to pass the targets", READY, || async {
        let n: bool = c
            .query_one(
                "SELECT clock_timestamp() > $1::timestamptz + interval '100 milliseconds'",
                &[&whole_ts],
            )
            .await
            .ok()?
            .get(0);
        n.then_some(())
    })
    .await?;
    c.batch_execute("INSERT INTO t SELECT g, 'b' FROM generate_series(1, 50) g")
        .await?;
    let second = backup(repo)?;
    let third = backup(repo)?;
    assert!(first != second && second != third, "{first}{second}{third}");

    // Clones added while `spilo up` runs, in every accepted form of the time, and one whose
    // target lies before the oldest backup.
    let bases: Vec<u16> = (0..6).map(|_| ports::free_block(30)).collect();
    // clone-frac archives too (its own bucket), for a restore drill of a clone's archive.
    repo.write(
        "clone-frac.yaml",
        &clone_yaml("clone-frac", 3, &with_fraction, bases[0]).replace(
            "  bootstrap:",
            "  backup: {bucket: b, schedule: \"0 0 1 1 *\", retention: 2}\n  bootstrap:",
        ),
    )?;
    repo.write(
        "clone-whole.yaml",
        &clone_yaml("clone-whole", 1, &whole, bases[1]),
    )?;
    repo.write(
        "clone-offset.yaml",
        &clone_yaml("clone-offset", 1, &offset, bases[2]),
    )?;
    repo.write(
        "clone-early.yaml",
        &clone_yaml("clone-early", 1, "2001-01-01 00:00:00+00", bases[3]),
    )?;
    // After everything the source committed: its archive cannot show where to stop yet.
    let now: String = c
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await?
        .get(0);
    repo.write(
        "clone-late.yaml",
        &clone_yaml("clone-late", 1, &now, bases[4]),
    )?;
    repo.write(
        "clone-future.yaml",
        &clone_yaml("clone-future", 1, "2999-01-01T00:00:00Z", bases[5]),
    )?;

    for (name, base) in [
        ("clone-frac", bases[0]),
        ("clone-whole", bases[1]),
        ("clone-offset", bases[2]),
    ] {
        repo.wait_printed(&format!("cluster {name} is ready"), READY)
            .await?;
        let dsn = repo.dsn(name, base)?;
        let got = wait::until(&format!("{name} to answer"), READY, || phases(&dsn)).await?;
        assert_eq!(got, (100, 0), "{name}: every A row and no B row");
        // Whichever member won the bootstrap restored the backup.
        let log: String = std::fs::read_dir(repo.state().join(name).join("members"))?
            .flatten()
            .map(|m| std::fs::read_to_string(m.path().join("governor.log")).unwrap_or_default())
            .collect();
        let restored = first.split_whitespace().nth(2).unwrap_or("?");
        assert!(
            log.contains(&format!("backup=\"{restored}\""))
                || log.contains(&format!("backup={restored}")),
            "{name} must restore the backup from before the target ({restored}):\n{log}"
        );
    }

    // The three-member clone accepts writes and its replicas stream them.
    let frac = repo.dsn("clone-frac", bases[0])?;
    connect_dsn(&frac)
        .await?
        .batch_execute("INSERT INTO t VALUES (1000, 'clone')")
        .await?;
    let replicas = repo.dsn("clone-frac", bases[0] + 1)?;
    wait::until(
        "clone-frac's replicas to stream the write",
        READY,
        || async {
            let s = repo.status().ok()?;
            let streaming = member(&s, "clone-frac")
                .iter()
                .filter(|m| m["role"] == "replica" && m["state"] == "running")
                .count();
            let c = connect_dsn(&replicas).await.ok()?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM t WHERE phase = 'clone'", &[])
                .await
                .ok()?
                .get(0);
            (streaming == 2 && n == 1).then_some(())
        },
    )
    .await?;

    // A backup of the clone and a restore drill of the clone's own archive (it starts on the
    // timeline the clone's promotion began, its history naming the source's).
    let (code, out, err) = repo.spilo(&["backup", "clone-frac"])?;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = repo.spilo(&[
        "verify-backup",
        "clone-frac",
        "--sql",
        "SELECT count(*) = 1 FROM t WHERE phase = 'clone'",
    ])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified") && out.contains("sql"), "{out}");

    // The early target: a clear error, in `spilo status` and printed by `spilo up`.
    let status = wait::until("clone-early to report its failure", READY, || async {
        let s = repo.status().ok()?;
        let m = member(&s, "clone-early").first().copied()?.clone();
        (m["state"] == "bootstrap_failed").then_some(m)
    })
    .await?;
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no backup finished before the target time 2001-01-01T00:00:00.000000Z")
            && error.contains("the oldest finished backup")
            && error
                .contains("not retried until the governor restarts with a changed configuration"),
        "{status}"
    );
    repo.wait_printed(
        "cluster clone-early: member clone-early-0: clone: no backup finished",
        READY,
    )
    .await?;
    let (_, text, _) = repo.spilo(&["status", "clone-early"])?;
    assert!(
        text.contains("bootstrap_failed") && text.contains("clone-early-0: clone: no backup"),
        "{text}"
    );
    // A target beyond the archive, or in the future, is reported as such and retried.
    let late = wait::until("clone-late to report the archive's end", READY, || async {
        let s = repo.status().ok()?;
        let m = member(&s, "clone-late").first().copied()?.clone();
        m["error"]
            .as_str()
            .is_some_and(|e| {
                e.contains("the source's archive ends before bootstrap.clone.target_time")
            })
            .then_some(m)
    })
    .await?;
    let e = late["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("recovery ended before configured recovery target was reached")
            && e.contains("retried with a growing pause"),
        "{late}"
    );
    let future = wait::until("clone-future to report its failure", READY, || async {
        let s = repo.status().ok()?;
        let m = member(&s, "clone-future").first().copied()?.clone();
        (m["state"] == "bootstrap_failed").then_some(m)
    })
    .await?;
    assert!(
        future["error"].as_str().is_some_and(|e| e
            .contains("2999-01-01T00:00:00.000000Z is in the future")
            && e.contains("retried with a growing pause")),
        "{future}"
    );

    // No crash loop: after everything above, still exactly one attempt.
    let log = std::fs::read_to_string(
        repo.state()
            .join("clone-early/members/clone-early-0/governor.log"),
    )?;
    assert_eq!(
        log.matches("bootstrap failed; cleaning up").count(),
        1,
        "one attempt, not a loop:\n{log}"
    );
    Ok(())
}
