//! The leader's check of a planned major upgrade, asked when a plan is made against the
//! running cluster (`spilo plan`, `spilo apply` without a saved plan, the watcher): the plan
//! is pure and says an upgrade is due; this asks the leader's governor (`POST /upgrade
//! {"check": true}`, which changes nothing of the cluster) whether it can be done, so the
//! plan lists the blockers before anything changes. A cluster whose check finds blockers,
//! or that cannot be asked, is blocked: nothing of it is applied on a guess. The apply asks
//! again as its first step.

use super::apply::upgrade;
use super::plan::{Plan, blocked};

/// Asks every planned major upgrade's leader for its check; records what it said in the
/// upgrade, or blocks the cluster with why.
pub async fn ask(plan: &mut Plan) {
    for c in &mut plan.clusters {
        let Some(u) = c.major_upgrade.clone().filter(|u| !u.finishing) else {
            continue;
        };
        match upgrade::check(c, &u).await {
            Ok(said) => {
                if let Some(m) = c.major_upgrade.as_mut() {
                    m.checked = Some(said);
                }
            }
            Err(why) => {
                let mut p = blocked(c.clone(), format!("the major upgrade: {why}"));
                p.major_upgrade = None;
                p.rollout = None;
                *c = p;
            }
        }
    }
}
