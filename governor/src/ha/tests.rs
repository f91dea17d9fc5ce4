//! Branch-by-branch tests of `decide` and the candidate ranking, with hand-built snapshots.

use super::candidate::{self, Candidate, Verdict};
use super::test_world::*;
use super::*;
use spilo_model::MemberState;
use std::collections::BTreeMap;

// --- bootstrap -------------------------------------------------------------------------------

#[test]
fn an_empty_member_of_a_new_cluster_races_to_bootstrap() {
    let mut w = World::new();
    w.view().initialize = None;
    w.data(DataDir::Empty).pg(PgState::Stopped);
    assert_eq!(w.decide(), Decision::Bootstrap);
}

#[test]
fn a_nofailover_member_never_bootstraps() {
    let mut w = World::new();
    w.view().initialize = None;
    w.data(DataDir::Empty).pg(PgState::Stopped);
    w.snap.tags.nofailover = true;
    assert_waits(
        &w.decide(),
        "no cluster yet, and members tagged nofailover never bootstrap one",
    );
}

#[test]
fn a_member_whose_bootstrap_failed_waits_with_the_reason_until_it_may_retry() {
    let mut w = World::new();
    w.view().initialize = None;
    w.data(DataDir::Empty).pg(PgState::Stopped);
    w.snap.local.bootstrap_blocked = Some("bootstrap failed and is not retried: why".into());
    assert_eq!(
        w.decide(),
        Decision::Wait {
            why: "bootstrap failed and is not retried: why".into()
        }
    );
    w.snap.local.bootstrap_blocked = None;
    assert_eq!(w.decide(), Decision::Bootstrap);
}

#[test]
fn bootstrap_waits_for_a_lease() {
    let mut w = World::new();
    w.view().initialize = None;
    w.data(DataDir::Empty).pg(PgState::Stopped);
    w.snap.lease = LeaseView::default();
    assert_waits(
        &w.decide(),
        "no cluster yet; waiting for an etcd lease before racing to bootstrap",
    );
}

#[test]
fn others_wait_while_one_member_bootstraps() {
    let mut w = World::new();
    w.view().initialize = Some(String::new());
    w.data(DataDir::Empty).pg(PgState::Stopped);
    assert_eq!(
        w.decide(),
        Decision::Wait {
            why: "another member is bootstrapping the cluster".into()
        }
    );
}

#[test]
fn existing_data_without_an_initialize_key_is_left_alone() {
    let mut w = World::new();
    w.view().initialize = None;
    w.stopped_data(true, 1);
    let d = w.decide();
    assert_waits(
        &d,
        "the data directory holds a cluster but etcd has no `initialize` key; refusing to guess whether it belongs to this scope",
    );
    assert!(d.to_string().contains("no `initialize` key"), "{d}");
}

#[test]
fn a_foreign_data_directory_is_fatal() {
    let mut w = World::new();
    w.data(DataDir::Initialized {
        sysid: "9999".into(),
        was_primary: false,
        timeline: TimelineId(1),
        clean_checkpoint: None,
    });
    let d = w.decide();
    assert_eq!(kind(&d), "fatal");
    assert!(d.to_string().contains("system 9999"), "{d}");
}

// --- replicas being created ------------------------------------------------------------------

#[test]
fn an_empty_member_clones_the_running_leader() {
    let mut w = World::new();
    w.data(DataDir::Empty).pg(PgState::Stopped);
    w.leader("m0", 1).member("m0", primary(1, 100));
    assert_eq!(w.decide(), Decision::Clone { leader: name("m0") });
}

#[test]
fn an_empty_member_waits_when_the_leader_is_not_running_yet() {
    let mut w = World::new();
    w.data(DataDir::Empty).pg(PgState::Stopped);
    w.leader("m0", 1).member(
        "m0",
        member(MemberRole::Replica, MemberState::Starting, 1, 0),
    );
    assert_waits(
        &w.decide(),
        "the data directory is empty and no running primary can be cloned",
    );
}

// --- the primary -----------------------------------------------------------------------------

#[test]
fn the_leader_with_a_valid_lease_leads() {
    let mut w = World::new();
    w.leader("m1", LEASE).running_primary();
    assert_eq!(w.decide(), Decision::Lead);
}

#[test]
fn a_primary_whose_lease_is_about_to_end_demotes() {
    let mut w = World::new();
    w.leader("m1", LEASE).running_primary();
    w.snap.lease.valid_until = Some(w.now + Duration::from_millis(900));
    let d = w.decide();
    assert_eq!(kind(&d), "demote");
    assert!(d.to_string().contains("lease"), "{d}");
}

#[test]
fn a_primary_demotes_when_another_member_holds_the_key() {
    let mut w = World::new();
    w.leader("m2", 99).running_primary();
    assert_eq!(
        w.decide(),
        Decision::Demote {
            why: "m2 holds the leader key".into()
        }
    );
}

#[test]
fn a_primary_without_any_leader_key_demotes() {
    let mut w = World::new();
    w.running_primary();
    assert_eq!(kind(&w.decide()), "demote");
}

#[test]
fn a_primary_demotes_when_etcd_is_gone_and_the_lease_is_ending() {
    let mut w = World::new();
    w.running_primary();
    w.snap.dcs = DcsView::Unreachable {
        why: "timeout".into(),
    };
    w.snap.lease.valid_until = Some(w.now + Duration::from_millis(500));
    assert_eq!(kind(&w.decide()), "demote");
}

#[test]
fn a_primary_rides_out_a_short_etcd_outage_while_its_lease_holds() {
    let mut w = World::new();
    w.running_primary();
    w.snap.dcs = DcsView::Unreachable {
        why: "timeout".into(),
    };
    let d = w.decide();
    assert_waits(
        &d,
        "etcd is unreachable (timeout); the lease is valid for 4.0s more",
    );
    assert!(d.to_string().contains("lease is valid"), "{d}");
}

#[test]
fn a_replica_waits_while_etcd_is_unreachable() {
    let mut w = World::new();
    w.snap.dcs = DcsView::Unreachable {
        why: "connection refused".into(),
    };
    assert_waits(&w.decide(), "etcd is unreachable (connection refused)");
}

#[test]
fn a_leader_key_from_an_older_lease_of_this_member_is_waited_out() {
    let mut w = World::new();
    w.leader("m1", 1234).stopped_data(true, 1);
    let d = w.decide();
    assert_waits(
        &d,
        "the leader key names this member but is bound to an older lease; waiting for that lease to end",
    );
    assert!(d.to_string().contains("older lease"), "{d}");
}

// --- primary crash handling ------------------------------------------------------------------

#[test]
fn a_crashed_primary_restarts_in_place() {
    let mut w = World::new();
    w.leader("m1", LEASE).stopped_data(true, 1);
    w.snap.local.recent_crashes = 1;
    w.snap.local.primary_down_since = Some(w.now);
    let d = w.decide();
    assert!(
        matches!(
            d,
            Decision::Start {
                role: StartAs::Primary,
                ..
            }
        ),
        "{d}"
    );
}

#[test]
fn a_primary_in_a_crash_loop_hands_over() {
    let mut w = World::new();
    w.leader("m1", LEASE).stopped_data(true, 1);
    w.snap.local.recent_crashes = 3;
    assert_eq!(kind(&w.decide()), "release_leader");
}

#[test]
fn a_primary_down_longer_than_the_start_timeout_hands_over() {
    let mut w = World::new();
    w.leader("m1", LEASE).stopped_data(true, 1);
    w.snap.local.recent_crashes = 1;
    w.snap.local.primary_down_since = Some(w.now - Duration::from_secs(31));
    assert_eq!(kind(&w.decide()), "release_leader");
}

#[test]
fn a_primary_slow_to_start_hands_over_after_the_timeout() {
    let mut w = World::new();
    w.leader("m1", LEASE);
    let since = w.now - Duration::from_secs(31);
    w.pg(PgState::Starting {
        since,
        as_primary: true,
    });
    assert_eq!(kind(&w.decide()), "release_leader");
    w.pg(PgState::Starting {
        since: w.now,
        as_primary: true,
    });
    assert_waits(&w.decide(), "PostgreSQL is starting");
}

#[test]
fn a_primary_starting_without_the_key_is_stopped() {
    let mut w = World::new();
    w.leader("m2", 99);
    w.pg(PgState::Starting {
        since: w.now,
        as_primary: true,
    });
    assert_eq!(kind(&w.decide()), "demote");
}

#[test]
fn the_leader_with_replica_data_starts_read_only_then_promotes() {
    let mut w = World::new();
    w.leader("m1", LEASE).stopped_data(false, 1);
    let d = w.decide();
    assert!(
        matches!(
            d,
            Decision::Start {
                role: StartAs::Replica { upstream: None },
                ..
            }
        ),
        "{d}"
    );
    w.pg(PgState::Running(RunningPg {
        in_recovery: true,
        ..Default::default()
    }));
    assert_eq!(kind(&w.decide()), "promote");
}

#[test]
fn the_leader_does_not_promote_on_an_ending_lease() {
    let mut w = World::new();
    w.leader("m1", LEASE);
    w.snap.lease.valid_until = Some(w.now);
    assert_waits(
        &w.decide(),
        "holding the leader key with a lease about to end; not promoting",
    );
}

// --- replicas --------------------------------------------------------------------------------

#[test]
fn a_replica_follows_the_running_leader() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", primary(1, 1000));
    assert_eq!(w.decide(), Decision::Follow { leader: name("m0") });
}

#[test]
fn a_replica_waits_for_a_leader_that_has_not_promoted_yet() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", replica(1, 1000));
    assert_waits(
        &w.decide(),
        "m0 holds the leader key but does not run as primary yet",
    );
}

#[test]
fn a_replica_behind_the_switch_point_follows_the_new_timeline() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", primary(2, 2000));
    w.view().history.push(HistoryEntry {
        timeline: TimelineId(2),
        switch_lsn: Lsn(600),
        reason: "failover".into(),
        promoted_at: "2026-01-01T00:00:00Z".into(),
        member: name("m0"),
    });
    assert_eq!(w.decide(), Decision::Follow { leader: name("m0") });
}

#[test]
fn a_replica_past_the_switch_point_rewinds() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", primary(2, 2000));
    w.view().history.push(HistoryEntry {
        timeline: TimelineId(2),
        switch_lsn: Lsn(400),
        reason: "failover".into(),
        promoted_at: "2026-01-01T00:00:00Z".into(),
        member: name("m0"),
    });
    let d = w.decide();
    assert_eq!(kind(&d), "rewind");
    assert!(d.to_string().contains("past the switch"), "{d}");
}

#[test]
fn a_replica_streaming_from_the_leader_is_never_sent_to_rewind() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", primary(3, 2000));
    if let PgState::Running(pg) = &mut w.snap.local.postgres {
        pg.upstream = Some(name("m0"));
        pg.streaming = true;
    }
    assert_eq!(w.decide(), Decision::Follow { leader: name("m0") });
}

#[test]
fn a_replica_that_cannot_stream_from_the_leader_is_checked_for_divergence() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", primary(1, 2000));
    let now = w.now;
    if let PgState::Running(pg) = &mut w.snap.local.postgres {
        pg.upstream = Some(name("m0"));
        pg.not_streaming_since = Some(now - Duration::from_secs(5));
    }
    assert_eq!(w.decide(), Decision::Follow { leader: name("m0") });
    if let PgState::Running(pg) = &mut w.snap.local.postgres {
        pg.not_streaming_since = Some(now - Duration::from_secs(16));
    }
    let d = w.decide();
    assert_eq!(d.kind(), "rewind");
    assert!(d.to_string().contains("without streaming"), "{d}");
}

#[test]
fn a_replica_on_an_old_timeline_with_unknown_switch_point_rewinds() {
    let mut w = World::new();
    w.leader("m0", 1).member("m0", primary(3, 2000));
    assert_eq!(kind(&w.decide()), "rewind");
}

#[test]
fn a_stopped_former_primary_rewinds_before_following() {
    let mut w = World::new();
    w.leader("m0", 1)
        .member("m0", primary(2, 2000))
        .stopped_data(true, 1);
    let d = w.decide();
    assert_eq!(d.kind(), "rewind");
    assert!(d.to_string().contains("was a primary on timeline 1"), "{d}");
}

#[test]
fn a_stopped_replica_on_the_leaders_timeline_starts_streaming() {
    let mut w = World::new();
    w.leader("m0", 1)
        .member("m0", primary(1, 2000))
        .stopped_data(false, 1);
    let d = w.decide();
    assert!(
        matches!(&d, Decision::Start { role: StartAs::Replica { upstream: Some(u) }, .. } if *u == name("m0")),
        "{d}"
    );
}

#[test]
fn a_stopped_member_without_a_leader_starts_read_only() {
    let mut w = World::new();
    w.stopped_data(true, 1);
    let d = w.decide();
    assert!(
        matches!(
            d,
            Decision::Start {
                role: StartAs::Replica { upstream: None },
                ..
            }
        ),
        "{d}"
    );
}

// --- the leader race -------------------------------------------------------------------------

#[test]
fn the_healthiest_replica_takes_over() {
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 400))).peer("m3", None);
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_replica_defers_to_a_more_advanced_one() {
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 700)));
    let d = w.decide();
    assert_waits(
        &d,
        "m2 ranks first (timeline 1, WAL 0/2BC; this member: timeline 1, WAL 0/1F4)",
    );
    assert!(d.to_string().contains("m2 ranks first"), "{d}");
}

#[test]
fn ties_go_to_the_first_name() {
    let mut w = World::new();
    w.peer("m0", Some(replica(1, 500)));
    assert_waits(
        &w.decide(),
        "m0 ranks first (timeline 1, WAL 0/1F4; this member: timeline 1, WAL 0/1F4)",
    );
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 500)));
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_member_that_crash_looped_leaves_the_race_to_a_healthy_replica() {
    // m1 handed leadership over after three crashes and ranks first by name: it waits for m2
    // (which passes over m1, whose published status says nofailover meanwhile).
    let mut w = World::new();
    w.snap.local.recent_crashes = 3;
    w.peer("m2", Some(replica(1, 500)));
    assert_waits(
        &w.decide(),
        "this member's primary crashed 3 times recently; m2 takes over",
    );
    // With no replica that could take over (none, or one tagged nofailover), it races.
    let mut w = World::new();
    w.snap.local.recent_crashes = 3;
    let mut tagged = replica(1, 500);
    tagged.tags.nofailover = true;
    w.peer("m2", Some(tagged));
    assert_eq!(kind(&w.decide()), "acquire_leader");
    let mut w = World::new();
    w.snap.local.recent_crashes = 3;
    assert_eq!(kind(&w.decide()), "acquire_leader");
    // Below the crash limit nothing changes.
    let mut w = World::new();
    w.snap.local.recent_crashes = 2;
    w.peer("m2", Some(replica(1, 500)));
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn nobody_races_while_a_member_still_runs_as_primary() {
    let mut w = World::new();
    w.peer("m0", Some(primary(1, 900)));
    let d = w.decide();
    assert!(d.to_string().contains("still runs as primary"), "{d}");
}

#[test]
fn a_nofailover_replica_does_not_race() {
    let mut w = World::new();
    w.snap.tags.nofailover = true;
    assert_waits(
        &w.decide(),
        "no leader, and this member is tagged nofailover",
    );
}

#[test]
fn a_replica_without_a_lease_does_not_race() {
    let mut w = World::new();
    w.snap.lease = LeaseView::default();
    assert_waits(
        &w.decide(),
        "no leader, and this member has no valid etcd lease to take leadership with",
    );
}

#[test]
fn a_better_nofailover_member_does_not_block_a_close_enough_replica() {
    let mut w = World::new();
    let mut nofail = replica(1, 1200);
    nofail.tags.nofailover = true;
    w.peer("m0", Some(nofail));
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_replica_too_far_behind_the_best_member_is_not_eligible() {
    let mut w = World::new();
    let mut nofail = replica(1, 5000);
    nofail.tags.nofailover = true;
    w.peer("m0", Some(nofail));
    let d = w.decide();
    assert_waits(
        &d,
        "this member is 4500 bytes behind the most advanced member (limit 1000)",
    );
    assert!(d.to_string().contains("4500 bytes behind"), "{d}");
}

// --- candidate ranking alone -----------------------------------------------------------------

fn cand(n: &str, tl: u32, lsn: u64) -> Candidate {
    Candidate {
        name: name(n),
        timeline: TimelineId(tl),
        lsn: Lsn(lsn),
        nofailover: false,
    }
}

#[test]
fn a_higher_timeline_beats_a_higher_position() {
    let me = cand("a", 1, 10_000);
    let peers = vec![PeerView {
        name: name("b"),
        status: Some(replica(2, 10)),
    }];
    assert!(matches!(
        candidate::choose(&me, &peers, u64::MAX),
        Verdict::NotMe { .. }
    ));
}

#[test]
fn members_that_are_not_running_replicas_are_not_candidates() {
    let me = cand("b", 1, 10);
    let stopped = member(MemberRole::Replica, MemberState::Stopped, 1, 10_000);
    let peers = vec![PeerView {
        name: name("a"),
        status: Some(stopped),
    }];
    assert!(matches!(
        candidate::choose(&me, &peers, 0),
        Verdict::Me { .. }
    ));
}

#[test]
fn every_member_computes_the_same_winner() {
    let statuses: BTreeMap<&str, (u32, u64)> = [("a", (1, 500)), ("b", (1, 700)), ("c", (1, 700))]
        .into_iter()
        .collect();
    let winners: Vec<&str> = statuses
        .iter()
        .filter(|(me, (tl, lsn))| {
            let peers: Vec<PeerView> = statuses
                .iter()
                .filter(|(n, _)| n != me)
                .map(|(n, (t, l))| PeerView {
                    name: name(n),
                    status: Some(replica(*t, *l)),
                })
                .collect();
            matches!(
                candidate::choose(&cand(me, *tl, *lsn), &peers, 1000),
                Verdict::Me { .. }
            )
        })
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(winners, vec!["b"]);
}

// --- maintenance mode ------------------------------------------------------------------------

fn paused(w: &mut World) -> &mut World {
    w.view().config = Some(spilo_model::ClusterConfig {
        pause: true,
        ..Default::default()
    });
    w
}

#[test]
fn a_paused_cluster_does_not_fail_over() {
    let mut w = World::new();
    w.peer("m2", Some(replica(1, 400))).peer("m3", None);
    paused(&mut w);
    let d = w.decide();
    assert_waits(
        &d,
        "paused (maintenance mode); would acquire leader key: healthiest of 2 eligible member(s): timeline 1, WAL 0/1F4",
    );
    assert!(
        d.to_string()
            .starts_with("wait: paused (maintenance mode); would acquire leader key: "),
        "{d}"
    );
}

#[test]
fn a_paused_cluster_keeps_its_leader_and_does_not_start_a_stopped_member() {
    let mut w = World::new();
    w.leader("m1", LEASE).running_primary();
    paused(&mut w);
    assert_eq!(kind(&w.decide()), "lead");
    let mut w = World::new();
    w.stopped_data(false, 1);
    paused(&mut w);
    let d = w.decide();
    assert_waits(
        &d,
        "paused (maintenance mode); would start as replica: no leader; starting read-only to take part in the election",
    );
}

#[test]
fn a_paused_primary_that_lost_its_key_still_demotes() {
    let mut w = World::new();
    w.leader("m2", 99).running_primary();
    paused(&mut w);
    assert_eq!(kind(&w.decide()), "demote");
}
