//! The governor's hands: [`Governor`] implements the traits the shared action steps are
//! written against ([`Replication`], [`Promotable`], [`Leading`], [`Hands`]) with its
//! PostgreSQL ([`crate::postgres::Instance`]), fence, failsafe gate and the peers' REST API.
//! The seeded simulation implements the same traits on its models.

use super::act::Hands;
use super::failsafe::Peer;
use super::leading::Leading;
use super::promotion::Promotable;
use super::sync::Replication;
use super::{ActError, Governor, fence};
use crate::ha::sync::{Moment, Pending, Standby};
use crate::ha::{ClusterView, Snapshot};
use crate::postgres::Upstream;
use crate::postgres::process::StopMode;
use crate::shared::SwitchoverOutcome;
use crate::shared::failsafe::Gate;
use spilo_model::{HistoryEntry, Lsn, MemberName, MemberState, MemberStatus, TimelineId};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Slots of members that have been gone this long are dropped, so they stop holding WAL.
const MEMBER_SLOT_TTL: Duration = Duration::from_secs(30 * 60);

/// How long a switchover's candidate may take to confirm it received the shutdown checkpoint.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(10);

impl Governor {
    /// Arms the fence with the running postmaster and the lease the leader key is bound to:
    /// from now on, PostgreSQL is stopped at once when that lease is about to end (another
    /// lease of this member does not count) and no failsafe confirmation stands in for it.
    pub(super) fn arm_fence_on_key(&self) {
        let me = &self.loaded.name;
        let lease = self
            .leader_seen
            .as_ref()
            .filter(|l| l.name == *me)
            .map(|l| l.lease);
        self.arm_fence_with(lease);
    }

    /// [`Self::arm_fence_on_key`] with the lease to count, for the bootstrap (which runs its primary
    /// on the lease that claimed `initialize`, before it takes the leader key).
    pub(super) fn arm_fence_with(&self, lease: Option<i64>) {
        let _ = self.fence.send(
            self.pg
                .postmaster_pid()
                .map(|pid| fence::Guard { pid, lease }),
        );
    }

    /// Records that this member just took the leader key with `lease`.
    pub(super) fn holds_leader_key(&mut self, lease: i64) {
        self.leader_seen = Some(crate::ha::LeaderKey {
            name: self.loaded.name.clone(),
            lease,
        });
    }
}

impl Replication for Governor {
    fn name(&self) -> &MemberName {
        &self.loaded.name
    }

    fn sync_pending(&mut self) -> &mut Pending {
        &mut self.sync_pending
    }

    fn waits_for_standbys(&self) -> bool {
        !self.pg.standby_names().is_empty()
    }

    async fn replication(&mut self) -> Result<(Vec<Standby>, Moment), ActError> {
        let (standbys, flush) = self.pg.sql().replication().await?;
        Ok((
            standbys,
            Moment {
                flush,
                at: Instant::now(),
            },
        ))
    }

    async fn set_standby_names(&mut self, names: &str) -> Result<bool, ActError> {
        Ok(self.pg.set_standby_names(names).await?)
    }

    async fn nudge_sync_standbys(&mut self) {
        self.pg.nudge_sync_standbys().await
    }
}

impl Promotable for Governor {
    fn arm_fence(&mut self) {
        self.arm_fence_on_key()
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

    fn pending_history(&mut self) -> &mut Option<HistoryEntry> {
        &mut self.pending_history
    }
}

impl Leading for Governor {
    fn api_url(&self) -> String {
        self.loaded.config.api_url()
    }

    fn lease(&self) -> Option<i64> {
        self.lease.borrow().id
    }

    fn ttl(&self) -> Duration {
        self.loaded.config.ha.ttl()
    }

    fn failsafe_absent(&mut self) -> &mut BTreeMap<MemberName, Instant> {
        &mut self.failsafe_absent_since
    }

    fn ask_failsafe(&mut self, peers: Option<Vec<Peer>>) {
        self.failsafe_peers.send_if_modified(|p| {
            let changed = *p != peers;
            *p = peers;
            changed
        });
    }

    async fn create_config_if_absent(&mut self) -> Result<(), ActError> {
        super::bootstrap::create_config_if_absent(&self.dcs, &self.loaded).await
    }

    async fn sync_slots(&mut self, view: &ClusterView) -> Result<(), ActError> {
        let me = &self.loaded.name;
        let wanted: Vec<String> = view
            .members
            .keys()
            .filter(|m| *m != me)
            .map(MemberName::slot_name)
            .collect();
        let existing = self.pg.sql().physical_slots().await?;
        for slot in &wanted {
            if !existing.iter().any(|(name, _)| name == slot) {
                self.pg.sql().create_physical_slot(slot).await?;
                tracing::info!(slot, "created a replication slot");
            }
        }
        let now = Instant::now();
        self.slot_absent_since
            .retain(|slot, _| !wanted.contains(slot));
        for (slot, active) in existing {
            if wanted.contains(&slot) || active {
                continue;
            }
            let since = *self.slot_absent_since.entry(slot.clone()).or_insert(now);
            if now.saturating_duration_since(since) > MEMBER_SLOT_TTL {
                self.pg.sql().drop_slot(&slot).await?;
                self.slot_absent_since.remove(&slot);
                tracing::info!(slot, "dropped the slot of a member gone for 30 minutes");
            }
        }
        Ok(())
    }
}

impl Hands for Governor {
    async fn apply_cluster_params(
        &mut self,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        self.pg.apply_cluster_params(params).await?;
        Ok(())
    }

    async fn bootstrap(
        &mut self,
        s: &Snapshot,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        self.bootstrap_cluster(s, params).await
    }

    async fn recover_from_archive(
        &mut self,
        s: &Snapshot,
        params: &BTreeMap<String, String>,
        why: &str,
    ) -> Result<(), ActError> {
        self.restore_from_archive(s, params, why).await
    }

    async fn answers(&mut self, leader: &MemberName, status: &MemberStatus) -> bool {
        let one = BTreeMap::from([(leader.clone(), status.clone())]);
        let answers =
            super::peers::fetch(&self.http, &self.loaded.name, &one, self.dcs.timeout()).await;
        answers.iter().any(|p| p.status.is_some())
    }

    async fn announce(&mut self, s: &Snapshot, state: MemberState) {
        self.announce_state(s, state).await
    }

    async fn copy_of(&mut self, up: &Upstream) -> Result<(), ActError> {
        let from_backup = match &self.loaded.config.archive {
            Some(a) if a.replicas_from_backup => self.pg.replica_from_backup(a).await?,
            _ => None,
        };
        if from_backup.is_none() {
            self.pg.clone_from(up).await?;
        }
        Ok(())
    }

    async fn clone_from(&mut self, up: &Upstream) -> Result<(), ActError> {
        Ok(self.pg.clone_from(up).await?)
    }

    async fn rewind_from(&mut self, up: &Upstream) -> Result<String, ActError> {
        let out = self.pg.rewind_from(up).await?;
        Ok(out.lines().last().unwrap_or("").to_string())
    }

    fn wipe(&mut self) -> Result<(), ActError> {
        self.pg.wipe_data()?;
        self.pg.clear_unfinished_marker()?;
        Ok(())
    }

    fn start(
        &mut self,
        primary: bool,
        up: Option<Upstream>,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        Ok(self.pg.start(primary, up, params)?)
    }

    async fn follow(
        &mut self,
        up: Upstream,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        Ok(self.pg.follow(up, params).await?)
    }

    async fn stop(&mut self, mode: StopMode) {
        self.pg.stop(mode).await
    }

    async fn checkpoint(&mut self) -> Result<(), ActError> {
        Ok(self.pg.sql().checkpoint().await?)
    }

    async fn checkpoint_on(&mut self, up: &Upstream) -> Result<(), ActError> {
        Ok(self.pg.remote_session(up).checkpoint().await?)
    }

    async fn system_identifier_of(&mut self, up: &Upstream) -> Result<String, ActError> {
        Ok(self.pg.remote_session(up).system_identifier().await?)
    }

    async fn streams_to(&mut self, to: &MemberName) -> Result<bool, ActError> {
        Ok(self.pg.sql().streams_to(to.as_str()).await?)
    }

    async fn shutdown_checkpoint(&mut self) -> Result<Lsn, ActError> {
        self.pg
            .controldata()
            .await?
            .clean_primary_checkpoint()
            .ok_or_else(|| ActError::Other("PostgreSQL did not shut down cleanly".into()))
    }

    async fn wait_received(&mut self, up: &Upstream, lsn: Lsn) -> Result<(), ActError> {
        let mut remote = self.pg.remote_session(up);
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        loop {
            match remote.received_lsn().await {
                Ok(Some(got)) if got > lsn => return Ok(()),
                Ok(got) if Instant::now() > deadline => {
                    return Err(ActError::Other(format!(
                        "{} did not receive the shutdown checkpoint at {lsn} within {}s (it has {})",
                        up.name,
                        CATCH_UP_DEADLINE.as_secs(),
                        got.map_or("nothing".to_string(), |l| l.to_string())
                    )));
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn disarm_fence(&mut self) {
        let _ = self.fence.send(None);
    }

    fn gate(&self) -> &Gate {
        &self.shared.failsafe
    }

    fn took_leader_key(&mut self, lease: i64) {
        self.holds_leader_key(lease);
    }

    fn is_standby_cluster(&self, view: Option<&ClusterView>) -> bool {
        self.ha.merged_opt(view).standby.is_some()
    }

    fn standby_source(&self, view: Option<&ClusterView>) -> Result<Upstream, ActError> {
        let cfg = self.ha.merged_opt(view);
        let source = cfg
            .standby
            .as_ref()
            .ok_or_else(|| ActError::Other("not a standby cluster".into()))?;
        Upstream::source(source).map_err(ActError::Other)
    }

    fn forget_data(&mut self) {
        self.data = None;
    }

    fn forget_crashes(&mut self) {
        self.crashes.clear();
        self.primary_down_since = None;
    }

    async fn switchover_ended(&mut self, outcome: SwitchoverOutcome) {
        *self.shared.switchover_outcome.write().await = Some(outcome);
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    async fn after_lead(&mut self) {
        if self.loaded.config.archive.is_some() {
            self.archive_status = match self.pg.sql().archive_status().await {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the archiver's status");
                    None
                }
            };
        }
    }
}
