//! Whether a plan replaces instances, and what the runtime then goes through: a launch
//! template change (image, instance type, volume, user data) only adds a version, which
//! running instances never pick up, so `spilo apply` replaces them one at a time, replicas
//! first, then one switchover, then the former primary. Instances still on an older version
//! (an apply interrupted halfway) are what a later plan finishes: progress is the group's own
//! state, so a finished instance is never replaced twice.

use super::super::diff::ResourceAction;
use super::super::observed::{Observation, ObservedCluster};
use super::ClusterPlan;
use serde::{Deserialize, Serialize};

/// A rough time per instance replaced: boot, restore or copy, catch up. An estimate printed in
/// the plan, not a promise.
pub const MINUTES_PER_INSTANCE: usize = 3;

/// The replacement of instances a plan implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Instances replaced, one at a time.
    pub instances: usize,
    /// Why they are replaced.
    pub why: String,
}

impl Rollout {
    /// What the runtime goes through, in words.
    pub fn describe(&self) -> String {
        let n = self.instances;
        let what = if n == 1 {
            "replaces 1 instance".to_string()
        } else {
            format!(
                "replaces {n} instances one at a time (replicas first, each streaming before \
                 the next goes; then 1 switchover; the former primary last)"
            )
        };
        format!(
            "{what}, ~{} minutes: {}",
            n * MINUTES_PER_INSTANCE,
            self.why
        )
    }
}

/// The rollout of cluster plan `p` (its stack changes already planned) with `instances`
/// members, from what was observed.
pub(super) fn plan_rollout(
    p: &ClusterPlan,
    instances: u32,
    obs: &ObservedCluster,
) -> Option<Rollout> {
    let template_changes = p
        .resources
        .iter()
        .any(|r| r.logical_id == "LaunchTemplate" && r.action == ResourceAction::Modify);
    if template_changes && obs.stack.present().is_some() {
        return Some(Rollout {
            instances: instances as usize,
            why: "the launch template changes, which running instances never pick up".into(),
        });
    }
    match &obs.group {
        Some(Observation::Present(g)) if !g.outdated().is_empty() => Some(Rollout {
            instances: g.outdated().len(),
            why: format!(
                "{} still run{} an older launch template than the group's (an earlier apply \
                 stopped halfway)",
                g.outdated().join(", "),
                if g.outdated().len() == 1 { "s" } else { "" }
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::observed::{GroupMember, ObservedGroup};

    #[test]
    fn the_count_and_the_words_of_a_rollout() {
        let r = Rollout {
            instances: 3,
            why: "the launch template changes".into(),
        };
        assert_eq!(
            r.describe(),
            "replaces 3 instances one at a time (replicas first, each streaming before the \
             next goes; then 1 switchover; the former primary last), ~9 minutes: the launch \
             template changes"
        );
    }

    #[test]
    fn instances_on_an_older_version_are_what_is_left_to_replace() {
        let g = ObservedGroup {
            name: "g".into(),
            version: Some("3".into()),
            desired: 2,
            instances: vec![
                GroupMember {
                    id: "i-1".into(),
                    version: Some("3".into()),
                },
                GroupMember {
                    id: "i-2".into(),
                    version: Some("2".into()),
                },
            ],
        };
        assert_eq!(g.outdated(), ["i-2"]);
        let mut obs =
            ObservedCluster::of("orders".into(), Observation::Absent, Observation::Absent);
        obs.group = Some(Observation::Present(g));
        let p = ClusterPlan::new("orders", "eu-west-1", None, super::super::Action::Noop);
        let r = plan_rollout(&p, 2, &obs).expect("a rollout");
        assert_eq!(r.instances, 1);
        assert!(
            r.why.starts_with("i-2 still runs an older launch template"),
            "{r:?}"
        );
        // Unknown or current: nothing.
        obs.group = Some(Observation::Unknown("throttled".into()));
        assert_eq!(plan_rollout(&p, 2, &obs), None);
    }
}
