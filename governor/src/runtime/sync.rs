//! Synchronous replication on the primary: each pass of `lead` reads `pg_stat_replication`,
//! asks [`crate::ha::sync::step`] what to do, writes the `sync` key first and then
//! `synchronous_standby_names` (`FIRST k` or, in quorum mode, `ANY k`); what the step must
//! remember is kept only once the setting is in force. A member about to be promoted in synchronous mode empties the
//! key (naming itself) before it accepts writes, so a stale list can never promote a member
//! that missed this primary's commits.
//!
//! [`manage`] and [`prepare_promotion`] are written against two traits, the store
//! ([`Coordination`]) and PostgreSQL's side of it ([`Replication`]), so the seeded simulation
//! runs these same steps on its models of etcd and PostgreSQL.

use super::ActError;
use crate::dcs::Coordination;
use crate::ha::ClusterView;
use crate::ha::sync::{self, Pending, Standby, SyncMode};
use spilo_model::{MemberName, SyncState};
use std::future::Future;

/// PostgreSQL's side of synchronous replication on a primary: what `pg_stat_replication`
/// shows and the `synchronous_standby_names` in force, with what the step remembers. The
/// governor implements it with its [`crate::postgres::Instance`] (`runtime::hands`), and so
/// does the simulation's model.
pub trait Replication {
    /// This member's name.
    fn name(&self) -> &MemberName;
    /// What [`sync::step`] remembers between passes.
    fn sync_pending(&mut self) -> &mut Pending;
    /// Whether `synchronous_standby_names`, as last written, is set (not empty).
    fn waits_for_standbys(&self) -> bool;
    /// The standbys streaming from this primary, and its own flush position with the time it
    /// was read.
    fn replication(
        &mut self,
    ) -> impl Future<Output = Result<(Vec<Standby>, sync::Moment), ActError>> + Send;
    /// Sets `synchronous_standby_names`; whether it changed. On an error the setting is not
    /// in force.
    fn set_standby_names(
        &mut self,
        names: &str,
    ) -> impl Future<Output = Result<bool, ActError>> + Send;
    /// After naming other standbys: lets commits that waited for a standby that left go on.
    fn nudge_sync_standbys(&mut self) -> impl Future<Output = ()> + Send;
}

/// One pass of the primary: brings the synchronous standbys in line with the cluster's
/// `config` as `view` shows it.
pub async fn manage(
    dcs: &impl Coordination,
    pg: &mut impl Replication,
    view: &ClusterView,
) -> Result<(), ActError> {
    let mode = SyncMode::from_config(view.config.as_ref());
    if mode.is_none() && view.sync.is_none() && !pg.waits_for_standbys() {
        return Ok(());
    }
    let (standbys, moment) = pg.replication().await?;
    let eligible = |m: &MemberName| sync::eligible(view.members.get(m));
    let me = pg.name().clone();
    let step = sync::step(
        &me,
        mode,
        view.sync.as_ref(),
        &standbys,
        &eligible,
        pg.sync_pending(),
        moment,
    );
    if let Some(key) = &step.key {
        if !dcs.write_sync(key.as_ref(), view.sync_revision).await? {
            // Someone else wrote it since this pass read it; decide again on fresh data.
            return Ok(());
        }
        match key {
            Some(k) => {
                tracing::info!(members = ?k.members, "published the synchronous standbys")
            }
            None => tracing::info!("synchronous mode is off; removed the sync key"),
        }
    }
    let names_standbys = !matches!(step.standby_names.as_str(), "" | "*");
    let changed = match pg.set_standby_names(&step.standby_names).await {
        Ok(changed) => changed,
        Err(e) => {
            // A quorum change must not count a pass on a setting that is not in force.
            *pg.sync_pending() = Default::default();
            return Err(e);
        }
    };
    *pg.sync_pending() = step.pending;
    if changed && names_standbys {
        pg.nudge_sync_standbys().await;
    }
    Ok(())
}

/// Before this member is promoted in synchronous mode: the `sync` key names it with nobody
/// synchronous yet, and in strict mode writes wait for a standby from the first commit. An
/// error means the promotion must not go on.
pub async fn prepare_promotion(
    dcs: &impl Coordination,
    pg: &mut impl Replication,
    view: Option<&ClusterView>,
) -> Result<(), ActError> {
    let Some(view) = view else { return Ok(()) };
    let Some(mode) = SyncMode::from_config(view.config.as_ref()) else {
        return Ok(());
    };
    // Quorum mode: voters none, quorum 0 (promises nothing until confirmed).
    let fresh = SyncState {
        leader: Some(pg.name().clone()),
        members: Vec::new(),
        quorum: mode.quorum.then_some(0),
    };
    if !dcs.write_sync(Some(&fresh), view.sync_revision).await? {
        return Err(ActError::Other(
            "the sync key changed; not promoting on a stale view".into(),
        ));
    }
    *pg.sync_pending() = Default::default();
    if mode.strict {
        pg.set_standby_names(&sync::standby_names(&[], true))
            .await?;
    }
    Ok(())
}
