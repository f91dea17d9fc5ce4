//! Unit tests of `ha::sync`: the `FIRST` steps and each step of a quorum change.

use super::*;
use std::time::{Duration, Instant};

fn n(s: &str) -> MemberName {
    MemberName::new(s).expect("valid")
}

fn standby(name: &str, sync: bool, flush: u64) -> Standby {
    Standby {
        name: n(name),
        streaming: true,
        sync,
        named: sync,
        flush: Some(Lsn(flush)),
    }
}

/// A streaming standby whose walsender names it in a quorum setting.
fn voter(name: &str, flush: u64) -> Standby {
    Standby {
        name: n(name),
        streaming: true,
        sync: false,
        named: true,
        flush: Some(Lsn(flush)),
    }
}

fn base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The primary at flush position `flush`, at the start of the test.
fn at(flush: u64) -> Moment {
    at_ms(flush, 0)
}

/// The primary at flush position `flush`, `ms` milliseconds into the test.
fn at_ms(flush: u64, ms: u64) -> Moment {
    Moment {
        flush: Lsn(flush),
        at: base() + Duration::from_millis(ms),
    }
}

const ONE: Option<SyncMode> = Some(SyncMode {
    strict: false,
    count: 1,
    quorum: false,
});

fn key(members: &[&str]) -> SyncState {
    SyncState {
        leader: Some(n("p")),
        members: members.iter().map(|m| n(m)).collect(),
        quorum: None,
    }
}

fn any(_: &MemberName) -> bool {
    true
}

#[test]
fn a_new_standby_is_named_first_and_published_only_once_confirmed() {
    let me = n("p");
    // Pass 1: nobody synchronous yet. The most advanced standby is named in the setting,
    // the key says nobody.
    let s1 = step(
        &me,
        ONE,
        None,
        &[standby("a", false, 90), standby("b", false, 100)],
        &any,
        &Pending::default(),
        at(100),
    );
    assert_eq!(s1.standby_names, "FIRST 1 (\"b\")");
    assert_eq!(s1.key, Some(Some(key(&[]))));
    assert!(s1.pending.is_empty());
    // Pass 2: PostgreSQL reports b sync; its confirmation waits for the flush position now.
    let s2 = step(
        &me,
        ONE,
        Some(&key(&[])),
        &[standby("a", false, 90), standby("b", true, 100)],
        &any,
        &s1.pending,
        at(150),
    );
    assert_eq!(s2.key, None);
    assert_eq!(s2.pending.standbys, [(n("b"), Lsn(150))].into());
    // Pass 3: b flushed past it: it is published.
    let s3 = step(
        &me,
        ONE,
        Some(&key(&[])),
        &[standby("b", true, 150)],
        &any,
        &s2.pending,
        at(200),
    );
    assert_eq!(s3.key, Some(Some(key(&["b"]))));
    assert_eq!(s3.standby_names, "FIRST 1 (\"b\")");
}

#[test]
fn a_synchronous_standby_stays_while_it_streams_and_leaves_the_key_when_it_stops() {
    let me = n("p");
    let k = key(&["a"]);
    // b is further ahead, but a is synchronous already: no flapping.
    let s = step(
        &me,
        ONE,
        Some(&k),
        &[standby("a", true, 90), standby("b", false, 100)],
        &any,
        &Pending::default(),
        at(100),
    );
    assert_eq!(s.key, None);
    assert_eq!(s.standby_names, "FIRST 1 (\"a\")");
    // a disconnects: it leaves the key (written before the setting changes) and b is named.
    let s = step(
        &me,
        ONE,
        Some(&k),
        &[standby("b", false, 100)],
        &any,
        &Pending::default(),
        at(100),
    );
    assert_eq!(s.key, Some(Some(key(&[]))));
    assert_eq!(s.standby_names, "FIRST 1 (\"b\")");
}

#[test]
fn without_standbys_strict_mode_blocks_and_normal_mode_runs_alone() {
    let me = n("p");
    let strict = Some(SyncMode {
        strict: true,
        count: 1,
        quorum: false,
    });
    assert_eq!(
        step(&me, strict, None, &[], &any, &Pending::default(), at(1)).standby_names,
        "*"
    );
    assert_eq!(
        step(&me, ONE, None, &[], &any, &Pending::default(), at(1)).standby_names,
        ""
    );
}

#[test]
fn nofailover_members_and_a_key_of_another_leader_do_not_count() {
    let me = n("p");
    let not_a = |m: &MemberName| m.as_str() != "a";
    let other = SyncState {
        leader: Some(n("old")),
        members: vec![n("b")],
        quorum: None,
    };
    let s = step(
        &me,
        ONE,
        Some(&other),
        &[standby("a", true, 100), standby("b", true, 90)],
        &not_a,
        &Pending::default(),
        at(100),
    );
    // b is not trusted from another leader's key: it must be confirmed again.
    assert_eq!(s.key, Some(Some(key(&[]))));
    assert_eq!(s.standby_names, "FIRST 1 (\"b\")");
    assert_eq!(s.pending.standbys, [(n("b"), Lsn(100))].into());
}

#[test]
fn synchronous_mode_off_clears_the_key_and_the_setting() {
    let me = n("p");
    let s = step(
        &me,
        None,
        Some(&key(&["a"])),
        &[standby("a", true, 1)],
        &any,
        &Pending::default(),
        at(1),
    );
    assert_eq!(s.key, Some(None));
    assert_eq!(s.standby_names, "");
    assert_eq!(
        step(&me, None, None, &[], &any, &Pending::default(), at(1)).key,
        None
    );
}

#[test]
fn two_standbys_are_all_required() {
    let two = Some(SyncMode {
        strict: false,
        count: 2,
        quorum: false,
    });
    let s = step(
        &n("p"),
        two,
        None,
        &[
            standby("a", false, 1),
            standby("b", false, 2),
            standby("c", false, 3),
        ],
        &any,
        &Pending::default(),
        at(3),
    );
    assert_eq!(s.standby_names, "FIRST 2 (\"c\", \"b\")");
}

const QUORUM_ONE: Option<SyncMode> = Some(SyncMode {
    strict: false,
    count: 1,
    quorum: true,
});

fn qkey(members: &[&str], quorum: u32) -> SyncState {
    SyncState {
        leader: Some(n("p")),
        members: members.iter().map(|m| n(m)).collect(),
        quorum: Some(quorum),
    }
}

/// Runs steps as the runtime does (the key written when asked, a pass every two seconds)
/// until nothing changes; returns the last step, the key and every key written.
fn settle(
    mode: Option<SyncMode>,
    mut key: Option<SyncState>,
    standbys: &[Standby],
    flush: u64,
) -> (SyncStep, Option<SyncState>, Vec<Option<SyncState>>) {
    let mut pending = Pending::default();
    let mut keys = Vec::new();
    for pass in 0..10 {
        let s = step(
            &n("p"),
            mode,
            key.as_ref(),
            standbys,
            &any,
            &pending,
            at_ms(flush, pass * 2_000),
        );
        if let Some(k) = &s.key {
            key = k.clone();
            keys.push(k.clone());
        }
        pending = s.pending.clone();
        if s.key.is_none() && s.pending.is_empty() {
            return (s, key, keys);
        }
    }
    panic!("no steady state: {keys:?}");
}

#[test]
fn quorum_names_every_streaming_standby_and_waits_for_any_k() {
    let (s, key, keys) = settle(
        QUORUM_ONE,
        Some(qkey(&[], 0)),
        &[voter("b", 100), voter("a", 100)],
        100,
    );
    assert_eq!(s.standby_names, "ANY 1 (\"a\", \"b\")");
    // From a key that promised nothing, the covering key still promises nothing; the
    // voters are published with their quorum once one of them flushed past the primary's
    // position once the setting was in force.
    assert_eq!(
        keys,
        vec![Some(qkey(&["a", "b"], 0)), Some(qkey(&["a", "b"], 1))]
    );
    assert_eq!(key.and_then(|k| k.voters_to_see()), Some(2));
}

#[test]
fn adding_a_voter_is_published_at_once_and_removing_one_waits_for_the_flush() {
    let me = n("p");
    // c joins: the key grows before the setting names it.
    let s = step(
        &me,
        QUORUM_ONE,
        Some(&qkey(&["a", "b"], 1)),
        &[voter("a", 1), voter("b", 1), standby("c", false, 1)],
        &any,
        &Pending::default(),
        at(1),
    );
    assert_eq!(s.key, Some(Some(qkey(&["a", "b", "c"], 1))));
    assert_eq!(s.standby_names, "ANY 1 (\"a\", \"b\", \"c\")");
    assert!(s.pending.is_empty());
    // b stops streaming: the setting drops it at once, the key keeps it (a commit may be
    // on b alone) until a or c has flushed past a position taken after the change.
    let left = [voter("a", 10), voter("c", 5)];
    let k = qkey(&["a", "b", "c"], 1);
    let s1 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &left,
        &any,
        &Pending::default(),
        at_ms(10, 0),
    );
    assert_eq!(s1.key, None);
    assert_eq!(s1.standby_names, "ANY 1 (\"a\", \"c\")");
    let s2 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &left,
        &any,
        &s1.pending,
        at_ms(20, 1_000),
    );
    assert_eq!(s2.key, None, "the position is taken, nobody has it yet");
    let s3 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &[voter("a", 20), voter("c", 5)],
        &any,
        &s2.pending,
        at_ms(30, 2_000),
    );
    assert_eq!(s3.key, Some(Some(qkey(&["a", "c"], 1))));
}

#[test]
fn raising_the_quorum_waits_for_that_many_voters_past_the_position() {
    let two = Some(SyncMode {
        strict: false,
        count: 2,
        quorum: true,
    });
    let me = n("p");
    let k = qkey(&["a", "b"], 1);
    let all = |fa, fb| [voter("a", fa), voter("b", fb)];
    let s1 = step(
        &me,
        two,
        Some(&k),
        &all(1, 1),
        &any,
        &Pending::default(),
        at(1),
    );
    // The key keeps the weaker promise while PostgreSQL already waits for both.
    assert_eq!(s1.key, None);
    assert_eq!(s1.standby_names, "ANY 2 (\"a\", \"b\")");
    let s2 = step(
        &me,
        two,
        Some(&k),
        &all(1, 1),
        &any,
        &s1.pending,
        at_ms(50, 1_000),
    );
    let s3 = step(
        &me,
        two,
        Some(&k),
        &all(60, 40),
        &any,
        &s2.pending,
        at_ms(60, 2_000),
    );
    assert_eq!(s3.key, None, "only one voter past 50");
    // Two walsenders of one voter are one voter.
    let twice = [voter("a", 60), voter("a", 60), voter("b", 40)];
    let s3 = step(
        &me,
        two,
        Some(&k),
        &twice,
        &any,
        &s3.pending,
        at_ms(60, 2_500),
    );
    assert_eq!(s3.key, None, "a twice is still one voter past 50");
    let s4 = step(
        &me,
        two,
        Some(&k),
        &all(60, 50),
        &any,
        &s3.pending,
        at_ms(60, 3_000),
    );
    assert_eq!(s4.key, Some(Some(qkey(&["a", "b"], 2))));
}

#[test]
fn the_position_is_taken_only_after_the_reload_grace() {
    // A change of k alone does not show in pg_stat_replication: a pass soon after the
    // setting changed (an etcd event woke the loop) must not take the position yet, or a
    // walsender still acknowledging by ANY 1 could release a commit the key says is on 2.
    let two = Some(SyncMode {
        strict: false,
        count: 2,
        quorum: true,
    });
    let me = n("p");
    let k = qkey(&["a", "b"], 1);
    let all = [voter("a", 1), voter("b", 1)];
    let s1 = step(
        &me,
        two,
        Some(&k),
        &all,
        &any,
        &Pending::default(),
        at_ms(1, 0),
    );
    let early = RELOAD_GRACE.as_millis() as u64 - 1;
    let s2 = step(&me, two, Some(&k), &all, &any, &s1.pending, at_ms(5, early));
    assert_eq!(s2.pending.quorum.as_ref().and_then(|c| c.since), None);
    let s3 = step(
        &me,
        two,
        Some(&k),
        &all,
        &any,
        &s2.pending,
        at_ms(7, early + 1),
    );
    assert_eq!(
        s3.pending.quorum.as_ref().and_then(|c| c.since),
        Some(Lsn(7))
    );
}

#[test]
fn the_position_waits_for_every_walsender_to_name_exactly_the_new_voters() {
    // b is tagged nofailover while streaming: it leaves the setting, but until its walsender
    // reloads it still acknowledges commits (named), so no position is taken.
    let me = n("p");
    let not_b = |m: &MemberName| m.as_str() != "b";
    let k = qkey(&["a", "b"], 1);
    let reloading = [voter("a", 1), voter("b", 1)];
    let s1 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &reloading,
        &not_b,
        &Pending::default(),
        at(1),
    );
    assert_eq!(s1.standby_names, "ANY 1 (\"a\")");
    let s2 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &reloading,
        &not_b,
        &s1.pending,
        at_ms(9, 5_000),
    );
    assert_eq!(s2.pending.quorum.as_ref().and_then(|c| c.since), None);
    // A voter whose walsender has not loaded the setting naming it holds it back too.
    let unnamed = [standby("a", false, 1), standby("b", false, 1)];
    let s3 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &unnamed,
        &not_b,
        &s2.pending,
        at_ms(9, 6_000),
    );
    assert_eq!(s3.pending.quorum.as_ref().and_then(|c| c.since), None);
    let reloaded = [voter("a", 9), standby("b", false, 9)];
    let s4 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &reloaded,
        &not_b,
        &s3.pending,
        at_ms(9, 7_000),
    );
    assert_eq!(
        s4.pending.quorum.as_ref().and_then(|c| c.since),
        Some(Lsn(9))
    );
    let s5 = step(
        &me,
        QUORUM_ONE,
        Some(&k),
        &reloaded,
        &not_b,
        &s4.pending,
        at_ms(9, 8_000),
    );
    assert_eq!(s5.key, Some(Some(qkey(&["a"], 1))));
}

#[test]
fn a_quorum_key_of_another_primary_or_without_voters_promises_nothing() {
    let other = SyncState {
        leader: Some(n("old")),
        members: vec![n("a"), n("b")],
        quorum: Some(1),
    };
    let (_, key, keys) = settle(QUORUM_ONE, Some(other), &[voter("a", 5)], 5);
    assert_eq!(keys.first(), Some(&Some(qkey(&["a"], 0))));
    assert_eq!(key, Some(qkey(&["a"], 1)));
    // Without voters: asynchronous (or "*" when strict), and a key that lets nobody in.
    let (s, key, _) = settle(QUORUM_ONE, Some(qkey(&["a"], 1)), &[], 5);
    assert_eq!(s.standby_names, "");
    assert_eq!(key.as_ref().and_then(SyncState::voters_to_see), None);
    let strict = Some(SyncMode {
        strict: true,
        count: 2,
        quorum: true,
    });
    let (s, _, _) = settle(strict, None, &[], 5);
    assert_eq!(s.standby_names, "*");
    // Strict with fewer voters than the quorum: PostgreSQL waits for what cannot come, and
    // the key never claims it.
    let s = step(
        &n("p"),
        strict,
        None,
        &[voter("a", 5)],
        &any,
        &Pending::default(),
        at(5),
    );
    assert_eq!(s.standby_names, "ANY 2 (\"a\")");
    assert_eq!(s.key, Some(Some(qkey(&["a"], 0))));
}

#[test]
fn the_key_says_in_words_what_it_promises() {
    assert_eq!(
        qkey(&["m2", "m3"], 1).describe(),
        "commits wait for ANY 1 of 2 replicas (m2, m3); a failover survives the loss of 1 member without data loss"
    );
    assert_eq!(qkey(&["m2", "m3"], 1).voters_to_see(), Some(2));
    assert_eq!(qkey(&["m2", "m3", "m4"], 2).voters_to_see(), Some(2));
    assert_eq!(qkey(&["m2"], 3).voters_to_see(), Some(1));
    assert!(
        key(&["m2"])
            .describe()
            .starts_with("commits wait for all of m2")
    );
}
