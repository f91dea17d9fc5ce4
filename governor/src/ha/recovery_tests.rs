//! Tests of the decision to recover a cluster whose members all lost their data from its
//! archive.

use super::test_world::*;
use super::*;
use spilo_model::MemberState;
use std::time::Duration;

/// An empty member of an existing cluster (`initialize` set) that nobody leads, where recovery
/// from the archive is on after 60 s and the last sign of data was `ago` seconds back.
fn empty_member(ago: u64) -> (World, HaConfig) {
    let mut w = World::new();
    w.data(DataDir::Empty).pg(PgState::Stopped);
    w.snap.local.data_seen_at = w.now - Duration::from_secs(ago);
    let cfg = HaConfig {
        archive_recovery_after: Some(Duration::from_secs(60)),
        ..cfg()
    };
    (w, cfg)
}

#[test]
fn after_the_delay_without_data_or_leader_an_empty_member_recovers_from_the_archive() {
    let (w, cfg) = empty_member(30);
    let d = decide(&w.snap, &cfg, w.now);
    assert_eq!(
        d,
        Decision::Wait {
            why: "no member has data and nobody leads: recovering the cluster from its archive \
                  in 30 s unless a member with data comes back"
                .into()
        }
    );
    let (w, cfg) = empty_member(61);
    assert_eq!(
        decide(&w.snap, &cfg, w.now),
        Decision::RecoverFromArchive {
            why: "no member has had data or led for 61 s: recovering the cluster from its archive"
                .into()
        }
    );
}

#[test]
fn a_member_with_data_a_leader_key_or_no_archive_recovery_keeps_it_waiting() {
    // Another member has data (it may be restarting): it leads, not the archive.
    let (mut w, cfg) = empty_member(600);
    w.view().members.insert(
        name("m2"),
        member(MemberRole::Replica, MemberState::Stopped, 1, 100),
    );
    let d = decide(&w.snap, &cfg, w.now);
    assert!(
        matches!(&d, Decision::Wait { why } if why.contains("m2 has data")),
        "{d}"
    );
    // A leader key (another member recovering, or a leader starting).
    let (mut w, cfg) = empty_member(600);
    w.view().leader = Some(LeaderKey {
        name: name("m2"),
        lease: 9,
    });
    let d = decide(&w.snap, &cfg, w.now);
    assert!(
        matches!(&d, Decision::Wait { why } if why.contains("has not started")),
        "{d}"
    );
    // Recovery off: the members wait for a person, as before.
    let (w, _) = empty_member(600);
    assert_eq!(
        w.decide(),
        Decision::Wait {
            why: "the data directory is empty and no running primary can be cloned".into()
        }
    );
    // A failed attempt backs off; nofailover members never recover; no lease, no race.
    let (mut w, cfg) = empty_member(600);
    w.snap.local.bootstrap_blocked = Some("bootstrap failed (1 attempt in a row)".into());
    assert_waits(
        &decide(&w.snap, &cfg, w.now),
        "bootstrap failed (1 attempt in a row)",
    );
    let (mut w, cfg) = empty_member(600);
    w.snap.tags.nofailover = true;
    assert_waits(
        &decide(&w.snap, &cfg, w.now),
        "the data directory is empty and no running primary can be cloned; members tagged nofailover never recover the cluster",
    );
    let (mut w, cfg) = empty_member(600);
    w.snap.lease = LeaseView::default();
    assert_waits(
        &decide(&w.snap, &cfg, w.now),
        "the data directory is empty and no running primary can be cloned; waiting for an etcd lease",
    );
}

#[test]
fn a_cluster_without_an_initialize_key_is_bootstrapped_not_recovered() {
    let (mut w, cfg) = empty_member(600);
    w.view().initialize = None;
    assert_eq!(decide(&w.snap, &cfg, w.now), Decision::Bootstrap);
}
