//! The value of the `sync` key: in synchronous mode, the members the primary has made
//! synchronous standbys. Every member listed received every commit acknowledged since it was
//! listed, so only they may be promoted without losing one.

use crate::names::MemberName;
use serde::{Deserialize, Serialize};

/// Who leads and which members are synchronous standbys of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The primary that wrote it.
    pub leader: Option<MemberName>,
    /// Its synchronous standbys.
    #[serde(default)]
    pub members: Vec<MemberName>,
}

impl SyncState {
    /// Whether `m` is a synchronous standby.
    pub fn contains(&self, m: &MemberName) -> bool {
        self.members.contains(m)
    }
}
