//! The contract between the simulation's etcd and the real one: one script of the
//! [`Coordination`] operations the HA loop's actions use (leases, the `initialize` and
//! `leader` races, the hand-over transaction, `sync` revisions, the leader-only `failsafe`
//! key, member keys bound to leases) is played against a real etcd (Debian's `etcd-server`)
//! through `governor::dcs::Dcs`, and against the simulation's model through its
//! `SimCoordination`. Every step must answer the same (done, refused, or "lease not found"),
//! and the cluster's keys must read the same after each step. The seeded simulation is only
//! as good as this model; this test is what holds the model to the real thing.

#[allow(dead_code)]
mod contract;
#[allow(dead_code)]
mod sim;

use contract::*;
use governor::dcs::Coordination;
use sim::coordination::SimCoordination;
use sim::etcd::Etcd as SimEtcd;
use spilo_model::{ClusterName, Keyspace};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_simulated_etcd_answers_like_the_real_one() {
    let etcd = start_etcd();
    let keys = Keyspace::new(&ClusterName::new("contract").expect("valid"));
    let real = [
        connect(&etcd.url, &keys, "m1").await,
        connect(&etcd.url, &keys, "m2").await,
    ];
    let mut model = SimEtcd::new(Default::default());
    let (mut real_leases, mut model_leases) = (BTreeMap::new(), BTreeMap::new());
    for (n, step) in script().iter().enumerate() {
        let who = member_of(step);
        let index = usize::from(who == "m2");
        let from_real = apply(&real[index], step, &mut real_leases).await;
        let from_model = {
            let c = SimCoordination::new(&mut model, &name(who), 0, 60_000);
            apply(&c, step, &mut model_leases).await
        };
        assert!(
            !matches!(from_real, Outcome::Failed(_)),
            "step {n} {step:?} failed on etcd: {from_real:?}"
        );
        assert_eq!(
            from_model, from_real,
            "step {n} {step:?}: the model answered differently from etcd"
        );
    }
}

/// Timing: a leader's lease that is not renewed ends, and with it the leader and member keys
/// (on etcd after its TTL; in the model when its virtual clock passes the expiry).
#[tokio::test]
async fn an_unrenewed_lease_takes_its_keys_along_in_both() {
    let etcd = start_etcd();
    let keys = Keyspace::new(&ClusterName::new("expiry").expect("valid"));
    let real = connect(&etcd.url, &keys, "m1").await;
    let lease = real
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    assert!(real.try_acquire_leader(lease).await.expect("acquire"));
    real.put_member(&status("m1"), lease).await.expect("member");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = real.read_view().await.expect("read");
        if view.leader.is_none() && view.members.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd kept an expired lease's keys"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!real.renew_lease(lease).await.expect("renew answers"));

    let mut model = SimEtcd::new(Default::default());
    let m1 = name("m1");
    let lease = {
        let c = SimCoordination::new(&mut model, &m1, 0, 2_000);
        let lease = c.grant_lease(Duration::from_secs(2)).await.expect("grant");
        assert!(c.try_acquire_leader(lease).await.expect("acquire"));
        c.put_member(&status("m1"), lease).await.expect("member");
        lease
    };
    model.expire(1_999);
    assert!(model.leader.is_some(), "the model expired the lease early");
    model.expire(2_000);
    let c = SimCoordination::new(&mut model, &m1, 2_000, 2_000);
    let view = c.read_view().await.expect("read");
    assert!(view.leader.is_none() && view.members.is_empty(), "{view:?}");
    assert!(!c.renew_lease(lease).await.expect("renew answers"));
}
