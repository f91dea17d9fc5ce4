//! The value of the `sync` key: in synchronous mode, the members the primary has made
//! synchronous standbys. Every member listed received every commit acknowledged since it was
//! listed, so only they may be promoted without losing one.
//!
//! In quorum mode (`quorum` set to `k`) the members are the voters instead: every
//! acknowledged commit is on at least `k` of them, so a voter that sees the positions of
//! `n - k + 1` voters (itself included) and is the most advanced of them has every one.

use crate::names::MemberName;
use serde::{Deserialize, Serialize};

/// Who leads and which members are synchronous standbys of it.
///
/// In etcd a quorum key stores its voters under `voters` and leaves `members` empty: a
/// governor that knows only `FIRST` lists then reads "no synchronous standby" and promotes
/// nobody, instead of taking each voter for a standby with every commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SyncWire", into = "SyncWire")]
pub struct SyncState {
    /// The primary that wrote it.
    pub leader: Option<MemberName>,
    /// Its synchronous standbys (in quorum mode: the voters).
    #[serde(default)]
    pub members: Vec<MemberName>,
    /// Quorum mode: each acknowledged commit is on at least this many of `members` (0: no
    /// promise, nobody may be promoted).
    pub quorum: Option<u32>,
}

/// [`SyncState`] as stored: `FIRST` standbys under `members`, quorum voters under `voters`.
#[derive(Serialize, Deserialize)]
struct SyncWire {
    leader: Option<MemberName>,
    #[serde(default)]
    members: Vec<MemberName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    voters: Vec<MemberName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quorum: Option<u32>,
}

impl From<SyncWire> for SyncState {
    fn from(w: SyncWire) -> Self {
        let members = match w.quorum {
            // Quorum keys written before `voters` existed kept them under `members`.
            Some(_) if w.voters.is_empty() => w.members,
            Some(_) => w.voters,
            None => w.members,
        };
        SyncState {
            leader: w.leader,
            members,
            quorum: w.quorum,
        }
    }
}

impl From<SyncState> for SyncWire {
    fn from(s: SyncState) -> Self {
        let (members, voters) = match s.quorum {
            Some(_) => (Vec::new(), s.members),
            None => (s.members, Vec::new()),
        };
        SyncWire {
            leader: s.leader,
            members,
            voters,
            quorum: s.quorum,
        }
    }
}

impl SyncState {
    /// In quorum mode, how many voters a candidate must see (itself included, each no more
    /// advanced than it) to be sure it has every acknowledged commit: `n - k + 1`, or `None`
    /// when the key promises nothing (no voters, a quorum of 0) or is not a quorum key.
    pub fn voters_to_see(&self) -> Option<usize> {
        let k = self.quorum? as usize;
        let n = self.members.len();
        // A quorum above the voters (strict mode with too few of them) never let PostgreSQL
        // acknowledge anything under it, but ask for every voter rather than rely on that.
        (k > 0 && n > 0).then(|| if k > n { n } else { n + 1 - k })
    }

    /// "commits wait for ANY 1 of 2 replicas (m2, m3); a failover survives the loss of 1
    /// member without data loss", or the `FIRST` equivalent.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(MemberName::as_str).collect();
        let list = names.join(", ");
        match self.quorum {
            Some(k) if k > 0 && !names.is_empty() => {
                let n = names.len();
                let k = (k as usize).min(n);
                format!(
                    "commits wait for ANY {k} of {n} replica{} ({list}); a failover survives the loss of {} member{} without data loss",
                    if n == 1 { "" } else { "s" },
                    k,
                    if k == 1 { "" } else { "s" }
                )
            }
            Some(_) => {
                "quorum commit: no voter confirmed yet; no failover without data loss until one is"
                    .into()
            }
            None if names.is_empty() => {
                "synchronous mode: no synchronous standby confirmed; no failover without data loss"
                    .into()
            }
            None => format!(
                "commits wait for all of {list}; only {} may be promoted without data loss",
                if names.len() == 1 { "it" } else { "they" }
            ),
        }
    }

    /// Whether `m` is a synchronous standby.
    pub fn contains(&self, m: &MemberName) -> bool {
        self.members.contains(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<MemberName> {
        v.iter()
            .map(|n| MemberName::new(*n).expect("valid"))
            .collect()
    }

    #[test]
    fn a_quorum_key_stores_its_voters_apart_from_first_standbys() {
        let quorum = SyncState {
            leader: names(&["p"]).pop(),
            members: names(&["a", "b"]),
            quorum: Some(1),
        };
        let json = serde_json::to_value(&quorum).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"leader": "p", "members": [], "voters": ["a", "b"], "quorum": 1})
        );
        assert_eq!(serde_json::from_value::<SyncState>(json).ok(), Some(quorum));
        let first = SyncState {
            leader: names(&["p"]).pop(),
            members: names(&["a"]),
            quorum: None,
        };
        let json = serde_json::to_value(&first).expect("serializes");
        assert_eq!(json, serde_json::json!({"leader": "p", "members": ["a"]}));
        assert_eq!(serde_json::from_value::<SyncState>(json).ok(), Some(first));
        // A quorum key written with its voters under `members` still reads as one.
        let old: SyncState = serde_json::from_value(
            serde_json::json!({"leader": "p", "members": ["a", "b"], "quorum": 1}),
        )
        .expect("parses");
        assert_eq!(old.members, names(&["a", "b"]));
    }

    #[test]
    fn a_candidate_sees_n_minus_k_plus_one_voters_and_every_voter_when_k_exceeds_them() {
        let key = |n: &[&str], k| SyncState {
            leader: None,
            members: names(n),
            quorum: Some(k),
        };
        assert_eq!(key(&["a", "b"], 1).voters_to_see(), Some(2));
        assert_eq!(key(&["a", "b", "c"], 2).voters_to_see(), Some(2));
        assert_eq!(key(&["a", "b"], 2).voters_to_see(), Some(1));
        assert_eq!(key(&["a", "b"], 3).voters_to_see(), Some(2));
        assert_eq!(key(&["a", "b"], 0).voters_to_see(), None);
    }
}
