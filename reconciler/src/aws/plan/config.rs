//! The cluster's `config` in etcd as a plan wants it: the file's dynamic configuration, its
//! standby source and its standby clusters (`downstream`, from the files of the same commit),
//! with maintenance mode, operational state rather than the file's, kept as it runs; a running
//! cluster whose file disagrees on whether it is a
//! standby is not planned at all, unless that is its part in a switchover between clusters.

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
    handover: Option<&super::handover::Handover>,
    downstream: &[spilo_model::Downstream],
) -> Result<Option<ConfigChange>, String> {
    let mut want = desired_config(file);
    let (before, revision) = match observed {
        Observation::Present(c) => (c.value.clone(), c.mod_revision),
        _ => (None, 0),
    };
    // Maintenance mode is operational state (`spilo pause`), not part of the file: keep it.
    want.pause = before.as_ref().is_some_and(|b| b.pause);
    if want.pause && handover.is_some() {
        return Err(format!(
            "{} is in maintenance mode (spilo pause): its governors would not step down or \
             promote, so a switchover between clusters would only stop writes; `spilo resume \
             {0}` first",
            file.metadata.name
        ));
    }
    // The standby clusters that follow this one, from the files of the same commit: its
    // governors ask them before running a primary (the fence of `spilo promote-standby
    // --source-unreachable`).
    want.downstream = downstream.to_vec();
    // A standby cluster's source goes into `config` when the cluster is created. On a running
    // cluster, adding or removing `spec.standby` demotes or promotes it, which must be
    // sequenced against its source: only as a switchover between clusters (both files changed
    // in one commit, [`super::handover`]). Otherwise nothing of the cluster is changed, and
    // the plan says why.
    if let Some(b) = &before
        && b.standby_cluster.is_some() != want.standby_cluster.is_some()
        && handover.is_none()
    {
        let name = &file.metadata.name;
        return Err(match &b.standby_cluster {
            Some(source) => format!(
                "{name} runs as a standby cluster of {} but its file has no spec.standby: an \
                 apply does not promote a standby cluster over a running source: make the \
                 source a standby of {name} in the same commit (a switchover between \
                 clusters), or promote it with `spilo promote-standby {name} \
                 --source-unreachable` when its source is down",
                source.describe()
            ),
            None => format!(
                "{name}'s file makes it a standby cluster, but it runs as a primary cluster \
                 (promoted, or running before spec.standby was added): an apply demotes a \
                 running cluster only in a switchover, when the same commit removes \
                 spec.standby from the file of its standby cluster; otherwise remove \
                 spec.standby from its file to match"
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

/// The standby clusters of each cluster of `files` (AWS clusters of one commit, their
/// `spec.standby.from` resolved): by source name, each asked through its load balancer's DNS
/// name, which routes to a primary only, with how the source would follow it.
pub fn downstreams(
    files: &[(&str, &ClusterFile)],
) -> std::collections::BTreeMap<String, Vec<spilo_model::Downstream>> {
    let mut out: std::collections::BTreeMap<String, Vec<spilo_model::Downstream>> =
        Default::default();
    for (_, standby) in files {
        let Some(from) = standby.spec.standby.as_ref().and_then(|s| s.from.as_ref()) else {
            continue;
        };
        let Some((_, source)) = files.iter().find(|(_, f)| f.metadata.name == *from) else {
            continue;
        };
        // The source as a standby of this cluster: resolved as a file saying so would be.
        let mut follower = (*source).clone();
        follower.spec.standby = Some(spilo_model::spec::StandbySpec {
            from: Some(standby.metadata.name.clone()),
            ..Default::default()
        });
        let mut pair = vec![
            (String::new(), follower),
            (String::new(), (*standby).clone()),
        ];
        crate::desired::resolve_standby_sources(&mut pair);
        let Some(follow) = crate::aws::userdata::standby_source(&pair[0].1) else {
            continue;
        };
        if follow.hosts.is_empty() {
            continue;
        }
        out.entry(from.to_string())
            .or_default()
            .push(spilo_model::Downstream {
                cluster: standby.metadata.name.to_string(),
                api: Vec::new(),
                primary: follow.hosts.clone(),
                follow,
            });
    }
    out
}
