//! Carrying out decisions: the I/O behind each [`Decision`], and publishing the member key.

use super::{ActError, Governor};
use crate::dcs::Coordination;
use crate::ha::{ClusterView, DcsView, Decision, PgState, Snapshot, StartAs};
use crate::postgres::Upstream;
use crate::postgres::process::StopMode;
use spilo_model::{MemberName, MemberState, NodeStatus};
use std::collections::BTreeMap;
use std::time::Instant;

impl Governor {
    pub(super) async fn act(&mut self, d: &Decision, s: &Snapshot) -> Result<(), ActError> {
        let view = match &s.dcs {
            DcsView::Known(v) => Some(v),
            DcsView::Unreachable { .. } => None,
        };
        let params = cluster_params(view);
        if matches!(
            d,
            Decision::Lead
                | Decision::Wait { .. }
                | Decision::Follow { .. }
                | Decision::FollowSource { .. }
        ) && matches!(s.local.postgres, PgState::Running(_))
            && view.is_some_and(|v| v.config.is_some())
        {
            self.pg.apply_cluster_params(&params).await?;
        }
        match d {
            Decision::Bootstrap => self.bootstrap(s, &params).await,
            Decision::RecoverFromArchive { why } => {
                self.recover_from_archive(s, &params, why).await
            }
            Decision::Clone { leader } => {
                let up = upstream(view, leader)?;
                // The leader's keys outlive it by up to a TTL. pg_basebackup from a gone
                // leader fails by itself; a backup restored for one leaves a replica with
                // nobody to follow (in synchronous mode one that may never be promoted).
                if let Some(m) = view.and_then(|v| v.members.get(leader)) {
                    let one = std::collections::BTreeMap::from([(leader.clone(), m.clone())]);
                    let answers = super::peers::fetch(
                        &self.http,
                        &self.loaded.name,
                        &one,
                        self.dcs.timeout(),
                    )
                    .await;
                    if answers.iter().all(|p| p.status.is_none()) {
                        return Err(ActError::Other(format!(
                            "{leader} holds the leader key but does not answer; not copying it"
                        )));
                    }
                }
                self.announce(s, MemberState::CreatingReplica).await;
                let from_backup = match &self.loaded.config.archive {
                    Some(a) if a.replicas_from_backup => self.pg.replica_from_backup(a).await?,
                    _ => None,
                };
                if from_backup.is_none() {
                    self.pg.clone_from(&up).await?;
                }
                self.data = None;
                self.pg.start(false, Some(up), &params)?;
                Ok(())
            }
            Decision::Rewind { leader, .. } => self.rewind(s, view, leader, &params).await,
            Decision::Start {
                role: StartAs::Primary,
                ..
            } => {
                self.pg.start(true, None, &params)?;
                self.arm_fence();
                Ok(())
            }
            Decision::Start {
                role: StartAs::Replica { upstream: up },
                ..
            } => {
                let up = match up {
                    Some(leader) => Some(upstream(view, leader)?),
                    None => None,
                };
                self.pg.start(false, up, &params)?;
                Ok(())
            }
            Decision::Follow { leader } => {
                let up = upstream(view, leader)?;
                Ok(self.pg.follow(up, &params).await?)
            }
            Decision::Start {
                role: StartAs::StandbyLeader,
                ..
            } => {
                let source = self.standby_source(view)?;
                self.pg.start(false, Some(source), &params)?;
                Ok(())
            }
            Decision::FollowSource { .. } => self.lead_standby(view, &params).await,
            Decision::RewindFromSource { .. } => {
                let source = self.standby_source(view)?;
                // A source of another system would replace this cluster's data with its own.
                let mut remote = self.pg.remote_session(&source);
                let theirs = remote.system_identifier().await?;
                if let Some(ours) = view.and_then(|v| v.initialize.as_deref())
                    && theirs != ours
                {
                    return Err(ActError::Other(format!(
                        "the source {} is database system {theirs}, this cluster {ours}; not \
                         rewinding against it",
                        source.name
                    )));
                }
                self.rewind_against(s, source, &params).await
            }
            Decision::AcquireLeader { why } => {
                let lease = s
                    .lease
                    .id
                    .ok_or_else(|| ActError::Other("no lease".into()))?;
                // From here on this member confirms no failsafe primary; refused if it just
                // promised one not to race.
                if let Err((primary, _)) = self.shared.failsafe.close_for_race(Instant::now()) {
                    tracing::info!(%primary, "not racing: this member just confirmed a failsafe primary");
                    return Ok(());
                }
                if self.dcs.try_acquire_leader(lease).await? {
                    tracing::info!("took the leader key");
                    self.holds_leader_key(lease);
                    if self.ha.merged_opt(view).standby.is_some() {
                        // A standby cluster's new leader replicates from the source instead.
                        return self.lead_standby(view, &params).await;
                    }
                    self.promote(why, view).await
                } else {
                    tracing::info!("another member took the leader key first");
                    self.shared.failsafe.open();
                    Ok(())
                }
            }
            Decision::ReclaimLeader { .. } => {
                let lease = s
                    .lease
                    .id
                    .ok_or_else(|| ActError::Other("no lease".into()))?;
                if self.dcs.try_acquire_leader(lease).await? {
                    tracing::info!(
                        "took the leader key back after failsafe mode kept this primary"
                    );
                    self.holds_leader_key(lease);
                    self.arm_fence();
                } else {
                    tracing::warn!("another member took the leader key; this primary will demote");
                }
                Ok(())
            }
            Decision::Promote { why } => self.promote(why, view).await,
            Decision::Lead => self.lead(view).await,
            Decision::Switchover { to, lease } => self.switchover(s, view, to, *lease).await,
            Decision::ClearSwitchover { why } => {
                if let Some(req) = view.and_then(|v| v.switchover.as_ref()) {
                    self.dcs.clear_switchover(req).await?;
                    let result = match &view.and_then(|v| v.leader.as_ref()) {
                        Some(l) if req.candidate.as_ref() == Some(&l.name) => Ok(l.name.clone()),
                        _ => Err(why.clone()),
                    };
                    *self.shared.switchover_outcome.write().await =
                        Some(crate::shared::SwitchoverOutcome {
                            request: req.clone(),
                            result,
                        });
                }
                Ok(())
            }
            Decision::StepDown { .. } => {
                // Flush while writes still run, so the shutdown checkpoint is short; a failed
                // CHECKPOINT only makes the stop slower.
                if let Err(e) = self.pg.sql().checkpoint().await {
                    tracing::warn!(error = %e, "CHECKPOINT before stepping down failed");
                }
                let _ = self.fence.send(None);
                self.pg.stop(StopMode::Fast).await;
                self.data = None;
                Ok(())
            }
            Decision::Demote { .. } => {
                let _ = self.fence.send(None);
                self.pg.stop(StopMode::Immediate).await;
                self.data = None;
                Ok(())
            }
            Decision::ReleaseLeader { .. } => {
                let _ = self.fence.send(None);
                self.pg.stop(StopMode::Fast).await;
                if let Some(id) = s.lease.id {
                    self.dcs.release_leader(id).await?;
                }
                self.crashes.clear();
                self.primary_down_since = None;
                self.data = None;
                Ok(())
            }
            Decision::Wait { .. } | Decision::Fatal { .. } => Ok(()),
        }
    }

    /// Arms the fence with the running postmaster and the lease the leader key is bound to:
    /// from now on, PostgreSQL is stopped at once when that lease is about to end (another
    /// lease of this member does not count) and no failsafe confirmation stands in for it.
    pub(super) fn arm_fence(&self) {
        self.arm_fence_with(fence_lease(&self.leader_seen, &self.loaded.name));
    }

    /// [`Self::arm_fence`] with the lease to count, for the bootstrap (which runs its primary
    /// on the lease that claimed `initialize`, before it takes the leader key).
    pub(super) fn arm_fence_with(&self, lease: Option<i64>) {
        let _ = self.fence.send(
            self.pg
                .postmaster_pid()
                .map(|pid| super::fence::Guard { pid, lease }),
        );
    }

    /// Records that this member just took the leader key with `lease`.
    pub(super) fn holds_leader_key(&mut self, lease: i64) {
        self.leader_seen = Some(crate::ha::LeaderKey {
            name: self.loaded.name.clone(),
            lease,
        });
    }

    async fn rewind(
        &mut self,
        s: &Snapshot,
        view: Option<&ClusterView>,
        leader: &MemberName,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        let up = upstream(view, leader)?;
        self.rewind_against(s, up, params).await
    }

    /// Rewinds against `up` (a member, or a standby cluster's source) and starts as its replica.
    async fn rewind_against(
        &mut self,
        s: &Snapshot,
        up: Upstream,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        // pg_rewind reads the source's timeline from its control file, which a fresh primary
        // only updates at its first checkpoint after promotion. This also proves the leader is
        // reachable before the local server is stopped (a standby cluster's source: that one
        // of its endpoints accepts writes, so a copy after a failed rewind is of a primary).
        let mut remote = self.pg.remote_session(&up);
        remote.checkpoint().await?;
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Fast).await;
        self.announce(s, MemberState::Rewinding).await;
        match self.pg.rewind_from(&up).await {
            Ok(out) => {
                let summary = out.lines().last().unwrap_or("").to_string();
                tracing::info!(output = summary, "pg_rewind finished");
            }
            Err(e) => {
                tracing::warn!(error = %e, upstream = %up.name, "pg_rewind failed; copying the upstream again");
                self.pg.wipe_data()?;
                self.pg.clear_unfinished_marker()?;
                self.announce(s, MemberState::CreatingReplica).await;
                self.pg.clone_from(&up).await?;
            }
        }
        self.data = None;
        self.pg.start(false, Some(up), params)?;
        Ok(())
    }

    /// Promotes this member ([`super::promotion::promote`]).
    async fn promote(&mut self, why: &str, view: Option<&ClusterView>) -> Result<(), ActError> {
        super::promotion::promote(
            &self.loaded.name,
            &self.dcs,
            &mut super::hands::Hands {
                pg: &mut self.pg,
                fence: &self.fence,
                lease: fence_lease(&self.leader_seen, &self.loaded.name),
                dcs: &self.dcs,
                loaded: &self.loaded,
                slot_absent_since: &mut self.slot_absent_since,
            },
            &mut self.sync_pending,
            &mut self.pending_history,
            why,
            view,
            std::time::SystemTime::now(),
        )
        .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The leader's pass ([`super::leading::lead`]), then the archiver's status for the API.
    async fn lead(&mut self, view: Option<&ClusterView>) -> Result<(), ActError> {
        let lease = self.lease.borrow().id;
        let api_url = self.loaded.config.api_url();
        let peers = &self.failsafe_peers;
        super::leading::lead(
            super::leading::Leader {
                name: &self.loaded.name,
                api_url: &api_url,
                lease,
                ttl: self.loaded.config.ha.ttl(),
            },
            &self.dcs,
            &mut super::hands::Hands {
                pg: &mut self.pg,
                fence: &self.fence,
                lease: fence_lease(&self.leader_seen, &self.loaded.name),
                dcs: &self.dcs,
                loaded: &self.loaded,
                slot_absent_since: &mut self.slot_absent_since,
            },
            super::leading::Memory {
                sync_pending: &mut self.sync_pending,
                pending_history: &mut self.pending_history,
                failsafe_absent: &mut self.failsafe_absent_since,
            },
            view,
            Instant::now(),
            |asked| {
                peers.send_if_modified(|p| {
                    let changed = *p != asked;
                    *p = asked;
                    changed
                });
            },
        )
        .await;
        if self.loaded.config.archive.is_some() {
            self.archive_status = match self.pg.sql().archive_status().await {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the archiver's status");
                    None
                }
            };
        }
        Ok(())
    }

    /// The standby cluster's source, as an upstream.
    fn standby_source(&self, view: Option<&ClusterView>) -> Result<Upstream, ActError> {
        let cfg = self.ha.merged_opt(view);
        let source = cfg
            .standby
            .as_ref()
            .ok_or_else(|| ActError::Other("not a standby cluster".into()))?;
        Upstream::source(source).map_err(ActError::Other)
    }

    /// As the standby cluster's leader: replicate from the source, and keep a slot for each
    /// other member (they replicate from this one).
    async fn lead_standby(
        &mut self,
        view: Option<&ClusterView>,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        let source = self.standby_source(view)?;
        self.pg.follow(source, params).await?;
        if let Some(view) = view
            && let Err(e) = self.sync_slots(view).await
        {
            tracing::warn!(error = %e, "cannot manage replication slots");
        }
        Ok(())
    }

    /// Keeps one physical slot per other member ([`super::hands::sync_slots`]).
    async fn sync_slots(&mut self, view: &ClusterView) -> Result<(), ActError> {
        super::hands::sync_slots(
            &mut self.pg,
            &self.loaded.name,
            view,
            &mut self.slot_absent_since,
        )
        .await
    }

    /// Publishes a state that a long action is about to enter, before it starts.
    pub(super) async fn announce(&mut self, s: &Snapshot, state: MemberState) {
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

/// The lease the fence counts: the one `me`'s leader key is bound to, as last seen.
fn fence_lease(leader_seen: &Option<crate::ha::LeaderKey>, me: &MemberName) -> Option<i64> {
    leader_seen
        .as_ref()
        .filter(|l| l.name == *me)
        .map(|l| l.lease)
}

fn cluster_params(view: Option<&ClusterView>) -> BTreeMap<String, String> {
    view.and_then(|v| v.config.as_ref())
        .map(|c| c.postgresql_parameters.clone())
        .unwrap_or_default()
}

pub(super) fn upstream(
    view: Option<&ClusterView>,
    leader: &MemberName,
) -> Result<Upstream, ActError> {
    let status = view
        .and_then(|v| v.members.get(leader))
        .ok_or_else(|| ActError::Other(format!("{leader} has no member key")))?;
    let (host, port) = status.host_port().ok_or_else(|| {
        ActError::Other(format!(
            "{leader} publishes no usable conn_url: {}",
            status.conn_url
        ))
    })?;
    Ok(Upstream::member(leader.clone(), host, port))
}
