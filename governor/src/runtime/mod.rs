//! The runtime: owns the tasks and runs the HA loop, gather -> decide -> act.
//!
//! [`run`] connects to etcd, prepares the run directory, starts the lease, watch, fence,
//! primary proxy ([`crate::proxy`]) and REST API tasks (each owned here and cancelled on shutdown), then loops: gather a
//! [`crate::ha::Snapshot`] ([`gather`]), call [`crate::ha::decide`], log the decision when it
//! changes, carry it out ([`act`]), publish the member key. The loop wakes on etcd events,
//! PostgreSQL exits, lease changes and the `loop_wait` tick.
//!
//! On shutdown it stops PostgreSQL (fast: replicas receive all WAL) and then revokes the lease,
//! which deletes the member key and, on the primary, the leader key: a replica takes over at
//! once instead of after the TTL.

pub mod act;
pub mod backups;
pub mod bootstrap;
pub mod commands;
pub mod downstream;
pub mod drills;
pub mod failsafe;
pub mod fence;
mod gather;
mod hands;
pub mod leading;
mod live_wal;
pub mod peers;
pub mod promotion;
mod publish;
mod recovery;
pub mod scale_in;
pub mod stack_signal;
mod statistics;
pub mod sync;
pub mod tasks;
mod upgrade;

use crate::api;
use crate::config::Loaded;
use crate::dcs::Coordination;
use crate::dcs::{DcsError, Store};
use crate::ha::{self, Decision, HaConfig, LeaseView};
use crate::postgres::process::StopMode;
use crate::postgres::{Instance, query::SqlError, tools::ToolError};
use anyhow::Context;
use spilo_model::MemberStatus;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, RwLock, watch};
use tokio_util::sync::CancellationToken;

/// An action that failed; the loop logs it and decides again.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// etcd failed.
    #[error(transparent)]
    Dcs(#[from] DcsError),
    /// SQL failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A PostgreSQL tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
    /// The configuration asks for something that cannot succeed: trying again fails the same
    /// way until the configuration changes (a bootstrap is then not retried before the
    /// governor restarts).
    #[error("{0}")]
    Permanent(String),
}

impl From<crate::postgres::PgError> for ActError {
    fn from(e: crate::postgres::PgError) -> Self {
        use crate::postgres::PgError;
        match e {
            PgError::Sql(e) => ActError::Sql(e),
            PgError::Tool(e) => ActError::Tool(e),
            PgError::Io(e) => ActError::Io(e),
            PgError::Failed(why) => ActError::Other(why),
            PgError::Permanent(why) => ActError::Permanent(why),
        }
    }
}

/// How far back unexpected PostgreSQL exits count towards a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(300);

use crate::shared::Shared;

/// The HA loop's own state.
pub(crate) struct Governor {
    loaded: Loaded,
    dcs: Store,
    pg: Instance,
    ha: HaConfig,
    http: reqwest::Client,
    shared: Arc<Shared>,
    lease: watch::Receiver<LeaseView>,
    fence: watch::Sender<fence::Armed>,
    fence_fired: Arc<AtomicBool>,
    wake: Arc<Notify>,
    crashes: VecDeque<Instant>,
    primary_down_since: Option<Instant>,
    data: Option<ha::DataDir>,
    published: Option<(MemberStatus, i64)>,
    pending_history: Option<spilo_model::HistoryEntry>,
    last_decision: Option<Decision>,
    leader_seen: Option<ha::LeaderKey>,
    slot_absent_since: std::collections::BTreeMap<String, Instant>,
    commands: tokio::sync::mpsc::Receiver<crate::shared::Command>,
    sync_pending: crate::ha::sync::Pending,
    archive_status: Option<spilo_model::ArchiveStatus>,
    failsafe_peers: watch::Sender<Option<Vec<failsafe::Peer>>>,
    failsafe_until: watch::Receiver<Option<Instant>>,
    failsafe_absent_since: std::collections::BTreeMap<spilo_model::MemberName, Instant>,
    started: Instant,
    bootstrap_failure: Option<bootstrap::Failure>,
    /// The running bootstrap tried to write the system identifier into `initialize` (its
    /// failure may have committed).
    initialize_attempted: bool,
    /// The last time a leader key or a member with data was seen (the start until then).
    data_seen_at: Instant,
    /// An upgrade in place linked the data: this run ends, and the next commits it.
    upgraded: bool,
}

/// How a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shut down.
    Stopped,
    /// An upgrade in place linked the data: start again (its commit and the new version's
    /// configuration are `major_upgrade::in_place::resume`'s).
    Upgraded,
}

/// Runs the governor until `shutdown` fires or a fatal decision is made.
pub async fn run(loaded: Loaded, shutdown: CancellationToken) -> anyhow::Result<Ended> {
    let cfg = loaded.config.clone();
    let timeout = cfg.ha.retry_timeout();
    let member_cert = crate::certs::MemberCert::new(&cfg, loaded.ca_key.as_deref());
    let etcd_tls = match &member_cert {
        Some(c) => {
            let (why, _) = c
                .ensure(std::time::SystemTime::now())
                .context("issue this member's certificate")?;
            if let Some(why) = why {
                tracing::info!(reason = ?why, names = cfg.cert_names().join(","), "issued the member certificate");
            }
            cfg.etcd_over_tls()
                .then(|| c.etcd_tls())
                .transpose()
                .context("read this member's certificate")?
        }
        None => None,
    };
    let (dcs, at) = Store::connect(&cfg, etcd_tls.as_ref(), loaded.name.clone(), timeout).await?;
    tracing::info!(store = at, scope = %cfg.scope, member = %loaded.name, "connected to the coordination store");

    let wake = Arc::new(Notify::new());
    let pg = Instance::new(&loaded, wake.clone());
    pg.prepare_run_dir()
        .with_context(|| format!("prepare the run directory {}", cfg.run_dir().display()))?;
    pg.stop_stale_postmaster()
        .await
        .context("stop a leftover PostgreSQL")?;

    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(2));
    let api_tls = cfg.api_tls();
    if let Some(tls) = &api_tls {
        let ca = tls.cafile.as_ref().unwrap_or(&tls.certfile);
        let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
        http = http.tls_certs_only(certs);
    }
    let http = http.build().context("build an HTTP client")?;
    let api_url = cfg.api_url();
    gather::check_name_is_free(&dcs, &http, &api_url).await?;

    let cancel = shutdown.child_token();
    let mut tasks = tasks::Tasks::default();
    let (lease_tx, lease_rx) = watch::channel(LeaseView::default());
    tasks.spawn(
        "lease",
        dcs.clone().keep_lease(
            cfg.ha.ttl(),
            cfg.ha.keepalive_interval(),
            lease_tx,
            cancel.clone(),
        ),
    );
    let proxy_wake = Arc::new(Notify::new());
    tasks.spawn(
        "watch",
        dcs.clone()
            .watch(vec![wake.clone(), proxy_wake.clone()], cancel.clone()),
    );
    let proxy_route = match &cfg.proxy {
        Some(p) => {
            let listener = tokio::net::TcpListener::bind(p.listen)
                .await
                .with_context(|| format!("listen for the primary proxy on {}", p.listen))?;
            let (route_tx, route) = watch::channel(None);
            tasks.spawn(
                "proxy route",
                crate::proxy::follow(
                    dcs.clone(),
                    cfg.ha.ttl(),
                    proxy_wake,
                    route_tx,
                    cancel.clone(),
                ),
            );
            tasks.spawn(
                "proxy",
                crate::proxy::serve(listener, route.clone(), cancel.clone()),
            );
            Some(route)
        }
        None => None,
    };
    let (fence_tx, fence_rx) = watch::channel(None);
    let (failsafe_peers, failsafe_peers_rx) = watch::channel(None);
    let (failsafe_tx, failsafe_until) = watch::channel(None);
    tasks.spawn(
        "failsafe",
        failsafe::run(
            failsafe::Settings {
                me: loaded.name.clone(),
                ttl: cfg.ha.ttl(),
                interval: cfg.ha.keepalive_interval(),
                auth: loaded.api_auth.clone(),
            },
            http.clone(),
            fence_rx.clone(),
            failsafe_peers_rx,
            lease_rx.clone(),
            failsafe_tx,
            cancel.clone(),
        ),
    );
    let fence_fired = Arc::new(AtomicBool::new(false));
    // The negative control of the fault tests runs without it (a test-only switch).
    let mut watchdog = if std::env::var_os(fence::FAULT_NO_WATCHDOG).is_some() {
        tracing::warn!(
            "{} is set: running without the watchdog",
            fence::FAULT_NO_WATCHDOG
        );
        None
    } else {
        Some(fence::spawn_watchdog().context("start the watchdog process")?)
    };
    let watchdog_pipe = watchdog.as_mut().and_then(|w| w.stdin.take());
    tasks.spawn(
        "fence",
        fence::run(
            fence_rx,
            lease_rx.clone(),
            failsafe_until.clone(),
            cfg.ha.fence_margin(),
            fence_fired.clone(),
            wake.clone(),
            watchdog_pipe,
            cancel.clone(),
        ),
    );

    let ha = HaConfig {
        maximum_lag_on_failover: cfg.ha.maximum_lag_on_failover,
        primary_start_timeout: Duration::from_secs(cfg.ha.primary_start_timeout),
        max_primary_crashes: 3,
        fence_margin: cfg.ha.fence_margin(),
        // Longer than a TTL: a leader that has sent no WAL for that long yet still holds its
        // key has renewed its lease, so it is alive and not serving this member; sooner, the
        // silence may be a dead leader whose key has not expired yet (a rewind against it
        // could only fail).
        rewind_check_after: Duration::from_secs(15).max(cfg.ha.ttl() + cfg.ha.loop_wait()),
        archive_recovery_after: cfg
            .archive
            .as_ref()
            .and_then(|a| a.recover_after)
            .map(Duration::from_secs),
        standby: cfg.ha.standby_cluster.clone(),
    };
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(8);
    let (backup_tx, backup_rx) = tokio::sync::mpsc::channel(4);
    let (drill_tx, drill_rx) = tokio::sync::mpsc::channel(4);
    let shared = Arc::new(Shared {
        node: RwLock::new(gather::initial_node_status(&cfg, &loaded.name)),
        view: RwLock::new(None),
        lease: lease_rx.clone(),
        last_loop: RwLock::new(Instant::now()),
        fence_margin: cfg.ha.fence_margin(),
        ttl: cfg.ha.ttl(),
        maximum_lag_on_failover: cfg.ha.maximum_lag_on_failover,
        store: Arc::new(dcs.clone()),
        ha: ha.clone(),
        auth: loaded.api_auth.clone(),
        commands: commands_tx,
        wake: wake.clone(),
        switchover_outcome: RwLock::new(None),
        backups: RwLock::new(Default::default()),
        backup_requests: cfg.archive.is_some().then_some(backup_tx),
        drill_requests: cfg.archive.is_some().then_some(drill_tx),
        catalog_error: RwLock::new(None),
        failsafe: crate::shared::failsafe::Gate::default(),
        failsafe_until: failsafe_until.clone(),
        proxy: proxy_route,
        loop_stats: Default::default(),
        live_wal: Some(Arc::new(live_wal::PgLiveWal::new(
            cfg.run_dir(),
            cfg.postgresql.listen.port(),
            &cfg.postgresql.authentication.superuser.username,
            cfg.ha.retry_timeout().min(Duration::from_secs(1)),
        ))),
        statistics: Some(Arc::new(statistics::PgStatistics::new(
            cfg.postgresql.bin_dir.clone(),
            cfg.run_dir(),
            cfg.postgresql.listen.port(),
            &cfg.postgresql.authentication.superuser.username,
        ))),
    });
    if let Some(archive) = &cfg.archive {
        tasks.spawn(
            "backups",
            backups::run(
                archive.clone(),
                archive.backups.clone(),
                backups::Local {
                    bin_dir: cfg.postgresql.bin_dir.clone(),
                    socket_dir: cfg.run_dir(),
                    port: cfg.postgresql.listen.port(),
                    user: cfg.postgresql.authentication.superuser.username.clone(),
                },
                shared.clone(),
                backup_rx,
                cancel.clone(),
            ),
        );
    }
    if let Some(archive) = &cfg.archive {
        let verify = archive.verify.as_ref();
        let drill = crate::drill::Drill {
            config_path: std::path::absolute(&loaded.path).unwrap_or_else(|_| loaded.path.clone()),
            archive: archive.clone(),
            bin_dir: cfg.postgresql.bin_dir.clone(),
            superuser: cfg.postgresql.authentication.superuser.username.clone(),
            pick: crate::archive::backup::Pick::Latest,
            target_time: None,
            sql: verify.and_then(|v| v.sql.clone()),
            scratch_parent: cfg.run_dir(),
            timeout: Duration::from_secs(6 * 3600),
        };
        tasks.spawn(
            "restore drills",
            drills::run(
                drills::Drills {
                    drill,
                    schedule: verify.map(|v| v.schedule.clone()),
                    shared: shared.clone(),
                    dcs: dcs.clone(),
                    me: loaded.name.clone(),
                },
                drill_rx,
                cancel.clone(),
            ),
        );
    }
    tasks.spawn(
        "catalog",
        crate::catalog::run::task(
            crate::catalog::run::Task {
                local: crate::catalog::run::Local {
                    socket_dir: cfg.run_dir(),
                    port: cfg.postgresql.listen.port(),
                    user: cfg.postgresql.authentication.superuser.username.clone(),
                },
                shared: shared.clone(),
                dcs: dcs.clone(),
                me: loaded.name.to_string(),
                region: cfg.aws.as_ref().map(|a| a.region.clone()),
            },
            cancel.clone(),
        ),
    );
    if let Some(aws) = &cfg.aws
        && let Some(target) = &aws.signal
    {
        tasks.spawn_finite(
            "stack signal",
            stack_signal::run(
                aws.region.clone(),
                target.clone(),
                loaded.name.to_string(),
                shared.clone(),
                dcs.clone(),
                cancel.clone(),
            ),
        );
    }
    if let Some(aws) = &cfg.aws
        && aws.scale_in_protection
    {
        tasks.spawn(
            "scale-in protection",
            scale_in::run(
                aws.region.clone(),
                loaded.name.to_string(),
                shared.clone(),
                cancel.clone(),
            ),
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.restapi.listen)
        .await
        .with_context(|| format!("listen for the REST API on {}", cfg.restapi.listen))?;
    let tls = match &api_tls {
        Some(t) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&t.certfile, &t.keyfile)
                .await
                .with_context(|| {
                    format!(
                        "load the REST API certificate {} and key {}",
                        t.certfile.display(),
                        t.keyfile.display()
                    )
                })?,
        ),
        None => None,
    };
    if let Some(cert) = member_cert {
        let reload = crate::certs::Reload {
            api: tls.clone().filter(|_| cfg.restapi.tls.is_none()),
            data_dir: cfg.postgresql.data_dir.clone(),
            etcd: dcs.etcd().filter(|_| cfg.etcd_over_tls()).cloned(),
        };
        tasks.spawn(
            "certificate",
            crate::certs::run(cert, reload, Duration::from_secs(60), cancel.clone()),
        );
    }
    tasks.spawn(
        "REST API",
        api::serve(listener, tls, shared.clone(), cancel.clone()),
    );

    let mut gov = Governor {
        loaded,
        dcs,
        pg,
        ha,
        http,
        shared,
        lease: lease_rx,
        fence: fence_tx,
        fence_fired,
        wake: wake.clone(),
        crashes: VecDeque::new(),
        primary_down_since: None,
        data: None,
        published: None,
        pending_history: None,
        last_decision: None,
        leader_seen: None,
        slot_absent_since: Default::default(),
        commands: commands_rx,
        sync_pending: Default::default(),
        archive_status: None,
        failsafe_peers,
        failsafe_until,
        failsafe_absent_since: Default::default(),
        started: Instant::now(),
        bootstrap_failure: None,
        initialize_attempted: false,
        data_seen_at: Instant::now(),
        upgraded: false,
    };
    let result = tokio::select! {
        r = gov.ha_loop(&shutdown) => r,
        how = tasks.unexpected_end() => if shutdown.is_cancelled() {
            Ok(())
        } else {
            tracing::error!("{how}; stopping so the governor is started again");
            Err(anyhow::anyhow!("{how}"))
        },
    };
    gov.shutdown().await;
    cancel.cancel();
    tasks.join_all().await;
    if let Some(mut w) = watchdog {
        let _ = w.kill().await;
    }
    result.map(|()| {
        if gov.upgraded {
            Ended::Upgraded
        } else {
            Ended::Stopped
        }
    })
}

impl Governor {
    async fn ha_loop(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let local_loop_wait = self.loaded.config.ha.loop_wait();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            self.run_commands().await;
            if self.upgraded {
                tracing::info!("ending this run: the next one commits the upgrade");
                return Ok(());
            }
            let pass_started = Instant::now();
            let snapshot = self.gather().await;
            // The cluster's `config` may shorten or lengthen the loop (within the lease).
            let loop_wait = match &snapshot.dcs {
                ha::DcsView::Known(v) => v
                    .config
                    .as_ref()
                    .and_then(|c| c.loop_wait)
                    .map(Duration::from_secs)
                    .filter(|w| !w.is_zero() && *w < self.loaded.config.ha.ttl())
                    .unwrap_or(local_loop_wait),
                ha::DcsView::Unreachable { .. } => local_loop_wait,
            };
            let now = Instant::now();
            let decision = ha::decide(&snapshot, &self.ha, now);
            let repeated = self.last_decision.as_ref() == Some(&decision);
            self.log_decision(&decision);
            if let Decision::Fatal { why } = &decision {
                anyhow::bail!("{why}");
            }
            let dcs = self.dcs.clone();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = act::act(&dcs, self, &decision, &snapshot, Instant::now()) => r,
            };
            if let Ok(mut stats) = self.shared.loop_stats.lock() {
                *stats.decisions.entry(decision.kind()).or_default() += 1;
                stats.last_pass = pass_started.elapsed();
            }
            if let Err(e) = outcome {
                tracing::error!(decision = decision.kind(), error = %e, "action failed");
                // Back off a little so a persistent failure does not spin.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(loop_wait) => {}
                }
                continue;
            }
            self.record_fence(&snapshot).await;
            self.publish(&snapshot, &decision).await;
            *self.shared.last_loop.write().await = Instant::now();
            // An action changed something: look again at once, unless the same action was
            // just taken, which means it did not help and must not spin.
            if acts(&decision) && !repeated {
                continue;
            }
            // Only a new lease id matters here (the member key must be re-published at once);
            // renewals alone move nothing.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = self.lease.wait_for(|l| l.id != snapshot.lease.id) => {}
                _ = tokio::time::sleep(loop_wait) => {}
            }
        }
    }

    fn log_decision(&mut self, d: &Decision) {
        let changed = self.last_decision.as_ref() != Some(d);
        if changed {
            match d {
                Decision::Fatal { .. } => tracing::error!(decision = d.kind(), "{d}"),
                Decision::Demote { .. } | Decision::ReleaseLeader { .. } => {
                    tracing::warn!(decision = d.kind(), "{d}");
                }
                _ => tracing::info!(decision = d.kind(), "{d}"),
            }
        } else {
            tracing::debug!(decision = d.kind(), "{d}");
        }
        self.last_decision = Some(d.clone());
    }

    /// Stops PostgreSQL and gives up the lease (and with it the member and leader keys).
    async fn shutdown(&mut self) {
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Fast).await;
        let lease = self.lease.borrow().id;
        if let Some(id) = lease {
            match self.dcs.revoke_lease(id).await {
                Ok(()) => tracing::info!("released the lease and with it this member's keys"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the lease; it will expire by itself")
                }
            }
        }
    }
}

/// Whether the decision changed something, so the loop should look again at once.
fn acts(d: &Decision) -> bool {
    !matches!(
        d,
        Decision::Wait { .. } | Decision::Lead | Decision::Follow { .. }
    )
}
