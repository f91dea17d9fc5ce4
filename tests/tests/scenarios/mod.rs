//! Scenarios the governor end-to-end tests play on either coordination store (etcd in
//! `governor.rs`, ZooKeeper in `zookeeper.rs`), so both are held to the same assertions.

use spilo_e2e::cluster::Cluster;
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::proxy::Proxy;
use spilo_e2e::wait;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

/// Whether row `id` of `probe_writes` is on `replica`.
pub async fn replicated_to(c: &Cluster, replica: &str, id: i64) -> bool {
    let Ok(client) = c.sql(replica).await else {
        return false;
    };
    client
        .query_opt("SELECT 1 FROM probe_writes WHERE id = $1", &[&id])
        .await
        .is_ok_and(|r| r.is_some())
}

/// Creates the probe table on `primary`.
pub async fn create_probe_table(c: &Cluster, primary: &str) -> anyhow::Result<()> {
    c.sql(primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    Ok(())
}

/// `kill -9` of the primary: a replica takes over, writes replicated before the kill and
/// every write acknowledged after it are on the new primary, the old primary rejoins through
/// pg_rewind and follows the new timeline.
pub async fn kill_9_failover(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, replicas) = c.start_streaming(BOOT).await?;
    create_probe_table(c, &old).await?;

    // Writes acknowledged by the primary and replicated to every replica before the kill.
    let pg = c.sql(&old).await?;
    for id in 1..=200i64 {
        pg.execute("INSERT INTO probe_writes VALUES ($1, 'before')", &[&id])
            .await?;
    }
    for r in &replicas {
        wait::until("the writes to reach every replica", BOOT, || async {
            replicated_to(c, r, 200).await.then_some(())
        })
        .await?;
    }
    // And a write stream through the multi-host connection string during the failover.
    let prober = Prober::start(
        vec![("any".into(), c.read_write_dsn())],
        Duration::from_millis(50),
    );
    wait::until("the prober's first write", BOOT, || async {
        (!prober.acks().is_empty()).then_some(())
    })
    .await?;

    let killed_at = c.kill9(&old).await?;
    let new = wait::until("a new primary", BOOT, || async {
        let p = c.primaries().await;
        (p.len() == 1 && p[0] != old).then(|| p[0].clone())
    })
    .await?;
    wait::until("a write acknowledged after the kill", BOOT, || async {
        prober.first_ack_after(killed_at).map(|_| ())
    })
    .await?;
    let (acks, _) = prober.stop().await;

    let client = c.sql(&new).await?;
    let present = probe::ids_on(&client).await?;
    assert!(
        (1..=200).all(|id| present.contains(&id)),
        "rows replicated before the kill are on the new primary"
    );
    // Asynchronous replication may lose what was acknowledged in the last instant before the
    // kill and not yet streamed; nothing acknowledged after the failover may be missing.
    let after: Vec<_> = acks
        .iter()
        .filter(|a| a.sent > killed_at)
        .cloned()
        .collect();
    assert!(!after.is_empty());
    assert_eq!(probe::lost(&after, &present), Vec::<i64>::new());

    let other = replicas
        .iter()
        .find(|r| **r != new)
        .expect("a third member");
    c.wait_streaming(other, BOOT).await?;

    // The old primary comes back as a replica of the new one, through pg_rewind.
    c.start(&old)?;
    c.wait_streaming(&old, BOOT).await?;
    let log = std::fs::read_to_string(c.member(&old).log_path())?;
    assert!(
        log.contains("rewind against"),
        "the old primary was rewound:\n{log}"
    );
    assert!(log.contains("pg_rewind finished"), "{log}");
    let status = c.status(&old).await.expect("status");
    let leader_tl = c.status(&new).await.and_then(|s| s.member.timeline);
    assert_eq!(
        status.member.timeline, leader_tl,
        "the rejoined member follows the new timeline"
    );
    client
        .execute("INSERT INTO probe_writes VALUES (-1, 'after-rejoin')", &[])
        .await?;
    wait::until(
        "a write on the new primary to reach the old one",
        BOOT,
        || async { replicated_to(c, &old, -1).await.then_some(()) },
    )
    .await?;
    for name in [&new, other] {
        assert_eq!(c.unexpected_errors(name, &[]), Vec::<String>::new());
    }
    Ok(())
}

/// A graceful stop of the primary hands over within 10 s (the cluster's ttl is longer: the
/// key was released, not left to expire) with every committed write on the new primary; the
/// old primary rejoins without a re-copy.
pub async fn graceful_handover(c: &mut Cluster) -> anyhow::Result<()> {
    c.start_all()?;
    let old = c.wait_primary(BOOT).await?;
    for m in c.members.iter().filter(|m| m.name != old) {
        c.wait_streaming(&m.name, BOOT).await?;
    }
    create_probe_table(c, &old).await?;
    c.sql(&old)
        .await?
        .execute("INSERT INTO probe_writes VALUES (7, 'graceful')", &[])
        .await?;

    c.stop(&old)?;
    let key = c.keys().member(&spilo_model::MemberName::new(&old)?);
    assert!(
        c.store_get(&key).await?.is_none(),
        "the stopped member's key is gone"
    );
    let new = wait::until(
        "a new primary well within the 30 s lease",
        Duration::from_secs(10),
        || async {
            let p = c.primaries().await;
            (p.len() == 1 && p[0] != old).then(|| p[0].clone())
        },
    )
    .await?;
    let present = probe::ids_on(&c.sql(&new).await?).await?;
    assert!(
        present.contains(&7),
        "a graceful stop sends every committed write to the replicas"
    );
    // Restarted, the old primary needs no re-copy: it follows the new one.
    c.start(&old)?;
    c.wait_streaming(&old, BOOT).await?;
    for m in &c.members {
        assert_eq!(c.unexpected_errors(&m.name, &[]), Vec::<String>::new());
    }
    Ok(())
}

/// The primary cut off from the coordination store (through a proxy the test cuts) stops
/// acknowledging writes within `ttl` of the cut and demotes itself, a replica takes over, and
/// never do two members accept writes.
pub async fn cut_off_primary(c: &mut Cluster, ttl: Duration) -> anyhow::Result<()> {
    // The cut-off primary's lease runs out and the fence stops it.
    c.expect_errors(&["fence: the leader lease is about to end without renewal"]);
    // m1 reaches etcd only through a proxy the test controls; it starts alone so it bootstraps.
    let proxy = Proxy::start(c.store_addr()).await?;
    c.members[0].store_hosts = vec![proxy.addr.clone()];
    c.start("m1")?;
    assert_eq!(c.wait_primary(BOOT).await?, "m1");
    c.start("m2")?;
    c.start("m3")?;
    c.wait_streaming("m2", BOOT).await?;
    c.wait_streaming("m3", BOOT).await?;
    create_probe_table(c, "m1").await?;

    // Every member is probed with writes of its own, every 20 ms.
    let prober = c.per_member_prober(Duration::from_millis(20));
    wait::until("m1 to acknowledge probe writes", BOOT, || async {
        prober.acks().iter().any(|a| a.member == "m1").then_some(())
    })
    .await?;

    proxy.partition();
    let cut_at = Instant::now();
    let new = wait::until("a replica to take over", BOOT, || async {
        let p = c.primaries().await;
        (p.len() == 1 && p[0] != "m1").then(|| p[0].clone())
    })
    .await?;
    wait::until("the new primary to acknowledge writes", BOOT, || async {
        prober
            .acks()
            .iter()
            .any(|a| a.member == new && a.sent > cut_at)
            .then_some(())
    })
    .await?;
    // m1 demoted itself although its replicas could still reach it, and says so.
    wait::until(
        "m1 to report that it is no longer primary",
        BOOT,
        || async {
            let s = c.status("m1").await?;
            (s.member.role.as_str() != "primary").then_some(())
        },
    )
    .await?;

    proxy.heal();
    c.wait_streaming("m1", BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let m1_last = acks
        .iter()
        .filter(|a| a.member == "m1")
        .map(|a| a.acked)
        .max()
        .expect("m1 acked writes");
    let new_first = acks
        .iter()
        .filter(|a| a.member == new)
        .map(|a| a.sent)
        .min()
        .expect("the new primary acked writes");
    assert!(m1_last < new_first);
    assert!(
        m1_last < cut_at + ttl,
        "m1 acknowledged a write {:?} after the cut (ttl {ttl:?})",
        m1_last - cut_at
    );
    assert!(
        acks.iter().all(|a| a.member == "m1" || a.member == new),
        "no third member accepted writes"
    );
    let m1_log = std::fs::read_to_string(c.member("m1").log_path())?;
    assert!(
        m1_log.contains("demote") || m1_log.contains("fence"),
        "{m1_log}"
    );
    for name in ["m2", "m3"] {
        assert_eq!(c.unexpected_errors(name, &[]), Vec::<String>::new());
    }
    Ok(())
}
