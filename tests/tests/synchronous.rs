//! End-to-end tests of synchronous replication on real etcd, PostgreSQL 15 and governors:
//! twenty kill -9 failovers under a continuous write load lose no acknowledged commit (with
//! named standbys and with quorum commit), strict mode blocks writes rather than run without
//! a synchronous standby, and in quorum mode a frozen replica does not stall commits.

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::wait;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

/// Waits until `leader` has published at least one synchronous standby (in quorum mode: a
/// voter with a quorum above 0); returns them.
async fn published(c: &Cluster, leader: &str) -> anyhow::Result<Vec<String>> {
    published_n(c, leader, 1).await
}

/// Waits until `leader` has published at least `n` synchronous standbys (in quorum mode:
/// voters with a quorum above 0); returns them.
async fn published_n(c: &Cluster, leader: &str, n: usize) -> anyhow::Result<Vec<String>> {
    wait::until(
        &format!("{leader} to publish {n} synchronous standby(s)"),
        BOOT,
        || async {
            let k = c.sync_state().await?;
            (k.leader.as_ref().map(|l| l.as_str()) == Some(leader)
                && k.members.len() >= n
                && k.quorum != Some(0))
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
    let result = twenty_failovers(&mut c, 1).await;
    c.finish(result)
}

/// The same twenty failovers with quorum commit (`ANY 1` of the two replicas): the promoted
/// member is always a voter that saw the other voter's position, and nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_failovers_in_quorum_mode_lose_no_acknowledged_commit() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "quorum20".into(),
        ha: "{synchronous_mode: quorum}".into(),
        ..Default::default()
    })
    .await?;
    let result = twenty_failovers(&mut c, 2).await;
    c.finish(result)
}

/// With `ANY 1` of two replicas, a replica frozen whole (its PostgreSQL and governor stopped
/// by SIGSTOP, its connection open, as a hung machine looks) does not stall commits: the other
/// voter acknowledges them. (With a named standby the primary would wait until the frozen
/// one's connection times out.) `spilo list` and `/cluster` say what the key promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_quorum_mode_a_frozen_replica_does_not_stall_commits() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "quorumfreeze".into(),
        ha: "{synchronous_mode: quorum}".into(),
        ..Default::default()
    })
    .await?;
    let result = frozen_replica(&mut c).await;
    c.finish(result)
}

async fn frozen_replica(c: &mut Cluster) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use spilo_e2e::proc;
    let (primary, replicas) = c.start_streaming(BOOT).await?;
    let voters = published(c, &primary).await?;
    assert_eq!(voters.len(), 2, "both replicas vote: {voters:?}");
    let key = c.sync_state().await.expect("sync key");
    assert_eq!(key.quorum, Some(1), "{key:?}");
    let words = "commits wait for ANY 1 of 2 replicas";
    let (code, table) = c.operate("list", &[]).await?;
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("quorum_standby"), "{table}");
    assert!(
        table.contains(words) && table.contains("survives the loss of 1 member"),
        "{table}"
    );
    let cluster: serde_json::Value = c
        .http()
        .get(format!("{}/cluster", c.api_url(&primary)))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        cluster["synchronous"]
            .as_str()
            .is_some_and(|s| s.contains(words)),
        "{cluster}"
    );

    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let prober = Prober::start(
        vec![("rw".into(), c.read_write_dsn())],
        Duration::from_millis(20),
    );
    prober.wait_write("rw", None, BOOT).await?;
    // Freeze one replica whole: its governor, its postmaster and every PostgreSQL process.
    let frozen = &replicas[0];
    let st = c.status(frozen).await.expect("status of the replica");
    let postmaster = st.postmaster_pid.expect("postmaster pid");
    let mut pids = vec![st.governor_pid, postmaster];
    pids.extend(proc::children_of(postmaster));
    for p in &pids {
        let _ = kill(proc::pid(*p), Signal::SIGSTOP);
    }
    let from = Instant::now();
    let r = wait::until(
        "five seconds of writes with a replica frozen",
        BOOT,
        || async { (from.elapsed() >= Duration::from_secs(5)).then_some(()) },
    )
    .await;
    for p in &pids {
        let _ = kill(proc::pid(*p), Signal::SIGCONT);
    }
    r?;
    let (acks, _) = prober.stop().await;
    let during = acks.iter().map(|a| a.acked).filter(|t| *t >= from);
    let pause = probe::longest_pause(during);
    assert!(
        pause <= Duration::from_secs(1),
        "with one of two voters frozen, commits paused {pause:?} (ARCHITECTURE: no stall beyond one loop, 1 s)"
    );
    let present = probe::ids_on(&c.sql(&primary).await?).await?;
    assert_eq!(probe::lost(&acks, &present), Vec::<i64>::new());
    eprintln!(
        "quorum commit with {frozen} frozen: longest write pause {} ms over 5 s",
        pause.as_millis()
    );
    Ok(())
}

/// Twenty rounds: once the primary has published `listed` standbys (in quorum mode both
/// replicas vote, so the key is steady before the kill), `kill -9` it under load; the new
/// primary must be one of them and hold every acknowledged write.
async fn twenty_failovers(c: &mut Cluster, listed: usize) -> anyhow::Result<()> {
    let (first, _) = c.start_streaming(BOOT).await?;
    c.sql(&first).await?.batch_execute(probe::TABLE_DDL).await?;
    let prober = Prober::start(
        vec![("rw".into(), c.read_write_dsn())],
        Duration::from_millis(20),
    );
    let mut primary = first;
    for round in 1..=20 {
        let sync = published_n(c, &primary, listed).await?;
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
