//! The leader's pass (`Decision::Lead`), in order: the fence re-armed with the lease the
//! leader key is bound to, a missing `config` written, the `failsafe` key
//! ([`super::failsafe::key_pass`]), a promotion's `history` entry that could not be written
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
use spilo_model::MemberName;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// What the leader's pass needs beyond promoting.
pub trait Leading: Promotable {
    /// This member's REST API, as the `failsafe` key lists it.
    fn api_url(&self) -> String;
    /// This member's lease, if it has one.
    fn lease(&self) -> Option<i64>;
    /// The cluster's TTL.
    fn ttl(&self) -> Duration;
    /// Since when members of the `failsafe` key have been missing.
    fn failsafe_absent(&mut self) -> &mut BTreeMap<MemberName, Instant>;
    /// The members whose failsafe confirmations count from now on.
    fn ask_failsafe(&mut self, peers: Option<Vec<Peer>>);
    /// Writes the cluster's first `config` if there is none.
    fn create_config_if_absent(&mut self) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Keeps one physical replication slot per other member of `view`, and drops the slots of
    /// members gone for a while.
    fn sync_slots(
        &mut self,
        view: &ClusterView,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
}

/// One pass of the leader at `now`, on the cluster as `view` shows it (`None`: etcd did not
/// answer).
pub async fn lead(
    dcs: &impl Coordination,
    pg: &mut impl Leading,
    view: Option<&ClusterView>,
    now: Instant,
) {
    pg.arm_fence();
    if view.is_some_and(|v| v.config.is_none())
        && let Err(e) = pg.create_config_if_absent().await
    {
        tracing::warn!(error = %e, "cannot write the cluster's first config");
    }
    if let Some(view) = view
        && let Some(lease) = pg.lease()
    {
        let (me, url, ttl) = (pg.name().clone(), pg.api_url(), pg.ttl());
        let pass = failsafe::key_pass((&me, &url), view, pg.failsafe_absent(), now, ttl);
        pg.ask_failsafe(pass.ask);
        if let Some(key) = pass.write
            && let Err(e) = dcs.write_failsafe(key.as_ref(), lease).await
        {
            tracing::warn!(error = %e, "cannot manage the failsafe key");
        }
    }
    if let Some(entry) = pg.pending_history().clone() {
        match dcs.append_history(&entry).await {
            Ok(()) => *pg.pending_history() = None,
            Err(e) => tracing::warn!(error = %e, "cannot record the promotion in history yet"),
        }
    }
    if let Some(view) = view
        && let Err(e) = pg.sync_slots(view).await
    {
        tracing::warn!(error = %e, "cannot manage replication slots");
    }
    if let Some(view) = view
        && let Err(e) = super::sync::manage(dcs, pg, view).await
    {
        tracing::warn!(error = %e, "cannot manage synchronous replication");
    }
}
