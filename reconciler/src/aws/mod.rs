//! The AWS target: cluster files from git become CloudFormation stacks.
//!
//! The flow is desired ([`crate::desired`], a commit's files) + observed ([`observe`], AWS and
//! etcd, each part absent/present/unknown) -> [`plan::plan`] (pure) -> a [`plan::Plan`] value,
//! which [`show`] prints three ways and [`apply`] carries out through change sets.
//! [`template`] renders a cluster file into its stack; [`diff`] compares stacks.
//! `spilo diff` plans one commit against another with no AWS at all ([`plan_between`]).

pub mod apply;
pub mod catalog;
pub mod clients;
pub mod commands;
pub mod diff;
pub mod etcd_ref;
pub mod etcd_stack;
pub mod image;
pub mod inspect;
pub mod names;
pub mod observe;
pub mod observed;
pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod policies;
pub mod show;
pub mod template;
pub mod upgrade_check;
pub mod userdata;

use crate::desired::{self, Desired};
use observed::{Observation, Observed, ObservedCluster, ObservedEtcd};
use plan::{DesiredInput, Plan, PlanOptions};
use spilo_model::spec::{ClusterFile, EtcdClusterFile, Target};
use std::path::Path;

/// The AWS clusters of a desired state, with their file paths.
pub fn aws_clusters(d: &Desired) -> Vec<(&str, &ClusterFile)> {
    d.clusters
        .iter()
        .filter(|(_, f)| f.spec.target == Target::Aws)
        .map(|(p, f)| (p.as_str(), f))
        .collect()
}

/// The etcd clusters of a desired state, with their file paths.
pub fn etcd_clusters(d: &Desired) -> Vec<(&str, &EtcdClusterFile)> {
    d.etcd_clusters
        .iter()
        .map(|(p, f)| (p.as_str(), f))
        .collect()
}

/// Reads the desired state, observes AWS and etcd, and plans.
pub async fn make_plan(
    clients: &clients::Clients,
    repo: &str,
    reference: &str,
    cache: &Path,
    regions: &[String],
    options: PlanOptions,
) -> anyhow::Result<(Desired, Plan)> {
    let mut desired = desired::read(repo, reference, cache)?;
    let (plan, _) = plan_desired(clients, &mut desired, regions, options).await;
    Ok((desired, plan))
}

/// Observes and plans an already read desired state; also returns what was observed. Clusters
/// on an etcd cluster of another repository are first given its domain
/// ([`etcd_ref::resolve`]), so `desired` is what was planned.
pub async fn plan_desired(
    clients: &clients::Clients,
    desired: &mut Desired,
    regions: &[String],
    options: PlanOptions,
) -> (Plan, Observed) {
    let unresolved = etcd_ref::resolve(clients, desired).await;
    let files = aws_clusters(desired);
    let etcd = etcd_clusters(desired);
    let only_files: Vec<&ClusterFile> = files.iter().map(|(_, f)| *f).collect();
    let only_etcd: Vec<&EtcdClusterFile> = etcd.iter().map(|(_, f)| *f).collect();
    let mut observed = observe::observe(clients, &only_files, &only_etcd, regions).await;
    for (name, why) in unresolved {
        if let Some(o) = observed.clusters.get_mut(&name) {
            o.etcd = Observation::Unknown(why);
        }
    }
    let mut plan = plan::plan(
        &DesiredInput {
            based_on: (&desired.repo, &desired.reference, &desired.commit),
            clusters: files,
            etcd_clusters: etcd,
        },
        &observed,
        options,
    );
    if options.check_upgrades {
        upgrade_check::ask(&mut plan).await;
    }
    (plan, observed)
}

/// What `base` would look like once applied: its stacks and etcd configs, as if observed.
pub fn observed_from(base: &Desired, head: &Desired) -> Observed {
    let mut out = Observed::default();
    let mut names = Vec::new();
    for (_, f) in aws_clusters(base) {
        let stack_id = format!(
            "{}@{}",
            template::stack_name(f.metadata.name.as_str()),
            base.commit
        );
        let Some(o) = ObservedCluster::as_applied(f, stack_id, "CREATE_COMPLETE", 1) else {
            continue;
        };
        names.push(o.name.clone());
        out.clusters.insert(o.name.clone(), o);
    }
    for (_, f) in etcd_clusters(base) {
        let o = ObservedCluster::etcd_as_applied(
            f,
            format!(
                "{}@{}",
                template::stack_name(f.metadata.name.as_str()),
                base.commit
            ),
        );
        names.push(o.name.clone());
        out.clusters.insert(o.name.clone(), o);
    }
    for (_, f) in etcd_clusters(head) {
        let name = f.metadata.name.to_string();
        out.clusters
            .entry(name.clone())
            .or_insert(ObservedCluster::of(
                name,
                Observation::Absent,
                Observation::Absent,
            ));
    }
    for (_, f) in aws_clusters(head) {
        let name = f.metadata.name.to_string();
        out.clusters
            .entry(name.clone())
            .or_insert(ObservedCluster::of(
                name,
                Observation::Absent,
                Observation::Present(ObservedEtcd {
                    config: Observation::Absent,
                    members: Vec::new(),
                    boot_failures: Default::default(),
                    drill: None,
                    catalog: None,
                    read_unix: 0,
                    applied_version: None,
                    upgrade: None,
                }),
            ));
    }
    out.stack_list = Observation::Present(names);
    out
}

/// `spilo diff BASE HEAD`: what moving from `base` to `head` changes, desired against
/// desired, with no AWS credentials.
pub fn plan_between(base: &Desired, head: &Desired, options: PlanOptions) -> Plan {
    let observed = observed_from(base, head);
    let mut p = plan::plan(
        &DesiredInput {
            based_on: (&head.repo, &head.reference, &head.commit),
            clusters: aws_clusters(head),
            etcd_clusters: etcd_clusters(head),
        },
        &observed,
        options,
    );
    // Nothing here was observed: a diff is never applied.
    p.based_on.clusters.clear();
    p
}
