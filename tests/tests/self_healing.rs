//! Faults inside one governor's own work, each under a real cluster: PostgreSQL crashing in a
//! loop, a bootstrap failing after `initialize` holds the new system identifier, and one of the
//! governor's supervised tasks ending. Each asserts that the cluster heals without an operator.

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::probe;
use spilo_e2e::wait;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

/// Expected: PostgreSQL killed under a live governor is restarted in place twice (same
/// primary, nothing lost); the third crash within five minutes hands leadership to a replica,
/// and the old primary rejoins as a replica. No two members accept writes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_hands_leadership_over_after_the_third_crash() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "crashloop".into(),
        ..Default::default()
    })
    .await?;
    let result = crash_loop_body(&mut c).await;
    c.finish(result)
}

async fn crash_loop_body(c: &mut Cluster) -> anyhow::Result<()> {
    // The test kills PostgreSQL three times.
    c.expect_errors(&["PostgreSQL exited unexpectedly status=signal: 9"]);
    let (old, _) = c.start_streaming(BOOT).await?;
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    let prober = c.per_member_prober(Duration::from_millis(20));
    for crash in 1..=3 {
        let pm = wait::until("the primary's postmaster", BOOT, || async {
            c.status(&old).await?.postmaster_pid
        })
        .await?;
        let after = Instant::now();
        wait::until("the primary to acknowledge writes", BOOT, || async {
            prober
                .acks()
                .iter()
                .any(|a| a.member == old && a.sent > after)
                .then_some(())
        })
        .await?;
        spilo_e2e::proc::kill_postgres(pm);
        if crash < 3 {
            wait::until("the primary to restart in place", BOOT, || async {
                let s = c.status(&old).await?;
                (s.is_leader && s.postmaster_pid.is_some_and(|p| p != pm)).then_some(())
            })
            .await?;
        }
    }
    let new = wait::until("a replica to take over", BOOT, || async {
        let p = c.primaries().await;
        (p.len() == 1 && p[0] != old).then(|| p[0].clone())
    })
    .await?;
    c.wait_streaming(&old, BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let log = c.log(&old);
    assert!(log.contains("release leader key"), "{log}");
    assert!(
        acks.iter().any(|a| a.member == new),
        "the new primary took writes"
    );
    Ok(())
}

/// Expected: a bootstrap that fails after `initialize` holds the new system identifier (the
/// governor's test-only fault switch, as a timed-out etcd call there would) keeps its data
/// and its running primary, writes the missing `config` on its next pass as leader, and the
/// other members join: the cluster is never stranded, and nobody runs initdb twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_failing_after_initialize_keeps_the_cluster() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "halfborn".into(),
        env: vec![("SPILO_FAULT_AFTER_INITIALIZE".into(), "1".into())],
        ..Default::default()
    })
    .await?;
    let result = halfborn_body(&mut c).await;
    c.finish(result)
}

async fn halfborn_body(c: &mut Cluster) -> anyhow::Result<()> {
    // The injected bootstrap failure after `initialize` is logged as the error it is.
    c.expect_errors(&["SPILO_FAULT_AFTER_INITIALIZE is set"]);
    let (primary, _) = c.start_streaming(BOOT).await?;
    let log = c.log(&primary);
    assert!(
        log.contains("a bootstrap step failed; keeping this member's data and running PostgreSQL"),
        "{log}"
    );
    assert_eq!(
        log.matches("won the bootstrap race").count(),
        1,
        "one bootstrap: {log}"
    );
    let (sysid, _) = c
        .etcd
        .get("/service/halfborn/initialize")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no initialize key"))?;
    let local = c
        .sql(&primary)
        .await?
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?
        .get::<_, String>(0);
    assert_eq!(sysid, local, "the cluster is the data the bootstrap made");
    wait::until("the first config written by the leader", BOOT, || async {
        c.etcd.get("/service/halfborn/config").await.ok().flatten()
    })
    .await?;
    let log = c.log(&primary);
    assert!(
        log.contains("wrote the cluster's first config"),
        "the leader wrote it: {log}"
    );
    Ok(())
}

/// Expected: when one of the governor's tasks ends (here the REST API, through the test-only
/// switch), the governor does not go on without it: it stops PostgreSQL, gives up its keys and
/// exits with an error naming the task, and a replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_governor_whose_task_ends_stops_instead_of_running_without_it() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "taskless".into(),
        members: 2,
        ..Default::default()
    })
    .await?;
    let result = taskless_body(&mut c).await;
    c.finish(result)
}

async fn taskless_body(c: &mut Cluster) -> anyhow::Result<()> {
    // The test ends the REST API task; the governor says so and stops.
    c.expect_errors(&["the REST API task ended"]);
    let (primary, replicas) = c.start_streaming(BOOT).await?;
    // The primary's governor again, with its REST API task ending 3 s after the start.
    c.stop(&primary)?;
    let replica = replicas[0].clone();
    wait::until("the replica to take over", BOOT, || async {
        (c.primaries().await == [replica.clone()]).then_some(())
    })
    .await?;
    c.members
        .iter_mut()
        .find(|m| m.name == primary)
        .ok_or_else(|| anyhow::anyhow!("no member {primary}"))?
        .extra_env = vec![("SPILO_FAULT_END_TASK".into(), "REST API".into())];
    let before = c.log(&primary).len();
    c.start(&primary)?;
    wait::until("the governor to exit", BOOT, || async {
        c.log(&primary)
            .get(before..)?
            .contains("the REST API task ended; stopping so the governor is started again")
            .then_some(())
    })
    .await?;
    let deadline = Instant::now() + BOOT;
    while c
        .members
        .iter_mut()
        .find(|m| m.name == primary)
        .and_then(|m| m.governor_pid())
        .is_some()
    {
        anyhow::ensure!(Instant::now() < deadline, "the governor did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // This run's own lines: it had started PostgreSQL as a replica, and stopped it.
    let log = c
        .log(&primary)
        .get(before..)
        .unwrap_or_default()
        .to_string();
    assert!(log.contains("started PostgreSQL"), "{log}");
    assert!(log.contains("stopped PostgreSQL"), "{log}");
    assert_eq!(c.primaries().await, vec![replica]);
    Ok(())
}
