//! The "AWS in a box" tier: a major upgrade declared in git. Two instances booted from the
//! image run PostgreSQL 15 (without a CA: the image's 18 is built without SSL); the file
//! moves to `version: 18`. `spilo plan` says what the apply will do; `spilo apply` checks on
//! the leader, takes a base backup, terminates the replica's instance, has the leader's
//! governor upgrade its data in place, moves the launch template to 18 and replaces every
//! instance (the box playing EC2 meanwhile). The cluster then runs 18 on new instances with
//! every row, a new system identifier, a streaming replica and its archiving working.

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

async fn upgrade(b: &mut AwsBox) -> anyhow::Result<()> {
    let on_18 = b.cluster_file_18("orders", 2);
    let on_15 = on_18.replace("postgresql: {version: 18,", "postgresql: {version: 15,");
    anyhow::ensure!(on_15.contains("version: 15"), "{on_15}");
    b.repo.commit("orders", Some(&on_15))?;
    b.plain_api = true;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    b.launch("spilo-orders").await?;
    let (_, c) = primary_session(b).await?;
    c.batch_execute(
        "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .await?;
    let before: i64 = c
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await?
        .get(0);
    drop(c);
    let first: Vec<String> = b.instances.iter().map(|i| i.id.clone()).collect();

    b.repo.commit("orders", Some(&on_18))?;
    let plan = b.spilo(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains("major upgrade PostgreSQL 15 -> 18: pg_upgrade --check on the leader first")
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
