//! `decide` in failsafe mode: a primary confirmed by every member survives an etcd outage and
//! takes its key back afterwards; a member that confirmed it does not race; nobody outside the
//! `failsafe` key races.

use super::test_world::{LEASE, World, assert_waits, kind, name, replica};
use super::*;
use spilo_model::ClusterConfig;

fn failsafe_mode(w: &mut World) -> &mut World {
    w.view().config = Some(ClusterConfig {
        failsafe_mode: true,
        ..Default::default()
    });
    w
}

/// m1 runs as primary with a lease about to end and etcd unreachable.
fn cut_off_primary(w: &mut World) {
    w.leader("m1", LEASE).running_primary();
    w.snap.dcs = DcsView::Unreachable {
        why: "timeout".into(),
    };
    w.snap.lease.valid_until = Some(w.now + Duration::from_millis(500));
}

#[test]
fn a_confirmed_primary_stays_writable_through_an_etcd_outage() {
    let mut w = World::new();
    cut_off_primary(&mut w);
    w.snap.failsafe.confirmed_until = Some(w.now + Duration::from_secs(3));
    let d = w.decide();
    assert_waits(
        &d,
        "etcd is unreachable (timeout); failsafe mode: every member confirmed this primary, so it stays writable",
    );
    assert!(d.to_string().contains("failsafe"), "{d}");
}

#[test]
fn a_primary_whose_confirmation_is_ending_demotes() {
    let mut w = World::new();
    cut_off_primary(&mut w);
    w.snap.failsafe.confirmed_until = Some(w.now + Duration::from_millis(900));
    assert_eq!(kind(&w.decide()), "demote");
    w.snap.failsafe.confirmed_until = None;
    assert_eq!(kind(&w.decide()), "demote");
}

#[test]
fn a_confirmed_primary_takes_its_key_back_when_etcd_answers() {
    let mut w = World::new();
    failsafe_mode(&mut w).running_primary();
    w.snap.failsafe.confirmed_until = Some(w.now + Duration::from_secs(3));
    assert_eq!(kind(&w.decide()), "reclaim_leader");
    // Not before it has a lease to bind the key to.
    w.snap.lease = LeaseView::default();
    assert_waits(
        &w.decide(),
        "failsafe mode: every member confirmed this primary; waiting for an etcd lease to take the leader key back",
    );
}

#[test]
fn without_failsafe_mode_a_primary_without_the_key_demotes() {
    let mut w = World::new();
    w.running_primary();
    w.snap.failsafe.confirmed_until = Some(w.now + Duration::from_secs(3));
    assert_eq!(kind(&w.decide()), "demote");
}

#[test]
fn a_confirmed_primary_still_demotes_when_another_member_holds_the_key() {
    let mut w = World::new();
    failsafe_mode(&mut w).leader("m2", 99).running_primary();
    w.snap.failsafe.confirmed_until = Some(w.now + Duration::from_secs(3));
    assert_eq!(kind(&w.decide()), "demote");
}

#[test]
fn a_member_that_confirmed_a_primary_does_not_race_until_its_promise_ends() {
    let mut w = World::new();
    failsafe_mode(&mut w).peer("m2", Some(replica(1, 400)));
    w.snap.failsafe.quiet_until = Some(w.now + Duration::from_secs(2));
    w.snap.failsafe.quiet_for = Some(name("m3"));
    let d = w.decide();
    assert_waits(
        &d,
        "no leader, but this member confirmed m3 as primary in failsafe mode and does not race until that promise ends",
    );
    assert!(d.to_string().contains("confirmed m3"), "{d}");
    w.now += Duration::from_millis(1500);
    assert_eq!(
        w.decide(),
        d,
        "the same reason while waiting (a changing one is logged every loop)"
    );
    w.now += Duration::from_millis(500);
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_freshly_started_governor_does_not_race_in_failsafe_mode() {
    let mut w = World::new();
    failsafe_mode(&mut w);
    w.snap.failsafe.quiet_until = Some(w.now + Duration::from_secs(1));
    let d = w.decide();
    assert_waits(
        &d,
        "no leader, but in failsafe mode a governor that started less than a TTL ago may have promised a primary not to race",
    );
    assert!(d.to_string().contains("started less than a TTL ago"), "{d}");
}

#[test]
fn the_promise_does_not_matter_outside_failsafe_mode() {
    let mut w = World::new();
    w.snap.failsafe.quiet_until = Some(w.now + Duration::from_secs(2));
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_failsafe_key_left_behind_keeps_the_promise_when_the_mode_is_switched_off() {
    let mut w = World::new();
    w.view().failsafe = Some(
        [
            (name("m1"), "http://m1".to_string()),
            (name("m2"), "http://m2".to_string()),
        ]
        .into(),
    );
    w.snap.failsafe.quiet_until = Some(w.now + Duration::from_secs(2));
    w.snap.failsafe.quiet_for = Some(name("m2"));
    assert_waits(
        &w.decide(),
        "no leader, but this member confirmed m2 as primary in failsafe mode and does not race until that promise ends",
    );
}

#[test]
fn a_member_missing_from_the_failsafe_key_does_not_race() {
    let mut w = World::new();
    failsafe_mode(&mut w).view().failsafe = Some([(name("m2"), "http://m2".to_string())].into());
    let d = w.decide();
    assert_waits(
        &d,
        "no leader, and in failsafe mode only the members listed in the failsafe key may take over (the last primary never asked this one)",
    );
    assert!(d.to_string().contains("failsafe key"), "{d}");
    w.view()
        .failsafe
        .as_mut()
        .expect("set above")
        .insert(name("m1"), "http://m1".into());
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_manual_failover_waits_for_the_promise_too() {
    let mut w = World::new();
    failsafe_mode(&mut w).view().switchover = Some(spilo_model::SwitchoverRequest {
        leader: None,
        candidate: Some(name("m1")),
        scheduled_at: None,
        failover: true,
        requested_at: 1_000_000,
    });
    w.snap.failsafe.quiet_until = Some(w.now + Duration::from_secs(2));
    w.snap.failsafe.quiet_for = Some(name("m3"));
    assert_waits(
        &w.decide(),
        "no leader, but this member confirmed m3 as primary in failsafe mode and does not race until that promise ends",
    );
}
