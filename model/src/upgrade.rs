//! The record of a major upgrade on AWS that `spilo apply` has started and not finished (the
//! `upgrade` key): an apply stopped halfway leaves it, and the next plan finishes the
//! upgrade from it (the stack, the rollout, the base backup and the statistics on the new
//! version), which it could not tell from the members alone once they run the new version.

use serde::{Deserialize, Serialize};

/// A major upgrade under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// The major version the members ran.
    pub from: u32,
    /// The one they are upgraded to.
    pub to: u32,
}
