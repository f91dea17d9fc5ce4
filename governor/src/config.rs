//! The governor's configuration file (`governor run --config FILE`): its YAML shape, defaults,
//! secret references, and the checks that need no I/O. Unknown keys are refused, so a typo in
//! a setting never silently falls back to a default.
//!
//! Checks that touch the machine (binaries, data directory ownership, etcd) live in
//! [`crate::preflight`].

use serde::Deserialize;
use spilo_model::{ClusterName, MemberName, MemberTags};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the expected shape (this includes unknown keys).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_yaml's message, with line and column.
        message: String,
    },
    /// A value is out of range or settings contradict each other.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A secret reference could not be resolved.
    #[error("{path}: {field}: {message}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// The dotted path of the secret.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorConfig {
    /// The cluster this member belongs to: the etcd scope.
    pub scope: ClusterName,
    /// This member's name, unique within the scope.
    pub name: MemberName,
    /// The etcd key namespace (default `/service`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How to find etcd.
    pub etcd: EtcdConfig,
    /// The local PostgreSQL instance.
    pub postgresql: PostgresConfig,
    /// The REST API.
    #[serde(default)]
    pub restapi: RestApiConfig,
    /// HA timing and failover rules.
    #[serde(default)]
    pub ha: HaSettings,
    /// Tags published with this member.
    #[serde(default)]
    pub tags: MemberTags,
    /// WAL archiving (`archive_command`/`restore_command` through `governor wal-push` and
    /// `wal-fetch`); off when absent.
    #[serde(default)]
    pub archive: Option<crate::archive::ArchiveConfig>,
    /// How the first member creates the cluster: initdb (default) or a clone.
    #[serde(default)]
    pub bootstrap: Option<BootstrapConfig>,
}

/// `bootstrap:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Create the cluster from another cluster's archive instead of initdb.
    pub clone: CloneConfig,
}

/// `bootstrap.clone`: a base backup of another cluster's archive, recovered with its WAL to
/// `target_time` (or to the end of the archive).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneConfig {
    /// The source cluster's archive.
    pub archive: crate::archive::ArchiveConfig,
    /// Recover to this moment (RFC 3339 with a zone, see [`spilo_model::TargetTime`]),
    /// starting from the newest backup that finished before it; the end of the archive when
    /// absent. Rendered for PostgreSQL's `recovery_target_time` in the form it accepts.
    #[serde(default, deserialize_with = "target_time")]
    pub target_time: Option<spilo_model::TargetTime>,
}

/// `target_time`, refused with the field's name (serde_yaml's path stops at the mapping).
fn target_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<spilo_model::TargetTime>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| spilo_model::TargetTime::parse(&t))
        .transpose()
        .map_err(|e| serde::de::Error::custom(format!("target_time: {e}")))
}

fn default_namespace() -> String {
    spilo_model::keys::DEFAULT_NAMESPACE.to_string()
}

/// Where etcd is: a list of endpoints, or a DNS domain with SRV records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client endpoints such as `127.0.0.1:2379` or `http://10.0.0.1:2379`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A domain whose `_etcd-client._tcp` or `_etcd-server._tcp` SRV records name the etcd members.
    #[serde(default)]
    pub discovery_domain: Option<String>,
    /// The DNS server to ask for SRV records (`host:port`); the system resolver when absent.
    #[serde(default)]
    pub discovery_nameserver: Option<SocketAddr>,
}

/// The local PostgreSQL instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory holding `postgres`, `initdb`, `pg_basebackup`, `pg_rewind`, `pg_controldata`.
    pub bin_dir: PathBuf,
    /// The data directory (PGDATA).
    pub data_dir: PathBuf,
    /// Where the governor keeps the generated configuration, the socket, the password file and
    /// the server log (default: `<data_dir>.run`). It is outside PGDATA so that pg_basebackup and
    /// pg_rewind never copy one member's settings onto another.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// The address PostgreSQL listens on.
    pub listen: SocketAddr,
    /// The `host:port` other members and clients use (default: `listen`).
    #[serde(default)]
    pub connect_address: Option<String>,
    /// Extra PostgreSQL parameters for this member.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// pg_hba.conf lines after the governor's own `local` line (default: password
    /// authentication for everyone and for replication, from any address).
    #[serde(default)]
    pub pg_hba: Option<Vec<String>>,
    /// The superuser and the replication user.
    pub authentication: Authentication,
}

/// Database users the governor needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// The superuser the governor, pg_rewind and operators use.
    pub superuser: Credentials,
    /// The user replicas stream with.
    pub replication: Credentials,
}

/// A user name and a reference to its password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The role name.
    pub username: String,
    /// Where the password comes from; passwords never appear in the file itself.
    pub password: SecretRef,
}

/// A reference to a secret: exactly one of `env` or `file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The name of an environment variable holding the value.
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding the value (a trailing newline is ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// The REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestApiConfig {
    /// Listen address (default `127.0.0.1:8008`).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// The `host:port` other members use (default: `listen`).
    #[serde(default)]
    pub connect_address: Option<String>,
    /// Credentials the mutating endpoints (switchover, failover, restart, reload,
    /// reinitialize, `PATCH /config`) require; without them those endpoints are disabled.
    /// Reads (health checks, status) stay open.
    #[serde(default)]
    pub auth: Option<ApiAuthConfig>,
    /// Serve HTTPS instead of HTTP (health checks then need TLS too).
    #[serde(default)]
    pub tls: Option<ApiTlsConfig>,
}

/// The REST API's certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// The certificate chain (PEM).
    pub certfile: PathBuf,
    /// Its private key (PEM).
    pub keyfile: PathBuf,
    /// The CA certificates other members' APIs are checked against (PEM). Default:
    /// `certfile` itself, which works for a self-signed certificate without `CA:TRUE` (rustls
    /// refuses a CA certificate as a server's own).
    #[serde(default)]
    pub cafile: Option<PathBuf>,
}

/// REST API credentials: a bearer token, basic auth, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAuthConfig {
    /// A token sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// The user name for basic auth.
    #[serde(default)]
    pub username: Option<String>,
    /// The password for basic auth.
    #[serde(default)]
    pub password: Option<SecretRef>,
}

/// Resolved REST API credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCredentials {
    /// The bearer token.
    pub token: Option<String>,
    /// The basic-auth user and password.
    pub basic: Option<(String, String)>,
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
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
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
    /// Synchronous replication: seeds the cluster's `config` at bootstrap (afterwards `config`
    /// in etcd decides).
    #[serde(default)]
    pub synchronous_mode: bool,
    /// With `synchronous_mode`: block writes rather than run without a synchronous standby.
    #[serde(default)]
    pub synchronous_mode_strict: bool,
    /// With `synchronous_mode`: how many synchronous standbys.
    #[serde(default = "d_sync_count")]
    pub synchronous_node_count: u32,
    /// Failsafe mode: seeds the cluster's `config` at bootstrap (afterwards `config` in etcd
    /// decides).
    #[serde(default)]
    pub failsafe_mode: bool,
}

fn d_sync_count() -> u32 {
    1
}

use spilo_model::spec::{
    TimingField, default_loop_wait as d_loop_wait, default_maximum_lag_on_failover as d_max_lag,
    default_primary_start_timeout as d_primary_start_timeout,
    default_retry_timeout as d_retry_timeout, default_ttl as d_ttl,
};

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            ttl: d_ttl(),
            loop_wait: d_loop_wait(),
            retry_timeout: d_retry_timeout(),
            maximum_lag_on_failover: d_max_lag(),
            primary_start_timeout: d_primary_start_timeout(),
            synchronous_mode: false,
            synchronous_mode_strict: false,
            synchronous_node_count: d_sync_count(),
            failsafe_mode: false,
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

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        match spilo_model::spec::timing_problems(self.ttl, self.loop_wait, self.retry_timeout)
            .into_iter()
            .next()
        {
            None => Ok(()),
            Some(p) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field: match p.field {
                    TimingField::Ttl => "ha.ttl",
                    TimingField::LoopWait => "ha.loop_wait",
                    TimingField::RetryTimeout => "ha.retry_timeout",
                }
                .to_string(),
                message: p.message,
            }),
        }
    }
}

/// A configuration with its secrets read.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file as written.
    pub config: GovernorConfig,
    /// Where it was read from.
    pub path: PathBuf,
    /// The superuser password.
    pub superuser_password: String,
    /// The replication password.
    pub replication_password: String,
    /// The REST API's credentials; `None` disables its mutating endpoints.
    pub api_auth: Option<ApiCredentials>,
}

impl GovernorConfig {
    /// Parses YAML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: GovernorConfig =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: message.to_string(),
        };
        match (self.etcd.hosts.is_empty(), &self.etcd.discovery_domain) {
            (true, None) => return Err(bad("etcd", "set either hosts or discovery_domain")),
            (false, Some(_)) => {
                return Err(bad("etcd", "set hosts or discovery_domain, not both"));
            }
            _ => {}
        }
        if !self.postgresql.data_dir.is_absolute() {
            return Err(bad("postgresql.data_dir", "must be an absolute path"));
        }
        if !self.postgresql.bin_dir.is_absolute() {
            return Err(bad("postgresql.bin_dir", "must be an absolute path"));
        }
        if self.postgresql.listen.port() == 0 {
            return Err(bad("postgresql.listen", "needs a port"));
        }
        if self.restapi.listen.port() == self.postgresql.listen.port()
            && self.restapi.listen.ip() == self.postgresql.listen.ip()
        {
            return Err(bad("restapi.listen", "must differ from postgresql.listen"));
        }
        for (field, secret) in [
            (
                "postgresql.authentication.superuser.password",
                &self.postgresql.authentication.superuser.password,
            ),
            (
                "postgresql.authentication.replication.password",
                &self.postgresql.authentication.replication.password,
            ),
        ] {
            if secret.env.is_some() == secret.file.is_some() {
                return Err(bad(field, "set exactly one of env or file"));
            }
        }
        for (field, user) in [
            (
                "postgresql.authentication.superuser.username",
                &self.postgresql.authentication.superuser.username,
            ),
            (
                "postgresql.authentication.replication.username",
                &self.postgresql.authentication.replication.username,
            ),
        ] {
            if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad(
                    field,
                    "must be a non-empty name of letters, digits and '_'",
                ));
            }
        }
        if let Some(auth) = &self.restapi.auth {
            match (&auth.token, &auth.username, &auth.password) {
                (None, None, None) => {
                    return Err(bad("restapi.auth", "set token, or username and password"));
                }
                (_, Some(_), None) | (_, None, Some(_)) => {
                    return Err(bad("restapi.auth", "username and password go together"));
                }
                (_, Some(u), _) if u.is_empty() || u.contains(':') => {
                    return Err(bad(
                        "restapi.auth.username",
                        "must be non-empty and contain no ':'",
                    ));
                }
                _ => {}
            }
            for (field, secret) in [
                ("restapi.auth.token", &auth.token),
                ("restapi.auth.password", &auth.password),
            ] {
                if let Some(secret) = secret
                    && secret.env.is_some() == secret.file.is_some()
                {
                    return Err(bad(field, "set exactly one of env or file"));
                }
            }
        }
        if let Some(a) = &self.archive {
            a.check().map_err(|m| bad("archive", &m))?;
        }
        if let Some(b) = &self.bootstrap {
            b.clone
                .archive
                .check()
                .map_err(|m| bad("bootstrap.clone.archive", &m))?;
        }
        self.ha.check(path)
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

    /// The REST API's URL as other members and clients use it (`https` with `restapi.tls`).
    pub fn api_url(&self) -> String {
        let scheme = if self.restapi.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.api_connect_address())
    }
}

/// Reads, parses, checks and resolves the secrets of a configuration file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = GovernorConfig::parse(&text, path)?;
    let auth = &config.postgresql.authentication;
    let superuser_password = resolve(
        &auth.superuser.password,
        path,
        "postgresql.authentication.superuser.password",
    )?;
    let replication_password = resolve(
        &auth.replication.password,
        path,
        "postgresql.authentication.replication.password",
    )?;
    let api_auth = match &config.restapi.auth {
        None => None,
        Some(auth) => Some(ApiCredentials {
            token: auth
                .token
                .as_ref()
                .map(|t| resolve(t, path, "restapi.auth.token"))
                .transpose()?,
            basic: match (&auth.username, &auth.password) {
                (Some(u), Some(p)) => Some((u.clone(), resolve(p, path, "restapi.auth.password")?)),
                _ => None,
            },
        }),
    };
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        superuser_password,
        replication_password,
        api_auth,
    })
}

fn resolve(secret: &SecretRef, path: &Path, field: &str) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Secret {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let value = match (&secret.env, &secret.file) {
        (Some(var), _) => {
            std::env::var(var).map_err(|_| err(format!("environment variable {var} is not set")))?
        }
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| err(format!("cannot read {}: {e}", file.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => return Err(err("set exactly one of env or file".into())),
    };
    if value.is_empty() {
        return Err(err("the secret is empty".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
