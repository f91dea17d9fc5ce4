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
//! 3. once the setting is in force in every walsender the primary notes its flush position
//!    `L`. A walsender reloads the setting on its own, after the postmaster forwards the
//!    reload signal, and until then acknowledges by the old one. `pg_stat_replication` shows
//!    which setting each has loaded only through `sync_priority` (named or not), so the step
//!    waits until every walsender shows exactly the new voters named, and at least
//!    [`RELOAD_GRACE`] since the setting was written (a change of `k` alone is invisible there;
//!    a walsender reloads within milliseconds of the signal unless its process is stopped);
//! 4. once `t` members of `S` have flushed past `L` (WAL is a log: they then have every
//!    earlier commit, and every later one was acknowledged under `ANY t (S)`), the key
//!    becomes `(S, t)`.
//!
//! Adding a voter or lowering the quorum is therefore immediate (step 1 is the target);
//! removing one or raising the quorum waits for step 4. A quorum of 0 promises nothing and
//! lets nobody be promoted.

use spilo_model::{ClusterConfig, Lsn, MemberName, MemberStatus, SyncState};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long after writing a quorum setting the primary waits before it takes the setting as
/// in force in walsenders whose `sync_priority` cannot show it (step 3).
pub const RELOAD_GRACE: Duration = Duration::from_secs(1);

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
    /// `sync_priority > 0`: its walsender has loaded a setting that names it.
    pub named: bool,
    /// `flush_lsn`.
    pub flush: Option<Lsn>,
}

/// The primary at the moment of a step: its flush position and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// `pg_current_wal_flush_lsn()`.
    pub flush: Lsn,
    /// When it was read.
    pub at: Instant,
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
    /// When the step that set it ran.
    pub set_at: Instant,
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
/// (members, not tagged nofailover); `pending` is what the last step returned; `now` is the
/// primary's flush position and the time.
pub fn step(
    me: &MemberName,
    mode: Option<SyncMode>,
    key: Option<&SyncState>,
    standbys: &[Standby],
    eligible: &dyn Fn(&MemberName) -> bool,
    pending: &Pending,
    now: Moment,
) -> SyncStep {
    let Some(mode) = mode else {
        return SyncStep {
            key: key.is_some().then_some(None),
            standby_names: String::new(),
            pending: Pending::default(),
        };
    };
    if mode.quorum {
        return quorum_step(me, mode, key, standbys, eligible, pending, now);
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
                next_pending.insert(name.clone(), now.flush);
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
    now: Moment,
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
    let next = match &pending.quorum {
        // The key covers both settings and PostgreSQL was given the target.
        Some(c) if c.voters == voters && c.quorum == quorum && key == Some(&covering) => {
            match c.since {
                None if in_force(c, standbys, now.at) => QuorumChange {
                    since: Some(now.flush),
                    ..c.clone()
                },
                None => c.clone(),
                Some(since) => {
                    let mut reached: Vec<&MemberName> = standbys
                        .iter()
                        .filter(|s| voters.contains(&s.name) && s.flush.is_some_and(|f| f >= since))
                        .map(|s| &s.name)
                        .collect();
                    reached.sort();
                    reached.dedup();
                    if reached.len() >= quorum as usize {
                        return SyncStep {
                            key: write(&target),
                            standby_names: names,
                            pending: Pending::default(),
                        };
                    }
                    c.clone()
                }
            }
        }
        _ => QuorumChange {
            voters: voters.clone(),
            quorum,
            set_at: now.at,
            since: None,
        },
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

/// Whether every walsender acknowledges by the setting `change` wrote: each names exactly the
/// voters (a streaming voter named, nobody else named) and the grace for the change of `k`,
/// which `pg_stat_replication` cannot show, has passed.
fn in_force(change: &QuorumChange, standbys: &[Standby], now: Instant) -> bool {
    now.saturating_duration_since(change.set_at) >= RELOAD_GRACE
        && standbys.iter().all(|s| {
            if change.voters.contains(&s.name) {
                s.named || !s.streaming
            } else {
                !s.named
            }
        })
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
