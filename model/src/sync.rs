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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The primary that wrote it.
    pub leader: Option<MemberName>,
    /// Its synchronous standbys (in quorum mode: the voters).
    #[serde(default)]
    pub members: Vec<MemberName>,
    /// Quorum mode: each acknowledged commit is on at least this many of `members` (0: no
    /// promise, nobody may be promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

impl SyncState {
    /// In quorum mode, how many voters a candidate must see (itself included, each no more
    /// advanced than it) to be sure it has every acknowledged commit: `n - k + 1`, or `None`
    /// when the key promises nothing (no voters, a quorum of 0) or is not a quorum key.
    pub fn voters_to_see(&self) -> Option<usize> {
        let k = self.quorum? as usize;
        let n = self.members.len();
        // A quorum above the voters cannot have acknowledged anything; ask for every voter.
        (k > 0 && n > 0).then(|| n + 1 - k.min(n))
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
