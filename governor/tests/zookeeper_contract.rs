//! The contract of [`Coordination`] played against ZooKeeper: the script the simulation's
//! etcd is held to (`coordination_contract.rs`) runs step by step against a real etcd and
//! a real ZooKeeper (Debian's `zookeeper` 3.8) through `governor::dcs::zookeeper`, and every
//! step must answer the same and leave the same keys. Where the two differ by design, a
//! test of its own says how; and a member cut off from ZooKeeper loses its leader key
//! within its session timeout, as an unrenewed etcd lease does.

#[allow(dead_code)]
mod contract;

use contract::zookeeper::{Proxy, start};
use contract::*;
use governor::dcs::zookeeper::ZooKeeper;
use governor::dcs::{Coordination, DcsError};
use spilo_model::{ClusterName, Keyspace};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn zk(host: &str, keys: &Keyspace, me: &str) -> ZooKeeper {
    ZooKeeper::connect(
        &[host.to_string()],
        keys.clone(),
        name(me),
        Duration::from_secs(5),
    )
    .await
    .expect("ZooKeeper answers")
}

/// Polls `observer`'s view until no leader and no member is left (20 s at most).
async fn keys_gone(observer: &ZooKeeper, whose: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = observer.read_view().await.expect("read");
        if view.leader.is_none() && view.members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ZooKeeper kept {whose}'s keys for 20 s: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn zookeeper_answers_the_script_as_etcd_does() {
    let etcd = start_etcd();
    let zookeeper = start().await;
    let keys = Keyspace::new(&ClusterName::new("contract").expect("valid"));
    let real = [
        connect(&etcd.url, &keys, "m1").await,
        connect(&etcd.url, &keys, "m2").await,
    ];
    let other = [
        zk(&zookeeper.host, &keys, "m1").await,
        zk(&zookeeper.host, &keys, "m2").await,
    ];
    let (mut etcd_leases, mut zk_leases) = (BTreeMap::new(), BTreeMap::new());
    for (n, step) in script().iter().enumerate() {
        let index = usize::from(member_of(step) == "m2");
        let from_etcd = apply(&real[index], step, &mut etcd_leases).await;
        let from_zk = apply(&other[index], step, &mut zk_leases).await;
        assert!(
            !matches!(from_etcd, Outcome::Failed(_)),
            "step {n} {step:?} failed on etcd: {from_etcd:?}"
        );
        assert_eq!(
            from_zk, from_etcd,
            "step {n} {step:?}: ZooKeeper answered differently from etcd"
        );
    }
}

/// Where the semantics differ: an etcd lease is the server's, usable from any connection;
/// a ZooKeeper session (our lease) is its connection's, so another member's live lease is
/// "not found" there. The governor uses its own leases only, so the HA loop never meets it.
#[tokio::test]
async fn another_members_lease_is_usable_on_etcd_and_unknown_on_zookeeper() {
    let etcd = start_etcd();
    let zookeeper = start().await;
    let keys = Keyspace::new(&ClusterName::new("differs").expect("valid"));
    let (e1, e2) = (
        connect(&etcd.url, &keys, "m1").await,
        connect(&etcd.url, &keys, "m2").await,
    );
    let (z1, z2) = (
        zk(&zookeeper.host, &keys, "m1").await,
        zk(&zookeeper.host, &keys, "m2").await,
    );
    let lease = e1.grant_lease(TTL).await.expect("grant");
    assert!(e2.try_acquire_leader(lease).await.expect("etcd takes it"));
    let lease = z1.grant_lease(TTL).await.expect("grant");
    match z2.try_acquire_leader(lease).await {
        Err(DcsError::LeaseNotFound(id)) => assert_eq!(id, lease),
        other => panic!("ZooKeeper let another connection's session take the leader: {other:?}"),
    }
    assert!(z1.try_acquire_leader(lease).await.expect("its own lease"));
}

/// A leader whose connection to ZooKeeper is cut: its session, and with it its lease and
/// leader key, end once the session timeout passes without a ping, as an unrenewed etcd
/// lease does after its TTL; when the connection comes back the session is expired and
/// renewing says so.
#[tokio::test]
async fn a_leader_cut_off_from_zookeeper_loses_its_key_within_the_session_timeout() {
    let zookeeper = start().await;
    let proxy = Proxy::to(&zookeeper.host).await;
    let keys = Keyspace::new(&ClusterName::new("expiry").expect("valid"));
    let cut_off = zk(&proxy.host, &keys, "m1").await;
    let observer = zk(&zookeeper.host, &keys, "m2").await;
    let ttl = Duration::from_secs(2);
    let lease = cut_off.grant_lease(ttl).await.expect("grant");
    assert!(cut_off.try_acquire_leader(lease).await.expect("acquire"));
    cut_off
        .put_member(&status("m1"), lease)
        .await
        .expect("member");
    let view = observer.read_view().await.expect("read");
    assert_eq!(view.leader.map(|l| l.name.to_string()), Some("m1".into()));
    // ZooKeeper ends a session a session timeout after it last heard from it, which is no
    // sooner than this renewal's sending.
    let renewed_at = Instant::now();
    assert!(cut_off.renew_lease(lease).await.expect("renew"));
    proxy.cut().await;
    let cut_at = Instant::now();
    keys_gone(&observer, "a cut-off session").await;
    let gone_after = renewed_at.elapsed();
    // Not before the session timeout after the last renewal: the fence stops the primary's
    // writes by then, so nobody else can take the key while it still writes.
    assert!(
        gone_after >= ttl,
        "the key went {gone_after:?} after the last renewal, before the session timeout {ttl:?}"
    );
    println!(
        "the cut-off leader's key went {:?} after the cut ({gone_after:?} after its last renewal)",
        cut_at.elapsed()
    );
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cut_off.renew_lease(lease).await {
            Ok(false) => break,
            Ok(true) => panic!("an expired session renewed"),
            Err(e) => assert!(
                Instant::now() < deadline,
                "renewing did not say the session expired: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Consumes a wake already stored, without waiting.
fn drain(wake: &tokio::sync::Notify) {
    use futures::FutureExt;
    while wake.notified().now_or_never().is_some() {}
}

/// Waits for a wake (10 s at most).
async fn woken(wake: &tokio::sync::Notify, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .unwrap_or_else(|_| panic!("{what} did not wake the loop within 10 s"));
}

/// The watch wakes the HA loop on a new member, a member's role change, and a leader whose
/// session ended (only its lease marker goes: the `leader` znode stays, naming a dead lease).
#[tokio::test]
async fn the_watch_wakes_the_loop_on_changes_that_matter() {
    let zookeeper = start().await;
    let keys = Keyspace::new(&ClusterName::new("watched").expect("valid"));
    let store = std::sync::Arc::new(zk(&zookeeper.host, &keys, "m1").await);
    let other = zk(&zookeeper.host, &keys, "m2").await;
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(governor::dcs::zookeeper::watch::run(
        store.clone(),
        vec![wake.clone()],
        cancel.clone(),
    ));
    let lease = store.grant_lease(TTL).await.expect("grant");
    // The watch is set up in the background: write until a write wakes the loop.
    let mut me = status("m1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        me.pending_restart = !me.pending_restart;
        store.put_member(&me, lease).await.expect("member");
        if tokio::time::timeout(Duration::from_millis(200), wake.notified())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the watch never woke the loop");
    }
    drain(&wake);
    me.role = spilo_model::MemberRole::Primary;
    store.put_member(&me, lease).await.expect("member");
    woken(&wake, "a member's role change").await;

    drain(&wake);
    let theirs = other.grant_lease(TTL).await.expect("grant");
    assert!(
        other
            .try_acquire_leader(theirs)
            .await
            .expect("m2 takes the key")
    );
    woken(&wake, "a new leader").await;
    drain(&wake);
    other.revoke_lease(theirs).await.expect("revoke");
    woken(&wake, "the leader's session ending").await;
    cancel.cancel();
    task.await.expect("the watch task ends when cancelled");
}

/// The ZooKeeper leader of a three-server ensemble killed: the ensemble elects another, the
/// member's session moves to a surviving server within its timeout, and its lease and
/// leader key live on: no failover.
#[tokio::test]
async fn losing_the_zookeeper_leader_of_an_ensemble_keeps_the_sessions_and_the_key() {
    let mut ensemble = contract::zookeeper::start_ensemble().await;
    let hosts: Vec<String> = ensemble.iter().map(|z| z.host.clone()).collect();
    let keys = Keyspace::new(&ClusterName::new("ensemble").expect("valid"));
    // The servers listen before they have elected a leader.
    contract::zookeeper::leader_of(&ensemble).await;
    let store = ZooKeeper::connect(&hosts, keys, name("m1"), Duration::from_secs(5))
        .await
        .expect("the ensemble answers");
    let ttl = Duration::from_secs(10);
    let lease = store.grant_lease(ttl).await.expect("grant");
    assert!(store.try_acquire_leader(lease).await.expect("acquire"));
    let leading = contract::zookeeper::leader_of(&ensemble).await;
    drop(ensemble.remove(leading));
    let killed = Instant::now();
    // Renewals fail while the member's server is gone or the ensemble elects; they succeed
    // again within the session timeout, in the same session.
    loop {
        match store.renew_lease(lease).await {
            Ok(true) => break,
            Ok(false) => panic!("the session ended with the ZooKeeper leader"),
            Err(e) => assert!(
                killed.elapsed() < ttl,
                "no renewal within the session timeout after the ZooKeeper leader died: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed_after = killed.elapsed();
    assert!(
        renewed_after < ttl,
        "the first renewal after the ZooKeeper leader died took {renewed_after:?}, past the \
         session timeout {ttl:?}"
    );
    println!("renewed {renewed_after:?} after the ZooKeeper leader was killed");
    let view = store.read_view().await.expect("read");
    let leader = view.leader.expect("the leader key lives on");
    assert_eq!((leader.name.as_str(), leader.lease), ("m1", lease));
    contract::zookeeper::leader_of(&ensemble).await;
}

/// A lease that is not renewed ends after its TTL, with its leader and member keys, although
/// the connection stays up and the client keeps pinging its session: as on etcd
/// (`coordination_contract.rs`), and not sooner.
#[tokio::test]
async fn an_unrenewed_lease_ends_after_its_ttl_with_its_keys() {
    let zookeeper = start().await;
    let keys = Keyspace::new(&ClusterName::new("unrenewed").expect("valid"));
    let store = zk(&zookeeper.host, &keys, "m1").await;
    let observer = zk(&zookeeper.host, &keys, "m2").await;
    let ttl = Duration::from_secs(2);
    let granted = Instant::now();
    let lease = store.grant_lease(ttl).await.expect("grant");
    assert!(store.try_acquire_leader(lease).await.expect("acquire"));
    store
        .put_member(&status("m1"), lease)
        .await
        .expect("member");
    keys_gone(&observer, "an unrenewed lease").await;
    assert!(
        granted.elapsed() >= ttl,
        "the keys went {:?} after the grant, before the ttl",
        granted.elapsed()
    );
    assert!(!store.renew_lease(lease).await.expect("renew answers"));
}

/// A view is read at one point of ZooKeeper's history, as etcd's range read is. Two members
/// hand the leader key back and forth, each hand-over removing the switchover request in the
/// same multi-op and the new leader writing the next request naming itself; a reader then
/// never sees a request that names anyone but the leader key's holder (a torn read does: the
/// old holder from before a hand-over beside the request written after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_is_never_torn_across_a_hand_over() {
    let zookeeper = start().await;
    let keys = Keyspace::new(&ClusterName::new("untorn").expect("valid"));
    let members = [
        zk(&zookeeper.host, &keys, "m1").await,
        zk(&zookeeper.host, &keys, "m2").await,
    ];
    let reader = zk(&zookeeper.host, &keys, "m3").await;
    let mut leases = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let lease = m.grant_lease(TTL).await.expect("lease");
        m.put_member(&status(&format!("m{}", i + 1)), lease)
            .await
            .expect("member key");
        leases.push(lease);
    }
    assert!(
        members[0]
            .try_acquire_leader(leases[0])
            .await
            .expect("acquire")
    );
    let request = |leader: usize, to: usize| spilo_model::SwitchoverRequest {
        leader: Some(name(&format!("m{}", leader + 1))),
        candidate: Some(name(&format!("m{}", to + 1))),
        scheduled_at: None,
        failover: false,
        requested_at: 0,
    };
    assert!(
        members[0]
            .request_switchover(&request(0, 1))
            .await
            .expect("request")
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut views = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let view = reader.read_view().await.expect("read");
                let holder = view.leader.as_ref().map(|l| l.name.clone());
                if let Some(req) = &view.switchover {
                    assert_eq!(
                        req.leader, holder,
                        "a torn view after {views} reads: {view:?}"
                    );
                }
                views += 1;
            }
            views
        })
    };
    for round in 0..200usize {
        let (from, to) = (round % 2, (round + 1) % 2);
        assert!(
            members[from]
                .hand_over_leader(leases[from], &name(&format!("m{}", to + 1)), leases[to])
                .await
                .expect("hand over"),
            "hand-over {round}"
        );
        assert!(
            members[to]
                .request_switchover(&request(to, from))
                .await
                .expect("request"),
            "request {round}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let views = reading.await.expect("the reader found no torn view");
    assert!(
        views >= 10,
        "only {views} views were read during the hand-overs"
    );
}
