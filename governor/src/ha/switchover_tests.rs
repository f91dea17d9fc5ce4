//! Tests of switchover and manual failover decisions, with the hand-built snapshots of
//! `tests.rs`.

use super::test_world::{LEASE, World, assert_waits, cfg, kind, name, primary, replica};
use super::*;
use spilo_model::{ClusterConfig, MemberState, SwitchoverRequest};

const NOW: u64 = 1_000_000;

fn request(candidate: Option<&str>) -> SwitchoverRequest {
    SwitchoverRequest {
        leader: Some(name("m1")),
        candidate: candidate.map(name),
        scheduled_at: None,
        failover: false,
        requested_at: NOW - 1,
    }
}

/// m1 leads and runs as primary at 900; m2 (lease 20) is at 900, m3 (lease 30) at 850.
fn leading() -> World {
    let mut w = World::new();
    w.leader("m1", LEASE)
        .running_primary()
        .member("m1", primary(1, 900))
        .member("m2", replica(1, 900))
        .member("m3", replica(1, 850));
    w.view().member_leases = [(name("m1"), LEASE), (name("m2"), 20), (name("m3"), 30)].into();
    w.snap.unix_now = NOW;
    w
}

fn with_request(mut w: World, r: SwitchoverRequest) -> World {
    w.view().switchover = Some(r);
    w
}

#[test]
fn the_leader_hands_over_to_the_named_candidate_with_its_lease() {
    let w = with_request(leading(), request(Some("m3")));
    assert_eq!(
        w.decide(),
        Decision::Switchover {
            to: name("m3"),
            lease: 30
        }
    );
}

#[test]
fn without_a_candidate_the_least_lagging_replica_is_chosen() {
    let w = with_request(leading(), request(None));
    assert_eq!(
        w.decide(),
        Decision::Switchover {
            to: name("m2"),
            lease: 20
        }
    );
}

#[test]
fn an_ineligible_candidate_is_refused_and_the_request_removed() {
    type Setup = Box<dyn Fn(&mut World)>;
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "m3",
            Box::new(|w| {
                w.member("m1", primary(1, 5000))
                    .member("m3", replica(1, 100));
            }),
            "4900 bytes behind",
        ),
        (
            "m3",
            Box::new(|w| {
                let mut m = replica(1, 900);
                m.tags.nofailover = true;
                w.member("m3", m);
            }),
            "nofailover",
        ),
        (
            "m3",
            Box::new(|w| {
                w.member("m3", replica(2, 900));
            }),
            "timeline",
        ),
        (
            "m3",
            Box::new(|w| {
                w.member("m3", member_stopped());
            }),
            "not a running replica",
        ),
        ("m9", Box::new(|_| {}), "not a member"),
        ("m1", Box::new(|_| {}), "this member leads, as requested"),
        (
            "m3",
            Box::new(|w| {
                w.view().member_leases.remove(&name("m3"));
            }),
            "no lease",
        ),
    ];
    for (candidate, setup, expect) in cases {
        let mut w = leading();
        setup(&mut w);
        let w = with_request(w, request(Some(candidate)));
        let d = w.decide();
        assert_eq!(kind(&d), "clear_switchover", "{candidate}: {d}");
        assert!(d.to_string().contains(expect), "{candidate}: {d}");
    }
}

fn member_stopped() -> spilo_model::MemberStatus {
    let mut m = replica(1, 900);
    m.state = MemberState::Stopped;
    m
}

#[test]
fn a_scheduled_switchover_waits_for_its_time() {
    let mut r = request(Some("m2"));
    r.scheduled_at = Some(NOW + 60);
    let mut w = with_request(leading(), r);
    assert_eq!(w.decide(), Decision::Lead);
    w.snap.unix_now = NOW + 60;
    assert_eq!(kind(&w.decide()), "switchover");
}

#[test]
fn a_paused_cluster_keeps_its_leader_and_the_request() {
    let mut w = with_request(leading(), request(Some("m2")));
    w.view().config = Some(ClusterConfig {
        pause: true,
        ..Default::default()
    });
    assert_eq!(w.decide(), Decision::Lead);
    let e = switchover::check(
        match &w.snap.dcs {
            DcsView::Known(v) => v,
            DcsView::Unreachable { .. } => unreachable!(),
        },
        &name("m1"),
        Some(&name("m2")),
        &cfg(),
    )
    .expect_err("paused");
    assert!(e.contains("paused"), "{e}");
}

#[test]
fn a_request_made_under_another_leader_is_dropped() {
    let mut r = request(Some("m2"));
    r.leader = Some(name("m0"));
    let d = with_request(leading(), r).decide();
    assert_eq!(kind(&d), "clear_switchover");
    assert!(d.to_string().contains("while m0 led"), "{d}");
}

#[test]
fn the_new_leader_removes_the_request_it_fulfilled() {
    let mut r = request(Some("m1"));
    r.leader = Some(name("m0"));
    let d = with_request(leading(), r).decide();
    assert_eq!(
        d,
        Decision::ClearSwitchover {
            why: "this member leads, as requested".into()
        }
    );
}

#[test]
fn the_candidate_promotes_once_the_key_names_it_with_its_own_lease() {
    let mut w = World::new();
    w.leader("m1", LEASE).member("m0", primary(1, 900));
    assert_eq!(kind(&w.decide()), "promote");
}

// --- manual failover -------------------------------------------------------------------------

fn leaderless_with(candidate: &str) -> World {
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 900)));
    w.view().switchover = Some(SwitchoverRequest {
        leader: None,
        candidate: Some(name(candidate)),
        scheduled_at: None,
        failover: true,
        requested_at: NOW,
    });
    w
}

#[test]
fn only_the_named_candidate_takes_the_key() {
    // m1 is at 500, m2 at 900: the ranking alone would let m2 take over.
    let d = leaderless_with("m1").decide();
    assert_eq!(kind(&d), "acquire_leader", "{d}");
    let d = leaderless_with("m2").decide();
    assert_waits(
        &d,
        "a manual failover to m2 was requested; leaving the leader key to it",
    );
    assert!(d.to_string().contains("manual failover to m2"), "{d}");
}

#[test]
fn a_switchover_request_left_by_a_dead_leader_is_no_failover_order() {
    // Found by the simulation (seed 1177): the candidate of a switchover whose leader then
    // died must not jump the ranking (or the synchronous list); it may lack commits.
    let mut w = leaderless_with("m1");
    w.view().switchover.as_mut().expect("request").failover = false;
    let d = w.decide();
    assert_waits(
        &d,
        "m2 ranks first (timeline 1, WAL 0/384; this member: timeline 1, WAL 0/1F4)",
    );
    assert!(d.to_string().contains("m2"), "{d}");
}

#[test]
fn a_candidate_that_does_not_answer_does_not_block_failover() {
    let mut w = leaderless_with("m3");
    w.snap.peers.clear();
    w.peer("m2", Some(replica(1, 100)));
    w.peer("m3", None);
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_manual_failover_goes_through_maintenance_mode() {
    let mut w = leaderless_with("m1");
    w.view().config = Some(ClusterConfig {
        pause: true,
        ..Default::default()
    });
    assert_eq!(kind(&w.decide()), "acquire_leader");
    // Without the request, a paused cluster does not fail over.
    w.view().switchover = None;
    w.snap.peers.clear();
    assert_waits(
        &w.decide(),
        "paused (maintenance mode); would acquire leader key",
    );
}

#[test]
fn a_leader_whose_postgres_is_down_gives_the_key_to_the_requested_member() {
    let mut w = World::new();
    w.leader("m1", LEASE).stopped_data(true, 1);
    w.view().switchover = Some(SwitchoverRequest {
        leader: Some(name("m1")),
        candidate: Some(name("m2")),
        scheduled_at: None,
        failover: true,
        requested_at: NOW,
    });
    let d = w.decide();
    assert_eq!(kind(&d), "release_leader", "{d}");
}

// --- the former primary rejoins --------------------------------------------------------------

fn former_primary(checkpoint: Option<u64>, switch: Option<u64>) -> World {
    let mut w = World::new();
    w.leader("m2", 20).member("m2", primary(2, 2000));
    w.data(DataDir::Initialized {
        sysid: "7000".into(),
        was_primary: true,
        timeline: TimelineId(1),
        clean_checkpoint: checkpoint.map(Lsn),
    })
    .pg(PgState::Stopped);
    if let Some(switch) = switch {
        w.view().history = vec![HistoryEntry {
            timeline: TimelineId(2),
            switch_lsn: Lsn(switch),
            reason: "switchover".into(),
            promoted_at: "2026-11-26T00:00:00Z".into(),
            member: name("m2"),
        }];
    }
    w
}

#[test]
fn a_cleanly_stopped_primary_follows_without_rewind_when_the_new_timeline_began_after_it() {
    let d = former_primary(Some(1000), Some(1040)).decide();
    assert_eq!(kind(&d), "start", "{d}");
    assert!(d.to_string().contains("without pg_rewind"), "{d}");
    match d {
        Decision::Start {
            role: StartAs::Replica { upstream },
            ..
        } => assert_eq!(upstream, Some(name("m2"))),
        other => panic!("{other}"),
    }
}

#[test]
fn otherwise_pg_rewind_decides() {
    for (checkpoint, switch) in [
        (Some(1040), Some(1040)), // the candidate did not get the shutdown checkpoint
        (Some(1000), None),       // the switch point is unknown
        (None, Some(1040)),       // crashed: WAL may go past the last checkpoint
    ] {
        let d = former_primary(checkpoint, switch).decide();
        assert_eq!(kind(&d), "rewind", "{checkpoint:?} {switch:?}: {d}");
    }
}

// --- synchronous mode ------------------------------------------------------------------------

fn synchronous(w: &mut World, members: &[&str]) {
    w.view().config = Some(ClusterConfig {
        synchronous_mode: true,
        ..Default::default()
    });
    w.view().sync = Some(spilo_model::SyncState {
        leader: Some(name("m0")),
        members: members.iter().map(|m| name(m)).collect(),
        quorum: None,
    });
}

#[test]
fn in_synchronous_mode_only_a_listed_standby_takes_over() {
    // m1 is at 500, m2 at 900: without synchronous mode m2 would take over.
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 900)));
    synchronous(&mut w, &["m1"]);
    assert_eq!(kind(&w.decide()), "acquire_leader");

    let mut w = World::new();
    w.peer("m2", Some(replica(1, 100)));
    synchronous(&mut w, &["m2"]);
    let d = w.decide();
    assert_waits(
        &d,
        "no leader, and in synchronous mode only m0, m2 may take over",
    );
    assert!(d.to_string().contains("only m0, m2 may take over"), "{d}");

    // No key at all: nobody.
    let mut w = World::new();
    synchronous(&mut w, &[]);
    w.view().sync = None;
    let d = w.decide();
    assert_waits(
        &d,
        "no leader, and synchronous mode lists no synchronous standby: promoting anyone could lose acknowledged commits (`spilo failover --to` overrides)",
    );
    assert!(
        d.to_string().contains("lists no synchronous standby"),
        "{d}"
    );

    // The primary that wrote the key may come back although it confirmed no standby: it has
    // every commit it acknowledged (found by the simulation, seed 8).
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 900)));
    synchronous(&mut w, &[]);
    w.view().sync.as_mut().expect("key").leader = Some(name("m1"));
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

/// A quorum key (`ANY k` of the voters) written by the gone primary m0.
fn quorum(w: &mut World, voters: &[&str], k: u32) {
    w.view().config = Some(ClusterConfig {
        synchronous_mode: true,
        synchronous_mode_quorum: true,
        ..Default::default()
    });
    w.view().sync = Some(spilo_model::SyncState {
        leader: Some(name("m0")),
        members: voters.iter().map(|m| name(m)).collect(),
        quorum: Some(k),
    });
}

#[test]
fn in_quorum_mode_a_voter_takes_over_only_once_it_sees_enough_voters_and_leads_them() {
    // ANY 1 of m1, m2: m1 (at 500) must see m2 too, and be at least as far.
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 400)));
    quorum(&mut w, &["m1", "m2"], 1);
    assert_eq!(kind(&w.decide()), "acquire_leader");

    // m2 does not answer: the commit it alone acknowledged could be missing on m1.
    let mut w = World::new();
    w.peer("m2", None);
    quorum(&mut w, &["m1", "m2"], 1);
    assert_waits(
        &w.decide(),
        "no leader, and quorum commit needs the WAL positions of 2 of the 2 voters to be sure no acknowledged commit is missing; 1 answered (this member included)",
    );

    // m2 answers and is further: it holds m1 back.
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 900)));
    quorum(&mut w, &["m1", "m2"], 1);
    assert_waits(
        &w.decide(),
        "no leader, and voter m2 is further ahead (timeline 1, WAL 0/384) than this member (timeline 1, WAL 0/1F4)",
    );

    // Even when the ranking would pass over it (tagged nofailover since the key was written):
    // the commits only m2 has would be lost.
    let mut w = World::new();
    let mut tagged = replica(1, 900);
    tagged.tags.nofailover = true;
    w.peer("m2", Some(tagged));
    quorum(&mut w, &["m1", "m2"], 1);
    assert_waits(
        &w.decide(),
        "no leader, and voter m2 is further ahead (timeline 1, WAL 0/384) than this member (timeline 1, WAL 0/1F4)",
    );

    // ANY 2 of m1, m2, m3: every commit is on two voters, so seeing one other is enough.
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 300)));
    w.peer("m3", None);
    quorum(&mut w, &["m1", "m2", "m3"], 2);
    assert_eq!(kind(&w.decide()), "acquire_leader");

    // A quorum of 0 (a new primary that confirmed nobody yet) lets nobody in.
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 300)));
    quorum(&mut w, &["m1", "m2"], 0);
    assert_waits(
        &w.decide(),
        "no leader, and quorum commit has no confirmed voters: promoting anyone could lose acknowledged commits (`spilo failover --to` overrides)",
    );

    // A member that is not a voter never takes over.
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 300)));
    quorum(&mut w, &["m2"], 1);
    assert_eq!(kind(&w.decide()), "wait");
}

#[test]
fn in_synchronous_mode_a_switchover_goes_only_to_a_listed_standby() {
    let mut w = leading();
    synchronous(&mut w, &["m3"]);
    let w2 = with_request(w, request(Some("m2")));
    let d = w2.decide();
    assert_eq!(kind(&d), "clear_switchover");
    assert!(d.to_string().contains("not a synchronous standby"), "{d}");
    let mut w = leading();
    synchronous(&mut w, &["m3"]);
    assert_eq!(
        with_request(w, request(None)).decide(),
        Decision::Switchover {
            to: name("m3"),
            lease: 30
        }
    );
}

#[test]
fn the_clusters_lag_limit_wins_over_the_local_one() {
    // Locally 1000 bytes; the cluster's config says 10, and m3 is 50 behind.
    let mut w = leading();
    w.view().config = Some(ClusterConfig {
        maximum_lag_on_failover: Some(10),
        ..Default::default()
    });
    let d = with_request(w, request(Some("m3"))).decide();
    assert_eq!(kind(&d), "clear_switchover");
    assert!(
        d.to_string().contains("maximum_lag_on_failover is 10"),
        "{d}"
    );
}

// --- a whole cluster restarting --------------------------------------------------------------

#[test]
fn nobody_takes_over_while_a_member_is_still_starting() {
    // Found by the local-target test that restarts a cluster: the replica that was up first
    // took over while the former primary, further ahead, was still starting.
    let mut w = World::new();
    w.peer(
        "m2",
        Some(super::test_world::member(
            MemberRole::Replica,
            MemberState::Starting,
            1,
            0,
        )),
    );
    let d = w.decide();
    assert_waits(
        &d,
        "m2 is starting; waiting to compare WAL positions with it",
    );
    assert!(d.to_string().contains("m2 is starting"), "{d}");
    // Once it runs, positions decide as usual.
    w.snap.peers.clear();
    w.peer("m2", Some(replica(1, 900)));
    assert!(w.decide().to_string().contains("m2 ranks first"));
}
