//! End-to-end tests of base backups on a schedule, retention and replicas created from a
//! backup, on real PostgreSQL 15 with the filesystem store.

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::wait;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(60);

/// Runs `governor <args>` with `member`'s configuration; returns stdout.
fn governor(c: &Cluster, member: &str, args: &[&str]) -> anyhow::Result<String> {
    c.governor_command(args, &c.member(member).config_path())
}

/// The finished backups `backup-list` prints, oldest first.
fn listed(c: &Cluster, member: &str) -> anyhow::Result<Vec<String>> {
    Ok(governor(c, member, &["backup-list"])?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// The segment number (without the timeline) of a WAL file name.
fn segment(name: &str) -> u64 {
    u64::from_str_radix(&name[8..24], 16).unwrap_or(u64::MAX)
}

/// The leader takes a backup every 3 seconds and keeps 2: once retention has deleted some,
/// exactly the 2 newest finished backups are listed, and no WAL segment older than the oldest
/// one's start is left (the history files are). The replica takes none. `backup-delete
/// --retain 1` then keeps only the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_backs_up_on_schedule_and_keeps_the_newest() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "sched".into(),
        members: 2,
        archive: true,
        archive_extra: ", backups: {schedule: '*/3 * * * * *', retain: 2}".into(),
        ..Default::default()
    })
    .await?;
    let result = scheduled_body(&mut c).await;
    c.finish(result)
}

async fn scheduled_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, replicas) = c.start_streaming(BOOT).await?;
    let db = c.sql(&primary).await?;
    db.batch_execute("CREATE TABLE t (n int)").await?;
    // A new WAL segment every second between backups, so retention has segments to delete.
    let wrote = std::sync::Mutex::new(std::time::Instant::now());
    let quiet = wait::until(
        "retention to delete two scheduled backups",
        Duration::from_secs(90),
        || async {
            let due = wrote.lock().ok()?.elapsed() > Duration::from_secs(1);
            if due {
                db.batch_execute(
                    "INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal()",
                )
                .await
                .ok()?;
                *wrote.lock().ok()? = std::time::Instant::now();
            }
            let before = c.status(&primary).await?.archive?.backups?;
            let names = listed(c, &primary).ok()?;
            let after = c.status(&primary).await?.archive?.backups?;
            // Between two identical reports of the last finished backup, with it the newest
            // listed, no backup and no retention ran: the archive is at rest.
            (before.deleted >= 2 && before == after && names.last() == before.last.as_ref())
                .then_some((names, before))
        },
    )
    .await?;
    let (names, runs) = quiet;
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(runs.error.is_none(), "{runs:?}");
    assert!(runs.next.is_some(), "{runs:?}");
    let oldest = names[0].trim_start_matches("base_").to_string();
    let wal: Vec<String> = std::fs::read_dir(c.archived_wal())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        wal.iter().any(|n| segment(n) >= segment(&oldest)),
        "{wal:?}"
    );
    for n in &wal {
        assert!(
            n.contains(".history") || segment(n) >= segment(&oldest),
            "{n} is older than the oldest kept backup {oldest}"
        );
    }
    let dirs: Vec<String> =
        std::fs::read_dir(c.bucket().join("spilo/sched/wal/15/basebackups_005"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".json"))
            .collect();
    for d in &dirs {
        assert!(
            segment(d.trim_start_matches("base_")) >= segment(&oldest),
            "{d} should have been deleted with its backup"
        );
    }
    for r in &replicas {
        let s = c
            .status(r)
            .await
            .ok_or_else(|| anyhow::anyhow!("{r}: no status"))?;
        assert!(s.archive.is_none(), "{r} reports archiving: {s:?}");
    }

    // Stop the schedule, then trim by hand.
    for m in replicas.iter().chain([&primary]) {
        c.stop(m)?;
    }
    let before = listed(c, &primary)?;
    let out = governor(c, &primary, &["backup-delete", "--retain", "1"])?;
    let dropped = before.len() - 1;
    assert!(
        out.starts_with(&format!("deleted {dropped} backup(s)")),
        "{out}"
    );
    assert_eq!(listed(c, &primary)?, before[before.len() - 1..].to_vec());
    let out = governor(c, &primary, &["backup-delete", "--retain", "1"])?;
    assert!(out.starts_with("nothing to delete"), "{out}");
    let zero = c
        .run_as()
        .command(c.governor_bin())
        .args(["backup-delete", "--retain", "0", "--config"])
        .arg(c.member(&primary).config_path())
        .output()?;
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("at least 1"));
    assert_eq!(listed(c, &primary)?.len(), 1);
    Ok(())
}

/// With `replicas_from_backup`, a member joining after a backup restores it and recovers
/// with the archive's WAL instead of copying the primary with pg_basebackup, then streams:
/// it serves the rows from before the backup, from between the backup and its start
/// (recovered from the archive), and from after it started (streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_is_created_from_the_latest_backup() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "frombackup".into(),
        members: 2,
        archive: true,
        archive_extra: ", replicas_from_backup: true".into(),
        ..Default::default()
    })
    .await?;
    let result = from_backup_body(&mut c).await;
    c.finish(result)
}

async fn from_backup_body(c: &mut Cluster) -> anyhow::Result<()> {
    c.start("m1")?;
    let primary = c.wait_primary(BOOT).await?;
    anyhow::ensure!(primary == "m1", "{primary} leads");
    let db = c.sql("m1").await?;
    db.batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 100)")
        .await?;
    let pushed = governor(c, "m1", &["backup-push"])?;
    let backup = pushed.split(':').next().unwrap_or("?").to_string();
    db.batch_execute(
        "INSERT INTO t SELECT generate_series(101, 200); SELECT pg_switch_wal(); \
         INSERT INTO t SELECT generate_series(201, 300); SELECT pg_switch_wal()",
    )
    .await?;
    c.start("m2")?;
    c.wait_streaming("m2", BOOT).await?;
    db.batch_execute("INSERT INTO t SELECT generate_series(301, 400)")
        .await?;
    let replica = c.sql("m2").await?;
    let rows = wait::until("the replica to have every row", BOOT, || async {
        let n: i64 = replica
            .query_one("SELECT count(DISTINCT n) FROM t", &[])
            .await
            .ok()?
            .get(0);
        (n == 400).then_some(n)
    })
    .await?;
    assert_eq!(rows, 400);
    let log = c.log("m2");
    assert!(
        log.contains("restored the archive's latest base backup for a new replica")
            && log.contains(&backup),
        "m2 did not restore {backup}:\n{log}"
    );
    assert!(
        !log.contains("tool=\"pg_basebackup\""),
        "m2 copied the primary:\n{log}"
    );
    // It recovered archived WAL before it streamed.
    let pg_log = std::fs::read_to_string(c.member("m2").pg_log_path())?;
    assert!(pg_log.contains("restored log file"), "{pg_log}");

    // wal-fetch of the backup's first segment starts a prefetch of the ones after it; the
    // next wal-fetch is served from the prefetch directory.
    let first = backup.trim_start_matches("base_").to_string();
    let next = format!(
        "{}{:016X}",
        &first[..8],
        u64::from_str_radix(&first[8..], 16)? + 1
    );
    // A pg_wal of our own, writable by the servers' user that runs the command.
    let pg_wal = c.dir().join("restore");
    std::fs::create_dir_all(&pg_wal)?;
    std::fs::set_permissions(&pg_wal, std::fs::Permissions::from_mode(0o777))?;
    let dest = pg_wal.join("RECOVERYXLOG");
    let fetch = |name: &str| {
        c.run_as()
            .command(c.governor_bin())
            .args(["wal-fetch", name])
            .arg(&dest)
            .arg("--config")
            .arg(c.member("m1").config_path())
            .output()
    };
    let out = fetch(&first)?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefetched = pg_wal.join("spilo_prefetch").join(&next);
    wait::until("the next segment to be prefetched", BOOT, || async {
        prefetched.exists().then_some(())
    })
    .await?;
    let out = fetch(&next)?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was prefetched"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!prefetched.exists());
    assert_eq!(std::fs::metadata(&dest)?.len(), 16 << 20);
    Ok(())
}

/// Without a backup in the archive a new replica copies the primary, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backup_a_new_replica_copies_the_primary() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "nobackup".into(),
        members: 2,
        archive: true,
        archive_extra: ", replicas_from_backup: true".into(),
        ..Default::default()
    })
    .await?;
    let result = async {
        c.start_streaming(BOOT).await?;
        let replica = if c.primaries().await == ["m1"] {
            "m2"
        } else {
            "m1"
        };
        let log = c.log(replica);
        assert!(log.contains("tool=\"pg_basebackup\""), "{log}");
        Ok(())
    }
    .await;
    c.finish(result)
}

/// Every member lost its data (stopped, data directories gone): after `recover_after`, one
/// member restores the latest backup and replays every archived WAL file, refusing first an
/// archive with a hole in its WAL (it waits, initdb never runs); the hole filled, it recovers
/// every archived row on a new timeline, records it in `history`, accepts writes, and the
/// other member follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_members_all_lost_their_data_comes_back_from_its_archive()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "recover".into(),
        members: 2,
        archive: true,
        archive_extra: ", replicas_from_backup: true, recover_after: 2".into(),
        ..Default::default()
    })
    .await?;
    let result = recovery_body(&mut c).await;
    c.finish(result)
}

async fn recovery_body(c: &mut Cluster) -> anyhow::Result<()> {
    // The archive is given a hole on purpose: the first recovery attempt must refuse it.
    c.expect_errors(&["the archive has a gap"]);
    c.start("m1")?;
    c.wait_primary(BOOT).await?;
    let db = c.sql("m1").await?;
    db.batch_execute(
        "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    )
    .await?;
    governor(c, "m1", &["backup-push"])?;
    db.batch_execute(
        "INSERT INTO t SELECT generate_series(101, 200); SELECT pg_switch_wal(); \
         INSERT INTO t SELECT generate_series(201, 300)",
    )
    .await?;
    c.start("m2")?;
    c.wait_streaming("m2", BOOT).await?;
    db.batch_execute("INSERT INTO t SELECT generate_series(301, 400)")
        .await?;
    // Everything up to here is archived before the loss.
    spilo_e2e::sql::archive_everything(&db, BOOT).await?;
    drop(db);

    // Both members lose their data.
    c.stop("m1")?;
    c.stop("m2")?;
    for m in ["m1", "m2"] {
        std::fs::remove_dir_all(c.member(m).data_dir())?;
    }
    // A hole in the archive: the segment after the backup's first is moved away.
    let wal = c.bucket().join("spilo/recover/wal/15/wal_005");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.len() == 28 && !n.contains(".partial"))
        .collect();
    segments.sort();
    let hole = segments
        .get(1)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("too few segments: {segments:?}"))?;
    let aside = c.dir().join(&hole);
    std::fs::rename(wal.join(&hole), &aside)?;
    // What the governors log from here on (m1's first life ran initdb).
    let logged_before: Vec<usize> = ["m1", "m2"].iter().map(|m| c.log(m).len()).collect();
    c.start("m1")?;
    c.start("m2")?;
    let refused = wait::until(
        "a member to refuse the archive with a hole",
        BOOT,
        || async {
            for m in ["m1", "m2"] {
                let s = c.status(m).await?;
                if let Some(e) = s
                    .member
                    .error
                    .filter(|e| e.contains("the archive has a gap"))
                {
                    return Some(e);
                }
            }
            None
        },
    )
    .await?;
    assert!(
        refused.contains(&hole[8..24]),
        "names the segment: {refused}"
    );
    assert!(
        c.primaries().await.is_empty(),
        "nobody leads on a broken archive"
    );
    std::fs::rename(&aside, wal.join(&hole))?;

    let primary = c.wait_primary(Duration::from_secs(120)).await?;
    let db = c.sql(&primary).await?;
    let rows: Vec<i32> = db
        .query("SELECT n FROM t ORDER BY n", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        (1..=400).collect::<Vec<i32>>(),
        "every archived row, one by one"
    );
    let timeline: i32 = db
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await?
        .get(0);
    assert!(timeline > 1, "a new timeline: {timeline}");
    db.batch_execute("INSERT INTO t VALUES (401)").await?;
    let (code, history) = c.operate("history", &[]).await?;
    assert_eq!(code, 0, "{history}");
    assert!(history.contains("recovered from the archive"), "{history}");
    let other = if primary == "m1" { "m2" } else { "m1" };
    c.wait_streaming(other, Duration::from_secs(120)).await?;
    let since = |m: &str, i: usize| {
        c.log(m)
            .get(logged_before[i]..)
            .unwrap_or_default()
            .to_string()
    };
    let (after_m1, after_m2) = (since("m1", 0), since("m2", 1));
    let recovered = if primary == "m1" {
        &after_m1
    } else {
        &after_m2
    };
    assert!(
        recovered.contains("recovered the cluster from its archive"),
        "{recovered}"
    );
    for log in [&after_m1, &after_m2] {
        assert!(!log.contains("initdb"), "no initdb after the loss: {log}");
    }
    Ok(())
}
