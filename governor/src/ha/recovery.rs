//! Recovery of a cluster from its own archive, decided: when every member lost its data (all
//! instances replaced, a stack recreated), the cluster's `initialize` key still names its
//! system, and nobody leads, a member with an empty data directory takes the leader key and
//! restores the latest base backup with every archived WAL file. It waits first, long enough
//! for a member with data that is only restarting to come back and lead (its unarchived WAL
//! would be lost otherwise).

use super::{ClusterView, DataDir, Decision, HaConfig, Snapshot};
use std::time::Instant;

/// What a member with an empty data directory does in a cluster with an `initialize` key and
/// no running primary to copy.
pub(super) fn from_archive(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    now: Instant,
) -> Decision {
    let waiting = "the data directory is empty and no running primary can be cloned";
    let Some(after) = cfg.archive_recovery_after else {
        return Decision::Wait {
            why: waiting.into(),
        };
    };
    if view.leader.is_some() {
        return Decision::Wait {
            why: format!("{waiting}; the leader has not started yet"),
        };
    }
    if let Some((name, _)) = view
        .members
        .iter()
        .find(|(name, m)| **name != s.me && m.timeline.is_some())
    {
        return Decision::Wait {
            why: format!("{waiting}; {name} has data and may lead"),
        };
    }
    if s.tags.nofailover {
        return Decision::Wait {
            why: format!("{waiting}; members tagged nofailover never recover the cluster"),
        };
    }
    if let Some(why) = &s.local.bootstrap_blocked {
        return Decision::Wait { why: why.clone() };
    }
    if s.lease.id.is_none() {
        return Decision::Wait {
            why: format!("{waiting}; waiting for an etcd lease"),
        };
    }
    debug_assert!(matches!(s.local.data, DataDir::Empty));
    let without = now.saturating_duration_since(s.local.data_seen_at);
    if without < after {
        return Decision::Wait {
            why: format!(
                "no member has data and nobody leads: recovering the cluster from its archive \
                 in {} s unless a member with data comes back",
                (after - without).as_secs()
            ),
        };
    }
    Decision::RecoverFromArchive {
        why: format!(
            "no member has had data or led for {} s: recovering the cluster from its archive",
            without.as_secs()
        ),
    }
}
