//! The "AWS in a box" tier: a major upgrade declared in git. Two instances booted from the
//! image run PostgreSQL 15 (without a CA: the image's 18 is built without SSL); the file
//! moves to `version: 18`. `spilo plan` says what the apply will do; `spilo apply` checks on
//! the leader, takes a base backup, terminates the replica's instance, has the leader's
//! governor upgrade its data in place, moves the launch template to 18 and replaces every
//! instance (the box playing EC2 meanwhile), then takes a base backup on 18 and rebuilds the
//! statistics. The cluster then runs 18 on new instances with every row, a new system
//! identifier, its extended statistics, a streaming replica and its archiving working.
//! Before, a commit that also preloads a library 18 lacks is blocked at plan time by the
//! leader's check.

use spilo_e2e::aws_box::{AwsBox, primary, streaming};
use spilo_e2e::privileged::rerun_as_root;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::wait;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_moves_from_postgresql_15_to_18_by_its_file() -> anyhow::Result<()> {
    if let Some(as_root) = rerun_as_root("a_cluster_moves_from_postgresql_15_to_18_by_its_file") {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = upgrade(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

/// The primary's session and its instance's index, once a primary and a streaming replica
/// run.
async fn primary_session(b: &AwsBox) -> anyhow::Result<(usize, tokio_postgres::Client)> {
    let leader = wait::until("a primary and a streaming replica", BOOT, || async {
        let all = b.statuses().await;
        (streaming(&all) == 1).then(|| primary(&all)).flatten()
    })
    .await?;
    let c = wait::until("a session on the primary", BOOT, || async {
        connect_dsn(&b.plain_dsn(&b.instances[leader].ip))
            .await
            .ok()
    })
    .await?;
    Ok((leader, c))
}

/// What a test starts from: the cluster on 15 with its rows.
struct On15 {
    /// The file moved to 18.
    on_18: String,
    /// The instances on 15.
    first: Vec<String>,
    /// The system identifier on 15.
    before: i64,
}

/// Two instances on 15 booted from the image, with 1000 rows and extended statistics.
async fn on_15(b: &mut AwsBox) -> anyhow::Result<On15> {
    let on_18 = b.cluster_file_18("orders", 2);
    let on_15 = on_18.replace("postgresql: {version: 18,", "postgresql: {version: 15,");
    anyhow::ensure!(on_15.contains("version: 15"), "{on_15}");
    b.repo.commit("orders", Some(&on_15))?;
    b.plain_api = true;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    b.launch("spilo-orders").await?;
    let (_, c) = primary_session(b).await?;
    // Extended statistics: pg_upgrade to 18 does not carry them over; the apply's vacuumdb
    // computes them (the table is not written to after, so autovacuum has no reason to).
    c.batch_execute(
        "CREATE TABLE t (n int PRIMARY KEY, m int); \
         INSERT INTO t SELECT g, g % 10 FROM generate_series(1, 1000) g; \
         CREATE STATISTICS t_nm (ndistinct) ON n, m FROM t; ANALYZE t",
    )
    .await?;
    let before: i64 = c
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await?
        .get(0);
    drop(c);
    let first: Vec<String> = b.instances.iter().map(|i| i.id.clone()).collect();
    Ok(On15 {
        on_18,
        first,
        before,
    })
}

async fn upgrade(b: &mut AwsBox) -> anyhow::Result<()> {
    let On15 {
        on_18,
        first,
        before,
    } = on_15(b).await?;
    // A library 18 does not have, in the parameters the apply would write after the
    // upgrade: the plan asks the leader's check with them, and is blocked.
    let preload = on_18.replace(
        "parameters: {shared_buffers: 32MB,",
        "parameters: {shared_preload_libraries: old_snapshot, shared_buffers: 32MB,",
    );
    anyhow::ensure!(preload != on_18, "{on_18}");
    b.repo.commit("orders", Some(&preload))?;
    let blocked = b.spilo_with_api(&["plan"]);
    assert_eq!(blocked.code, 1, "{blocked}");
    assert!(
        blocked.stdout.contains("the upgrade check on")
            && blocked.stdout.contains("old_snapshot")
            && !blocked.stdout.contains("rollout:"),
        "the plan names the blocker and plans nothing: {blocked}"
    );

    b.repo.commit("orders", Some(&on_18))?;
    let unasked = b.spilo(&["plan"]);
    assert!(
        unasked.code == 1 && unasked.stdout.contains("set SPILO_API_TOKEN"),
        "without the REST API's credentials the check cannot be asked: blocked, saying so: \
         {unasked}"
    );
    let plan = b.spilo_with_api(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains("major upgrade PostgreSQL 15 -> 18: pg_upgrade --check on the leader first")
            && plan.stdout.contains(
                "the leader's check now: the upgrade from PostgreSQL 15 to 18 finds no blockers"
            )
            && plan.stdout.contains("rollout: replaces 2 instances"),
        "{plan}"
    );
    let mut seen = first.clone();
    let mut samples = Vec::new();
    let (ok, log) = b.apply_playing_ec2(&mut seen, &mut samples, None).await?;
    anyhow::ensure!(ok, "spilo apply failed:\n{log}");
    for said in [
        "major upgrade: the upgrade from PostgreSQL 15 to 18 finds no blockers",
        "major upgrade: base backup on PostgreSQL 15",
        "major upgrade: terminating",
        "leads on PostgreSQL 18",
        "rollout: every instance replaced",
        "major upgrade: base backup on PostgreSQL 18",
        "major upgrade: statistics rebuilt (vacuumdb --all --analyze-in-stages --missing-stats-only)",
        "major upgrade: PostgreSQL 15 -> 18 finished",
    ] {
        assert!(log.contains(said), "the apply says {said:?}:\n{log}");
    }
    println!(
        "{}",
        log.lines()
            .filter(|l| l.contains("major upgrade:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    on_18_for_good(b, &first, before).await
}

/// The cluster after its upgrade: new instances only, 18 on the primary with every row, a
/// new system, its extended statistics, archiving on 18, and nothing left to plan.
async fn on_18_for_good(b: &AwsBox, first: &[String], before: i64) -> anyhow::Result<()> {
    let (_, c) = primary_session(b).await?;
    assert!(
        b.instances.iter().all(|i| !first.contains(&i.id)),
        "every instance replaced: {:?} (first {first:?})",
        b.instances.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    let version: String = c.query_one("SHOW server_version_num", &[]).await?.get(0);
    assert!(version.starts_with("18"), "the primary runs {version}");
    let rows: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(rows, 1000, "every row");
    let after: i64 = c
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await?
        .get(0);
    assert_ne!(after, before, "pg_upgrade makes a new system");
    let extended: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stats_ext WHERE statistics_name = 't_nm' AND n_distinct IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(extended, 1, "the extended statistics rebuilt on 18");
    // Archiving works on 18 (into the new version's prefix, as its configuration says).
    c.batch_execute("INSERT INTO t SELECT generate_series(1001, 1100)")
        .await?;
    spilo_e2e::sql::archive_everything(&c, BOOT).await?;
    let failed: i64 = c
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .await?
        .get(0);
    assert_eq!(failed, 0, "no failed archiving on 18");
    // A second apply finds nothing left to do.
    let again = b.spilo(&["plan"]);
    assert_eq!(again.code, 0, "{again}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_stopped_after_the_leaders_upgrade_is_finished_by_the_next() -> anyhow::Result<()>
{
    if let Some(as_root) =
        rerun_as_root("an_apply_stopped_after_the_leaders_upgrade_is_finished_by_the_next")
    {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = stopped_halfway(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

/// The apply killed once the leader leads on 18 (within a second of saying so: the stack
/// may have moved by then, the rollout, the base backup and the statistics are still to
/// do); the next plan finishes from the `upgrade` record in etcd.
async fn stopped_halfway(b: &mut AwsBox) -> anyhow::Result<()> {
    let On15 {
        on_18,
        first,
        before,
    } = on_15(b).await?;
    b.repo.commit("orders", Some(&on_18))?;
    let mut seen = first.clone();
    let mut samples = Vec::new();
    let (ok, first_log) = b
        .apply_playing_ec2(&mut seen, &mut samples, Some("leads on PostgreSQL 18"))
        .await?;
    assert!(
        !ok && first_log.contains("leads on PostgreSQL 18")
            && !first_log.contains("rollout: every instance replaced")
            && !first_log.contains("PostgreSQL 15 -> 18 finished"),
        "the first apply is stopped after the leader's upgrade: {first_log}"
    );
    let plan = b.spilo_with_api(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains("finishes the major upgrade PostgreSQL 15 -> 18 an earlier apply left")
            && plan.stdout.contains("rollout:"),
        "the next plan finishes the upgrade: {plan}"
    );
    let (ok, log) = b.apply_playing_ec2(&mut seen, &mut samples, None).await?;
    anyhow::ensure!(ok, "the second spilo apply failed:\n{log}");
    for said in [
        "major upgrade: the members run PostgreSQL 18 already; finishing",
        "rollout: every instance replaced",
        "major upgrade: base backup on PostgreSQL 18",
        "major upgrade: statistics rebuilt",
        "major upgrade: PostgreSQL 15 -> 18 finished",
    ] {
        assert!(log.contains(said), "the second apply says {said:?}:\n{log}");
    }
    on_18_for_good(b, &first, before).await
}
