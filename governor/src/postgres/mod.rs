//! The local PostgreSQL instance: its files, its process, and the operations the HA loop asks
//! for (initdb, clone, rewind, start, stop, promote, re-point, slot management).
//!
//! [`Instance`] knows nothing about etcd or about who should lead; the runtime tells it what to
//! do. Its layout: PGDATA holds only PostgreSQL's data; the run directory (mode 0700, outside
//! PGDATA) holds the generated `postgresql.conf` and `pg_hba.conf`, the Unix socket, the
//! password file, the server log and the markers of unfinished clones and rewinds.

pub mod archiving;
pub mod conf;
pub mod controldata;
pub mod process;
pub mod query;
pub mod server_log;
mod settings;
pub mod tools;
mod upstream;

pub use upstream::Upstream;

use crate::config::Loaded;
use crate::ha::{DataDir, PgState, RunningPg};
use process::{Postmaster, StopMode};
use query::Session;
use spilo_model::MemberName;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What an operation on the local PostgreSQL failed on. The runtime turns it into its own
/// `ActError`; this module does not depend on the runtime.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// SQL failed.
    #[error(transparent)]
    Sql(#[from] query::SqlError),
    /// A PostgreSQL program failed.
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else, in one line.
    #[error("{0}")]
    Failed(String),
    /// The configuration asks for something that cannot succeed however often it is tried
    /// (a clone's target before its oldest backup, a setting PostgreSQL refuses).
    #[error("{0}")]
    Permanent(String),
}

/// A marker present while pg_basebackup or pg_rewind runs; found at start, it means the data
/// directory is half-written and must be copied again.
const UNFINISHED_MARKER: &str = "data-copy-in-progress";

/// The local PostgreSQL instance.
pub struct Instance {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    run_dir: PathBuf,
    member: MemberName,
    listen: std::net::SocketAddr,
    superuser: (String, String),
    replication: (String, String),
    local_params: BTreeMap<String, String>,
    hba_extra: Option<Vec<String>>,
    timeout: Duration,
    wake: Arc<Notify>,
    postmaster: Option<Postmaster>,
    started: Option<(Instant, bool)>,
    upstream: Option<Upstream>,
    session: Session,
    last: Option<RunningPg>,
    not_streaming_since: Option<Instant>,
    /// The cluster-wide parameters `postgresql.conf` was last written with.
    cluster_params: Option<BTreeMap<String, String>>,
    /// `synchronous_standby_names` as last written (empty: asynchronous).
    standby_names: String,
    /// `archive_command` and `restore_command` when WAL archiving is configured.
    archive_commands: Option<(String, String)>,
    /// While a clone recovers: `restore_command` from the source and the target time.
    clone_recovery: Option<(String, Option<String>)>,
    /// The configuration file (for the commands PostgreSQL runs).
    config_path: PathBuf,
    /// With `tls:`: PostgreSQL serves TLS with the member's certificate and requires it on
    /// the network; replicas check their upstream with `verify-full`.
    ssl: Option<conf::Ssl>,
    /// The networks the default pg_hba lines admit (everywhere when empty).
    networks: Vec<String>,
}

/// What happened to the postmaster since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Still running, or not started.
    None,
    /// It exited because the governor asked it to.
    Requested,
    /// It exited on its own.
    Crashed,
}

impl Instance {
    /// Builds the instance from a loaded configuration. Touches no files.
    pub fn new(loaded: &Loaded, wake: Arc<Notify>) -> Self {
        let c = &loaded.config;
        let pg = &c.postgresql;
        let run_dir = c.run_dir();
        let timeout = c.ha.retry_timeout();
        // PostgreSQL runs the archive commands from PGDATA: the path must be absolute.
        let config_path = std::path::absolute(&loaded.path).unwrap_or_else(|_| loaded.path.clone());
        let session = Session::local(
            run_dir.clone(),
            pg.listen.port(),
            &pg.authentication.superuser.username,
            timeout,
        );
        Self {
            bin_dir: pg.bin_dir.clone(),
            data_dir: pg.data_dir.clone(),
            run_dir,
            member: loaded.name.clone(),
            listen: pg.listen,
            superuser: (
                pg.authentication.superuser.username.clone(),
                loaded.superuser_password.clone(),
            ),
            replication: (
                pg.authentication.replication.username.clone(),
                loaded.replication_password.clone(),
            ),
            local_params: pg.parameters.clone(),
            hba_extra: pg.pg_hba.clone(),
            timeout,
            wake,
            postmaster: None,
            started: None,
            upstream: None,
            session,
            last: None,
            not_streaming_since: None,
            cluster_params: None,
            standby_names: String::new(),
            archive_commands: c
                .archive
                .as_ref()
                .map(|_| archiving::archive_commands(&config_path)),
            clone_recovery: None,
            config_path,
            networks: pg.networks.clone(),
            ssl: c
                .member_cert()
                .zip(c.tls.as_ref())
                .map(|((cert, key), t)| conf::Ssl {
                    cert,
                    key,
                    ca: t.ca_file.clone(),
                }),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log.
    pub fn log_file(&self) -> PathBuf {
        self.run_dir.join("postgresql.log")
    }

    fn pgpass(&self) -> PathBuf {
        self.run_dir.join("pgpass")
    }

    /// The libpq environment of the PostgreSQL programs the governor runs: the password file,
    /// and with TLS `verify-full` against the cluster CA (libpq ignores both on the socket).
    fn client_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGPASSFILE", self.pgpass().display().to_string())];
        if let Some(ssl) = &self.ssl {
            env.push(("PGSSLMODE", "verify-full".into()));
            env.push(("PGSSLROOTCERT", ssl.ca.display().to_string()));
            // The member's own certificate as the client's (else libpq looks in ~/.postgresql).
            env.push(("PGSSLCERT", ssl.cert.display().to_string()));
            env.push(("PGSSLKEY", ssl.key.display().to_string()));
        }
        env
    }

    fn config_file(&self) -> PathBuf {
        self.run_dir.join("postgresql.conf")
    }

    /// The postmaster's pid while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.postmaster
            .as_ref()
            .filter(|p| p.exited().is_none())
            .map(Postmaster::pid)
    }

    /// The member the running replica streams from.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    /// Creates the run directory (0700) and writes the files that never change while the
    /// governor runs: pg_hba.conf, pg_ident.conf and the password file (0600).
    pub fn prepare_run_dir(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.run_dir)?;
        std::fs::set_permissions(&self.run_dir, std::fs::Permissions::from_mode(0o700))?;
        write_private(
            &self.run_dir.join("pg_hba.conf"),
            &conf::pg_hba(
                &self.replication.0,
                self.hba_extra.as_deref(),
                self.ssl.is_some(),
                &self.networks,
            ),
        )?;
        write_private(&self.run_dir.join("pg_ident.conf"), "")?;
        write_private(
            &self.pgpass(),
            &conf::pgpass(&[
                (&self.superuser.0, &self.superuser.1),
                (&self.replication.0, &self.replication.1),
            ]),
        )?;
        Ok(())
    }

    /// Stops a postmaster an earlier governor left running on this data directory.
    pub async fn stop_stale_postmaster(&self) -> Result<(), tools::ToolError> {
        if let Some(pid) = process::stale_postmaster(&self.data_dir) {
            tracing::warn!(
                pid,
                "a PostgreSQL started by an earlier governor still runs; stopping it"
            );
            let args = vec![
                "stop".into(),
                "-D".into(),
                self.data_dir.display().to_string(),
                "-m".into(),
                "fast".into(),
                "-w".into(),
            ];
            tools::run(
                &self.bin_dir,
                "pg_ctl",
                &args,
                &self.client_env(),
                Duration::from_secs(60),
            )
            .await?;
        }
        Ok(())
    }

    /// What the data directory holds. A directory left half-copied by an interrupted clone or
    /// rewind is emptied first, since nothing in it can be trusted.
    pub async fn data_state(&self) -> std::io::Result<DataDir> {
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        if marker.exists() {
            tracing::warn!(data_dir = %self.data_dir.display(), "an earlier copy into the data directory did not finish; emptying it");
            self.wipe_data()?;
            std::fs::remove_file(&marker)?;
        }
        if !self.data_dir.join("PG_VERSION").exists() {
            return Ok(DataDir::Empty);
        }
        let cd = controldata::read(&self.bin_dir, &self.data_dir).await?;
        cd.to_data_dir().ok_or_else(|| {
            std::io::Error::other("pg_controldata printed no database system identifier")
        })
    }

    /// Removes everything inside the data directory (the directory itself may be a mount point).
    pub fn wipe_data(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.data_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// The data directory's control file.
    pub async fn controldata(&self) -> std::io::Result<controldata::ControlData> {
        controldata::read(&self.bin_dir, &self.data_dir).await
    }

    /// Starts PostgreSQL as a primary, or as a replica of `upstream` (idle and read-only when
    /// `None`). Returns once the postmaster is spawned; [`Instance::observe`] reports readiness.
    pub fn start(
        &mut self,
        primary: bool,
        upstream: Option<Upstream>,
        cluster: &BTreeMap<String, String>,
    ) -> std::io::Result<()> {
        let signal = self.data_dir.join("standby.signal");
        if primary {
            match std::fs::remove_file(&signal) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            write_private(&signal, "")?;
            self.standby_names.clear();
        }
        self.write_conf(upstream.as_ref(), cluster)?;
        crate::archive::prefetch::forget_all(&self.data_dir);
        self.session.reset();
        let pm = Postmaster::spawn(
            &self.bin_dir,
            &self.data_dir,
            &self.config_file(),
            &self.log_file(),
            self.wake.clone(),
        )?;
        tracing::info!(pid = pm.pid(), primary, upstream = ?upstream.as_ref().map(|u| u.name.as_str()), "started PostgreSQL");
        self.postmaster = Some(pm);
        self.started = Some((Instant::now(), primary));
        self.upstream = upstream;
        self.last = None;
        self.not_streaming_since = None;
        Ok(())
    }

    /// Stops PostgreSQL if it runs.
    pub async fn stop(&mut self, mode: StopMode) {
        self.session.reset();
        if let Some(pm) = self.postmaster.as_mut()
            && pm.exited().is_none()
        {
            let timeout = match mode {
                StopMode::Fast => Duration::from_secs(60),
                StopMode::Immediate => Duration::from_secs(5),
            };
            pm.stop(mode, timeout).await;
            tracing::info!(?mode, "stopped PostgreSQL");
        }
        self.postmaster = None;
        self.started = None;
        self.upstream = None;
        self.last = None;
    }

    /// Waits until the server answers queries, failing early if it exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .postmaster
                .as_ref()
                .is_none_or(|p| p.exited().is_some())
            {
                return Err(PgError::Failed(format!(
                    "PostgreSQL exited while starting; see {}",
                    self.log_file().display()
                )));
            }
            if self.session.status().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgError::Failed(format!(
                    "PostgreSQL did not accept connections within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Looks at the process and, if it answers, at the server: returns its state and whether
    /// it exited since the last look.
    pub async fn observe(&mut self) -> (PgState, Exit) {
        let Some(pm) = self.postmaster.as_ref() else {
            return (PgState::Stopped, Exit::None);
        };
        if let Some(status) = pm.exited() {
            let requested = pm.stop_requested();
            if !requested {
                tracing::error!(%status, "PostgreSQL exited unexpectedly");
            }
            self.postmaster = None;
            self.started = None;
            self.upstream = None;
            self.last = None;
            self.session.reset();
            let exit = if requested {
                Exit::Requested
            } else {
                Exit::Crashed
            };
            return (PgState::Stopped, exit);
        }
        match self.session.status().await {
            Ok(s) => {
                if s.streaming || !s.in_recovery || self.upstream.is_none() {
                    self.not_streaming_since = None;
                } else {
                    self.not_streaming_since.get_or_insert_with(Instant::now);
                }
                let running = RunningPg {
                    in_recovery: s.in_recovery,
                    timeline: s.timeline,
                    wal: s.wal,
                    upstream: self.upstream.as_ref().map(|u| u.name.clone()),
                    streaming: s.streaming,
                    not_streaming_since: self.not_streaming_since,
                    pending_restart: s.pending_restart,
                };
                self.started = None;
                self.last = Some(running.clone());
                (PgState::Running(running), Exit::None)
            }
            Err(e) => match self.started {
                Some((since, as_primary)) => (PgState::Starting { since, as_primary }, Exit::None),
                None => {
                    tracing::warn!(error = %e, "PostgreSQL runs but does not answer");
                    // It answered before: report the last known state so one slow query does
                    // not look like a stop, but treat it as starting when nothing is known.
                    match &self.last {
                        Some(last) => (PgState::Running(last.clone()), Exit::None),
                        None => (
                            PgState::Starting {
                                since: Instant::now(),
                                as_primary: false,
                            },
                            Exit::None,
                        ),
                    }
                }
            },
        }
    }

    /// Re-points a running replica at `upstream` (PostgreSQL 13+ reloads `primary_conninfo`).
    pub async fn follow(
        &mut self,
        upstream: Upstream,
        cluster: &BTreeMap<String, String>,
    ) -> Result<(), PgError> {
        if self.upstream.as_ref() == Some(&upstream) {
            return Ok(());
        }
        self.write_conf(Some(&upstream), cluster)?;
        self.session.execute("SELECT pg_reload_conf()").await?;
        tracing::info!(upstream = %upstream.name, host = %upstream.host, port = %upstream.port, source = upstream.source, "now streaming from the upstream");
        self.upstream = Some(upstream);
        self.not_streaming_since = None;
        Ok(())
    }

    /// Promotes the running replica; returns once it accepts writes.
    pub async fn promote(&mut self) -> Result<(), PgError> {
        let done = self.session.promote(Duration::from_secs(60)).await?;
        if !done {
            return Err(PgError::Failed(
                "pg_promote did not finish within 60s".into(),
            ));
        }
        self.upstream = None;
        // Segments fetched ahead for a recovery that is over.
        crate::archive::prefetch::forget_all(&self.data_dir);
        Ok(())
    }

    /// The local SQL session.
    pub fn sql(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Runs initdb with checksums, creating the superuser with its password.
    pub async fn initdb(&self) -> Result<(), PgError> {
        let pwfile = self.run_dir.join("initdb-password");
        write_private(&pwfile, &self.superuser.1)?;
        let args = vec![
            "-D".into(),
            self.data_dir.display().to_string(),
            "--data-checksums".into(),
            "-U".into(),
            self.superuser.0.clone(),
            format!("--pwfile={}", pwfile.display()),
            "--auth-local=trust".into(),
            "--auth-host=scram-sha-256".into(),
            "--encoding=UTF8".into(),
            "--locale=C".into(),
        ];
        let r = tools::run(
            &self.bin_dir,
            "initdb",
            &args,
            &self.client_env(),
            Duration::from_secs(300),
        )
        .await;
        let _ = std::fs::remove_file(&pwfile);
        r?;
        Ok(())
    }

    /// Creates the replication role on a freshly initialized primary.
    pub async fn create_replication_role(&mut self) -> Result<(), PgError> {
        // A clone brings the source's roles along: create or update, and take over the
        // superuser with this cluster's password.
        let (role, password) = (
            query::ident(&self.replication.0),
            query::literal(&self.replication.1),
        );
        let sql = format!(
            "DO $$BEGIN \
               IF EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN \
                 ALTER ROLE {role} WITH LOGIN REPLICATION PASSWORD {password}; \
               ELSE \
                 CREATE ROLE {role} WITH LOGIN REPLICATION PASSWORD {password}; \
               END IF; END$$; \
             ALTER ROLE {su} WITH PASSWORD {su_password}",
            name = query::literal(&self.replication.0),
            su = query::ident(&self.superuser.0),
            su_password = query::literal(&self.superuser.1),
        );
        self.session.execute(&sql).await?;
        Ok(())
    }

    /// Copies `from` with pg_basebackup into the (empty) data directory.
    pub async fn clone_from(&self, from: &Upstream) -> Result<(), PgError> {
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        write_private(&marker, "pg_basebackup")?;
        let args = vec![
            "-D".into(),
            self.data_dir.display().to_string(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "-h".into(),
            from.host.clone(),
            "-p".into(),
            from.port.clone(),
            "-U".into(),
            self.replication.0.clone(),
            "-w".into(),
        ];
        let mut env = self.client_env();
        if from.source {
            // The source's primary, not one of its standbys.
            env.push(("PGTARGETSESSIONATTRS", "read-write".into()));
        }
        match tools::run(
            &self.bin_dir,
            "pg_basebackup",
            &args,
            &env,
            Duration::from_secs(3600),
        )
        .await
        {
            Ok(_) => {
                std::fs::remove_file(&marker)?;
                Ok(())
            }
            Err(e) => {
                self.wipe_data()?;
                std::fs::remove_file(&marker)?;
                Err(e.into())
            }
        }
    }

    /// Rewinds the stopped data directory to `from`'s timeline with pg_rewind (which first
    /// finishes crash recovery itself when the last shutdown was not clean). The caller
    /// CHECKPOINTs `from` first, so its control file shows the timeline it promoted to.
    pub async fn rewind_from(&self, from: &Upstream) -> Result<String, PgError> {
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        let port = from.port.clone();
        let mut pairs = vec![
            ("host", from.host.as_str()),
            ("port", &port),
            ("user", &self.superuser.0),
            ("dbname", "postgres"),
            ("connect_timeout", "5"),
        ];
        if from.source {
            pairs.push(("target_session_attrs", "read-write"));
        }
        let source = conf::conninfo(&pairs);
        let args = vec![
            "-D".into(),
            self.data_dir.display().to_string(),
            format!("--source-server={source}"),
        ];
        write_private(&marker, "pg_rewind")?;
        let r = tools::run(
            &self.bin_dir,
            "pg_rewind",
            &args,
            &self.client_env(),
            Duration::from_secs(3600),
        )
        .await;
        match r {
            Ok(out) => {
                std::fs::remove_file(&marker)?;
                Ok(out)
            }
            Err(e) => {
                // pg_rewind refuses before touching anything in most failures, but a failure
                // half-way leaves the directory unusable: the marker makes the next start copy
                // it again either way.
                Err(e.into())
            }
        }
    }

    /// A session to another member's PostgreSQL as the superuser.
    pub fn remote_session(&self, to: &Upstream) -> Session {
        let tls = self.ssl.as_ref().and_then(|s| {
            spilo_pki::client_trusting(&[&s.ca])
                .map_err(|e| tracing::warn!(error = %e, "cannot read the cluster CA"))
                .ok()
                .map(Arc::new)
        });
        // A source lists several endpoints: the session goes to the one that accepts writes,
        // and to none when none does.
        let endpoints: Vec<(String, u16)> = to
            .host
            .split(',')
            .zip(to.port.split(','))
            .filter_map(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
            .collect();
        Session::remote(
            &endpoints,
            to.source,
            &self.superuser.0,
            &self.superuser.1,
            self.timeout,
            tls,
        )
    }

    /// The address others reach this PostgreSQL on.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    /// Forgets a failed rewind's marker after the data was emptied for a fresh copy.
    pub fn clear_unfinished_marker(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.run_dir.join(UNFINISHED_MARKER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
