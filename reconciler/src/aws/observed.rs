//! Observed state of the AWS clusters, as plain data: what `observe` found, and what the
//! planner reads. Each part is *absent*, *present* or *unknown*; unknown (a failed call, a
//! stack in progress) never reads as absent, so nothing is created or deleted on a guess.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spilo_model::ClusterConfig;
use spilo_model::spec::ClusterFile;
use std::collections::BTreeMap;

/// One observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", content = "value", rename_all = "lowercase")]
pub enum Observation<T> {
    /// Looked, and it is not there.
    Absent,
    /// Looked, and this is it.
    Present(T),
    /// Could not tell; the reason.
    Unknown(String),
}

impl<T> Observation<T> {
    /// What a read says: found (`Ok(Some)`), definitely not there (`Ok(None)`), or failed.
    pub fn of_read(read: Result<Option<T>, String>) -> Self {
        match read {
            Ok(Some(v)) => Observation::Present(v),
            Ok(None) => Observation::Absent,
            Err(e) => Observation::Unknown(e),
        }
    }

    /// The value when present.
    pub fn present(&self) -> Option<&T> {
        match self {
            Observation::Present(v) => Some(v),
            _ => None,
        }
    }

    /// The reason when unknown.
    pub fn unknown(&self) -> Option<&str> {
        match self {
            Observation::Unknown(why) => Some(why),
            _ => None,
        }
    }
}

/// A CloudFormation stack as described.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedStack {
    /// The stack id (an ARN).
    pub stack_id: String,
    /// `CREATE_COMPLETE`, `UPDATE_ROLLBACK_COMPLETE`, ...
    pub status: String,
    /// Last update, or creation when never updated (RFC 3339).
    pub last_changed: String,
    /// The template as last applied.
    pub template: Value,
    /// Parameter values.
    pub parameters: BTreeMap<String, String>,
    /// Stack tags.
    pub tags: BTreeMap<String, String>,
    /// Termination protection is on.
    #[serde(default)]
    pub termination_protection: bool,
    /// Resources: logical id -> (type, physical id).
    pub resources: BTreeMap<String, (String, Option<String>)>,
    /// Outputs by key.
    pub outputs: BTreeMap<String, String>,
}

/// The cluster's `config` key in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedConfig {
    /// The value, when it parses; `None` when the key holds something unreadable.
    pub value: Option<ClusterConfig>,
    /// The key's modification revision, for compare-and-swap.
    pub mod_revision: i64,
}

/// A member as published in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedMember {
    /// Member name.
    pub name: String,
    /// Role and state as published (`primary running`).
    pub role: String,
    /// State.
    pub state: String,
    /// Whether it holds the leader key.
    pub leader: bool,
    /// Bytes behind the leader (replicas, when both publish a position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// A changed setting waits for a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// The major version of its data directory, as it publishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<u32>,
}

/// The etcd side of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedEtcd {
    /// `config`.
    pub config: Observation<ObservedConfig>,
    /// The members.
    pub members: Vec<ObservedMember>,
    /// Instances whose boot failed (`boot/<member>`), by member name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub boot_failures: BTreeMap<String, spilo_model::BootFailure>,
    /// The last restore drill (`drill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<spilo_model::DrillRecord>,
    /// How the roles and databases stand against the file (`catalog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<spilo_model::catalog::CatalogStatus>,
    /// When etcd was read (Unix seconds), the "now" drift of the drills is judged at.
    #[serde(default)]
    pub read_unix: u64,
    /// The major version the cluster was applied with, when that is known without its
    /// members (a `spilo diff`'s base commit): judged as the version its members run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<u32>,
    /// A major upgrade an apply started and did not finish (`upgrade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<spilo_model::UpgradeRecord>,
}

/// Everything observed about one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedCluster {
    /// The cluster name.
    pub name: String,
    /// Its stack.
    pub stack: Observation<ObservedStack>,
    /// The Route53 record of its DNS name (the value it points at), when a zone is set.
    pub dns: Option<Observation<String>>,
    /// Its WAL bucket, when the file names one.
    pub bucket: Option<Observation<()>>,
    /// The image id in the SSM parameter the instances start from, when the image is given
    /// by a parameter (Debian's public one by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Observation<String>>,
    /// The spilo image of this version in the bucket, when instances install it from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_object: Option<Observation<()>>,
    /// The spilo image's tarball on this machine (what `spilo apply` uploads) and its
    /// SHA-256, if found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_file: Option<(std::path::PathBuf, String)>,
    /// Its etcd keys.
    pub etcd: Observation<ObservedEtcd>,
    /// Resources the stack lists that no longer exist (deleted outside CloudFormation), as
    /// `LogicalId (physical id)`; checked for the auto-scaling group and the DNS record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources_gone: Vec<String>,
    /// An etcd cluster's own members and SRV records (etcd clusters only, when their stack
    /// exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cluster: Option<ObservedEtcdCluster>,
    /// The stack's auto-scaling group and the launch template version of each instance
    /// (PostgreSQL clusters whose stack exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Observation<ObservedGroup>>,
}

/// An auto-scaling group: the launch template version it launches from, and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedGroup {
    /// The group's name.
    pub name: String,
    /// The launch template version new instances get.
    pub version: Option<String>,
    /// How many instances it keeps.
    #[serde(default)]
    pub desired: usize,
    /// Its instances.
    pub instances: Vec<GroupMember>,
}

/// One instance of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The instance id (the member's name).
    pub id: String,
    /// The launch template version it was launched from.
    pub version: Option<String>,
}

impl ObservedGroup {
    /// The instances launched from another launch template version than the group's now.
    pub fn outdated(&self) -> Vec<&str> {
        self.instances
            .iter()
            .filter(|i| self.version.is_some() && i.version != self.version)
            .map(|i| i.id.as_str())
            .collect()
    }
}

/// An etcd cluster as it runs: its membership (from etcd) and its SRV records (from Route53).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedEtcdCluster {
    /// The members etcd lists.
    pub members: Observation<Vec<EtcdMemberSeen>>,
    /// The member names the two SRV records point at.
    pub records: Observation<SrvTargets>,
}

/// One member of an etcd cluster as `member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberSeen {
    /// Its name (the instance id; empty until a joined member started).
    pub name: String,
    /// A learner (not voting yet).
    pub learner: bool,
    /// It has started (it publishes client URLs).
    pub started: bool,
}

/// The member names (instance ids) each SRV record of an etcd cluster points at, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SrvTargets {
    /// `_etcd-client-ssl._tcp.<domain>`.
    pub client: Vec<String>,
    /// `_etcd-server-ssl._tcp.<domain>`.
    pub server: Vec<String>,
}

impl ObservedCluster {
    /// A cluster of which only its stack and etcd were observed (no DNS record, bucket or
    /// image looked at).
    pub fn of(
        name: String,
        stack: Observation<ObservedStack>,
        etcd: Observation<ObservedEtcd>,
    ) -> Self {
        Self {
            name,
            stack,
            dns: None,
            bucket: None,
            image: None,
            image_object: None,
            image_file: None,
            etcd,
            resources_gone: Vec::new(),
            etcd_cluster: None,
            group: None,
        }
    }

    /// `file` as it looks once applied and healthy in every part spilo writes: its rendered
    /// stack (with `stack_id` and `status`), its etcd `config` at `config_revision`, no members
    /// yet. `None` for a file without an AWS stack. `spilo diff` observes a base commit this
    /// way; tests start from it.
    pub fn as_applied(
        file: &ClusterFile,
        stack_id: String,
        status: &str,
        config_revision: i64,
    ) -> Option<Self> {
        let stack = super::template::render(file)?;
        Some(ObservedCluster::of(
            file.metadata.name.to_string(),
            Observation::Present(ObservedStack::as_rendered(stack, stack_id, status)),
            Observation::Present(ObservedEtcd {
                config: Observation::Present(ObservedConfig {
                    value: Some(super::plan::config::desired_config(file)),
                    mod_revision: config_revision,
                }),
                members: Vec::new(),
                boot_failures: Default::default(),
                drill: None,
                catalog: None,
                read_unix: 0,
                applied_version: Some(file.spec.postgresql.version),
                upgrade: None,
            }),
        ))
    }
}

impl ObservedStack {
    /// `stack` as CloudFormation would hold it once applied, with `stack_id` and `status`.
    pub fn as_rendered(stack: super::template::StackSpec, stack_id: String, status: &str) -> Self {
        ObservedStack {
            stack_id,
            status: status.to_string(),
            last_changed: String::new(),
            template: stack.template,
            parameters: stack.parameters,
            tags: stack.tags,
            termination_protection: false,
            resources: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }
}

impl ObservedCluster {
    /// The etcd cluster `file` as it looks once applied: its rendered stack.
    pub fn etcd_as_applied(file: &spilo_model::spec::EtcdClusterFile, stack_id: String) -> Self {
        let stack = super::etcd_stack::render(file);
        ObservedCluster::of(
            file.metadata.name.to_string(),
            Observation::Present(ObservedStack::as_rendered(
                stack,
                stack_id,
                "CREATE_COMPLETE",
            )),
            Observation::Absent,
        )
    }
}

/// What was observed for a whole plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Per desired cluster, and per managed stack whose file is gone, by cluster name.
    pub clusters: BTreeMap<String, ObservedCluster>,
    /// Whether the list of managed stacks could be read: when it could not, no cluster is
    /// planned for deletion.
    pub stack_list: Observation<Vec<String>>,
}

impl Default for Observation<Vec<String>> {
    fn default() -> Self {
        Observation::Present(Vec::new())
    }
}
