//! The plan of an etcd cluster file: its stack like a PostgreSQL cluster's (no etcd keys, no
//! bucket of its own), except that replacing every member at once is refused.

use super::super::diff::ResourceAction;
use super::super::observed::ObservedCluster;
use super::super::template::StackSpec;
use super::{Action, ClusterPlan, ImageSource, PlanOptions, blocked, plan_image, plan_stack};
use spilo_model::spec::EtcdClusterFile;

/// One etcd cluster: its stack like a PostgreSQL cluster's (no etcd keys, no bucket of its
/// own), except that a change replacing the auto-scaling group is refused whatever the
/// options: it would replace every member at once and lose the cluster.
pub(super) fn plan_etcd_cluster(
    path: &str,
    file: &EtcdClusterFile,
    stack: StackSpec,
    obs: Option<&ObservedCluster>,
    options: PlanOptions,
) -> ClusterPlan {
    let name = file.metadata.name.as_str();
    let mut p = ClusterPlan::new(name, &stack.region, Some(path.to_string()), Action::Noop);
    let Some(obs) = obs else {
        return blocked(p, "it was not observed".into());
    };
    if let Some(why) = obs.stack.unknown() {
        return blocked(p, format!("stack {}: {why}", stack.stack_name));
    }
    if let Err(why) = plan_stack(&mut p, stack, &obs.stack, options) {
        return blocked(p, why);
    }
    if p.resources
        .iter()
        .any(|r| r.logical_id == "AutoScalingGroup" && r.action == ResourceAction::Replace)
    {
        p.action = Action::Replace;
        p.refused = true;
        p.reason = Some(
            "replaces AutoScalingGroup, every etcd member at once: the cluster would lose its \
             quorum and its data; refused even with --allow-replace"
                .into(),
        );
    }
    let src = ImageSource {
        region: file.spec.aws.region.clone(),
        image: super::super::etcd_stack::image_id(file),
        bucket: file
            .spec
            .image_bucket
            .clone()
            .filter(|_| super::super::etcd_stack::from_bucket(file)),
        arch: super::super::etcd_stack::architecture(file),
        creatable: false,
    };
    if let Err(why) = plan_image(&src, obs, &mut p) {
        return blocked(p, why);
    }
    p
}
