//! The cluster's `config` in etcd as a plan wants it: the file's dynamic configuration, with
//! what is operational state rather than the file's kept as it runs (maintenance mode, the
//! standby clusters that follow it); a running cluster whose file disagrees on whether it is a
//! standby is not planned at all.

use super::ConfigChange;
use crate::aws::observed::{Observation, ObservedConfig};
use spilo_model::spec::ClusterFile;

/// The `config` `file` asks for, before what is kept as it runs: its dynamic configuration,
/// its standby source and its roles and databases.
pub fn desired_config(file: &ClusterFile) -> spilo_model::ClusterConfig {
    let mut want = file.spec.dynamic_config();
    want.standby_cluster = crate::aws::userdata::standby_source(file);
    want.catalog = crate::aws::catalog::catalog(file);
    want
}

/// The change of `config` (none when it already is as wanted); an error (the cluster's plan
/// is blocked) when the file and the running cluster disagree on whether it is a standby.
pub fn plan_config(
    file: &ClusterFile,
    observed: &Observation<ObservedConfig>,
) -> Result<Option<ConfigChange>, String> {
    let mut want = desired_config(file);
    let (before, revision) = match observed {
        Observation::Present(c) => (c.value.clone(), c.mod_revision),
        _ => (None, 0),
    };
    // Maintenance mode is operational state (`spilo pause`), not part of the file: keep it.
    want.pause = before.as_ref().is_some_and(|b| b.pause);
    // The standby clusters that follow this one (written by whoever runs them) are not part
    // of its file either.
    want.downstream = before
        .as_ref()
        .map(|b| b.downstream.clone())
        .unwrap_or_default();
    // A standby cluster's source goes into `config` when the cluster is created. On a running
    // cluster, adding or removing `spec.standby` demotes or promotes it, which must be
    // sequenced against its source (a switchover between clusters) and is not done by an
    // apply on AWS yet: nothing of the cluster is changed (its instances' configuration and
    // role would no longer match how it runs), and the plan says why.
    if let Some(b) = &before
        && b.standby_cluster.is_some() != want.standby_cluster.is_some()
    {
        let name = &file.metadata.name;
        return Err(match &b.standby_cluster {
            Some(source) => format!(
                "{name} runs as a standby cluster of {} but its file has no spec.standby: an \
                 apply on AWS does not promote a standby cluster yet; promote it with `spilo \
                 promote-standby {name} --source-unreachable` when its source is down, or stop \
                 the source's writes and run `spilo edit-config {name} --set \
                 standby_cluster=null`",
                source.describe()
            ),
            None => format!(
                "{name}'s file makes it a standby cluster, but it runs as a primary cluster \
                 (promoted, or running before spec.standby was added): an apply on AWS does \
                 not demote a running cluster; remove spec.standby from its file to match"
            ),
        });
    }
    if before.as_ref() != Some(&want) {
        let replicas = file.spec.instances.saturating_sub(1);
        let synchronous = before
            .as_ref()
            .is_none_or(|b| b.synchronous_differs(&want))
            .then(|| want.describe_synchronous(replicas));
        let catalog = spilo_model::catalog::describe_changes(
            before.as_ref().and_then(|b| b.catalog.as_ref()),
            want.catalog.as_ref().unwrap_or(&Default::default()),
        );
        return Ok(Some(ConfigChange {
            before,
            after: want,
            expected_revision: revision,
            synchronous,
            catalog,
        }));
    }
    Ok(None)
}
