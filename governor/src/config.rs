//! Loading the governor's configuration file (`governor run --config FILE`): parsing with the
//! contract's own types ([`spilo_model::governor`], which the `spilo` CLI serialises), the
//! checks that belong to the program that runs it (the backup schedule's cron), the member's
//! identity given at start (`--name`, `--connect-host`: on AWS the instance id and address),
//! and reading the secrets it references (environment, files, SSM Parameter Store, Secrets
//! Manager).
//!
//! Checks that touch the machine (binaries, data directory ownership, etcd) live in
//! [`crate::preflight`].

use spilo_model::MemberName;
pub use spilo_model::governor::{
    ApiAuthConfig, ApiTlsConfig, Authentication, AwsSettings, BootstrapConfig, CloneConfig,
    Credentials, EtcdConfig, GovernorConfig, HaSettings, PostgresConfig, RestApiConfig, SecretRef,
    StackSignal,
};
use std::path::{Path, PathBuf};

mod aws;

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
    /// A secret's store did not answer (a timeout, no connection): it may work later.
    #[error("{path}: {field}: {message}")]
    SecretUnavailable {
        /// The file.
        path: PathBuf,
        /// The dotted path of the secret.
        field: String,
        /// What happened.
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

impl ConfigError {
    /// Whether trying again cannot help until the configuration (or what it references)
    /// changes: everything but a secret store that did not answer.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ConfigError::SecretUnavailable { .. })
    }
}

/// Resolved REST API credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCredentials {
    /// The bearer token.
    pub token: Option<String>,
    /// The basic-auth user and password.
    pub basic: Option<(String, String)>,
}

/// What `governor run` is told about this member besides the file: on AWS the file is the
/// same on every instance, and each one adds its instance id and address.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The member name (overrides `name`).
    pub name: Option<MemberName>,
    /// The host other members and clients reach this member at: PostgreSQL's and the REST
    /// API's `connect_address` become `<host>:<their listen port>` unless the file sets them.
    pub connect_host: Option<String>,
    /// The networks PostgreSQL admits (`postgresql.networks` unless the file sets them).
    pub networks: Vec<String>,
}

/// A configuration with its secrets read.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file as written, with the identity given at start applied.
    pub config: GovernorConfig,
    /// This member's name.
    pub name: MemberName,
    /// Where it was read from.
    pub path: PathBuf,
    /// The superuser password.
    pub superuser_password: String,
    /// The replication password.
    pub replication_password: String,
    /// The REST API's credentials; `None` disables its mutating endpoints.
    pub api_auth: Option<ApiCredentials>,
    /// With `tls:`: the CA's private key (PEM) the member issues its certificate with.
    pub ca_key: Option<String>,
    /// What `governor run` was told besides the file (another configuration of this member,
    /// an upgrade's, is loaded with it too).
    pub identity: Identity,
}

/// Parses and checks YAML text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<GovernorConfig, ConfigError> {
    use spilo_model::governor::ParseError;
    let config = GovernorConfig::parse(text).map_err(|e| match e {
        ParseError::Shape(message) => ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        },
        ParseError::Invalid(i) => ConfigError::Invalid {
            path: path.to_path_buf(),
            field: i.field,
            message: i.message,
        },
    })?;
    // The schedule is checked by the program that runs it.
    if let Some(b) = config.archive.as_ref().and_then(|a| a.backups.as_ref()) {
        crate::archive::cron(&b.schedule).map_err(|m| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "archive".into(),
            message: format!("backups.{m}"),
        })?;
    }
    if let Some(v) = config.archive.as_ref().and_then(|a| a.verify.as_ref()) {
        crate::archive::cron(&v.schedule).map_err(|m| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "archive".into(),
            message: format!("verify.{m}"),
        })?;
    }
    Ok(config)
}

/// Reads and parses a configuration file without resolving secrets (for the archive commands,
/// which need none).
pub fn read(path: &Path) -> Result<GovernorConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Reads, parses, checks, applies `identity` and resolves the secrets of a configuration file.
pub async fn load(path: &Path, identity: &Identity) -> Result<Loaded, ConfigError> {
    let mut config = read(path)?;
    if config.postgresql.networks.is_empty() && !identity.networks.is_empty() {
        config.postgresql.networks = identity.networks.clone();
        config.check().map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "--allowed-network".into(),
            message: e.message,
        })?;
    }
    if let Some(host) = &identity.connect_host {
        let pg = &mut config.postgresql;
        pg.connect_address
            .get_or_insert_with(|| format!("{host}:{}", pg.listen.port()));
        let api = &mut config.restapi;
        api.connect_address
            .get_or_insert_with(|| format!("{host}:{}", api.listen.port()));
    }
    let name = identity
        .name
        .clone()
        .or_else(|| config.name.clone())
        .ok_or_else(|| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "name".into(),
            message: "set it in the file or give it with --name".into(),
        })?;
    config.name = Some(name.clone());
    let secrets = Secrets::new(&config, path).await;
    let auth = &config.postgresql.authentication;
    let superuser_password = secrets
        .resolve(
            &auth.superuser.password,
            "postgresql.authentication.superuser.password",
        )
        .await?;
    let replication_password = secrets
        .resolve(
            &auth.replication.password,
            "postgresql.authentication.replication.password",
        )
        .await?;
    let api_auth = match &config.restapi.auth {
        None => None,
        Some(auth) => Some(ApiCredentials {
            token: match &auth.token {
                Some(t) => Some(secrets.resolve(t, "restapi.auth.token").await?),
                None => None,
            },
            basic: match (&auth.username, &auth.password) {
                (Some(u), Some(p)) => Some((
                    u.clone(),
                    secrets.resolve(p, "restapi.auth.password").await?,
                )),
                _ => None,
            },
        }),
    };
    let ca_key = match &config.tls {
        Some(t) => Some(secrets.resolve(&t.ca_key, "tls.ca_key").await?),
        None => None,
    };
    Ok(Loaded {
        config,
        name,
        path: path.to_path_buf(),
        superuser_password,
        replication_password,
        api_auth,
        ca_key,
        identity: identity.clone(),
    })
}

/// Resolves one secret reference of the file at `path` (`field` names it in errors); SSM and
/// Secrets Manager references are read in `region`.
pub async fn resolve_secret(
    secret: &SecretRef,
    field: &str,
    region: &str,
    path: &Path,
) -> Result<String, ConfigError> {
    let aws = if secret.is_remote() {
        Some(aws::SecretClients::new(region).await)
    } else {
        None
    };
    Secrets { path, aws }.resolve(secret, field).await
}

/// The value of the SSM parameter `name` in `region`, first storing a new random password
/// there when it has none (never overwriting one). An error says what failed.
pub async fn generated_parameter(name: &str, region: &str) -> Result<String, String> {
    let clients = aws::SecretClients::new(region).await;
    clients
        .parameter_or_create(name, random_password()?)
        .await
        .map_err(|u| u.message)
}

/// 36 hexadecimal characters from the system's random source.
fn random_password() -> Result<String, String> {
    use std::io::Read;
    let mut buf = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Resolves secret references: local ones directly, AWS ones through the SDK.
struct Secrets<'a> {
    path: &'a Path,
    aws: Option<aws::SecretClients>,
}

impl<'a> Secrets<'a> {
    async fn new(config: &GovernorConfig, path: &'a Path) -> Self {
        let remote = config.secret_refs().into_iter().any(|(_, s)| s.is_remote());
        let aws = match (&config.aws, remote) {
            (Some(a), true) => Some(aws::SecretClients::new(&a.region).await),
            _ => None,
        };
        Self { path, aws }
    }

    async fn resolve(&self, secret: &SecretRef, field: &str) -> Result<String, ConfigError> {
        let err = |message: String| ConfigError::Secret {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let value = match secret {
            SecretRef { env: Some(var), .. } => std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?,
            SecretRef {
                file: Some(file), ..
            } => std::fs::read_to_string(file)
                .map_err(|e| err(format!("cannot read {}: {e}", file.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            SecretRef { ssm: Some(p), .. } => match &self.aws {
                Some(c) => c.parameter(p).await.map_err(|u| self.unread(u, field))?,
                None => return Err(err("ssm references need aws.region".into())),
            },
            SecretRef {
                secrets_manager: Some(id),
                ..
            } => match &self.aws {
                Some(c) => c.secret(id).await.map_err(|u| self.unread(u, field))?,
                None => return Err(err("secrets_manager references need aws.region".into())),
            },
            _ => {
                return Err(err(
                    "set exactly one of env, file, ssm or secrets_manager".into()
                ));
            }
        };
        if value.is_empty() {
            return Err(err("the secret is empty".into()));
        }
        Ok(value)
    }

    fn unread(&self, u: aws::Unread, field: &str) -> ConfigError {
        let (path, field) = (self.path.to_path_buf(), field.to_string());
        if u.passing {
            ConfigError::SecretUnavailable {
                path,
                field,
                message: u.message,
            }
        } else {
            ConfigError::Secret {
                path,
                field,
                message: u.message,
            }
        }
    }
}

#[cfg(test)]
mod tests;
