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
    /// The etcd cluster; absent for the local target means `spilo up` starts one.
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
    /// Load balancers, DNS and health checks.
    #[serde(default)]
    pub endpoints: EndpointsSpec,
    /// How the reconciler treats this cluster.
    #[serde(default)]
    pub reconcile: ReconcileSpec,
    /// References to the passwords; secrets never live in the file.
    #[serde(default)]
    pub secrets: SecretsSpec,
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
            endpoints: EndpointsSpec::default(),
            reconcile: ReconcileSpec::default(),
            secrets: SecretsSpec::default(),
            tags: BTreeMap::new(),
        }
    }
}

/// PostgreSQL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Major version.
    #[serde(default = "d_pg_version")]
    #[schemars(range(min = 13, max = 17))]
    pub version: u32,
    /// Server parameters for every member (`shared_buffers: 1GB`, `max_connections: 200`).
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
    /// pg_hba.conf lines; the default allows password logins from anywhere.
    #[serde(default, rename = "pg_hba", skip_serializing_if = "Vec::is_empty")]
    pub pg_hba: Vec<String>,
}

fn d_pg_version() -> u32 {
    15
}

impl Default for PostgresSpec {
    fn default() -> Self {
        Self {
            version: d_pg_version(),
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
        }
    }
}

/// A PostgreSQL parameter value as written in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    /// `on`, `1GB`, `'replica'`.
    Text(String),
    /// `200`.
    Integer(i64),
    /// `0.9`.
    Float(f64),
    /// `true`.
    Bool(bool),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Text(s) => f.write_str(s),
            ParamValue::Integer(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Bool(true) => f.write_str("on"),
            ParamValue::Bool(false) => f.write_str("off"),
        }
    }
}

/// Failover behaviour (the governors' `ha` settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HaSpec {
    /// Leader lease in seconds: a dead primary is replaced about this long after it died.
    #[serde(default = "d_ttl")]
    #[schemars(range(min = 2, max = 3600))]
    pub ttl: u64,
    /// Seconds between HA loop runs when no event wakes them sooner.
    #[serde(default = "d_loop_wait")]
    #[schemars(range(min = 1, max = 3600))]
    pub loop_wait: u64,
    /// Seconds one etcd or PostgreSQL operation may take.
    #[serde(default = "d_retry_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub retry_timeout: u64,
    /// A replica further than this many bytes behind the most advanced member is not promoted.
    #[serde(default = "d_max_lag")]
    pub maximum_lag_on_failover: u64,
    /// Seconds a crashed primary may take to restart in place before a replica takes over.
    #[serde(default = "d_primary_start_timeout")]
    pub primary_start_timeout: u64,
    /// Commit only once a synchronous standby has the WAL; failover only to such a standby.
    #[serde(default)]
    pub synchronous_mode: bool,
    /// How many synchronous standbys.
    #[serde(default = "d_sync_count")]
    #[schemars(range(min = 1))]
    pub synchronous_node_count: u32,
    /// Block writes rather than run without a synchronous standby.
    #[serde(default)]
    pub synchronous_mode_strict: bool,
    /// Keep the primary while etcd is down as long as every member confirms it.
    #[serde(default)]
    pub failsafe_mode: bool,
}

/// Default leader lease, in seconds.
pub const DEFAULT_TTL: u64 = 4;
/// Default HA loop period, in seconds.
pub const DEFAULT_LOOP_WAIT: u64 = 1;
/// Default budget of one etcd or PostgreSQL operation, in seconds.
pub const DEFAULT_RETRY_TIMEOUT: u64 = 2;
/// Default lag limit for failover candidates, in bytes.
pub const DEFAULT_MAXIMUM_LAG_ON_FAILOVER: u64 = 1_048_576;
/// Default time a crashed primary may take to restart in place, in seconds.
pub const DEFAULT_PRIMARY_START_TIMEOUT: u64 = 30;

fn d_ttl() -> u64 {
    DEFAULT_TTL
}
fn d_loop_wait() -> u64 {
    DEFAULT_LOOP_WAIT
}
fn d_retry_timeout() -> u64 {
    DEFAULT_RETRY_TIMEOUT
}
fn d_max_lag() -> u64 {
    DEFAULT_MAXIMUM_LAG_ON_FAILOVER
}
fn d_primary_start_timeout() -> u64 {
    DEFAULT_PRIMARY_START_TIMEOUT
}

/// Which HA timing setting a [`TimingProblem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingField {
    /// The lease length.
    Ttl,
    /// The loop period.
    LoopWait,
    /// The operation budget.
    RetryTimeout,
}

/// An inconsistent combination of HA timing settings: one rule for cluster files and governor
/// configurations alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingProblem {
    /// The offending setting.
    pub field: TimingField,
    /// What is wrong.
    pub message: String,
}

/// Checks `ttl`, `loop_wait` and `retry_timeout` (seconds) against each other: etcd's shortest
/// lease is 2 s, the loop must run at least once per lease, and a primary must learn that etcd
/// is gone (one operation budget) before its lease ends.
pub fn timing_problems(ttl: u64, loop_wait: u64, retry_timeout: u64) -> Vec<TimingProblem> {
    let mut out = Vec::new();
    if ttl < 2 {
        out.push(TimingProblem {
            field: TimingField::Ttl,
            message: format!("must be at least 2 seconds (etcd's shortest lease), got {ttl}"),
        });
        return out;
    }
    if loop_wait == 0 || loop_wait > ttl {
        out.push(TimingProblem {
            field: TimingField::LoopWait,
            message: format!("must be between 1 and the ttl ({ttl}s), got {loop_wait}"),
        });
    }
    if retry_timeout == 0 || retry_timeout >= ttl {
        out.push(TimingProblem {
            field: TimingField::RetryTimeout,
            message: format!(
                "must be at least 1 and below the ttl ({ttl}s), got {retry_timeout}: a primary must learn that etcd is gone before its lease ends"
            ),
        });
    }
    out
}
fn d_sync_count() -> u32 {
    1
}

impl Default for HaSpec {
    fn default() -> Self {
        Self {
            ttl: d_ttl(),
            loop_wait: d_loop_wait(),
            retry_timeout: d_retry_timeout(),
            maximum_lag_on_failover: d_max_lag(),
            primary_start_timeout: d_primary_start_timeout(),
            synchronous_mode: false,
            synchronous_node_count: d_sync_count(),
            synchronous_mode_strict: false,
            failsafe_mode: false,
        }
    }
}

/// The etcd cluster: exactly one of `hosts` or `discoveryDomain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DcsSpec {
    /// Client endpoints, `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A domain with `_etcd-server._tcp` (or `_etcd-client._tcp`) SRV records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_domain: Option<String>,
}

/// AWS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsSpec {
    /// The region, e.g. `eu-central-1`.
    pub region: String,
    /// EC2 instance type.
    #[serde(default = "d_instance_type")]
    pub instance_type: String,
    /// The AMI; the latest spilo image of the region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The data volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Subnets for the instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// The Route53 hosted zone the DNS name is created in, e.g. `db.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_zone: Option<String>,
    /// More sources allowed to reach PostgreSQL (bastions, monitoring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ingress: Vec<IngressRule>,
    /// More IAM policy ARNs for the instances' role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_policies: Vec<String>,
}

fn d_instance_type() -> String {
    "t3.medium".into()
}

/// The EBS data volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size in GB (10 or more).
    #[serde(default = "d_size")]
    pub size: u32,
    /// Volume type.
    #[serde(default, rename = "type")]
    pub volume_type: VolumeType,
    /// Provisioned IOPS (io1, io2, gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// Throughput in MiB/s (gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u32>,
    /// A snapshot to create the volume from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Filesystem of the data partition.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Mount options.
    #[serde(default = "d_mount_options")]
    pub mount_options: Vec<String>,
}

fn d_size() -> u32 {
    10
}
fn d_mount_options() -> Vec<String> {
    vec!["noatime".into(), "nodiratime".into()]
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: d_size(),
            volume_type: VolumeType::default(),
            iops: None,
            throughput: None,
            snapshot_id: None,
            filesystem: Filesystem::default(),
            mount_options: d_mount_options(),
        }
    }
}

/// EBS volume types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// General purpose SSD, the default.
    #[default]
    Gp3,
    /// Older general purpose SSD.
    Gp2,
    /// Provisioned IOPS SSD.
    Io1,
    /// Provisioned IOPS SSD, newer.
    Io2,
    /// Magnetic.
    Standard,
}

/// Filesystems for the data volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4, the default.
    #[default]
    Ext4,
    /// XFS.
    Xfs,
}

/// A source allowed to reach PostgreSQL: exactly one of `cidr` or `securityGroup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// An IPv4 range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// A security group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    /// Ports (default 5432).
    #[serde(default = "d_ingress_ports")]
    pub ports: Vec<u16>,
}

fn d_ingress_ports() -> Vec<u16> {
    vec![5432]
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
}

fn d_schedule() -> String {
    "0 1 * * *".into()
}
fn d_retention() -> u32 {
    5
}

/// Compression methods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4, the default: fast.
    #[default]
    Lz4,
    /// Zstandard: smaller.
    Zstd,
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
    /// Recover up to this moment (RFC 3339 with a zone); the end of the archive when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
}

/// Load balancers, DNS and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointsSpec {
    /// The endpoint that reaches the primary.
    #[serde(default = "d_primary_endpoint")]
    pub primary: Endpoint,
    /// An endpoint that reaches the replicas (off by default).
    #[serde(default = "d_replica_endpoint")]
    pub replica: Endpoint,
    /// The DNS record (AWS).
    #[serde(default)]
    pub dns: DnsSpec,
    /// The health check the load balancer uses.
    #[serde(default)]
    pub health_check: HealthCheck,
}

impl Default for EndpointsSpec {
    fn default() -> Self {
        Self {
            primary: d_primary_endpoint(),
            replica: d_replica_endpoint(),
            dns: DnsSpec::default(),
            health_check: HealthCheck::default(),
        }
    }
}

fn d_primary_endpoint() -> Endpoint {
    Endpoint {
        enabled: true,
        port: 5432,
    }
}
fn d_replica_endpoint() -> Endpoint {
    Endpoint {
        enabled: false,
        port: 5433,
    }
}

/// One load-balanced endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Whether it exists.
    pub enabled: bool,
    /// The port clients connect to (AWS; the local target derives its own).
    pub port: u16,
}

/// The DNS record (AWS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    /// The record's name in the hosted zone; the cluster name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TTL in seconds.
    #[serde(default = "d_dns_ttl")]
    pub ttl: u32,
}

fn d_dns_ttl() -> u32 {
    20
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            name: None,
            ttl: d_dns_ttl(),
        }
    }
}

/// Health check of the load balancer against each governor's REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path that answers 200 only on the primary.
    #[serde(default = "d_primary_path")]
    pub primary_path: String,
    /// Path that answers 200 only on streaming replicas.
    #[serde(default = "d_replica_path")]
    pub replica_path: String,
    /// Seconds between checks.
    #[serde(default = "d_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub interval: u32,
}

fn d_primary_path() -> String {
    "/primary".into()
}
fn d_replica_path() -> String {
    "/replica".into()
}
fn d_interval() -> u32 {
    2
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            primary_path: d_primary_path(),
            replica_path: d_replica_path(),
            interval: d_interval(),
        }
    }
}

/// How the reconciler treats the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReconcileSpec {
    /// Delete the cluster's resources when its file is removed.
    #[serde(default)]
    pub prune: bool,
    /// What to do when the running cluster drifts from this file.
    #[serde(default)]
    pub drift: DriftPolicy,
    /// Leave the cluster alone.
    #[serde(default)]
    pub suspend: bool,
}

/// Drift handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Alert only.
    #[default]
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
    }

    #[test]
    fn parameters_keep_their_postgres_spelling() {
        assert_eq!(ParamValue::Bool(true).to_string(), "on");
        assert_eq!(ParamValue::Integer(200).to_string(), "200");
        assert_eq!(ParamValue::Text("1GB".into()).to_string(), "1GB");
    }
}
