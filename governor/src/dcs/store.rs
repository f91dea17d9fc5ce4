//! [`Store`]: the coordination store a member uses, etcd or ZooKeeper, chosen by its
//! configuration (`etcd:` or `zookeeper:`). The runtime, the REST API and the commands hold a
//! `Store` and never ask which it is; each operation goes to the adapter, which keeps the
//! meaning the etcd adapter defines (the contract tests hold both to it). Only what exists on
//! one side alone is asked for by name: the etcd connection a renewed certificate reconnects.

use super::{Coordination, Dcs, DcsError, discovery, zookeeper::ZooKeeper};
use crate::ha::{ClusterView, LeaseView};
use spilo_model::governor::GovernorConfig;
use spilo_model::{
    ClusterConfig, HistoryEntry, Keyspace, MemberName, MemberStatus, SwitchoverRequest, SyncState,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// One member's connection to its cluster's coordination store.
#[derive(Clone)]
pub enum Store {
    /// etcd.
    Etcd(Dcs),
    /// A ZooKeeper ensemble.
    ZooKeeper(Arc<ZooKeeper>),
}

fn unreachable(at: &str, source: DcsError) -> DcsError {
    DcsError::Unreachable {
        at: at.to_string(),
        source: Box::new(source),
    }
}

/// Runs `$e` with `$s` bound to the adapter, whichever it is.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Etcd($s) => $e,
            Store::ZooKeeper($s) => $e,
        }
    };
}

impl Store {
    /// Connects to the store `cfg` names, for member `me`, every operation bounded by
    /// `timeout`; etcd over TLS with `etcd_tls`. Returns the store and where it is, for logs
    /// and errors (`etcd at ...`, `ZooKeeper at ...`).
    pub async fn connect(
        cfg: &GovernorConfig,
        etcd_tls: Option<&discovery::EtcdTls>,
        me: MemberName,
        timeout: Duration,
    ) -> Result<(Self, String), DcsError> {
        let keys = Keyspace::with_namespace(&cfg.namespace, &cfg.scope);
        if let Some(zk) = &cfg.zookeeper {
            let at = format!("ZooKeeper at {}", zk.hosts.join(","));
            let store =
                ZooKeeper::connect(&zk.hosts, keys, me, timeout.max(Duration::from_secs(3)))
                    .await
                    .map_err(|e| unreachable(&at, e))?;
            return Ok((Self::ZooKeeper(Arc::new(store)), at));
        }
        let endpoints =
            discovery::endpoints(&cfg.etcd, etcd_tls, timeout.max(Duration::from_secs(3))).await?;
        let at = format!("etcd at {}", endpoints.join(", "));
        let dcs = Dcs::connect(&endpoints, etcd_tls, keys, me, timeout)
            .await
            .map_err(|e| unreachable(&at, e))?;
        Ok((Self::Etcd(dcs), at))
    }

    /// The etcd connection, when the store is etcd.
    pub fn etcd(&self) -> Option<&Dcs> {
        match self {
            Self::Etcd(d) => Some(d),
            Self::ZooKeeper(_) => None,
        }
    }

    /// The member this connection writes for.
    pub fn member(&self) -> &MemberName {
        each!(self, s => s.member())
    }

    /// The cluster's keys.
    pub fn keys(&self) -> &Keyspace {
        each!(self, s => s.keys())
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        each!(self, s => s.timeout())
    }

    /// The lease task (see `dcs::lease`), until `cancel` fires.
    pub async fn keep_lease(
        self,
        ttl: Duration,
        interval: Duration,
        tx: watch::Sender<LeaseView>,
        cancel: CancellationToken,
    ) {
        match self {
            Self::Etcd(d) => super::lease::run(d, ttl, interval, tx, cancel).await,
            Self::ZooKeeper(z) => {
                super::zookeeper::lease::run(z, ttl, interval, tx, cancel).await;
            }
        }
    }

    /// The watch task (see `dcs::watch`), until `cancel` fires.
    pub async fn watch(self, wakes: Vec<Arc<Notify>>, cancel: CancellationToken) {
        match self {
            Self::Etcd(d) => super::watch::run(d, wakes, cancel).await,
            Self::ZooKeeper(z) => super::zookeeper::watch::run(z, wakes, cancel).await,
        }
    }

    /// Deletes this member's `boot/<name>` report (the member runs now).
    pub async fn delete_boot_failure(&self) -> Result<(), DcsError> {
        each!(self, s => s.delete_boot_failure().await)
    }

    /// Deletes the empty `initialize` placeholder after a failed bootstrap.
    pub async fn abandon_initialize(&self) -> Result<bool, DcsError> {
        each!(self, s => s.abandon_initialize().await)
    }

    /// See [`Dcs::adopt_upgraded_system`].
    pub async fn adopt_upgraded_system(
        &self,
        sysid: &str,
        old: Option<&str>,
    ) -> Result<bool, DcsError> {
        each!(self, s => s.adopt_upgraded_system(sysid, old).await)
    }

    /// Writes a switchover request unless one is pending. Returns whether it was written.
    pub async fn request_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        each!(self, s => s.request_switchover(req).await)
    }

    /// Removes any switchover request. Returns whether there was one.
    pub async fn cancel_switchover(&self) -> Result<bool, DcsError> {
        each!(self, s => s.cancel_switchover().await)
    }

    /// The `config` value and its revision (0 when absent).
    pub async fn read_config(&self) -> Result<(Option<serde_json::Value>, i64), DcsError> {
        each!(self, s => s.read_config().await)
    }

    /// Writes `config` if its revision is still `revision`. Returns whether it was written.
    pub async fn write_config(
        &self,
        config: &ClusterConfig,
        revision: i64,
    ) -> Result<bool, DcsError> {
        each!(self, s => s.write_config(config, revision).await)
    }

    /// Creates `config` if it does not exist yet.
    pub async fn create_config_if_absent(&self, config: &ClusterConfig) -> Result<bool, DcsError> {
        each!(self, s => s.create_config_if_absent(config).await)
    }

    /// The lease a member key is bound to, if the key exists.
    pub async fn member_lease(&self, name: &MemberName) -> Result<Option<i64>, DcsError> {
        each!(self, s => s.member_lease(name).await)
    }

    /// Records a drill in `drill` (see [`Dcs::record_drill`]).
    pub async fn record_drill(
        &self,
        next: impl Fn(Option<&spilo_model::DrillRecord>) -> spilo_model::DrillRecord,
    ) -> Result<(), DcsError> {
        each!(self, s => s.record_drill(next).await)
    }

    /// Creates `drill` if it does not exist yet.
    pub async fn create_drill_if_absent(
        &self,
        record: &spilo_model::DrillRecord,
    ) -> Result<bool, DcsError> {
        each!(self, s => s.create_drill_if_absent(record).await)
    }

    /// Writes the `catalog` status (its one writer: the leader).
    pub async fn put_catalog_status(
        &self,
        status: &spilo_model::catalog::CatalogStatus,
    ) -> Result<(), DcsError> {
        each!(self, s => s.put_catalog_status(status).await)
    }
}

impl Coordination for Store {
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        each!(self, s => s.read_view().await)
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        each!(self, s => s.grant_lease(ttl).await)
    }
    async fn renew_lease(&self, lease: i64) -> Result<bool, DcsError> {
        each!(self, s => s.renew_lease(lease).await)
    }
    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        each!(self, s => s.revoke_lease(lease).await)
    }
    async fn try_claim_initialize(&self, lease: i64) -> Result<bool, DcsError> {
        each!(self, s => s.try_claim_initialize(lease).await)
    }
    async fn set_initialize(&self, sysid: &str) -> Result<bool, DcsError> {
        each!(self, s => s.set_initialize(sysid).await)
    }
    async fn try_acquire_leader(&self, lease: i64) -> Result<bool, DcsError> {
        each!(self, s => s.try_acquire_leader(lease).await)
    }
    async fn release_leader(&self, lease: i64) -> Result<bool, DcsError> {
        each!(self, s => s.release_leader(lease).await)
    }
    async fn hand_over_leader(
        &self,
        lease: i64,
        to: &MemberName,
        to_lease: i64,
    ) -> Result<bool, DcsError> {
        each!(self, s => s.hand_over_leader(lease, to, to_lease).await)
    }
    async fn write_sync(&self, sync: Option<&SyncState>, revision: i64) -> Result<bool, DcsError> {
        each!(self, s => s.write_sync(sync, revision).await)
    }
    async fn write_failsafe(
        &self,
        members: Option<&BTreeMap<MemberName, String>>,
        lease: i64,
    ) -> Result<bool, DcsError> {
        each!(self, s => s.write_failsafe(members, lease).await)
    }
    async fn clear_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        each!(self, s => s.clear_switchover(req).await)
    }
    async fn put_member(&self, status: &MemberStatus, lease: i64) -> Result<(), DcsError> {
        each!(self, s => s.put_member(status, lease).await)
    }
    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), DcsError> {
        each!(self, s => s.append_history(entry).await)
    }
}
