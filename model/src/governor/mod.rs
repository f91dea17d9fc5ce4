//! The governor's configuration file (`governor run --config FILE`): the contract between the
//! two programs. The `spilo` CLI builds these values from a cluster file and serialises them
//! (a file for the local target, the instances' user data on AWS); the governor parses them
//! with [`GovernorConfig::parse`] and checks them with [`GovernorConfig::check`]. One set of
//! types, so a rendering the governor cannot read cannot be written.
//!
//! Unknown keys are refused, so a typo never silently falls back to a default. Secrets are
//! references ([`SecretRef`]), never values. Reading files and secrets is the governor's job
//! (`governor::config::load`); this module performs no I/O.

mod archive;
mod etcd_member;
mod secret;
mod store;
mod tls;

pub use archive::{ArchiveConfig, BackupSchedule, Compression, S3Config, VerifySchedule};
pub use etcd_member::EtcdMemberConfig;
pub use secret::SecretRef;
pub use store::{EtcdConfig, ZooKeeperConfig};
pub use tls::{MIN_LIFETIME, TlsConfig};

use crate::spec::{
    TimingField, default_loop_wait as d_loop_wait, default_maximum_lag_on_failover as d_max_lag,
    default_primary_start_timeout as d_primary_start_timeout,
    default_retry_timeout as d_retry_timeout, default_ttl as d_ttl,
};
use crate::{ClusterName, MemberName, MemberTags, TargetTime};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a configuration does not hold together: the dotted field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The dotted path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorConfig {
    /// The cluster this member belongs to: the etcd scope.
    pub scope: ClusterName,
    /// This member's name, unique within the scope. On AWS it is absent from the file and
    /// given at start (`governor run --name <instance id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<MemberName>,
    /// The etcd key namespace (default `/service`).
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "is_default_namespace"
    )]
    pub namespace: String,
    /// How to find etcd (the coordination store unless `zookeeper:` is given).
    #[serde(default, skip_serializing_if = "is_default")]
    pub etcd: EtcdConfig,
    /// The coordination store is a ZooKeeper ensemble instead of etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<ZooKeeperConfig>,
    /// The local PostgreSQL instance.
    pub postgresql: PostgresConfig,
    /// The REST API.
    #[serde(default)]
    pub restapi: RestApiConfig,
    /// HA timing and failover rules.
    #[serde(default)]
    pub ha: HaSettings,
    /// Tags published with this member.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tags: MemberTags,
    /// WAL archiving (`archive_command`/`restore_command` through `governor wal-push` and
    /// `wal-fetch`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveConfig>,
    /// How the first member creates the cluster: initdb (default) or a clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapConfig>,
    /// On AWS: the region (for SSM and Secrets Manager references) and the stack to signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSettings>,
    /// TLS on every connection (etcd, PostgreSQL, the REST API) with a certificate the member
    /// issues itself from the cluster's CA; plaintext when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The primary proxy: a TCP port that forwards every connection to the PostgreSQL of the
    /// member holding the leader key, followed from etcd on its own watch; the REST API's `/proxy` says whether it has such a target. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
}

/// `proxy:`: where the primary proxy listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Listen address, e.g. `0.0.0.0:5433`.
    pub listen: SocketAddr,
}

/// Whether two listen addresses take the same port on a common address.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The etcd key namespace when a file names none.
pub fn default_namespace() -> String {
    crate::keys::DEFAULT_NAMESPACE.to_string()
}

fn is_default_namespace(s: &String) -> bool {
    *s == default_namespace()
}

/// `aws:`: what a member on an EC2 instance needs beyond the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The region of the instance, its parameters and secrets.
    pub region: String,
    /// The CloudFormation resource to signal once this member runs (a primary, or a replica
    /// that streams): the stack waits for these signals before it counts as created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<StackSignal>,
    /// Keep this instance protected from scale-in while it runs the primary (and unprotected
    /// otherwise), so lowering the group's size or its zone rebalancing terminates replicas
    /// only. The member name is the instance id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scale_in_protection: bool,
}

/// A CloudFormation `CreationPolicy` resource signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSignal {
    /// The stack name.
    pub stack: String,
    /// The logical id of the resource that waits (the auto-scaling group).
    pub resource: String,
}

/// `bootstrap:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Create the cluster from another cluster's archive instead of initdb.
    pub clone: CloneConfig,
}

/// `bootstrap.clone`: a base backup of another cluster's archive, recovered with its WAL to
/// `target_time` (or to the end of the archive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneConfig {
    /// The source cluster's archive.
    pub archive: ArchiveConfig,
    /// Recover to this moment (RFC 3339 with a zone, see [`TargetTime`]), starting from the
    /// newest backup that finished before it; the end of the archive when absent. Rendered
    /// for PostgreSQL's `recovery_target_time` in the form it accepts.
    #[serde(
        default,
        deserialize_with = "target_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_time: Option<TargetTime>,
}

/// `target_time`, refused with the field's name (serde_yaml's path stops at the mapping).
fn target_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TargetTime>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| TargetTime::parse(&t))
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("target_time: {e}")))
}

/// The local PostgreSQL instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory holding `postgres`, `initdb`, `pg_basebackup`, `pg_rewind`, `pg_controldata`.
    pub bin_dir: PathBuf,
    /// The data directory (PGDATA).
    pub data_dir: PathBuf,
    /// Where the governor keeps the generated configuration, the socket, the password file and
    /// the server log (default: `<data_dir>.run`). It is outside PGDATA so that pg_basebackup and
    /// pg_rewind never copy one member's settings onto another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// The address PostgreSQL listens on.
    pub listen: SocketAddr,
    /// The `host:port` other members and clients use (default: `listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_address: Option<String>,
    /// Extra PostgreSQL parameters for this member.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// pg_hba.conf lines after the governor's own `local` line (default: password
    /// authentication for everyone and for replication, from `networks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    /// The networks (CIDR) the default pg_hba lines admit; everywhere when empty. On AWS the
    /// instance gives its VPC's ranges at start (`--allowed-network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// The superuser and the replication user.
    pub authentication: Authentication,
}

/// Database users the governor needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// The superuser the governor, pg_rewind and operators use.
    pub superuser: Credentials,
    /// The user replicas stream with.
    pub replication: Credentials,
}

/// A user name and a reference to its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The role name.
    pub username: String,
    /// Where the password comes from; passwords never appear in the file itself.
    pub password: SecretRef,
}

/// The REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestApiConfig {
    /// Listen address (default `127.0.0.1:8008`).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// The `host:port` other members use (default: `listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_address: Option<String>,
    /// Credentials the mutating endpoints (switchover, failover, restart, reload,
    /// reinitialize, backup, `PATCH /config`) require; without them those endpoints are
    /// disabled. Reads (health checks, status) stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ApiAuthConfig>,
    /// Serve HTTPS instead of HTTP (health checks then need TLS too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTlsConfig>,
}

/// The REST API's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// The certificate chain (PEM).
    pub certfile: PathBuf,
    /// Its private key (PEM).
    pub keyfile: PathBuf,
    /// The CA certificates other members' APIs are checked against (PEM). Default:
    /// `certfile` itself, which works for a self-signed certificate without `CA:TRUE` (rustls
    /// refuses a CA certificate as a server's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cafile: Option<PathBuf>,
}

/// REST API credentials: a bearer token, basic auth, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAuthConfig {
    /// A token sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
    /// The user name for basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password for basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            connect_address: None,
            auth: None,
            tls: None,
        }
    }
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8008))
}

/// HA timing, in seconds, and failover rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSettings {
    /// Leader lease length. A dead primary is replaced about this long after it died.
    #[serde(default = "d_ttl")]
    pub ttl: u64,
    /// The HA loop runs at least this often; etcd events and PostgreSQL exits wake it sooner.
    #[serde(default = "d_loop_wait")]
    pub loop_wait: u64,
    /// How long one etcd or PostgreSQL operation may take before it counts as failed.
    #[serde(default = "d_retry_timeout")]
    pub retry_timeout: u64,
    /// A replica further than this many bytes behind the most advanced member is not promoted.
    #[serde(default = "d_max_lag")]
    pub maximum_lag_on_failover: u64,
    /// How long a crashed primary may take to restart in place before leadership is handed over.
    #[serde(default = "d_primary_start_timeout")]
    pub primary_start_timeout: u64,
    /// Synchronous replication (`true`, `false` or `quorum`): seeds the cluster's `config` at
    /// bootstrap (afterwards `config` in etcd decides).
    #[serde(default, skip_serializing_if = "is_default")]
    pub synchronous_mode: crate::spec::SynchronousMode,
    /// With `synchronous_mode`: block writes rather than run without a synchronous standby.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous_mode_strict: bool,
    /// With `synchronous_mode`: how many synchronous standbys.
    #[serde(default = "d_sync_count")]
    pub synchronous_node_count: u32,
    /// Failsafe mode: seeds the cluster's `config` at bootstrap (afterwards `config` in etcd
    /// decides).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failsafe_mode: bool,
    /// A standby cluster's source: seeds the cluster's `config` at bootstrap and decides how
    /// a member bootstraps while `config` does not exist yet (a copy of the source instead of
    /// initdb); afterwards `config` in etcd decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_cluster: Option<crate::StandbySource>,
}

fn d_sync_count() -> u32 {
    1
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            ttl: d_ttl(),
            loop_wait: d_loop_wait(),
            retry_timeout: d_retry_timeout(),
            maximum_lag_on_failover: d_max_lag(),
            primary_start_timeout: d_primary_start_timeout(),
            synchronous_mode: crate::spec::SynchronousMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: d_sync_count(),
            failsafe_mode: false,
            standby_cluster: None,
        }
    }
}

impl HaSettings {
    /// The leader lease length.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }

    /// The period of the HA loop.
    pub fn loop_wait(&self) -> Duration {
        Duration::from_secs(self.loop_wait)
    }

    /// The budget of one etcd or PostgreSQL operation.
    pub fn retry_timeout(&self) -> Duration {
        Duration::from_secs(self.retry_timeout)
    }

    /// How often the lease is renewed: eight times per lease, so that a dead primary's lease
    /// ends close to a full `ttl` after its last renewal and several renewals in a row may fail
    /// before a healthy primary has to stop accepting writes.
    pub fn keepalive_interval(&self) -> Duration {
        self.ttl() / 8
    }

    /// How long before its lease ends a primary stops accepting writes. Others can only take
    /// leadership after etcd expires the lease, which is never earlier than its local end, so
    /// this margin covers the immediate shutdown of PostgreSQL and clock-rate error.
    pub fn fence_margin(&self) -> Duration {
        Duration::from_millis(1000).min(self.ttl() / 4)
    }

    fn check(&self) -> Result<(), Invalid> {
        match crate::spec::timing_problems(self.ttl, self.loop_wait, self.retry_timeout)
            .into_iter()
            .next()
        {
            None => Ok(()),
            Some(p) => Err(invalid(
                match p.field {
                    TimingField::Ttl => "ha.ttl",
                    TimingField::LoopWait => "ha.loop_wait",
                    TimingField::RetryTimeout => "ha.retry_timeout",
                },
                p.message,
            )),
        }
    }
}

/// Whether `s` is `address/prefix` with a prefix the address family allows.
fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}

/// Why a configuration text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The YAML did not match the expected shape (this includes unknown keys); serde_yaml's
    /// message with line and column.
    #[error("{0}")]
    Shape(String),
    /// A value is out of range or settings contradict each other.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl GovernorConfig {
    /// Parses YAML text and checks it ([`Self::check`]).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let config: GovernorConfig =
            serde_yaml::from_str(text).map_err(|e| ParseError::Shape(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// The configuration as YAML, the form [`Self::parse`] reads.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Every secret the file references, with its field.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretRef)> {
        let auth = &self.postgresql.authentication;
        let api = self.restapi.auth.as_ref();
        [
            (
                "postgresql.authentication.superuser.password",
                Some(&auth.superuser.password),
            ),
            (
                "postgresql.authentication.replication.password",
                Some(&auth.replication.password),
            ),
            ("restapi.auth.token", api.and_then(|a| a.token.as_ref())),
            ("tls.ca_key", self.tls.as_ref().map(|t| &t.ca_key)),
            (
                "restapi.auth.password",
                api.and_then(|a| a.password.as_ref()),
            ),
        ]
        .into_iter()
        .filter_map(|(field, secret)| secret.map(|s| (field, s)))
        .collect()
    }

    /// Every check that needs no I/O: one source of etcd, absolute paths, distinct ports,
    /// one source per secret, user names, REST API credentials, the archive, the timing.
    pub fn check(&self) -> Result<(), Invalid> {
        self.check_store()?;
        let pg = &self.postgresql;
        if !pg.data_dir.is_absolute() {
            return Err(invalid("postgresql.data_dir", "must be an absolute path"));
        }
        if !pg.bin_dir.is_absolute() {
            return Err(invalid("postgresql.bin_dir", "must be an absolute path"));
        }
        if let Some(n) = pg.networks.iter().find(|n| !is_cidr(n)) {
            return Err(invalid(
                "postgresql.networks",
                format!("{n:?} is not a network such as 10.0.0.0/16"),
            ));
        }
        if pg.listen.port() == 0 {
            return Err(invalid("postgresql.listen", "needs a port"));
        }
        if self.restapi.listen.port() == pg.listen.port()
            && self.restapi.listen.ip() == pg.listen.ip()
        {
            return Err(invalid(
                "restapi.listen",
                "must differ from postgresql.listen",
            ));
        }
        if let Some(proxy) = &self.proxy {
            let taken = [pg.listen, self.restapi.listen];
            if proxy.listen.port() == 0 {
                return Err(invalid("proxy.listen", "needs a port"));
            }
            if taken
                .iter()
                .any(|t| t.port() == proxy.listen.port() && overlaps(t, &proxy.listen))
            {
                return Err(invalid(
                    "proxy.listen",
                    "must differ from postgresql.listen and restapi.listen",
                ));
            }
        }
        for (field, user) in [
            (
                "postgresql.authentication.superuser.username",
                &pg.authentication.superuser.username,
            ),
            (
                "postgresql.authentication.replication.username",
                &pg.authentication.replication.username,
            ),
        ] {
            if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(
                    field,
                    "must be a non-empty name of letters, digits and '_'",
                ));
            }
        }
        if let Some(auth) = &self.restapi.auth {
            match (&auth.token, &auth.username, &auth.password) {
                (None, None, None) => {
                    return Err(invalid(
                        "restapi.auth",
                        "set token, or username and password",
                    ));
                }
                (_, Some(_), None) | (_, None, Some(_)) => {
                    return Err(invalid("restapi.auth", "username and password go together"));
                }
                (_, Some(u), _) if u.is_empty() || u.contains(':') => {
                    return Err(invalid(
                        "restapi.auth.username",
                        "must be non-empty and contain no ':'",
                    ));
                }
                _ => {}
            }
        }
        for (field, secret) in self.secret_refs() {
            if secret.sources() != 1 {
                return Err(invalid(
                    field,
                    "set exactly one of env, file, ssm or secrets_manager",
                ));
            }
            if secret.is_remote() && self.aws.is_none() {
                return Err(invalid(
                    field,
                    "ssm and secrets_manager references need aws.region",
                ));
            }
        }
        if let Some(a) = &self.archive {
            a.check().map_err(|m| invalid("archive", m))?;
        }
        if let Some(b) = &self.bootstrap {
            b.clone
                .archive
                .check()
                .map_err(|m| invalid("bootstrap.clone.archive", m))?;
        }
        if let Some(a) = &self.aws
            && a.region.is_empty()
        {
            return Err(invalid("aws.region", "must not be empty"));
        }
        if let Some(t) = &self.tls {
            if !t.ca_file.is_absolute() {
                return Err(invalid("tls.ca_file", "must be an absolute path"));
            }
            if t.lifetime < tls::MIN_LIFETIME {
                return Err(invalid(
                    "tls.lifetime",
                    format!("must be at least {} seconds", tls::MIN_LIFETIME),
                ));
            }
            if let Some(h) = self
                .etcd
                .hosts
                .iter()
                .find(|h| h.starts_with("http://") && self.etcd_over_tls())
            {
                return Err(invalid(
                    "etcd.hosts",
                    format!("{h} is plaintext; with tls etcd is reached over https"),
                ));
            }
        }
        self.ha.check()
    }

    /// The run directory (see [`PostgresConfig::run_dir`]).
    pub fn run_dir(&self) -> PathBuf {
        self.postgresql.run_dir.clone().unwrap_or_else(|| {
            let mut s = self.postgresql.data_dir.clone().into_os_string();
            s.push(".run");
            PathBuf::from(s)
        })
    }

    /// The `host:port` others use to reach PostgreSQL.
    pub fn pg_connect_address(&self) -> String {
        self.postgresql
            .connect_address
            .clone()
            .unwrap_or_else(|| self.postgresql.listen.to_string())
    }

    /// The `host:port` others use to reach the REST API.
    pub fn api_connect_address(&self) -> String {
        self.restapi
            .connect_address
            .clone()
            .unwrap_or_else(|| self.restapi.listen.to_string())
    }

    /// The REST API's URL as other members and clients use it (`https` with `restapi.tls`
    /// or `tls`).
    pub fn api_url(&self) -> String {
        let scheme = if self.api_tls().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.api_connect_address())
    }
}

#[cfg(test)]
mod tests;
