//! The major upgrade declared in a cluster file (`postgresql.version: 15` -> `18`) on the
//! local target, with Debian's PostgreSQL 15 and the PostgreSQL 18 `scripts/install-deps`
//! installs. That build has no SSL, so the clusters run on an etcd of their own choosing
//! (spoken to without TLS), as in `postgresql_18.rs`.
//!
//! - Under a client writing through HAProxy: every row from before and every acknowledged
//!   write is there afterwards, the cluster runs 18 with one primary and two streaming
//!   replicas, the archive goes on under `wal/18/`, the write downtime is reported, and a
//!   kill -9 failover afterwards works.
//! - A blocker (an extension the new version lacks) is named, and nothing changes.
//! - Before either, `spilo plan --local` on the edited file (a checkout of its own, as a pull
//!   request's) names the upgrade and what `pg_upgrade --check` found, and changes nothing.
//! - A pg_upgrade that fails after its check passed (a view on a column the new version
//!   removed) is rolled back: the cluster runs 15 with its data.
//! - A commit that fails (etcd frozen) ends `spilo up` past the point of no return; the next
//!   `spilo up` finishes the upgrade.
//! - `spilo up` killed before the point of no return (after pg_upgrade, or while it runs): the
//!   cluster is back on 15 with its data; killed after it (before any member started on 18):
//!   the next `spilo up` finishes it.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::major_upgrade::{
    READY, UPGRADE, archived, major, on_15, on_15_with, on_version, pg_upgrade_running, plan_local,
    restore_15, rows, streaming, system_id,
};
use spilo_e2e::pair::Writer;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{Etcd, wait};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_change_upgrades_the_cluster_under_writes_and_it_fails_over_afterwards()
-> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let etcd = Etcd::start(&repo.state().with_file_name("etcd")).await?;
    let r = upgrade_under_writes(&mut repo, &etcd).await;
    repo.finish(r)
}

async fn upgrade_under_writes(repo: &mut LocalRepo, etcd: &Etcd) -> anyhow::Result<()> {
    let (base, primary, _) = on_15(
        repo,
        etcd,
        ("alpha", 3),
        &[],
        "CREATE TABLE t (n int PRIMARY KEY, s text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g; \
         CREATE TABLE w (id bigint PRIMARY KEY)",
    )
    .await?;
    let (code, out, err) = plan_local(repo, "alpha", &on_version("alpha", 3, base, 15, etcd))?;
    assert_eq!(
        (code, out.trim()),
        (0, "No cluster to start, resize, stop or upgrade."),
        "{err}"
    );
    let (code, out, err) = plan_local(repo, "alpha", &on_version("alpha", 3, base, 18, etcd))?;
    assert_eq!(code, 2, "changes: {out}{err}");
    assert!(
        out.contains("~ cluster alpha (major upgrade: PostgreSQL 15 -> 18)")
            && out.contains("  pg_upgrade --check on alpha-")
            && out.contains(": no blockers"),
        "{out}{err}"
    );
    assert_eq!(major(&primary).await?, 15, "the plan changed nothing");
    for i in 0..3 {
        let m = repo.state().join(format!("alpha/members/alpha-{i}"));
        let left: Vec<String> = std::fs::read_dir(&m)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                (n.starts_with("data.upgrade") && n != "data.upgrade.lock")
                    || n.starts_with("governor.upgrade")
            })
            .collect();
        assert!(left.is_empty(), "the plan left {left:?} in alpha-{i}");
    }
    // The member's configuration on 15, for a restore of 15's archive afterwards.
    let config_15 = repo.state().join("alpha/governor-15.yaml");
    std::fs::copy(
        repo.state().join("alpha/members/alpha-0/governor.yaml"),
        &config_15,
    )?;
    let writer = Writer::start(primary.clone());
    wait::until("writes acknowledged", READY, || async {
        (writer.last() > 10).then_some(())
    })
    .await?;

    repo.write("alpha.yaml", &on_version("alpha", 3, base, 18, etcd))?;
    repo.wait_printed("cluster alpha runs PostgreSQL 18: write downtime", UPGRADE)
        .await?;
    let log = repo.up_log();
    assert!(
        log.contains("~ cluster alpha (major upgrade: PostgreSQL 15 -> 18)")
            && log.contains("pg_upgrade --check: no blockers")
            && log.contains("base backup on PostgreSQL 15 taken before the upgrade")
            && log.contains("2 replicas copied from the upgraded primary and streaming")
            && log.contains("base backup on PostgreSQL 18 taken (archive spilo/alpha/wal/18/)")
            && log.contains("statistics rebuilt"),
        "{log}"
    );
    let reported = repo.printed_downtime()?;
    assert!(reported > 0.0, "{log}");
    // Writes go on after the upgrade, then stop.
    let at_upgrade = writer.last();
    wait::until("writes acknowledged on 18", READY, || async {
        (writer.last() > at_upgrade + 10).then_some(())
    })
    .await?;
    let acked = writer.stop().await;
    let (before_gap, gap) = acked
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].1.duration_since(w[0].1)))
        .max_by_key(|(_, gap)| *gap)
        .unwrap_or_default();
    // 15's archive (the base backup before the upgrade and its WAL, the old server's last
    // segment included) restores every write acknowledged on 15: those before the gap.
    let on_15: Vec<String> = acked[..=before_gap]
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    let drill = restore_15(repo, &config_15, &on_15)?;
    assert!(
        drill.contains("verified"),
        "a restore of 15's archive lacks writes acknowledged on 15:\n{drill}"
    );
    eprintln!(
        "reported write downtime {reported:.1}s; the client's longest gap between acknowledged writes {:.1}s",
        gap.as_secs_f64()
    );

    assert_eq!(major(&primary).await?, 18);
    streaming(&primary, 18, 2).await?;
    assert_eq!(rows(&primary).await?, 10_000);
    let c = connect_dsn(&primary).await?;
    let ids: Vec<i64> = c
        .query("SELECT id FROM w", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<i64> = acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    // The archive goes on under the new version's prefix.
    let bucket = repo.state().join("alpha/bucket");
    let before = archived(&bucket, 18);
    assert!(
        before > 0,
        "the base backup on 18 archived nothing under wal/18/"
    );
    c.batch_execute("INSERT INTO t VALUES (10001, 'after'); SELECT pg_switch_wal()")
        .await?;
    wait::until("a new segment archived under wal/18/", READY, || async {
        (archived(&bucket, 18) > before).then_some(())
    })
    .await?;
    assert!(
        !repo.state().join("alpha/upgrade.json").exists(),
        "the record is cleared"
    );
    for i in 0..3 {
        let m = repo.state().join(format!("alpha/members/alpha-{i}"));
        assert!(
            !m.join("data.pre-upgrade").exists() && !m.join("data.upgrade").exists(),
            "alpha-{i}: the old data is removed"
        );
    }
    drop(c);

    // kill -9 of the upgraded primary's governor and PostgreSQL: another member takes over.
    let status = repo.status()?;
    let members = status["clusters"][0]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let old = members
        .iter()
        .find(|m| m["role"] == "primary")
        .ok_or_else(|| anyhow::anyhow!("no primary in {status}"))?;
    let old_name = old["name"].as_str().unwrap_or_default().to_string();
    for pid in [&old["governor_pid"], &old["postmaster_pid"]] {
        let pid = pid
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no pid in {old}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    }
    let new_name = wait::until("another primary on 18", READY, || async {
        let c = connect_dsn(&primary).await.ok()?;
        let row = c
            .query_one(
                "SELECT current_setting('cluster_name'), current_setting('server_version_num')",
                &[],
            )
            .await
            .ok()?;
        let (name, v): (String, String) = (row.get(0), row.get(1));
        (name != old_name && v.starts_with("18")).then_some(name)
    })
    .await?;
    eprintln!("after kill -9 of {old_name}: {new_name} is the primary");
    assert_eq!(rows(&primary).await?, 10_001);
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocker_is_named_and_nothing_changes() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let etcd = Etcd::start(&repo.state().with_file_name("etcd")).await?;
    let r = blocked(&mut repo, &etcd).await;
    repo.finish(r)
}

/// `yaml` with `old_snapshot_threshold` among its parameters and the `old_snapshot` module
/// preloaded: PostgreSQL 15 has both, 17 removed both.
fn with_removed_setting(yaml: String) -> String {
    let edited = yaml.replace(
        "max_connections: 40",
        "max_connections: 40, old_snapshot_threshold: '-1', shared_preload_libraries: old_snapshot",
    );
    assert!(edited.contains("old_snapshot_threshold"), "{yaml}");
    edited
}

async fn blocked(repo: &mut LocalRepo, etcd: &Etcd) -> anyhow::Result<()> {
    // pgcrypto ships with Debian's PostgreSQL 15, not with the PostgreSQL 18 build here; and
    // a setting and a preloaded library 17 removed, which pg_upgrade --check alone lets
    // through (its new server starts with initdb's settings) and with which 18 would not
    // start.
    let (base, primary, sysid) = on_15_with(
        repo,
        etcd,
        ("beta", 2),
        &[],
        "CREATE EXTENSION pgcrypto; CREATE TABLE t (n int); \
         INSERT INTO t SELECT generate_series(1, 500)",
        with_removed_setting,
    )
    .await?;
    // And a column option 18 does not take, as Debian's 15.20 sets on every column it
    // creates (`pg_attver`; the 15 here predates it, so it is written into the catalog).
    connect_dsn(&primary)
        .await?
        .batch_execute(
            "SET allow_system_table_mods = on; UPDATE pg_attribute SET attoptions = \
             '{pg_attver=50406424}' WHERE attrelid = 't'::regclass AND attname = 'n'",
        )
        .await?;
    let on_18 = with_removed_setting(on_version("beta", 2, base, 18, etcd));
    let (code, out, err) = plan_local(repo, "beta", &on_18)?;
    assert_eq!(code, 1, "blocked: {out}{err}");
    assert!(
        out.contains("~ cluster beta (major upgrade: PostgreSQL 15 -> 18)")
            && out.contains("blocked; `spilo up` would refuse it and change nothing")
            && out.contains("pgcrypto")
            && out.contains("setting old_snapshot_threshold: PostgreSQL 18")
            && out.contains(
                "setting shared_preload_libraries: PostgreSQL 18.6 has no library old_snapshot"
            )
            && out.contains(
                "database postgres: 1 column(s) carry the option pg_attver, which PostgreSQL 18 \
                 does not take"
            ),
        "the plan names every blocker:\n{out}{err}"
    );
    eprintln!("{out}");
    repo.write("beta.yaml", &on_18)?;
    repo.wait_printed("refused to upgrade cluster beta to PostgreSQL 18", UPGRADE)
        .await?;
    let log = repo.up_log();
    assert!(
        log.contains("pgcrypto") && log.contains("setting old_snapshot_threshold"),
        "the blockers name the library and the setting:\n{log}"
    );
    assert!(!log.contains("runs PostgreSQL 18"), "{log}");
    assert_eq!(major(&primary).await?, 15);
    streaming(&primary, 15, 1).await?;
    assert_eq!(rows(&primary).await?, 500);
    let after = system_id(&primary).await?;
    assert_eq!(after, sysid, "the same system");
    assert!(!repo.state().join("beta/upgrade.json").exists());
    for i in 0..2 {
        let m = repo.state().join(format!("beta/members/beta-{i}"));
        for d in ["data.upgrade", "data.upgrade-check", "data.pre-upgrade"] {
            assert!(!m.join(d).exists(), "beta-{i}/{d} is left behind");
        }
    }
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_killed_halfway_rolls_back_or_finishes() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let etcd = Etcd::start(&repo.state().with_file_name("etcd")).await?;
    let r = killed_halfway(&mut repo, &etcd).await;
    repo.finish(r)
}

async fn killed_halfway(repo: &mut LocalRepo, etcd: &Etcd) -> anyhow::Result<()> {
    // Killed after pg_upgrade, before the commit.
    let (base, primary, sysid) = on_15(
        repo,
        etcd,
        ("gamma", 2),
        &[("SPILO_TEST_UPGRADE_EXIT", "linked")],
        "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 700)",
    )
    .await?;
    repo.write("gamma.yaml", &on_version("gamma", 2, base, 18, etcd))?;
    assert_eq!(repo.wait_up_exit(UPGRADE), Some(3), "{}", repo.up_log());
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo.state().join("gamma/upgrade.json"),
    )?)?;
    assert_eq!(record["step"], "linking", "{record}");
    // pg_upgrade ran: the new cluster beside the data, the old control file renamed.
    let member = repo
        .state()
        .join(format!("gamma/members/gamma-{}", record["primary"]));
    assert!(
        member.join("data.upgrade/PG_VERSION").exists()
            && member.join("data/global/pg_control.old").exists()
            && !member.join("data/global/pg_control").exists(),
        "pg_upgrade --link left no trace in {}",
        member.display()
    );

    // The file back on 15: rolled back, the cluster on 15 with its data.
    repo.write("gamma.yaml", &on_version("gamma", 2, base, 15, etcd))?;
    repo.up()?;
    repo.wait_printed("cluster gamma is ready", READY).await?;
    let log = repo.up_log();
    assert!(
        log.contains(
            "the upgrade of cluster gamma to PostgreSQL 18 was interrupted before its point of no return: rolled back"
        ),
        "{log}"
    );
    assert_eq!(major(&primary).await?, 15);
    streaming(&primary, 15, 1).await?;
    assert_eq!(rows(&primary).await?, 700);
    assert!(
        member.join("data/global/pg_control").exists() && !member.join("data.upgrade").exists(),
        "rolled back: the control file is back, the new cluster gone"
    );
    let after = system_id(&primary).await?;
    assert_eq!(after, sysid, "the same system as before the upgrade");

    // Killed while pg_upgrade runs (spilo up with the governor step and the pg_upgrade it
    // runs, as a crash): the next spilo up rolls back, the cluster on 15 with its data.
    repo.write("gamma.yaml", &on_version("gamma", 2, base, 18, etcd))?;
    pg_upgrade_running(repo, "gamma").await?;
    repo.kill_up();
    repo.write("gamma.yaml", &on_version("gamma", 2, base, 15, etcd))?;
    repo.up()?;
    repo.wait_printed("cluster gamma is ready", READY).await?;
    let log = repo.up_log();
    assert!(
        log.contains(
            "the upgrade of cluster gamma to PostgreSQL 18 was interrupted before its point of no return: rolled back"
        ),
        "{log}"
    );
    assert_eq!(major(&primary).await?, 15);
    streaming(&primary, 15, 1).await?;
    assert_eq!(rows(&primary).await?, 700);
    let after = system_id(&primary).await?;
    assert_eq!(
        after, sysid,
        "the same system after a crash during pg_upgrade"
    );
    for i in 0..2 {
        let m = repo.state().join(format!("gamma/members/gamma-{i}"));
        assert!(
            m.join("data/global/pg_control").exists() && !m.join("data.upgrade").exists(),
            "gamma-{i}: rolled back after the crash"
        );
    }
    repo.interrupt_up();
    assert_eq!(repo.wait_up_exit(READY), Some(0), "{}", repo.up_log());

    // Started with the file on 18, killed after the commit, before any member started on 18.
    repo.write("gamma.yaml", &on_version("gamma", 2, base, 18, etcd))?;
    repo.up_env(&[], &[("SPILO_TEST_UPGRADE_EXIT", "committed")])?;
    assert_eq!(repo.wait_up_exit(UPGRADE), Some(3), "{}", repo.up_log());
    let record = std::fs::read_to_string(repo.state().join("gamma/upgrade.json"))?;
    assert!(record.contains("\"committed\""), "{record}");
    repo.up()?;
    repo.wait_printed("cluster gamma is ready", READY).await?;
    let started = Instant::now();
    let log = repo.up_log();
    assert!(
        log.contains(
            "the upgrade of cluster gamma to PostgreSQL 18 was interrupted after its point of no return: finished"
        ),
        "{log}"
    );
    assert_eq!(major(&primary).await?, 18);
    streaming(&primary, 18, 1).await?;
    assert_eq!(rows(&primary).await?, 700);
    wait::until("the record cleared", READY, || async {
        (!repo.state().join("gamma/upgrade.json").exists()).then_some(())
    })
    .await?;
    eprintln!(
        "finished after the restart; replicas streaming {:.1}s after ready",
        started.elapsed().as_secs_f64()
    );
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_upgrade_that_fails_after_its_check_passed_rolls_back() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let etcd = Etcd::start(&repo.state().with_file_name("etcd")).await?;
    let r = failed_link(&mut repo, &etcd).await;
    repo.finish(r)
}

/// A view on a column PostgreSQL 17 removed (`pg_stat_bgwriter.buffers_backend`): `pg_upgrade
/// --check` does not restore the schema and finds nothing, the real run fails restoring it.
async fn failed_link(repo: &mut LocalRepo, etcd: &Etcd) -> anyhow::Result<()> {
    let (base, primary, sysid) = on_15(
        repo,
        etcd,
        ("delta", 2),
        &[],
        "CREATE VIEW backend_writes AS SELECT buffers_backend FROM pg_stat_bgwriter; \
         CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 300)",
    )
    .await?;
    let (code, out, err) = plan_local(repo, "delta", &on_version("delta", 2, base, 18, etcd))?;
    assert_eq!(code, 2, "the check finds nothing: {out}{err}");
    assert!(out.contains(": no blockers"), "{out}{err}");

    repo.write("delta.yaml", &on_version("delta", 2, base, 18, etcd))?;
    repo.wait_printed("the upgrade of cluster delta failed", UPGRADE)
        .await?;
    let log = repo.up_log();
    assert!(
        log.contains("pg_upgrade --link failed; rolled back")
            && log.contains("cluster delta runs PostgreSQL 15 again"),
        "{log}"
    );
    assert!(!log.contains("runs PostgreSQL 18"), "{log}");
    assert_eq!(major(&primary).await?, 15);
    streaming(&primary, 15, 1).await?;
    assert_eq!(rows(&primary).await?, 300);
    let after = system_id(&primary).await?;
    assert_eq!(after, sysid, "the same system");
    assert!(!repo.state().join("delta/upgrade.json").exists());
    for i in 0..2 {
        let m = repo.state().join(format!("delta/members/delta-{i}"));
        assert!(
            m.join("data/global/pg_control").exists() && !m.join("data.upgrade").exists(),
            "delta-{i}: rolled back"
        );
    }
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_ends_spilo_up_and_the_next_one_finishes() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let etcd = Etcd::start(&repo.state().with_file_name("etcd")).await?;
    let r = failed_commit(&mut repo, &etcd).await;
    etcd.freeze(false);
    repo.finish(r)
}

/// etcd frozen while pg_upgrade runs: the commit swaps the directories (the point of no
/// return) and cannot write the new system identifier; `spilo up` retries it (3 s here, 180 s
/// by default), then ends with its reason. With etcd back, the next `spilo up` finishes.
async fn failed_commit(repo: &mut LocalRepo, etcd: &Etcd) -> anyhow::Result<()> {
    let (base, primary, _) = on_15(
        repo,
        etcd,
        ("eps", 2),
        &[("SPILO_TEST_COMMIT_FOR", "3")],
        "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 400)",
    )
    .await?;
    repo.write("eps.yaml", &on_version("eps", 2, base, 18, etcd))?;
    pg_upgrade_running(repo, "eps").await?;
    etcd.freeze(true);
    let code = repo.wait_up_exit(UPGRADE);
    etcd.freeze(false);
    let log = repo.up_log();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("is past its point of no return, and its commit failed")
            && log.contains("`spilo up` finishes it when started again"),
        "{log}"
    );
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo.state().join("eps/upgrade.json"),
    )?)?;
    assert_eq!(record["step"], "committed", "{record}");
    let member = repo
        .state()
        .join(format!("eps/members/eps-{}", record["primary"]));
    assert_eq!(
        std::fs::read_to_string(member.join("data/PG_VERSION"))?.trim(),
        "18",
        "the directories were swapped before etcd was asked"
    );

    repo.up()?;
    repo.wait_printed("cluster eps is ready", READY).await?;
    let log = repo.up_log();
    assert!(
        log.contains(
            "the upgrade of cluster eps to PostgreSQL 18 was interrupted after its point of no return: finished"
        ),
        "{log}"
    );
    assert_eq!(major(&primary).await?, 18);
    streaming(&primary, 18, 1).await?;
    assert_eq!(rows(&primary).await?, 400);
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}
