//! The governor configuration of one member, built from the cluster file as the contract's
//! own types ([`spilo_model::governor`]) and serialised: the part every target shares (scope,
//! PostgreSQL parameters, pg_hba, HA timing, archive, clone) plus a target's placement
//! (member name, addresses, data directory, etcd, password references). The local target
//! writes it to a file; on AWS it travels in the instances' user data, the same on every
//! instance, which adds its own name and address at start.

use spilo_model::governor::{
    ApiAuthConfig, ArchiveConfig, Authentication, AwsSettings, BackupSchedule, BootstrapConfig,
    CloneConfig, Compression, Credentials, EtcdConfig, GovernorConfig, HaSettings, PostgresConfig,
    ProxyConfig, RestApiConfig, S3Config, SecretRef,
};
use spilo_model::spec::ClusterFile;
use spilo_model::{MemberName, TargetTime};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where an archive lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// A directory (the local target's bucket).
    Directory(PathBuf),
    /// An S3 bucket.
    S3(S3Config),
}

/// Where and as whom one member runs.
#[derive(Debug, Clone)]
pub struct Placement {
    /// A comment line at the top.
    pub header: &'static str,
    /// The member name; `None` when each instance gives its own at start (AWS).
    pub name: Option<MemberName>,
    /// How the member finds etcd.
    pub etcd: EtcdConfig,
    /// The ZooKeeper servers, when the store is ZooKeeper instead (`etcd` is then empty).
    pub zookeeper: Option<spilo_model::governor::ZooKeeperConfig>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL's listen address.
    pub postgres_listen: SocketAddr,
    /// The REST API's listen address.
    pub api_listen: SocketAddr,
    /// The superuser's password.
    pub superuser: SecretRef,
    /// The replication user's password.
    pub replication: SecretRef,
    /// The REST API token; `None` leaves the mutating endpoints disabled.
    pub api_token: Option<SecretRef>,
    /// The store of the WAL archive, used when the file has a `backup` section.
    pub archive_store: Store,
    /// The store of the clone source's archive (`bootstrap.clone.from`), when the file clones.
    pub clone_store: Option<Store>,
    /// Whether the cluster's PostgreSQL parameters go into the file. On AWS they live only in
    /// etcd `config` (which the governors merge in), so changing one never changes the
    /// launch template.
    pub parameters_in_file: bool,
    /// On AWS: the region and the stack to signal.
    pub aws: Option<AwsSettings>,
    /// TLS on every connection, with the cluster's CA.
    pub tls: Option<spilo_model::governor::TlsConfig>,
    /// Where the primary proxy listens (`endpoints.routing: proxy`); none without it.
    pub proxy_listen: Option<SocketAddr>,
    /// A standby cluster's source (`spec.standby`), resolved by the target.
    pub standby: Option<spilo_model::StandbySource>,
    /// Where the PostgreSQL programs of the file's version are, as the target found them.
    pub bin_dir: PathBuf,
}

/// The WAL archive of `file` in `store`, as a reader of it needs it (prefix, compression),
/// when the file archives (`backup`).
pub fn archive_of(file: &ClusterFile, store: &Store) -> Option<ArchiveConfig> {
    file.spec.backup.as_ref().map(|b| ArchiveConfig {
        compression: b.compression,
        ..archive(file.wal_prefix(), store)
    })
}

/// Another cluster's archive at `prefix` in `store`, as a standby reads it.
pub fn source_archive(prefix: String, store: &Store) -> ArchiveConfig {
    archive(prefix, store)
}

fn archive(prefix: String, store: &Store) -> ArchiveConfig {
    let (directory, s3) = match store {
        Store::Directory(d) => (Some(d.clone()), None),
        Store::S3(s) => (None, Some(s.clone())),
    };
    ArchiveConfig {
        prefix,
        compression: Compression::Lz4,
        directory,
        s3,
        backups: None,
        verify: None,
        replicas_from_backup: false,
        upload_concurrency: None,
        prefetch: 8,
        recover_after: None,
    }
}

/// The member's configuration; an error for what validation refuses and the governor could
/// not run with (never a silent default).
pub fn build(file: &ClusterFile, at: &Placement) -> Result<GovernorConfig, String> {
    let spec = &file.spec;
    let ha = &spec.ha;
    let parameters = spec
        .postgresql
        .parameters
        .iter()
        .filter(|_| at.parameters_in_file)
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let archive_section = spec.backup.as_ref().map(|b| ArchiveConfig {
        compression: b.compression,
        // The leader takes the scheduled backups (five-field cron, UTC) and keeps `retention`.
        backups: Some(BackupSchedule {
            schedule: b.schedule.clone(),
            retain: b.retention as usize,
        }),
        replicas_from_backup: b.replicas_from_backup,
        recover_after: (b.recover_after > 0).then_some(b.recover_after),
        verify: b
            .verify
            .as_ref()
            .map(|v| spilo_model::governor::VerifySchedule {
                schedule: v.schedule.clone(),
                sql: v.sql.clone(),
            }),
        ..archive(file.wal_prefix(), &at.archive_store)
    });
    // The source's archive under its default prefix (`spilo/<from>/wal/<major>/`). A target
    // time that does not parse is an error: recovering to the end of the archive instead
    // would replay the very change a point-in-time clone is meant to leave out.
    let bootstrap = match (&spec.bootstrap.clone, &at.clone_store) {
        (Some(c), Some(store)) => Some(BootstrapConfig {
            clone: CloneConfig {
                archive: archive(
                    spilo_model::spec::default_wal_prefix(&c.from, spec.postgresql.version),
                    store,
                ),
                target_time: c
                    .target_time
                    .as_deref()
                    .map(|t| {
                        TargetTime::parse(t)
                            .map_err(|e| format!("spec.bootstrap.clone.targetTime: {e}"))
                    })
                    .transpose()?,
            },
        }),
        _ => None,
    };
    Ok(GovernorConfig {
        scope: file.metadata.name.clone(),
        name: at.name.clone(),
        namespace: spilo_model::keys::DEFAULT_NAMESPACE.to_string(),
        etcd: at.etcd.clone(),
        zookeeper: at.zookeeper.clone(),
        postgresql: PostgresConfig {
            bin_dir: at.bin_dir.clone(),
            data_dir: at.data_dir.clone(),
            run_dir: None,
            listen: at.postgres_listen,
            connect_address: None,
            parameters,
            pg_hba: (!spec.postgresql.pg_hba.is_empty()).then(|| spec.postgresql.pg_hba.clone()),
            networks: Vec::new(),
            authentication: Authentication {
                superuser: Credentials {
                    username: "postgres".into(),
                    password: at.superuser.clone(),
                },
                replication: Credentials {
                    username: "replicator".into(),
                    password: at.replication.clone(),
                },
            },
        },
        restapi: RestApiConfig {
            listen: at.api_listen,
            connect_address: None,
            auth: at.api_token.as_ref().map(|t| ApiAuthConfig {
                token: Some(t.clone()),
                username: None,
                password: None,
            }),
            tls: None,
        },
        ha: HaSettings {
            ttl: ha.ttl,
            loop_wait: ha.loop_wait,
            retry_timeout: ha.retry_timeout,
            maximum_lag_on_failover: ha.maximum_lag_on_failover,
            primary_start_timeout: ha.primary_start_timeout,
            synchronous_mode: ha.synchronous_mode,
            synchronous_mode_strict: ha.synchronous_mode.is_on() && ha.synchronous_mode_strict,
            synchronous_node_count: ha.synchronous_node_count,
            failsafe_mode: ha.failsafe_mode,
            standby_cluster: at.standby.clone(),
        },
        tags: Default::default(),
        archive: archive_section,
        bootstrap,
        aws: at.aws.clone(),
        tls: at.tls.clone(),
        proxy: at.proxy_listen.map(|listen| ProxyConfig { listen }),
    })
}

/// The configuration file text: the header line, then the serialised configuration.
pub fn render(file: &ClusterFile, at: &Placement) -> Result<String, String> {
    Ok(format!("{}\n{}", at.header, build(file, at)?.to_yaml()))
}
