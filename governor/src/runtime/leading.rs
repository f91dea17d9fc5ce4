//! The leader's pass (`Decision::Lead`), in order: the fence re-armed with the lease the
//! leader key is bound to, a missing `config` written, the `failsafe` key
//! ([`super::failsafe::manage_key`]), a promotion's `history` entry that could not be written
//! before, one replication slot per other member, and the synchronous standbys
//! ([`super::sync::manage`]). A step that fails is logged and the next one runs: the pass
//! repeats every `loop_wait`.
//!
//! [`lead`] is written against [`Coordination`] and [`Leading`], so the seeded simulation runs
//! this same pass on its models of etcd and PostgreSQL.

use super::ActError;
use super::failsafe::{self, Peer};
use super::promotion::Promotable;
use crate::dcs::Coordination;
use crate::ha::ClusterView;
use crate::ha::sync::Pending;
use spilo_model::{HistoryEntry, MemberName};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// What the leader's pass needs beyond promoting.
pub trait Leading: Promotable {
    /// Writes the cluster's first `config` if there is none.
    fn create_config_if_absent(&mut self) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Keeps one physical replication slot per other member of `view`, and drops the slots of
    /// members gone for a while.
    fn sync_slots(
        &mut self,
        view: &ClusterView,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
}

/// The leader running a pass.
#[derive(Debug, Clone, Copy)]
pub struct Leader<'a> {
    /// Its name.
    pub name: &'a MemberName,
    /// Its REST API, as the `failsafe` key lists it.
    pub api_url: &'a str,
    /// Its lease, if it has one.
    pub lease: Option<i64>,
    /// The cluster's TTL.
    pub ttl: Duration,
}

/// What the leader remembers from one pass to the next.
pub struct Memory<'a> {
    /// [`crate::ha::sync::step`]'s pending confirmations.
    pub sync_pending: &'a mut Pending,
    /// A promotion's entry etcd has not taken yet.
    pub pending_history: &'a mut Option<HistoryEntry>,
    /// Since when members of the `failsafe` key have been missing.
    pub failsafe_absent: &'a mut BTreeMap<MemberName, Instant>,
}

/// One pass of the leader at `now`, on the cluster as `view` shows it (`None`: etcd did not
/// answer). `ask` receives the members whose failsafe confirmations count.
pub async fn lead(
    leader: Leader<'_>,
    dcs: &impl Coordination,
    pg: &mut impl Leading,
    memory: Memory<'_>,
    view: Option<&ClusterView>,
    now: Instant,
    ask: impl FnOnce(Option<Vec<Peer>>),
) {
    pg.arm_fence();
    if view.is_some_and(|v| v.config.is_none())
        && let Err(e) = pg.create_config_if_absent().await
    {
        tracing::warn!(error = %e, "cannot write the cluster's first config");
    }
    if let Some(view) = view
        && let Some(lease) = leader.lease
        && let Err(e) = failsafe::manage_key(
            dcs,
            failsafe::Leader {
                name: leader.name,
                api_url: leader.api_url,
                lease,
            },
            view,
            memory.failsafe_absent,
            now,
            leader.ttl,
            ask,
        )
        .await
    {
        tracing::warn!(error = %e, "cannot manage the failsafe key");
    }
    if let Some(entry) = memory.pending_history.clone() {
        match dcs.append_history(&entry).await {
            Ok(()) => *memory.pending_history = None,
            Err(e) => tracing::warn!(error = %e, "cannot record the promotion in history yet"),
        }
    }
    if let Some(view) = view
        && let Err(e) = pg.sync_slots(view).await
    {
        tracing::warn!(error = %e, "cannot manage replication slots");
    }
    if let Some(view) = view
        && let Err(e) =
            super::sync::manage(leader.name, dcs, pg, memory.sync_pending, view, now).await
    {
        tracing::warn!(error = %e, "cannot manage synchronous replication");
    }
}
