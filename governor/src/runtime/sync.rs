//! Synchronous replication on the primary: each pass of `lead` reads `pg_stat_replication`,
//! asks [`crate::ha::sync::step`] what to do, writes the `sync` key first and then
//! `synchronous_standby_names` (`FIRST k` or, in quorum mode, `ANY k`); what the step must
//! remember is kept only once the setting is in force. A member about to be promoted in synchronous mode empties the
//! key (naming itself) before it accepts writes, so a stale list can never promote a member
//! that missed this primary's commits.

use super::{ActError, Governor};
use crate::dcs::Coordination;
use crate::ha::ClusterView;
use crate::ha::sync::{self, SyncMode};
use spilo_model::SyncState;

impl Governor {
    /// Brings the synchronous standbys in line with the cluster's `config`.
    pub(super) async fn manage_sync(&mut self, view: &ClusterView) -> Result<(), ActError> {
        let mode = SyncMode::from_config(view.config.as_ref());
        if mode.is_none() && view.sync.is_none() && self.pg.standby_names().is_empty() {
            return Ok(());
        }
        let (standbys, flush_now) = self.pg.sql().replication().await?;
        let eligible = |m: &spilo_model::MemberName| sync::eligible(view.members.get(m));
        let me = self.loaded.name.clone();
        let step = sync::step(
            &me,
            mode,
            view.sync.as_ref(),
            &standbys,
            &eligible,
            &self.sync_pending,
            sync::Moment {
                flush: flush_now,
                at: std::time::Instant::now(),
            },
        );
        if let Some(key) = &step.key {
            if !self
                .dcs
                .write_sync(key.as_ref(), view.sync_revision)
                .await?
            {
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
        let changed = match self.pg.set_standby_names(&step.standby_names).await {
            Ok(changed) => changed,
            Err(e) => {
                // A quorum change must not count a pass on a setting that is not in force.
                self.sync_pending = Default::default();
                return Err(e.into());
            }
        };
        self.sync_pending = step.pending;
        if changed && names_standbys {
            self.pg.nudge_sync_standbys().await;
        }
        Ok(())
    }

    /// Before a promotion in synchronous mode: the `sync` key names this member with nobody
    /// synchronous yet, and in strict mode writes wait for a standby from the first commit.
    pub(super) async fn prepare_sync_promotion(
        &mut self,
        view: Option<&ClusterView>,
    ) -> Result<(), ActError> {
        let Some(view) = view else { return Ok(()) };
        let Some(mode) = SyncMode::from_config(view.config.as_ref()) else {
            return Ok(());
        };
        // Quorum mode: voters none, quorum 0 (promises nothing until confirmed).
        let fresh = SyncState {
            leader: Some(self.loaded.name.clone()),
            members: Vec::new(),
            quorum: mode.quorum.then_some(0),
        };
        if !self
            .dcs
            .write_sync(Some(&fresh), view.sync_revision)
            .await?
        {
            return Err(ActError::Other(
                "the sync key changed; not promoting on a stale view".into(),
            ));
        }
        self.sync_pending = Default::default();
        if mode.strict {
            self.pg
                .set_standby_names(&sync::standby_names(&[], true))
                .await?;
        }
        Ok(())
    }
}
