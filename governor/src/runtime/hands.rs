//! The runtime's side of the shared action steps: its PostgreSQL ([`Instance`]), fence and
//! store as [`super::promotion::promote`] and [`super::leading::lead`] drive them (the seeded
//! simulation drives the same steps on its models).

use super::leading::Leading;
use super::promotion::Promotable;
use super::sync::Replication;
use super::{ActError, fence};
use crate::config::Loaded;
use crate::dcs::Store;
use crate::ha::ClusterView;
use crate::ha::sync::Standby;
use crate::postgres::Instance;
use spilo_model::{Lsn, MemberName, TimelineId};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Slots of members that have been gone this long are dropped, so they stop holding WAL.
const MEMBER_SLOT_TTL: Duration = Duration::from_secs(30 * 60);

/// Borrowed parts of the governor, for one action.
pub(super) struct Hands<'a> {
    /// PostgreSQL.
    pub pg: &'a mut Instance,
    /// The fence task's guard.
    pub fence: &'a watch::Sender<fence::Armed>,
    /// The lease this member's leader key is bound to, if it holds the key.
    pub lease: Option<i64>,
    /// The store.
    pub dcs: &'a Store,
    /// The configuration (its name, and the cluster's first `config`).
    pub loaded: &'a Loaded,
    /// Since when slots of members no longer in the cluster have been unused.
    pub slot_absent_since: &'a mut BTreeMap<String, Instant>,
}

impl Replication for Hands<'_> {
    fn waits_for_standbys(&self) -> bool {
        self.pg.waits_for_standbys()
    }

    async fn replication(&mut self) -> Result<(Vec<Standby>, Lsn), ActError> {
        self.pg.replication().await
    }

    async fn set_standby_names(&mut self, names: &str) -> Result<bool, ActError> {
        Replication::set_standby_names(self.pg, names).await
    }

    async fn nudge_sync_standbys(&mut self) {
        Replication::nudge_sync_standbys(self.pg).await
    }
}

impl Promotable for Hands<'_> {
    fn arm_fence(&mut self) {
        let _ = self
            .fence
            .send(self.pg.postmaster_pid().map(|pid| fence::Guard {
                pid,
                lease: self.lease,
            }));
    }

    async fn promote(&mut self) -> Result<Option<(TimelineId, Lsn)>, ActError> {
        self.pg.promote().await?;
        let Some(tl) = self.pg.sql().status().await?.timeline else {
            return Ok(None);
        };
        match self.pg.sql().timeline_switch(tl).await {
            Ok(Some(lsn)) => Ok(Some((tl, lsn))),
            Ok(None) => {
                tracing::warn!(timeline = %tl, "no history file for the new timeline");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the new timeline's history");
                Ok(None)
            }
        }
    }
}

impl Leading for Hands<'_> {
    async fn create_config_if_absent(&mut self) -> Result<(), ActError> {
        super::bootstrap::create_config_if_absent(self.dcs, self.loaded).await
    }

    async fn sync_slots(&mut self, view: &ClusterView) -> Result<(), ActError> {
        sync_slots(self.pg, &self.loaded.name, view, self.slot_absent_since).await
    }
}

/// Keeps one physical slot per other member; drops slots of members gone for a while.
pub(super) async fn sync_slots(
    pg: &mut Instance,
    me: &MemberName,
    view: &ClusterView,
    absent_since: &mut BTreeMap<String, Instant>,
) -> Result<(), ActError> {
    let wanted: Vec<String> = view
        .members
        .keys()
        .filter(|m| *m != me)
        .map(MemberName::slot_name)
        .collect();
    let existing = pg.sql().physical_slots().await?;
    for slot in &wanted {
        if !existing.iter().any(|(name, _)| name == slot) {
            pg.sql().create_physical_slot(slot).await?;
            tracing::info!(slot, "created a replication slot");
        }
    }
    let now = Instant::now();
    absent_since.retain(|slot, _| !wanted.contains(slot));
    for (slot, active) in existing {
        if wanted.contains(&slot) || active {
            continue;
        }
        let since = *absent_since.entry(slot.clone()).or_insert(now);
        if now.saturating_duration_since(since) > MEMBER_SLOT_TTL {
            pg.sql().drop_slot(&slot).await?;
            absent_since.remove(&slot);
            tracing::info!(slot, "dropped the slot of a member gone for 30 minutes");
        }
    }
    Ok(())
}
