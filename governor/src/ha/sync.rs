//! Synchronous replication, decided purely: which standbys the primary makes synchronous
//! (`synchronous_standby_names`) and which it publishes in the `sync` key, the list failover
//! is limited to.
//!
//! The rule that keeps "only a listed member is promoted" free of data loss: a member enters
//! the key only after PostgreSQL reports it `sync` and it has since flushed past the primary's
//! flush position at the moment it was first seen `sync` (so commits acknowledged before it
//! became synchronous are on it too); a member leaves the key before it leaves
//! `synchronous_standby_names`. The runtime writes the key first, then the setting.
//!
//! Quorum mode (`ANY k (...)`) keeps a different promise: the key's voters `V` and quorum `k`
//! say that every acknowledged commit is on at least `k` voters, so a voter that sees `n - k +
//! 1` voters (itself included) and is the most advanced of them has every one. Invariant: the
//! key covers every commit acknowledged so far and every commit PostgreSQL's current setting
//! can acknowledge. A change from `(V, k)` to the target `(S, t)` keeps it at every step:
//!
//! 1. the key becomes `(V ∪ S, min(k, t))`, which covers both settings (a commit on `k` of `V`,
//!    or on `t` of `S`, is on `min(k, t)` of the union); when that is the target, done;
//! 2. PostgreSQL is set to `ANY t (S)` (the key is written first, so it never promises more
//!    than the setting in force gives);
//! 3. on a later pass (every walsender has reloaded the setting by then) the primary notes its
//!    flush position `L`;
//! 4. once `t` members of `S` have flushed past `L` (WAL is a log: they then have every
//!    earlier commit, and every later one was acknowledged under `ANY t (S)`), the key
//!    becomes `(S, t)`.
//!
//! Adding a voter or lowering the quorum is therefore immediate (step 1 is the target);
//! removing one or raising the quorum waits for step 4. A quorum of 0 promises nothing and
//! lets nobody be promoted.

use spilo_model::{ClusterConfig, Lsn, MemberName, MemberStatus, SyncState};
use std::collections::BTreeMap;

/// Synchronous mode's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncMode {
    /// Block writes rather than run without a synchronous standby.
    pub strict: bool,
    /// How many synchronous standbys (quorum mode: how many voters each commit waits for).
    pub count: usize,
    /// Quorum commit (`ANY k`) rather than named standbys (`FIRST k`).
    pub quorum: bool,
}

impl SyncMode {
    /// From the cluster's `config`; `None` when synchronous mode is off.
    pub fn from_config(c: Option<&ClusterConfig>) -> Option<SyncMode> {
        let c = c.filter(|c| c.synchronous_mode)?;
        Some(SyncMode {
            strict: c.synchronous_mode_strict,
            count: c.synchronous_node_count.unwrap_or(1).max(1) as usize,
            quorum: c.synchronous_mode_quorum,
        })
    }
}

/// One row of `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// Its `application_name`: the member name.
    pub name: MemberName,
    /// `state = 'streaming'`.
    pub streaming: bool,
    /// `sync_state = 'sync'`.
    pub sync: bool,
    /// `flush_lsn`.
    pub flush: Option<Lsn>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStep {
    /// Write the `sync` key with this value (`None` inside: delete it). Outer `None`: leave it.
    pub key: Option<Option<SyncState>>,
    /// The value `synchronous_standby_names` should have.
    pub standby_names: String,
    /// What the next step must remember.
    pub pending: Pending,
}

/// Confirmations in progress, carried from one step to the next by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// `FIRST` mode: members seen `sync` but not confirmed yet, with the flush position they
    /// must reach.
    pub standbys: BTreeMap<MemberName, Lsn>,
    /// Quorum mode: the setting PostgreSQL was given and, from the pass after, the flush
    /// position `t` of its voters must reach before the key may say so.
    pub quorum: Option<QuorumChange>,
}

impl Pending {
    /// Nothing in progress.
    pub fn is_empty(&self) -> bool {
        self.standbys.is_empty() && self.quorum.is_none()
    }
}

/// A quorum setting on its way into the `sync` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumChange {
    /// The voters PostgreSQL was set to.
    pub voters: Vec<MemberName>,
    /// The quorum it was set to.
    pub quorum: u32,
    /// The primary's flush position once the setting was in force.
    pub since: Option<Lsn>,
}

/// Whether a member may ever be a synchronous standby, from its member key: it has one and is
/// not tagged `nofailover` (a standby that is never promoted cannot carry acknowledged commits
/// across a failover). The runtime and the simulation pass this to [`step`].
pub fn eligible(member: Option<&MemberStatus>) -> bool {
    member.is_some_and(|s| !s.tags.nofailover)
}

/// `synchronous_standby_names` for quorum commit: any `quorum` of `voters` confirm each
/// commit (`*` in strict mode without voters: any standby; empty otherwise).
pub fn quorum_names(voters: &[MemberName], quorum: u32, strict: bool) -> String {
    if voters.is_empty() || quorum == 0 {
        return if strict { "*".into() } else { String::new() };
    }
    let quoted: Vec<String> = voters.iter().map(|n| format!("\"{n}\"")).collect();
    format!("ANY {quorum} ({})", quoted.join(", "))
}

/// `synchronous_standby_names` for `names`: all of them must confirm each commit.
pub fn standby_names(names: &[MemberName], strict: bool) -> String {
    if names.is_empty() {
        return if strict { "*".into() } else { String::new() };
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("FIRST {} ({})", names.len(), quoted.join(", "))
}

/// The next step for the primary `me`. `eligible` says which members may ever be synchronous
/// (members, not tagged nofailover); `pending` is what the last step returned; `flush_now` is
/// the primary's flush position now.
pub fn step(
    me: &MemberName,
    mode: Option<SyncMode>,
    key: Option<&SyncState>,
    standbys: &[Standby],
    eligible: &dyn Fn(&MemberName) -> bool,
    pending: &Pending,
    flush_now: Lsn,
) -> SyncStep {
    let Some(mode) = mode else {
        return SyncStep {
            key: key.is_some().then_some(None),
            standby_names: String::new(),
            pending: Pending::default(),
        };
    };
    if mode.quorum {
        return quorum_step(me, mode, key, standbys, eligible, pending, flush_now);
    }
    let pending = &pending.standbys;
    // A quorum key's voters do not each have every commit: they are confirmed again.
    let current: &[MemberName] = match key {
        Some(k) if k.leader.as_ref() == Some(me) && k.quorum.is_none() => &k.members,
        _ => &[],
    };
    // Streaming and eligible standbys; the ones already synchronous first (no flapping), then
    // by flush position, then by name.
    let mut usable: Vec<&Standby> = standbys
        .iter()
        .filter(|s| s.streaming && eligible(&s.name) && s.name != *me)
        .collect();
    usable.sort_by(|a, b| {
        current
            .contains(&b.name)
            .cmp(&current.contains(&a.name))
            .then(b.flush.cmp(&a.flush))
            .then(a.name.cmp(&b.name))
    });
    let chosen: Vec<MemberName> = usable
        .iter()
        .take(mode.count)
        .map(|s| s.name.clone())
        .collect();
    let mut next_pending = BTreeMap::new();
    let mut confirmed = Vec::new();
    for name in &chosen {
        if current.contains(name) {
            confirmed.push(name.clone());
            continue;
        }
        let Some(s) = usable.iter().find(|s| s.name == *name) else {
            continue;
        };
        if !s.sync {
            continue;
        }
        match pending.get(name) {
            Some(since) if s.flush.is_some_and(|f| f >= *since) => confirmed.push(name.clone()),
            Some(since) => {
                next_pending.insert(name.clone(), *since);
            }
            None => {
                next_pending.insert(name.clone(), flush_now);
            }
        }
    }
    let wanted = SyncState {
        leader: Some(me.clone()),
        members: confirmed,
        quorum: None,
    };
    SyncStep {
        key: (key != Some(&wanted)).then_some(Some(wanted)),
        standby_names: standby_names(&chosen, mode.strict),
        pending: Pending {
            standbys: next_pending,
            quorum: None,
        },
    }
}

/// [`step`] in quorum mode: every streaming eligible standby votes, the quorum is the
/// configured count (capped by the voters unless strict), and the key moves towards it in
/// the order the module documentation proves safe.
fn quorum_step(
    me: &MemberName,
    mode: SyncMode,
    key: Option<&SyncState>,
    standbys: &[Standby],
    eligible: &dyn Fn(&MemberName) -> bool,
    pending: &Pending,
    flush_now: Lsn,
) -> SyncStep {
    let state = |members: Vec<MemberName>, quorum: u32| SyncState {
        leader: Some(me.clone()),
        members,
        quorum: Some(quorum),
    };
    // A key another primary wrote, or a FIRST key, promises nothing about this primary's
    // commits.
    let (cur_voters, cur_quorum) = match key {
        Some(k) if k.leader.as_ref() == Some(me) && k.quorum.is_some() => {
            (k.members.clone(), k.quorum.unwrap_or(0))
        }
        _ => (Vec::new(), 0),
    };
    let mut voters: Vec<MemberName> = standbys
        .iter()
        .filter(|s| s.streaming && eligible(&s.name) && s.name != *me)
        .map(|s| s.name.clone())
        .collect();
    voters.sort();
    voters.dedup();
    let count = u32::try_from(mode.count).unwrap_or(u32::MAX);
    let quorum = match voters.len() {
        0 => 0,
        _ if mode.strict => count,
        n => count.min(u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let names = quorum_names(&voters, quorum, mode.strict);
    let target = if quorum == 0 {
        state(Vec::new(), 0)
    } else {
        state(voters.clone(), quorum)
    };
    let write = |wanted: &SyncState| (key != Some(wanted)).then(|| Some(wanted.clone()));
    // Promising nothing is always true; so is the target once it is the key already.
    if quorum == 0 || (cur_voters == target.members && cur_quorum == quorum) {
        return SyncStep {
            key: write(&target),
            standby_names: names,
            pending: Pending::default(),
        };
    }
    let mut union: Vec<MemberName> = cur_voters.iter().chain(&voters).cloned().collect();
    union.sort();
    union.dedup();
    let covering = state(union, cur_quorum.min(quorum));
    if covering == target {
        return SyncStep {
            key: write(&target),
            standby_names: names,
            pending: Pending::default(),
        };
    }
    let change = |since: Option<Lsn>| QuorumChange {
        voters: voters.clone(),
        quorum,
        since,
    };
    let next = match &pending.quorum {
        // The key covers both settings and PostgreSQL has had the target for a pass.
        Some(c) if c.voters == voters && c.quorum == quorum && key == Some(&covering) => {
            match c.since {
                None => change(Some(flush_now)),
                Some(since) => {
                    let reached = standbys
                        .iter()
                        .filter(|s| voters.contains(&s.name) && s.flush.is_some_and(|f| f >= since))
                        .count();
                    if reached >= quorum as usize {
                        return SyncStep {
                            key: write(&target),
                            standby_names: names,
                            pending: Pending::default(),
                        };
                    }
                    change(Some(since))
                }
            }
        }
        _ => change(None),
    };
    SyncStep {
        key: write(&covering),
        standby_names: names,
        pending: Pending {
            standbys: BTreeMap::new(),
            quorum: Some(next),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> MemberName {
        MemberName::new(s).expect("valid")
    }

    fn standby(name: &str, sync: bool, flush: u64) -> Standby {
        Standby {
            name: n(name),
            streaming: true,
            sync,
            flush: Some(Lsn(flush)),
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
            Lsn(100),
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
            Lsn(150),
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
            Lsn(200),
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
            Lsn(100),
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
            Lsn(100),
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
            step(&me, strict, None, &[], &any, &Pending::default(), Lsn(1)).standby_names,
            "*"
        );
        assert_eq!(
            step(&me, ONE, None, &[], &any, &Pending::default(), Lsn(1)).standby_names,
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
            Lsn(100),
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
            Lsn(1),
        );
        assert_eq!(s.key, Some(None));
        assert_eq!(s.standby_names, "");
        assert_eq!(
            step(&me, None, None, &[], &any, &Pending::default(), Lsn(1)).key,
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
            Lsn(3),
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

    /// Runs steps as the runtime does (the key written when asked) until nothing changes;
    /// returns the last step and the key.
    fn settle(
        mode: Option<SyncMode>,
        mut key: Option<SyncState>,
        standbys: &[Standby],
        flush: u64,
    ) -> (SyncStep, Option<SyncState>, Vec<Option<SyncState>>) {
        let mut pending = Pending::default();
        let mut keys = Vec::new();
        for _ in 0..10 {
            let s = step(
                &n("p"),
                mode,
                key.as_ref(),
                standbys,
                &any,
                &pending,
                Lsn(flush),
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
            &[standby("b", false, 100), standby("a", false, 100)],
            100,
        );
        assert_eq!(s.standby_names, "ANY 1 (\"a\", \"b\")");
        // From a key that promised nothing, the covering key still promises nothing; the
        // voters are published with their quorum once one of them flushed past the primary's
        // position of the pass after the setting changed.
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
            &[
                standby("a", false, 1),
                standby("b", false, 1),
                standby("c", false, 1),
            ],
            &any,
            &Pending::default(),
            Lsn(1),
        );
        assert_eq!(s.key, Some(Some(qkey(&["a", "b", "c"], 1))));
        assert_eq!(s.standby_names, "ANY 1 (\"a\", \"b\", \"c\")");
        assert!(s.pending.is_empty());
        // b stops streaming: the setting drops it at once, the key keeps it (a commit may be
        // on b alone) until a or c has flushed past a position taken after the change.
        let left = [standby("a", false, 10), standby("c", false, 5)];
        let s1 = step(
            &me,
            QUORUM_ONE,
            Some(&qkey(&["a", "b", "c"], 1)),
            &left,
            &any,
            &Pending::default(),
            Lsn(10),
        );
        assert_eq!(s1.key, None);
        assert_eq!(s1.standby_names, "ANY 1 (\"a\", \"c\")");
        let s2 = step(
            &me,
            QUORUM_ONE,
            Some(&qkey(&["a", "b", "c"], 1)),
            &left,
            &any,
            &s1.pending,
            Lsn(20),
        );
        assert_eq!(s2.key, None, "the position is taken, nobody has it yet");
        let s3 = step(
            &me,
            QUORUM_ONE,
            Some(&qkey(&["a", "b", "c"], 1)),
            &[standby("a", false, 20), standby("c", false, 5)],
            &any,
            &s2.pending,
            Lsn(30),
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
        let all = |fa, fb| [standby("a", false, fa), standby("b", false, fb)];
        let s1 = step(
            &me,
            two,
            Some(&qkey(&["a", "b"], 1)),
            &all(1, 1),
            &any,
            &Pending::default(),
            Lsn(1),
        );
        // The key keeps the weaker promise while PostgreSQL already waits for both.
        assert_eq!(s1.key, None);
        assert_eq!(s1.standby_names, "ANY 2 (\"a\", \"b\")");
        let s2 = step(
            &me,
            two,
            Some(&qkey(&["a", "b"], 1)),
            &all(1, 1),
            &any,
            &s1.pending,
            Lsn(50),
        );
        let s3 = step(
            &me,
            two,
            Some(&qkey(&["a", "b"], 1)),
            &all(60, 40),
            &any,
            &s2.pending,
            Lsn(60),
        );
        assert_eq!(s3.key, None, "only one voter past 50");
        let s4 = step(
            &me,
            two,
            Some(&qkey(&["a", "b"], 1)),
            &all(60, 50),
            &any,
            &s3.pending,
            Lsn(60),
        );
        assert_eq!(s4.key, Some(Some(qkey(&["a", "b"], 2))));
    }

    #[test]
    fn a_quorum_key_of_another_primary_or_without_voters_promises_nothing() {
        let other = SyncState {
            leader: Some(n("old")),
            members: vec![n("a"), n("b")],
            quorum: Some(1),
        };
        let (_, key, keys) = settle(QUORUM_ONE, Some(other), &[standby("a", false, 5)], 5);
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
            &[standby("a", false, 5)],
            &any,
            &Pending::default(),
            Lsn(5),
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
}
