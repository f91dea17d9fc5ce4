//! What one member's HA loop, its tasks and its REST API share: the state the API reads
//! ([`Shared`]), the etcd operations it may perform ([`ClusterStore`]), the messages it sends
//! to the loop and the backup task, and failsafe mode's promises ([`failsafe`]).
//!
//! It sits below both: `runtime` fills it and serves `api` with it, `api` only reads and sends
//! through it, so the API's handlers run in unit tests against a fake store and hand-made state.

pub mod failsafe;

use crate::config::ApiCredentials;
use crate::dcs::{Coordination, DcsError, Store};
use crate::ha::{ClusterView, HaConfig, LeaseView};
use spilo_model::{ClusterConfig, MemberName, NodeStatus, SwitchoverRequest};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, RwLock, mpsc, oneshot, watch};

/// A future the store returns (boxed, so the store can be a trait object).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DcsError>> + Send + 'a>>;

/// The etcd operations the REST API performs itself: reads for its pre-checks, and the keys an
/// operator writes (a switchover request, the cluster's `config`). Everything else the API
/// wants done goes to the HA loop as a [`Command`].
pub trait ClusterStore: Send + Sync {
    /// The cluster's keys, read now.
    fn read_view(&self) -> StoreFuture<'_, ClusterView>;
    /// Writes a switchover request unless one is pending; whether it was written.
    fn request_switchover<'a>(&'a self, request: &'a SwitchoverRequest) -> StoreFuture<'a, bool>;
    /// Removes any switchover request; whether there was one.
    fn cancel_switchover(&self) -> StoreFuture<'_, bool>;
    /// The `config` value and its revision (0 when absent).
    fn read_config(&self) -> StoreFuture<'_, (Option<serde_json::Value>, i64)>;
    /// Writes `config` if its revision is still `revision`; whether it was written.
    fn write_config<'a>(
        &'a self,
        config: &'a ClusterConfig,
        revision: i64,
    ) -> StoreFuture<'a, bool>;
}

impl ClusterStore for Store {
    fn read_view(&self) -> StoreFuture<'_, ClusterView> {
        Box::pin(Coordination::read_view(self))
    }
    fn request_switchover<'a>(&'a self, request: &'a SwitchoverRequest) -> StoreFuture<'a, bool> {
        Box::pin(Store::request_switchover(self, request))
    }
    fn cancel_switchover(&self) -> StoreFuture<'_, bool> {
        Box::pin(Store::cancel_switchover(self))
    }
    fn read_config(&self) -> StoreFuture<'_, (Option<serde_json::Value>, i64)> {
        Box::pin(Store::read_config(self))
    }
    fn write_config<'a>(
        &'a self,
        config: &'a ClusterConfig,
        revision: i64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(Store::write_config(self, config, revision))
    }
}

/// A future of a live read ([`LiveWal`]).
pub type LiveFuture<'a> = Pin<Box<dyn Future<Output = Option<LiveWalPositions>> + Send + 'a>>;

/// This member's timeline and WAL positions read from PostgreSQL now, not at the last loop pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWalPositions {
    /// Its timeline.
    pub timeline: Option<spilo_model::TimelineId>,
    /// Its WAL positions.
    pub wal: spilo_model::WalPositions,
}

/// Reads this member's WAL positions from PostgreSQL now (`GET /status?live=true`, which a
/// failover candidate asks: a position from the last loop pass may be seconds old and miss
/// commits received since, and a quorum candidate must not take itself for the most
/// advanced on such an answer).
pub trait LiveWal: Send + Sync {
    /// The positions, or `None` when PostgreSQL did not answer within its deadline.
    fn read(&self) -> LiveFuture<'_>;
}

/// A future of a statistics rebuild ([`Statistics`]).
pub type StatsFuture<'a> = Pin<Box<dyn Future<Output = Result<String, StatsError>> + Send + 'a>>;

/// Why a statistics rebuild did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// Another one runs.
    #[error("a rebuild of the statistics runs already")]
    Busy,
    /// vacuumdb failed.
    #[error("vacuumdb failed: {0}")]
    Failed(String),
}

/// Rebuilds the planner's statistics on this member's PostgreSQL (`POST /analyze`; after a
/// major upgrade).
pub trait Statistics: Send + Sync {
    /// What was done, or why not.
    fn rebuild(&self) -> StatsFuture<'_>;
}

/// State shared between the HA loop, its tasks and the REST API.
pub struct Shared {
    /// This member's status, refreshed every loop.
    pub node: RwLock<NodeStatus>,
    /// The last cluster view read from etcd.
    pub view: RwLock<Option<ClusterView>>,
    /// The lease.
    pub lease: watch::Receiver<LeaseView>,
    /// When the HA loop last finished a pass.
    pub last_loop: RwLock<Instant>,
    /// The lease margin the fence uses.
    pub fence_margin: Duration,
    /// The lease length.
    pub ttl: Duration,
    /// The lag limit for `/readiness`.
    pub maximum_lag_on_failover: u64,
    /// etcd, for the API's reads and its switchover and config writes.
    pub store: Arc<dyn ClusterStore>,
    /// The HA settings, for the API's switchover pre-checks.
    pub ha: HaConfig,
    /// The credentials mutating endpoints require; `None` disables them.
    pub auth: Option<ApiCredentials>,
    /// Operator commands for the HA loop.
    pub commands: mpsc::Sender<Command>,
    /// Wakes the HA loop.
    pub wake: Arc<Notify>,
    /// The last switchover this member carried out or refused as leader.
    pub switchover_outcome: RwLock<Option<SwitchoverOutcome>>,
    /// The backup schedule's last and next runs.
    pub backups: RwLock<spilo_model::BackupRuns>,
    /// Requests for a base backup now (`POST /backup`); `None` without an archive.
    pub backup_requests: Option<mpsc::Sender<BackupRequest>>,
    /// Why the catalog (roles, databases) of `config` could not be converged, on the leader.
    pub catalog_error: RwLock<Option<String>>,
    /// Requests for a restore drill now (`POST /drill`); `None` without an archive.
    pub drill_requests: Option<mpsc::Sender<DrillRequest>>,
    /// This member's failsafe promises.
    pub failsafe: failsafe::Gate,
    /// As primary in failsafe mode: until when every member confirmed it.
    pub failsafe_until: watch::Receiver<Option<Instant>>,
    /// The primary proxy's target, when this member runs one.
    pub proxy: Option<watch::Receiver<Option<crate::proxy::Target>>>,
    /// The HA loop's counters for `/metrics`.
    pub loop_stats: std::sync::Mutex<LoopStats>,
    /// Live WAL positions for `/status?live=true`.
    pub live_wal: Option<Arc<dyn LiveWal>>,
    /// The statistics rebuild for `POST /analyze`.
    pub statistics: Option<Arc<dyn Statistics>>,
}

/// What the HA loop counts for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct LoopStats {
    /// Passes by decision kind.
    pub decisions: BTreeMap<&'static str, u64>,
    /// How long the last pass took.
    pub last_pass: Duration,
}

/// An operator command for the local PostgreSQL, carried out by the HA loop between two
/// passes (`runtime::commands`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Restart PostgreSQL in its current role; with `pending_only`, only if a changed
    /// setting waits for a restart.
    Restart {
        /// Skip the restart when nothing is pending.
        pending_only: bool,
    },
    /// Rewrite the configuration and reload it.
    Reload,
    /// Throw the data directory away and copy the leader again (replicas only).
    Reinitialize,
    /// Upgrade the data to another major version in place (the leader alone), or only
    /// check that it can be (`runtime::upgrade`).
    Upgrade {
        /// The member's configuration for the new version (YAML).
        config: String,
        /// Only the check.
        check: bool,
        /// The cluster's parameters once the orchestrator has written its new `config`,
        /// checked too.
        parameters: Option<BTreeMap<String, String>>,
    },
}

impl Op {
    /// Its name, for the log.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Restart { .. } => "restart",
            Op::Reload => "reload",
            Op::Reinitialize => "reinitialize",
            Op::Upgrade { check: true, .. } => "upgrade check",
            Op::Upgrade { .. } => "upgrade",
        }
    }
}

/// A command and where its answer goes.
#[derive(Debug)]
pub struct Command {
    /// The operation.
    pub op: Op,
    /// `Ok(what was done)` or `Err((refused?, why))`: refused means nothing was done.
    pub reply: oneshot::Sender<Result<String, CommandFailure>>,
}

/// A command that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    /// Refused before anything was done (a precondition), rather than failed half-way.
    pub refused: bool,
    /// Why.
    pub why: String,
}

/// A request for a base backup now, answered with the backup's name or why there is none.
pub type BackupRequest = oneshot::Sender<Result<String, BackupRefused>>;

/// A request for a restore drill now (`POST /drill`), answered with its report or why the
/// drill could not run.
pub struct DrillRequest {
    /// Which backup.
    pub pick: crate::archive::backup::Pick,
    /// Replay up to this time instead of the archive's end.
    pub target_time: Option<spilo_model::TargetTime>,
    /// A query that must return `true` (else the configuration's).
    pub sql: Option<String>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<crate::drill::Report, String>>,
}

/// Why a requested backup was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupRefused {
    /// This member is not the leader running as primary.
    #[error("this member is not the leader running as primary; ask the leader")]
    NotLeader,
    /// The backup failed.
    #[error("the backup failed: {0}")]
    Failed(String),
}

/// The outcome of the last switchover this member carried out or refused, for the REST API.
#[derive(Debug, Clone)]
pub struct SwitchoverOutcome {
    /// The request.
    pub request: SwitchoverRequest,
    /// The new leader, or why there is none.
    pub result: Result<MemberName, String>,
}
