//! `decide` in a standby cluster: the leader replicates from the source and never accepts
//! writes, the others follow it, the first member copies the source, and `config` (once it
//! exists) decides whether the cluster is a standby at all.

use super::test_world::*;
use super::*;
use spilo_model::{ClusterConfig, MemberState};

fn source() -> StandbySource {
    StandbySource {
        cluster: Some("src".into()),
        hosts: vec!["127.0.0.1:5432".into(), "127.0.0.1:5433".into()],
        archive: None,
    }
}

/// The cluster's `config` says it is a standby of `src`.
fn standby(w: &mut World) -> &mut World {
    w.view().config = Some(ClusterConfig {
        standby_cluster: Some(source()),
        ..Default::default()
    });
    w
}

#[test]
fn the_first_member_of_a_standby_cluster_bootstraps_from_the_local_setting() {
    // No `config` yet: the local file's source decides. `decide` says Bootstrap either way;
    // the runtime's bootstrap copies the source (shown end to end by standby_cluster.rs).
    let mut w = World::new();
    w.view().initialize = None;
    w.data(DataDir::Empty).pg(PgState::Stopped);
    let with_source = HaConfig {
        standby: Some(source()),
        ..cfg()
    };
    assert_eq!(decide(&w.snap, &with_source, w.now), Decision::Bootstrap);
    assert_eq!(cfg().merged_opt(None).standby, None);
    // Once `config` exists it decides, whatever the local file says.
    let mut w = World::new();
    w.view().config = Some(ClusterConfig::default());
    w.leader("m1", LEASE);
    assert_eq!(
        kind(&decide(&w.snap, &with_source, w.now)),
        "promote",
        "config without standby_cluster: the cluster is promoted"
    );
}

#[test]
fn the_standby_leader_replicates_from_the_source_and_never_promotes() {
    let mut w = World::new();
    standby(&mut w).leader("m1", LEASE);
    match w.decide() {
        Decision::FollowSource { why } => assert!(
            why.contains("cluster src (127.0.0.1:5432, 127.0.0.1:5433)"),
            "{why}"
        ),
        other => panic!("expected follow_source, got {other}"),
    }
    // Stopped: it starts as the source's replica.
    let mut w = World::new();
    standby(&mut w).leader("m1", LEASE).stopped_data(false, 1);
    assert!(matches!(
        w.decide(),
        Decision::Start {
            role: StartAs::StandbyLeader,
            ..
        }
    ));
}

#[test]
fn a_primary_of_a_cluster_that_becomes_a_standby_steps_down_cleanly() {
    let mut w = World::new();
    standby(&mut w).leader("m1", LEASE).running_primary();
    let d = w.decide();
    assert_eq!(kind(&d), "step_down");
    assert!(
        d.to_string().contains("now a standby of cluster src"),
        "{d}"
    );
    // Maintenance mode holds it back like every other change of role.
    let mut w = World::new();
    standby(&mut w).leader("m1", LEASE).running_primary();
    if let Some(c) = w.view().config.as_mut() {
        c.pause = true;
    }
    assert_waits(&w.decide(), "paused (maintenance mode); would step down");
}

#[test]
fn members_follow_the_standby_leader_and_copy_it() {
    // The standby leader runs as a replica: that is how it serves the others.
    let mut w = World::new();
    standby(&mut w)
        .leader("m0", 1)
        .member("m0", replica(1, 600));
    assert_eq!(w.decide(), Decision::Follow { leader: name("m0") });
    let mut w = World::new();
    standby(&mut w)
        .leader("m0", 1)
        .member("m0", replica(1, 600))
        .data(DataDir::Empty)
        .pg(PgState::Stopped);
    assert_eq!(w.decide(), Decision::Clone { leader: name("m0") });
    // Outside a standby cluster, a leader running as a replica serves nobody yet.
    let mut w = World::new();
    w.leader("m0", 1).member("m0", replica(1, 600));
    assert_waits(&w.decide(), "does not run as primary yet");
    // Without a running standby leader an empty member waits: there is no archive of the
    // standby cluster's own to recover from.
    let mut w = World::new();
    standby(&mut w)
        .member(
            "m0",
            member(MemberRole::Replica, MemberState::Stopped, 1, 600),
        )
        .data(DataDir::Empty)
        .pg(PgState::Stopped);
    assert_waits(&w.decide(), "no running standby leader to copy");
}

#[test]
fn without_a_leader_the_healthiest_member_takes_the_standby_lead_even_in_synchronous_mode() {
    // Synchronous mode has nothing to protect in a cluster that accepts no writes: an empty
    // sync key does not hold the election back.
    let mut w = World::new();
    standby(&mut w);
    if let Some(c) = w.view().config.as_mut() {
        c.synchronous_mode = true;
    }
    w.view().sync = Some(spilo_model::SyncState {
        leader: Some(name("m0")),
        members: vec![],
        quorum: None,
    });
    w.peer("m2", Some(replica(1, 400)));
    assert_eq!(kind(&w.decide()), "acquire_leader");
}

#[test]
fn a_standby_leader_that_cannot_stream_from_the_source_rewinds_against_it() {
    let mut w = World::new();
    standby(&mut w).leader("m1", LEASE);
    let since = w.now - Duration::from_secs(16);
    if let PgState::Running(pg) = &mut w.snap.local.postgres {
        pg.not_streaming_since = Some(since);
    }
    let d = w.decide();
    assert_eq!(kind(&d), "rewind_from_source");
    assert!(
        d.to_string().contains("not streaming from cluster src"),
        "{d}"
    );
    // Before `rewind_check_after` it keeps trying to stream.
    if let PgState::Running(pg) = &mut w.snap.local.postgres {
        pg.not_streaming_since = Some(w.now - Duration::from_secs(14));
    }
    assert_eq!(kind(&w.decide()), "follow_source");
}

/// A standby cluster of this one answered as primary: it was promoted over this cluster.
fn fenced(w: &mut World) -> &mut World {
    w.view().config = Some(ClusterConfig::default());
    w.view().fenced_by = Some(source());
    w
}

#[test]
fn a_cluster_a_standby_was_promoted_over_follows_it_and_never_runs_a_primary() {
    // Its primary (the partition healed) steps down.
    let mut w = World::new();
    fenced(&mut w).leader("m1", LEASE).running_primary();
    assert_eq!(kind(&w.decide()), "step_down");
    // With no leader (its etcd came back, the old lease ended), the winner of the race leads
    // as a standby leader: the race ignores synchronous mode as in any standby cluster, and
    // the runtime then replicates from the source instead of promoting.
    let mut w = World::new();
    fenced(&mut w);
    w.peer("m2", Some(replica(1, 400)));
    assert_eq!(kind(&w.decide()), "acquire_leader");
    assert_eq!(cfg().merged(w.view()).standby, Some(source()));
    // Holding the key, it follows the source.
    let mut w = World::new();
    fenced(&mut w).leader("m1", LEASE);
    assert_eq!(kind(&w.decide()), "follow_source");
    // A source in `config` wins over the fence (the leader recorded it, or an operator).
    let mut w = World::new();
    fenced(&mut w);
    let other = StandbySource {
        cluster: Some("elsewhere".into()),
        ..source()
    };
    if let Some(c) = w.view().config.as_mut() {
        c.standby_cluster = Some(other.clone());
    }
    assert_eq!(cfg().merged(w.view()).standby, Some(other));
    // Without a fence nothing changes.
    let mut w = World::new();
    w.view().config = Some(ClusterConfig::default());
    w.leader("m1", LEASE).running_primary();
    assert_eq!(kind(&w.decide()), "lead");
}
