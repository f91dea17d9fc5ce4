//! What has drifted, from desired and observed state: pure.
//!
//! AWS side: the stack's parameters, template or tags differ from what the commit renders, the
//! stack is missing, or it sits in a failed or rolled-back state. Runtime side, from etcd:
//! no leader, fewer running members than `instances`, a replica lagging beyond
//! `ha.maximumLagOnFailover`, the `config` key different from the file, and with
//! `backup.verify` a failed restore drill or none passed within `maxAge`. An etcd cluster's
//! own: fewer started voting members than `members`, SRV records naming others.

use crate::aws::observed::{EtcdMemberSeen, Observation, Observed, ObservedCluster, SrvTargets};
use crate::aws::plan::{self, Action, DesiredInput, PlanOptions};
use serde::{Deserialize, Serialize};
use spilo_model::spec::{ClusterFile, EtcdClusterFile, srv_names};

/// Kinds of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A stack parameter differs from git.
    StackParameters,
    /// The stack's template differs from what git renders.
    StackTemplate,
    /// The stack's tags differ from git.
    StackTags,
    /// The stack is in a failed or rolled-back state.
    StackState,
    /// A resource the stack lists was deleted outside CloudFormation.
    ResourceDeleted,
    /// The file's stack does not exist.
    StackMissing,
    /// No member holds the leader key.
    NoLeader,
    /// Fewer running members than `instances`.
    MissingMembers,
    /// A replica lags beyond the failover limit.
    ReplicaLag,
    /// etcd `config` differs from the file.
    ConfigDiffers,
    /// A member runs with a changed setting that waits for a restart.
    PendingRestart,
    /// The branch's newest commit has an invalid cluster file (nothing of it is applied).
    InvalidCommit,
    /// An etcd cluster's SRV records name other members than the started voting ones.
    EtcdRecords,
    /// With `backup.verify`: the last restore drill failed, or none passed within `maxAge`.
    BackupUnverified,
    /// The declared roles and databases are not as the file says: a convergence failed, or
    /// they were changed by hand (reported under `drift: warn`).
    Catalog,
}

impl DriftKind {
    /// The snake_case name used in alerts and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::StackParameters => "stack_parameters",
            DriftKind::StackTemplate => "stack_template",
            DriftKind::StackTags => "stack_tags",
            DriftKind::StackState => "stack_state",
            DriftKind::ResourceDeleted => "resource_deleted",
            DriftKind::StackMissing => "stack_missing",
            DriftKind::NoLeader => "no_leader",
            DriftKind::MissingMembers => "missing_members",
            DriftKind::ReplicaLag => "replica_lag",
            DriftKind::ConfigDiffers => "config_differs",
            DriftKind::PendingRestart => "pending_restart",
            DriftKind::InvalidCommit => "invalid_commit",
            DriftKind::EtcdRecords => "etcd_records",
            DriftKind::BackupUnverified => "backup_unverified",
            DriftKind::Catalog => "catalog",
        }
    }

    /// Whether re-applying the file can fix it (the AWS and config kinds).
    pub fn revertible(self) -> bool {
        matches!(
            self,
            DriftKind::StackParameters
                | DriftKind::StackTemplate
                | DriftKind::StackTags
                | DriftKind::StackMissing
                | DriftKind::ConfigDiffers
        )
    }
}

/// One drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The cluster (`*` for the repository).
    pub cluster: String,
    /// What kind.
    pub kind: DriftKind,
    /// What it is about within the cluster (a member), when more than one can drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// For humans.
    pub detail: String,
}

impl Drift {
    /// Identity for alerting: one alert per key while it persists.
    pub fn key(&self) -> String {
        match &self.subject {
            Some(s) => format!("{}/{}/{s}", self.cluster, self.kind.as_str()),
            None => format!("{}/{}", self.cluster, self.kind.as_str()),
        }
    }
}

/// One cluster's drift, or why it cannot be told.
pub type ClusterDrift = Result<Vec<Drift>, String>;

fn drift(cluster: &str, kind: DriftKind, detail: String) -> Drift {
    Drift {
        cluster: cluster.to_string(),
        kind,
        subject: None,
        detail,
    }
}

/// Drift of one AWS cluster.
pub fn detect(path: &str, file: &ClusterFile, obs: &ObservedCluster) -> ClusterDrift {
    let input = DesiredInput {
        based_on: ("", "", ""),
        clusters: vec![(path, file)],
        etcd_clusters: Vec::new(),
    };
    let mut out = stack_drift(&input, obs)?;
    if let Observation::Present(etcd) = &obs.etcd
        && obs.stack.present().is_some()
    {
        out.extend(runtime(file, etcd));
    }
    Ok(out)
}

/// Drift of one etcd cluster: its stack's, fewer started voting members than the file's,
/// and SRV records that name other members than those. Its membership unknown (no quorum,
/// no records, no client certificate) makes the cluster's drift unknown unless its stack
/// drifted.
pub fn detect_etcd(path: &str, file: &EtcdClusterFile, obs: &ObservedCluster) -> ClusterDrift {
    let input = DesiredInput {
        based_on: ("", "", ""),
        clusters: Vec::new(),
        etcd_clusters: vec![(path, file)],
    };
    let mut out = stack_drift(&input, obs)?;
    let Some(running) = &obs.etcd_cluster else {
        return Ok(out);
    };
    match &running.members {
        Observation::Present(members) => out.extend(etcd_runtime(file, members, &running.records)),
        Observation::Absent => {}
        Observation::Unknown(why) => {
            if out.is_empty() {
                return Err(format!("etcd members: {why}"));
            }
        }
    }
    Ok(out)
}

/// Runtime drift of an etcd cluster from its members and SRV records.
pub fn etcd_runtime(
    file: &EtcdClusterFile,
    members: &[EtcdMemberSeen],
    records: &Observation<SrvTargets>,
) -> Vec<Drift> {
    let name = file.metadata.name.as_str();
    let mut out = Vec::new();
    let mut voters: Vec<String> = members
        .iter()
        .filter(|m| !m.learner && m.started && !m.name.is_empty())
        .map(|m| m.name.clone())
        .collect();
    voters.sort();
    let wanted = file.spec.members as usize;
    if voters.len() < wanted {
        out.push(drift(
            name,
            DriftKind::MissingMembers,
            format!(
                "{} of {wanted} etcd members started and voting ({})",
                voters.len(),
                if voters.is_empty() {
                    "none".to_string()
                } else {
                    voters.join(", ")
                }
            ),
        ));
    }
    let listed = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.join(", ")
        }
    };
    match records {
        Observation::Present(t) => {
            let (client, server) = srv_names(&file.domain());
            for (record, targets) in [(client, &t.client), (server, &t.server)] {
                if *targets != voters {
                    out.push(Drift {
                        cluster: name.to_string(),
                        kind: DriftKind::EtcdRecords,
                        subject: Some(record.clone()),
                        detail: format!(
                            "{record} points at {}; the started voting members are {}",
                            listed(targets),
                            listed(&voters)
                        ),
                    });
                }
            }
        }
        Observation::Absent => out.push(drift(
            name,
            DriftKind::EtcdRecords,
            format!(
                "no SRV records under {}; the started voting members are {}",
                file.domain(),
                listed(&voters)
            ),
        )),
        Observation::Unknown(_) => {}
    }
    out
}

/// A cluster's stack drift: its state, resources deleted by hand, and what re-applying the
/// file would change, from a plan of the one file in `input`.
fn stack_drift(input: &DesiredInput<'_>, obs: &ObservedCluster) -> ClusterDrift {
    let name = obs.name.as_str();
    let mut out = Vec::new();
    // The stack's own state first: a failed stack is drift even though nothing can be planned.
    if let Observation::Present(s) = &obs.stack
        && (s.status.ends_with("ROLLBACK_COMPLETE") || s.status.ends_with("_FAILED"))
    {
        out.push(drift(
            name,
            DriftKind::StackState,
            format!("stack {} is {}", s.stack_id, s.status),
        ));
    }
    for r in &obs.resources_gone {
        out.push(Drift {
            cluster: name.to_string(),
            kind: DriftKind::ResourceDeleted,
            subject: r.split(' ').next().map(str::to_string),
            detail: format!(
                "{r} was deleted outside CloudFormation, which still lists it; re-applying the same template does not bring it back: change the resource's logical id or recreate the stack"
            ),
        });
    }
    let mut observed = Observed::default();
    observed.clusters.insert(name.to_string(), obs.clone());
    let p = plan::plan(
        input,
        &observed,
        PlanOptions {
            prune: false,
            allow_replace: true,
            check_upgrades: false,
        },
    );
    let Some(c) = p.clusters.first() else {
        return Ok(out);
    };
    if c.action == Action::Blocked {
        if out.is_empty() {
            return Err(c.reason.clone().unwrap_or_else(|| "cannot observe".into()));
        }
        return Ok(out);
    }
    if c.action == Action::Create {
        out.push(drift(
            name,
            DriftKind::StackMissing,
            format!("stack {} does not exist", c.stack_name),
        ));
    } else {
        if !c.parameters.is_empty() {
            let what: Vec<String> = c
                .parameters
                .iter()
                .map(|v| {
                    format!(
                        "{} is {} in AWS, {} in git",
                        v.name,
                        v.before.as_deref().unwrap_or("unset"),
                        v.after.as_deref().unwrap_or("unset")
                    )
                })
                .collect();
            out.push(drift(name, DriftKind::StackParameters, what.join("; ")));
        }
        if !c.template_diff.is_empty() {
            let ids: Vec<&str> = c.resources.iter().map(|r| r.logical_id.as_str()).collect();
            out.push(drift(
                name,
                DriftKind::StackTemplate,
                format!("the template differs from git ({})", ids.join(", ")),
            ));
        }
        if !c.tags.is_empty() {
            let names: Vec<&str> = c.tags.iter().map(|t| t.name.as_str()).collect();
            out.push(drift(
                name,
                DriftKind::StackTags,
                format!("tags differ from git: {}", names.join(", ")),
            ));
        }
    }
    if let Some(cfg) = &c.config
        && cfg.before.is_some()
    {
        let mut lines = crate::aws::show::config_lines(cfg);
        lines.extend(cfg.catalog.iter().cloned());
        out.push(drift(
            name,
            DriftKind::ConfigDiffers,
            format!("etcd config differs from git: {}", lines.join("; ")),
        ));
    }
    Ok(out)
}

/// Runtime drift from the members a cluster publishes in etcd.
pub fn runtime(file: &ClusterFile, etcd: &crate::aws::observed::ObservedEtcd) -> Vec<Drift> {
    let name = file.metadata.name.as_str();
    let mut out = Vec::new();
    if !etcd.members.iter().any(|m| m.leader) {
        out.push(drift(
            name,
            DriftKind::NoLeader,
            "no member holds the leader key".into(),
        ));
    }
    let running = etcd.members.iter().filter(|m| m.state == "running").count();
    let wanted = file.spec.instances as usize;
    if running < wanted {
        out.push(drift(
            name,
            DriftKind::MissingMembers,
            format!("{running} of {wanted} members running"),
        ));
    }
    let limit = file.spec.ha.maximum_lag_on_failover;
    for m in etcd.members.iter().filter(|m| m.pending_restart) {
        out.push(Drift {
            cluster: name.to_string(),
            kind: DriftKind::PendingRestart,
            subject: Some(m.name.clone()),
            detail: format!(
                "{} runs with a changed setting that waits for a restart",
                m.name
            ),
        });
    }
    let declares = !file.spec.roles.is_empty() || !file.spec.databases.is_empty();
    if let Some(c) = etcd.catalog.as_ref().filter(|_| declares) {
        if let Some(e) = &c.error {
            out.push(drift(
                name,
                DriftKind::Catalog,
                format!("roles and databases not converged (on {}): {e}", c.member),
            ));
        } else if !c.drift.is_empty() {
            out.push(drift(
                name,
                DriftKind::Catalog,
                format!(
                    "roles and databases changed by hand: {}",
                    c.drift.join("; ")
                ),
            ));
        }
    }
    if let Some(v) = file.spec.backup.as_ref().and_then(|b| b.verify.as_ref()) {
        let max_age = humantime::parse_duration(&v.max_age).map_or(u64::MAX, |d| d.as_secs());
        // No key: no member has started drills yet (a new cluster, or none running, which
        // is drift of its own); the key begins the clock.
        if let Some(detail) = etcd
            .drill
            .as_ref()
            .and_then(|record| record.problem(max_age, etcd.read_unix))
        {
            out.push(drift(name, DriftKind::BackupUnverified, detail));
        }
    }
    for m in &etcd.members {
        if let Some(lag) = m.lag_bytes
            && lag > limit
        {
            out.push(Drift {
                cluster: name.to_string(),
                kind: DriftKind::ReplicaLag,
                subject: Some(m.name.clone()),
                detail: format!(
                    "{} is {lag} bytes behind the leader (limit {limit})",
                    m.name
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
