//! Synchronous replication, decided purely: which standbys the primary makes synchronous
//! (`synchronous_standby_names`) and which it publishes in the `sync` key, the list failover
//! is limited to.
//!
//! The rule that keeps "only a listed member is promoted" free of data loss: a member enters
//! the key only after PostgreSQL reports it `sync` and it has since flushed past the primary's
//! flush position at the moment it was first seen `sync` (so commits acknowledged before it
//! became synchronous are on it too); a member leaves the key before it leaves
//! `synchronous_standby_names`. The runtime writes the key first, then the setting.

use spilo_model::{ClusterConfig, Lsn, MemberName, MemberStatus, SyncState};
use std::collections::BTreeMap;

/// Synchronous mode's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncMode {
    /// Block writes rather than run without a synchronous standby.
    pub strict: bool,
    /// How many synchronous standbys.
    pub count: usize,
}

impl SyncMode {
    /// From the cluster's `config`; `None` when synchronous mode is off.
    pub fn from_config(c: Option<&ClusterConfig>) -> Option<SyncMode> {
        let c = c.filter(|c| c.synchronous_mode)?;
        Some(SyncMode {
            strict: c.synchronous_mode_strict,
            count: c.synchronous_node_count.unwrap_or(1).max(1) as usize,
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
    /// Members seen `sync` but not confirmed yet, with the flush position they must reach.
    pub pending: BTreeMap<MemberName, Lsn>,
}

/// Whether a member may ever be a synchronous standby, from its member key: it has one and is
/// not tagged `nofailover` (a standby that is never promoted cannot carry acknowledged commits
/// across a failover). The runtime and the simulation pass this to [`step`].
pub fn eligible(member: Option<&MemberStatus>) -> bool {
    member.is_some_and(|s| !s.tags.nofailover)
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
    pending: &BTreeMap<MemberName, Lsn>,
    flush_now: Lsn,
) -> SyncStep {
    let Some(mode) = mode else {
        return SyncStep {
            key: key.is_some().then_some(None),
            standby_names: String::new(),
            pending: BTreeMap::new(),
        };
    };
    let current: &[MemberName] = match key {
        Some(k) if k.leader.as_ref() == Some(me) => &k.members,
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
    };
    SyncStep {
        key: (key != Some(&wanted)).then_some(Some(wanted)),
        standby_names: standby_names(&chosen, mode.strict),
        pending: next_pending,
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
    });

    fn key(members: &[&str]) -> SyncState {
        SyncState {
            leader: Some(n("p")),
            members: members.iter().map(|m| n(m)).collect(),
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
            &BTreeMap::new(),
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
        assert_eq!(s2.pending, [(n("b"), Lsn(150))].into());
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
            &BTreeMap::new(),
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
            &BTreeMap::new(),
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
        });
        assert_eq!(
            step(&me, strict, None, &[], &any, &BTreeMap::new(), Lsn(1)).standby_names,
            "*"
        );
        assert_eq!(
            step(&me, ONE, None, &[], &any, &BTreeMap::new(), Lsn(1)).standby_names,
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
        };
        let s = step(
            &me,
            ONE,
            Some(&other),
            &[standby("a", true, 100), standby("b", true, 90)],
            &not_a,
            &BTreeMap::new(),
            Lsn(100),
        );
        // b is not trusted from another leader's key: it must be confirmed again.
        assert_eq!(s.key, Some(Some(key(&[]))));
        assert_eq!(s.standby_names, "FIRST 1 (\"b\")");
        assert_eq!(s.pending, [(n("b"), Lsn(100))].into());
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
            &BTreeMap::new(),
            Lsn(1),
        );
        assert_eq!(s.key, Some(None));
        assert_eq!(s.standby_names, "");
        assert_eq!(
            step(&me, None, None, &[], &any, &BTreeMap::new(), Lsn(1)).key,
            None
        );
    }

    #[test]
    fn two_standbys_are_all_required() {
        let two = Some(SyncMode {
            strict: false,
            count: 2,
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
            &BTreeMap::new(),
            Lsn(3),
        );
        assert_eq!(s.standby_names, "FIRST 2 (\"c\", \"b\")");
    }
}
