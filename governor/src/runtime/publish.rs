//! Publishing this member: its key in the store (when it changed, or before a long action
//! starts) and the REST API's view of it.

use super::Governor;
use crate::dcs::Coordination;
use crate::ha::{DcsView, Decision, PgState, Snapshot};
use spilo_model::{MemberState, NodeStatus};

impl Governor {
    /// Publishes a state that a long action is about to enter, before it starts.
    pub(super) async fn announce_state(&mut self, s: &Snapshot, state: MemberState) {
        let status = self.member_status(s, Some(state));
        // Copy the id out: a watch guard held across an await blocks the lease task.
        let lease = self.lease.borrow().id;
        if let Some(id) = lease
            && let Err(e) = self.dcs.put_member(&status, id).await
        {
            tracing::warn!(error = %e, "cannot publish the member key");
        }
        self.shared.node.write().await.member = status;
    }

    /// Publishes the member key when it changed, and the REST API's view of this member.
    pub(super) async fn publish(&mut self, s: &Snapshot, d: &Decision) {
        let status = self.member_status(s, None);
        let lease = self.lease.borrow().id;
        let dcs_known = matches!(s.dcs, DcsView::Known(_));
        // When this pass could not read etcd, a write would only wait out its timeout too.
        if let Some(id) = lease.filter(|_| dcs_known) {
            let fresh = (status.clone(), id);
            if self.published.as_ref() != Some(&fresh) {
                match self.dcs.put_member(&status, id).await {
                    Ok(()) => self.published = Some(fresh),
                    Err(e) => tracing::warn!(error = %e, "cannot publish the member key"),
                }
            }
        }
        let (leader, dcs_reachable) = match &s.dcs {
            DcsView::Known(v) => (v.leader.as_ref().map(|l| l.name.clone()), true),
            DcsView::Unreachable { .. } => {
                (self.leader_seen.as_ref().map(|l| l.name.clone()), false)
            }
        };
        let streaming = matches!(&s.local.postgres, PgState::Running(pg) if pg.streaming);
        let node = NodeStatus {
            name: self.loaded.name.clone(),
            scope: self.loaded.config.scope.clone(),
            member: status,
            leader,
            is_leader: self.is_leading(),
            streaming,
            upstream: self.pg.upstream().map(|u| u.name.clone()),
            dcs_reachable,
            governor_pid: std::process::id(),
            postmaster_pid: self.pg.postmaster_pid(),
            last_decision: d.to_string(),
            catalog_error: self.shared.catalog_error.read().await.clone(),
            archive: match self.archive_status.clone() {
                Some(mut a) if matches!(d, Decision::Lead) => {
                    if self
                        .loaded
                        .config
                        .archive
                        .as_ref()
                        .is_some_and(|a| a.backups.is_some())
                    {
                        a.backups = Some(self.shared.backups.read().await.clone());
                    }
                    Some(a)
                }
                _ => None,
            },
        };
        *self.shared.node.write().await = node;
    }
}
