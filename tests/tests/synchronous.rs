//! End-to-end tests of synchronous replication on real etcd, PostgreSQL 15 and governors:
//! twenty kill -9 failovers under a continuous write load lose no acknowledged commit, and
//! strict mode blocks writes rather than run without a synchronous standby.

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::wait;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

/// Waits until `leader` has published at least one synchronous standby; returns them.
async fn published(c: &Cluster, leader: &str) -> anyhow::Result<Vec<String>> {
    wait::until(
        &format!("{leader} to publish a synchronous standby"),
        BOOT,
        || async {
            let k = c.sync_state().await?;
            (k.leader.as_ref().map(|l| l.as_str()) == Some(leader) && !k.members.is_empty())
                .then(|| k.members.iter().map(|m| m.to_string()).collect())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_failovers_in_synchronous_mode_lose_no_acknowledged_commit() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "sync20".into(),
        ha: "{synchronous_mode: true}".into(),
        ..Default::default()
    })
    .await?;
    let result = twenty_failovers(&mut c).await;
    c.finish(result)
}

async fn twenty_failovers(c: &mut Cluster) -> anyhow::Result<()> {
    let (first, _) = c.start_streaming(BOOT).await?;
    c.sql(&first).await?.batch_execute(probe::TABLE_DDL).await?;
    let prober = Prober::start(
        vec![("rw".into(), c.read_write_dsn())],
        Duration::from_millis(20),
    );
    let mut primary = first;
    for round in 1..=20 {
        let sync = published(c, &primary).await?;
        let before = Instant::now();
        wait::until("writes in this round", BOOT, || async {
            (prober.acks().iter().filter(|a| a.acked > before).count() >= 10).then_some(())
        })
        .await?;
        let killed_at = c.kill9(&primary).await?;
        let new = wait::until("a new primary", BOOT, || async {
            let p = c.primaries().await;
            (p.len() == 1 && p[0] != primary).then(|| p[0].clone())
        })
        .await?;
        assert!(
            sync.contains(&new),
            "round {round}: {new} took over but the synchronous standbys were {sync:?}"
        );
        // Every write acknowledged before the kill is on the new primary.
        let acked: Vec<probe::Ack> = prober
            .acks()
            .into_iter()
            .filter(|a| a.acked <= killed_at)
            .collect();
        let present = probe::ids_on(&c.sql(&new).await?).await?;
        let lost = probe::lost(&acked, &present);
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged writes missing on {new}: {lost:?}",
            lost.len(),
            acked.len()
        );
        c.start(&primary)?;
        c.wait_streaming(&primary, BOOT).await?;
        primary = new;
    }
    let (acks, _) = prober.stop().await;
    let present = probe::ids_on(&c.sql(&primary).await?).await?;
    assert_eq!(probe::lost(&acks, &present), Vec::<i64>::new());
    assert!(acks.len() > 200, "only {} writes acknowledged", acks.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_blocks_writes_without_a_synchronous_standby() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "strict".into(),
        members: 2,
        ha: "{synchronous_mode: true, synchronous_mode_strict: true}".into(),
        ..Default::default()
    })
    .await?;
    let result = strict_body(&mut c).await;
    c.finish(result)
}

async fn write(c: &Cluster, primary: &str) -> anyhow::Result<()> {
    let client = c.sql(primary).await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS strict_writes (at timestamptz); \
             INSERT INTO strict_writes VALUES (now())",
        )
        .await?;
    Ok(())
}

async fn strict_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, replicas) = c.start_streaming(BOOT).await?;
    published(c, &primary).await?;
    let (code, table) = c.operate("list", &[]).await?;
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("sync_standby"), "{table}");
    write(c, &primary).await?;
    c.stop(&replicas[0])?;
    wait::until("the standby to leave the sync key", BOOT, || async {
        c.sync_state()
            .await
            .filter(|k| k.members.is_empty())
            .map(|_| ())
    })
    .await?;
    // The commit waits for a standby that is not there: it must not be acknowledged. (A
    // statement_timeout would not do: PostgreSQL turns a cancelled wait into a warning.)
    let blocked = tokio::time::timeout(Duration::from_secs(3), write(c, &primary)).await;
    assert!(
        blocked.is_err(),
        "a write was acknowledged without a synchronous standby: {blocked:?}"
    );
    c.start(&replicas[0])?;
    c.wait_streaming(&replicas[0], BOOT).await?;
    published(c, &primary).await?;
    write(c, &primary).await?;
    Ok(())
}
