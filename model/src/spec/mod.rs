//! The cluster file a team commits under `clusters/`: `apiVersion: spilo/v1`,
//! `kind: PostgresCluster`. One definition shared by the reconciler, the local target and the
//! governors; `schemas/cluster.schema.json` is generated from these types.
//!
//! Every field has a default, so a minimal file is five lines:
//!
//! ```yaml
//! apiVersion: spilo/v1
//! kind: PostgresCluster
//! metadata:
//!   name: orders
//! spec: {}
//! ```
//!
//! The types check shapes and value ranges; rules across fields and files (exactly one
//! bootstrap method, a clone source that exists, ...) are checked by `spilo validate`.

mod aws;
mod endpoints;
mod etcd;
mod ha;
mod postgres;
mod sync_mode;

pub use aws::{
    Architecture, AwsSpec, DEFAULT_INSTANCE_TYPE, Filesystem, IngressRule, StorageSpec, VolumeType,
    is_image_parameter,
};
pub use endpoints::{DnsSpec, Endpoint, EndpointsSpec, HealthCheck, Routing};
pub use etcd::{
    ETCD_CLIENT_PORT, ETCD_PEER_PORT, EtcdClusterFile, EtcdKind, EtcdReconcile, EtcdSecrets,
    EtcdSpec, member_host, srv_names,
};
pub use ha::{
    DEFAULT_LOOP_WAIT, DEFAULT_MAXIMUM_LAG_ON_FAILOVER, DEFAULT_PRIMARY_START_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT, DEFAULT_TTL, HaSpec, TimingField, TimingProblem, default_loop_wait,
    default_maximum_lag_on_failover, default_primary_start_timeout, default_retry_timeout,
    default_ttl, timing_problems,
};

pub use postgres::{
    ParamValue, PostgresSpec, SUPPORTED_VERSIONS, built_without_ssl, debian_bin_dir,
};
pub use sync_mode::SynchronousMode;

pub use crate::governor::Compression;
use crate::member::ClusterConfig;
use crate::names::ClusterName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "spilo PostgresCluster",
    description = "A highly available PostgreSQL cluster declared in git."
)]
pub struct ClusterFile {
    /// Always `spilo/v1`.
    pub api_version: ApiVersion,
    /// Always `PostgresCluster`.
    pub kind: Kind,
    /// Name and ownership.
    pub metadata: Metadata,
    /// What the cluster should be.
    #[serde(default)]
    pub spec: ClusterSpec,
}

impl ClusterFile {
    /// The record name of the cluster's DNS name inside its hosted zone (AWS).
    pub fn dns_label(&self) -> String {
        self.spec
            .endpoints
            .dns
            .name
            .clone()
            .unwrap_or_else(|| self.metadata.name.to_string())
    }

    /// The fully qualified DNS name on AWS (with the trailing dot), when a hosted zone is set.
    pub fn dns_name(&self) -> Option<String> {
        let zone = self.spec.aws.as_ref()?.hosted_zone.as_ref()?;
        Some(format!(
            "{}.{}.",
            self.dns_label(),
            zone.trim_end_matches('.')
        ))
    }

    /// The WAL archive's key prefix: `spilo/<cluster>/wal/<major>/` (as in Spilo) unless
    /// `backup.prefix` names one; always ending in `/`.
    pub fn wal_prefix(&self) -> String {
        match self.spec.backup.as_ref().and_then(|b| b.prefix.clone()) {
            Some(p) if p.ends_with('/') => p,
            Some(p) => format!("{p}/"),
            None => default_wal_prefix(&self.metadata.name, self.spec.postgresql.version),
        }
    }
}

/// The WAL archive prefix of cluster `name` when its file names none:
/// `spilo/<name>/wal/<major>/` (as in Spilo).
pub fn default_wal_prefix(name: &ClusterName, major: impl std::fmt::Display) -> String {
    format!("{}{major}/", default_archive_root(name))
}

/// Where every major version's default archive of cluster `name` lies: `spilo/<name>/wal/`.
pub fn default_archive_root(name: &ClusterName) -> String {
    format!("spilo/{name}/wal/")
}

/// The file format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// The first version.
    #[serde(rename = "spilo/v1")]
    V1,
}

/// The kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    /// A PostgreSQL cluster.
    PostgresCluster,
}

/// Name and ownership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// The cluster's name: a DNS label. It is the etcd scope, the CloudFormation stack suffix
    /// (`spilo-<name>`) and the DNS name; changing it means a new cluster.
    pub name: ClusterName,
    /// The owning team, used in tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where the cluster runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// On this machine, realized by `spilo up`.
    #[default]
    Local,
    /// On AWS, as a CloudFormation stack.
    Aws,
}

/// What the cluster should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Number of PostgreSQL instances (one primary, the rest replicas). 3 is recommended.
    #[serde(default = "d_instances")]
    #[schemars(range(min = 1, max = 64))]
    pub instances: u32,
    /// Where the cluster runs.
    #[serde(default)]
    pub target: Target,
    /// PostgreSQL itself.
    #[serde(default)]
    pub postgresql: PostgresSpec,
    /// Failover behaviour.
    #[serde(default)]
    pub ha: HaSpec,
    /// The coordination store (etcd, or ZooKeeper); absent for the local target means
    /// `spilo up` starts an etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcs: Option<DcsSpec>,
    /// AWS settings (target `aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,
    /// Local-target settings.
    #[serde(default)]
    pub local: LocalSpec,
    /// WAL archive and base backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// How the cluster's data comes into being.
    #[serde(default)]
    pub bootstrap: Bootstrap,
    /// Run as a standby cluster of another: the leader replicates from the source, the other
    /// members from the leader; no writes. Removing it promotes the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbySpec>,
    /// Load balancers, DNS and health checks.
    #[serde(default)]
    pub endpoints: EndpointsSpec,
    /// How the reconciler treats this cluster.
    #[serde(default)]
    pub reconcile: ReconcileSpec,
    /// References to the passwords; secrets never live in the file.
    #[serde(default)]
    pub secrets: SecretsSpec,
    /// Roles the leader creates and keeps as declared (login, flags, membership, connection
    /// limit, password); a role is dropped only with `state: absent`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, crate::catalog::Role>,
    /// Databases the leader creates (never drops), with their owner, extensions and schemas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, crate::catalog::Database>,
    /// Tags on every cloud resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

fn d_instances() -> u32 {
    3
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            instances: d_instances(),
            target: Target::default(),
            postgresql: PostgresSpec::default(),
            ha: HaSpec::default(),
            dcs: None,
            aws: None,
            local: LocalSpec::default(),
            backup: None,
            bootstrap: Bootstrap::default(),
            standby: None,
            endpoints: EndpointsSpec::default(),
            reconcile: ReconcileSpec::default(),
            secrets: SecretsSpec::default(),
            roles: BTreeMap::new(),
            databases: BTreeMap::new(),
            tags: BTreeMap::new(),
        }
    }
}

impl ClusterSpec {
    /// The cluster-wide settings `spilo` keeps in etcd `config`: HA timing and PostgreSQL
    /// parameters, which every governor applies.
    pub fn dynamic_config(&self) -> ClusterConfig {
        ClusterConfig {
            ttl: Some(self.ha.ttl),
            loop_wait: Some(self.ha.loop_wait),
            retry_timeout: Some(self.ha.retry_timeout),
            maximum_lag_on_failover: Some(self.ha.maximum_lag_on_failover),
            postgresql_parameters: self
                .postgresql
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            pause: false,
            synchronous_mode: self.ha.synchronous_mode.is_on(),
            synchronous_mode_quorum: self.ha.synchronous_mode.is_quorum(),
            synchronous_mode_strict: self.ha.synchronous_mode.is_on()
                && self.ha.synchronous_mode_strict,
            synchronous_node_count: self
                .ha
                .synchronous_mode
                .is_on()
                .then_some(self.ha.synchronous_node_count),
            failsafe_mode: self.ha.failsafe_mode,
            // Resolved by the target that realizes the file (`from` names another cluster).
            standby_cluster: None,
            downstream: Vec::new(),
            // Passwords resolved by the target (a generated one written where it keeps them).
            catalog: None,
        }
    }
}

/// The coordination store: exactly one of `hosts`, `discoveryDomain` or `etcdCluster` (etcd),
/// or `zookeeper`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DcsSpec {
    /// Client endpoints, `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A domain with `_etcd-server._tcp` (or `_etcd-client._tcp`) SRV records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_domain: Option<String>,
    /// AWS: an etcd cluster of this repository (`kind: EtcdCluster`) by name. The members
    /// find it by its SRV records (`_etcd-client-ssl._tcp.<its domain>`), speak TLS to it with
    /// certificates of its CA (which `spec.secrets.ca` must name) and join its clients'
    /// security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cluster: Option<ClusterName>,
    /// A ZooKeeper ensemble instead of etcd (local target): its `hosts`, or none for `spilo up`
    /// to run one ZooKeeper server for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<ZooKeeperSpec>,
}

/// `spec.dcs.zookeeper`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZooKeeperSpec {
    /// The servers, `host:port`; empty: `spilo up` runs one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

impl DcsSpec {
    /// How many of `hosts`, `discoveryDomain`, `etcdCluster` and `zookeeper` are set (valid:
    /// one; with `etcdCluster`, the reading of the files also sets `discoveryDomain` to its
    /// domain).
    pub fn sources(&self) -> usize {
        usize::from(!self.hosts.is_empty())
            + usize::from(self.discovery_domain.is_some())
            + usize::from(self.etcd_cluster.is_some())
            + usize::from(self.zookeeper.is_some())
    }

    /// Whether `spilo up` runs the cluster's store itself: etcd when the file names no etcd
    /// hosts (`Some(false)`), ZooKeeper with `zookeeper: {}` (`Some(true)`); `None` when the
    /// store is someone else's (named hosts).
    pub fn runs_own(dcs: Option<&Self>) -> Option<bool> {
        match dcs {
            None => Some(false),
            Some(d) => match &d.zookeeper {
                Some(z) => z.hosts.is_empty().then_some(true),
                None => d.hosts.is_empty().then_some(false),
            },
        }
    }
}

/// Local-target settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalSpec {
    /// Fixed ports; derived from the cluster name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<LocalPorts>,
}

/// Ports of a local cluster. Member `i` uses `postgres + i` and `api + i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalPorts {
    /// The load-balanced port that reaches the primary.
    pub primary: u16,
    /// The load-balanced port that reaches the replicas (when the replica endpoint is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u16>,
    /// The first member's PostgreSQL port.
    pub postgres: u16,
    /// The first member's REST API port.
    pub api: u16,
    /// etcd's client port when `spilo up` runs etcd (the peer port is the next one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<u16>,
    /// The first member's primary proxy port (`endpoints.routing: proxy`); default: `api`
    /// + 64, past the REST API ports of the largest cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<u16>,
}

/// WAL archive and base backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupSpec {
    /// The S3 bucket (a directory in the state dir for the local target).
    pub bucket: String,
    /// Key prefix; default `spilo/<name>/wal/<major>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Base backup schedule, five-field cron.
    #[serde(default = "d_schedule")]
    pub schedule: String,
    /// Base backups to keep.
    #[serde(default = "d_retention")]
    #[schemars(range(min = 1))]
    pub retention: u32,
    /// Compression of WAL and backups.
    #[serde(default)]
    pub compression: Compression,
    /// New replicas restore the latest base backup and the archive's WAL instead of copying
    /// the primary (which they still do while there is no backup).
    #[serde(default = "d_true")]
    pub replicas_from_backup: bool,
    /// AWS: `spilo apply` creates the bucket when it does not exist (encrypted, no public
    /// access), outside the cluster's stack: it holds the backups, so it outlives the stack and
    /// is never deleted by spilo. Without it a missing bucket is only reported.
    #[serde(default)]
    pub create_bucket: bool,
    /// Seconds without a leader and without any member holding data (every instance was
    /// replaced, the stack was recreated) after which the first member restores the latest
    /// base backup, replays every archived WAL file and leads; the others follow. 0 turns it
    /// off (the members then wait for a person).
    #[serde(default = "d_recover_after")]
    pub recover_after: u64,
    /// Scheduled restore drills: a member restores the latest backup and the archive into a
    /// scratch directory and checks it (`spilo verify-backup` on a schedule); a failed drill,
    /// or none passing within `maxAge`, is drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// `backup.verify`: scheduled restore drills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifySpec {
    /// Cron (UTC): five fields, or six with seconds first.
    pub schedule: String,
    /// A passed drill older than this is drift ("7d", "12h").
    #[serde(default = "d_max_age")]
    pub max_age: String,
    /// A query that must return `true` on the restored database
    /// (`select count(*) > 0 from orders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

fn d_max_age() -> String {
    "7d".into()
}

fn d_recover_after() -> u64 {
    300
}

fn d_true() -> bool {
    true
}

fn d_schedule() -> String {
    "0 1 * * *".into()
}
fn d_retention() -> u32 {
    5
}

/// The source of a standby cluster: exactly one of `from` or `hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StandbySpec {
    /// Another cluster in the same repository; the target finds its members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClusterName>,
    /// Or endpoints of the source (`host:port`), tried in order for the one that runs as
    /// primary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// With `hosts` on AWS: the source's WAL archive in S3, which the standby leader replays
    /// while it cannot stream (with `from`, the source's file names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<StandbyArchive>,
}

/// A standby's source archive in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StandbyArchive {
    /// The bucket the source archives to.
    pub bucket: String,
    /// The source's prefix in it, e.g. `spilo/orders/wal/15/`.
    pub prefix: String,
    /// The bucket's region (default: this cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// How the data comes into being: exactly one of `initdb` or `clone` (default: initdb).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bootstrap {
    /// A new, empty cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initdb: Option<InitdbSpec>,
    /// A copy of another cluster, from its archive, up to a point in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneSpec>,
}

/// initdb options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InitdbSpec {
    /// Database encoding.
    #[serde(default = "d_encoding")]
    pub encoding: String,
    /// Locale.
    #[serde(default = "d_locale")]
    pub locale: String,
}

fn d_encoding() -> String {
    "UTF8".into()
}
fn d_locale() -> String {
    "C".into()
}

impl Default for InitdbSpec {
    fn default() -> Self {
        Self {
            encoding: d_encoding(),
            locale: d_locale(),
        }
    }
}

/// A point-in-time clone of another cluster in this repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CloneSpec {
    /// The source cluster's name.
    pub from: ClusterName,
    /// Recover up to this moment; the end of the archive when absent. RFC 3339 with a zone
    /// (`2026-11-25T18:00:00Z`, a fraction of a second and an offset such as `+02:00` allowed;
    /// a space may replace the `T`). The clone restores the newest backup that finished before
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
}

/// How the reconciler treats the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReconcileSpec {
    /// Delete the cluster's resources when its file is removed.
    #[serde(default)]
    pub prune: bool,
    /// What to do when the running cluster drifts from this file: `warn` or `revert`. When
    /// absent: `revert` for the local target (`spilo up` replaces dead members), `warn` on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftPolicy>,
    /// Leave the cluster alone.
    #[serde(default)]
    pub suspend: bool,
    /// AWS: turn on the stack's termination protection; spilo then never deletes the stack
    /// (a person must turn it off first, outside spilo).
    #[serde(default)]
    pub termination_protection: bool,
}

impl ClusterSpec {
    /// The drift policy in effect: the file's, or the target's default.
    pub fn drift_policy(&self) -> DriftPolicy {
        self.reconcile.drift.unwrap_or(match self.target {
            Target::Local => DriftPolicy::Revert,
            Target::Aws => DriftPolicy::Warn,
        })
    }

    /// How the primary endpoint reaches the primary: the file's, or the target's default.
    /// Locally HAProxy and the governors share one machine, so the proxies' extra hop costs
    /// nothing and clients follow a new primary at once; on AWS the default stays the health
    /// check, since changing it rolls every instance of an existing cluster.
    pub fn routing(&self) -> endpoints::Routing {
        self.endpoints.routing.unwrap_or(match self.target {
            Target::Local => endpoints::Routing::Proxy,
            Target::Aws => endpoints::Routing::HealthCheck,
        })
    }
}

/// Drift handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Alert only.
    Warn,
    /// Re-apply the file.
    Revert,
}

/// Password references.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretsSpec {
    /// The superuser's password; generated into the state dir by the local target when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superuser: Option<SecretRef>,
    /// The replication user's password; generated like the superuser's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<SecretRef>,
    /// The token the governors' REST API requires for switchover, failover, restart, reload,
    /// reinitialize and config changes; generated by the local target when absent. On AWS,
    /// without it those endpoints are disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restapi: Option<SecretRef>,
    /// AWS: the cluster CA, its certificate and private key as one PEM bundle. With it the
    /// members issue their own certificates from it at boot and serve PostgreSQL (`hostssl`
    /// only, replication `verify-full`) and the REST API over TLS; without it they are
    /// plaintext. (The local target makes its own CA.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretRef>,
    /// AWS: the KMS key (ARN) that encrypts the SecureString parameters or secrets when it is
    /// not the account's default; the instances' role may then decrypt with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

impl SecretsSpec {
    /// Every secret reference with its field name under `spec.secrets`.
    pub fn references(&self) -> [(&'static str, Option<&SecretRef>); 4] {
        [
            ("superuser", self.superuser.as_ref()),
            ("replication", self.replication.as_ref()),
            ("restapi", self.restapi.as_ref()),
            ("ca", self.ca.as_ref()),
        ]
    }
}

/// Where a password is: exactly one of `env`, `file`, `ssm` or `secretsManager`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// An environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An AWS SSM parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm: Option<String>,
    /// An AWS Secrets Manager ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_manager: Option<String>,
}

impl SecretRef {
    /// How many sources are set (valid: exactly one).
    pub fn sources(&self) -> usize {
        [
            self.env.is_some(),
            self.file.is_some(),
            self.ssm.is_some(),
            self.secrets_manager.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_five_line_file_is_a_complete_cluster() {
        let f: ClusterFile = serde_json::from_value(serde_json::json!({
            "apiVersion": "spilo/v1",
            "kind": "PostgresCluster",
            "metadata": {"name": "orders"},
            "spec": {}
        }))
        .expect("minimal file");
        assert_eq!(f.spec.instances, 3);
        assert_eq!(f.spec.target, Target::Local);
        assert_eq!(f.spec.postgresql.version, 15);
        assert_eq!(f.spec.ha.ttl, 4);
        assert!(f.spec.endpoints.primary.enabled);
        assert_eq!(f.spec.bootstrap, Bootstrap::default());
        assert_eq!(f.spec.drift_policy(), DriftPolicy::Revert, "local default");
    }

    #[test]
    fn a_build_without_ssl_is_told_by_its_configure_options() {
        assert_eq!(
            built_without_ssl("'--prefix=/x' '--without-readline' '--without-icu'"),
            Some(true)
        );
        assert_eq!(
            built_without_ssl("'--prefix=/usr' '--with-openssl'"),
            Some(false)
        );
        assert_eq!(
            built_without_ssl("'--with-ssl=openssl' '--with-icu'"),
            Some(false)
        );
        assert_eq!(built_without_ssl("not recorded\n"), None);
    }

    #[test]
    fn parameters_keep_their_postgres_spelling() {
        assert_eq!(ParamValue::Bool(true).to_string(), "on");
        assert_eq!(ParamValue::Integer(200).to_string(), "200");
        assert_eq!(ParamValue::Text("1GB".into()).to_string(), "1GB");
    }
}
