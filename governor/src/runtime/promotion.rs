//! Promoting this member, in the order that keeps one writer and a true history: in
//! synchronous mode the `sync` key first names this member with nobody synchronous
//! ([`super::sync::prepare_promotion`]), then the fence is armed with the lease the leader key
//! is bound to, then PostgreSQL is promoted, and the new timeline is recorded in `history`
//! before the member publishes itself as primary (so a former primary that sees it lead also
//! sees where its timeline began).
//!
//! [`promote`] is written against [`Coordination`] and [`Promotable`], so the seeded
//! simulation runs this same sequence on its models of etcd and PostgreSQL.

use super::ActError;
use super::sync::{self, Replication};
use crate::dcs::Coordination;
use crate::ha::ClusterView;
use spilo_model::{HistoryEntry, Lsn, TimelineId};
use std::future::Future;
use std::time::{Instant, SystemTime};

/// What promoting needs of PostgreSQL and the fence.
pub trait Promotable: Replication {
    /// Arms the fence with the running postmaster and the lease the leader key is bound to:
    /// from now on PostgreSQL is stopped at once when that lease is about to end.
    fn arm_fence(&mut self);
    /// Promotes PostgreSQL and waits until it accepts writes; the new timeline and the
    /// position where it began, when its history file can be read.
    fn promote(
        &mut self,
    ) -> impl Future<Output = Result<Option<(TimelineId, Lsn)>, ActError>> + Send;
    /// A promotion's `history` entry etcd has not taken yet (the leader's passes retry it).
    fn pending_history(&mut self) -> &mut Option<HistoryEntry>;
}

/// The promotion of this member for `why`.
pub async fn promote(
    dcs: &impl Coordination,
    pg: &mut impl Promotable,
    why: &str,
    view: Option<&ClusterView>,
) -> Result<(), ActError> {
    sync::prepare_promotion(dcs, pg, view).await?;
    pg.arm_fence();
    let started = Instant::now();
    let switched = pg.promote().await?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        timeline = ?switched.map(|(tl, _)| tl),
        "promoted; accepting writes"
    );
    if let Some((timeline, switch_lsn)) = switched {
        let member = pg.name().clone();
        *pg.pending_history() = Some(HistoryEntry {
            timeline,
            switch_lsn,
            reason: why.to_string(),
            promoted_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            member,
        });
    }
    // Record the promotion before this member publishes itself as primary.
    if let Some(entry) = pg.pending_history().clone()
        && dcs.append_history(&entry).await.is_ok()
    {
        *pg.pending_history() = None;
    }
    Ok(())
}
