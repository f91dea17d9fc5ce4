//! Carrying out [`Decision::RecoverFromArchive`](crate::ha::Decision): take the leader key
//! (only one member recovers), restore the archive's latest base backup and every archived
//! WAL file, promote, and record the point recovered in the log and in `history`. A failure
//! hands the key back, empties the data directory and backs off like a failed bootstrap.

use super::{ActError, Governor};
use crate::dcs::Coordination;
use crate::ha::{DcsView, Snapshot};
use spilo_model::{HistoryEntry, MemberState};
use std::collections::BTreeMap;

impl Governor {
    pub(super) async fn restore_from_archive(
        &mut self,
        s: &Snapshot,
        params: &BTreeMap<String, String>,
        why: &str,
    ) -> Result<(), ActError> {
        let lease = s
            .lease
            .id
            .ok_or_else(|| ActError::Other("no lease".into()))?;
        let (Some(archive), DcsView::Known(view)) = (self.loaded.config.archive.clone(), &s.dcs)
        else {
            return Err(ActError::Other("no archive or no view of etcd".into()));
        };
        let sysid = view.initialize.clone().unwrap_or_default();
        if !self.dcs.try_acquire_leader(lease).await? {
            tracing::info!("another member took the leader key first; it recovers the cluster");
            return Ok(());
        }
        self.holds_leader_key(lease);
        tracing::warn!(sysid, "{why}");
        self.announce_state(s, MemberState::Bootstrapping).await;
        match self.pg.recover_from_archive(&archive, &sysid, params).await {
            Ok(point) => {
                self.arm_fence_with(Some(lease));
                self.bootstrap_failure = None;
                self.data = None;
                let status = self.pg.sql().status().await?;
                let reason = format!(
                    "recovered from the archive (every member had lost its data): base backup \
                     {}, replayed to {}, last commit {}",
                    point.backup,
                    point.lsn.as_deref().unwrap_or("?"),
                    point.last_commit.as_deref().unwrap_or("none replayed")
                );
                tracing::info!(
                    backup = point.backup,
                    lsn = ?point.lsn,
                    last_commit = ?point.last_commit,
                    timeline = ?status.timeline,
                    "recovered the cluster from its archive; accepting writes"
                );
                if let Some(tl) = status.timeline
                    && let Ok(Some(switch_lsn)) = self.pg.sql().timeline_switch(tl).await
                {
                    let entry = HistoryEntry {
                        timeline: tl,
                        switch_lsn,
                        reason,
                        promoted_at:
                            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                                .to_string(),
                        member: self.loaded.name.clone(),
                    };
                    if self.dcs.append_history(&entry).await.is_err() {
                        self.pending_history = Some(entry);
                    }
                }
                self.pg.create_replication_role().await?;
                self.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "recovery from the archive failed; handing the leader key back");
                self.creation_failed(lease, e.into()).await
            }
        }
    }
}
