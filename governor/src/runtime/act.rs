//! Carrying out decisions: [`act`] is the I/O behind each [`Decision`], in the order each one
//! needs (a fence disarmed before PostgreSQL stops, the failsafe gate closed before a race, the
//! leader key released only once the stop returned, ...).
//!
//! It is written against the store ([`Coordination`]) and this member's hands ([`Hands`]:
//! PostgreSQL, the fence, the failsafe gate, the peers' REST API), so the governor
//! ([`super::Governor`]) and the seeded simulation's members run the same function. What a
//! step does to PostgreSQL (a copy, a rewind, a start) is each implementation's own; the order
//! of the steps and the store writes of the leader key, `sync`, `failsafe`, `history` and the
//! switchover request are here (the bootstrap, a recovery from the archive and the member key
//! write through the governor's own handle).

use super::ActError;
use super::leading::{self, Leading};
use super::promotion;
use crate::dcs::Coordination;
use crate::ha::{ClusterView, DcsView, Decision, PgState, Snapshot, StartAs};
use crate::postgres::Upstream;
use crate::postgres::process::StopMode;
use crate::shared::SwitchoverOutcome;
use crate::shared::failsafe::Gate;
use spilo_model::{Lsn, MemberName, MemberState, MemberStatus};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

/// A member's hands beyond the leader's pass: what [`act`] does outside the store.
pub trait Hands: Leading {
    /// Applies the cluster's PostgreSQL parameters to the running server.
    fn apply_cluster_params(
        &mut self,
        params: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Bootstraps a new cluster (or a standby cluster's first member).
    fn bootstrap(
        &mut self,
        s: &Snapshot,
        params: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Restores the cluster from its archive after its data was lost.
    fn recover_from_archive(
        &mut self,
        s: &Snapshot,
        params: &BTreeMap<String, String>,
        why: &str,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Whether `leader` (its member key `status`) answers on its REST API.
    fn answers(
        &mut self,
        leader: &MemberName,
        status: &MemberStatus,
    ) -> impl Future<Output = bool> + Send;
    /// Publishes `state`, which a long action is about to enter.
    fn announce(&mut self, s: &Snapshot, state: MemberState) -> impl Future<Output = ()> + Send;
    /// Fills the empty data directory with a copy of `up` (from a backup when configured).
    fn copy_of(&mut self, up: &Upstream) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Copies `up` with `pg_basebackup`.
    fn clone_from(&mut self, up: &Upstream) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Rewinds the stopped data directory against `up`; `pg_rewind`'s last line.
    fn rewind_from(
        &mut self,
        up: &Upstream,
    ) -> impl Future<Output = Result<String, ActError>> + Send;
    /// Empties the data directory.
    fn wipe(&mut self) -> Result<(), ActError>;
    /// Starts PostgreSQL, as the primary or as a replica of `up`.
    fn start(
        &mut self,
        primary: bool,
        up: Option<Upstream>,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError>;
    /// Points the running replica at `up`.
    fn follow(
        &mut self,
        up: Upstream,
        params: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Stops PostgreSQL.
    fn stop(&mut self, mode: StopMode) -> impl Future<Output = ()> + Send;
    /// A CHECKPOINT on the local server.
    fn checkpoint(&mut self) -> impl Future<Output = Result<(), ActError>> + Send;
    /// A CHECKPOINT on `up` (which also proves it answers).
    fn checkpoint_on(&mut self, up: &Upstream)
    -> impl Future<Output = Result<(), ActError>> + Send;
    /// `up`'s database system identifier.
    fn system_identifier_of(
        &mut self,
        up: &Upstream,
    ) -> impl Future<Output = Result<String, ActError>> + Send;
    /// Whether `to` streams from this primary.
    fn streams_to(
        &mut self,
        to: &MemberName,
    ) -> impl Future<Output = Result<bool, ActError>> + Send;
    /// After a clean stop of this primary: the position of its shutdown checkpoint.
    fn shutdown_checkpoint(&mut self) -> impl Future<Output = Result<Lsn, ActError>> + Send;
    /// Waits until `up` received past `lsn` (an error once it has not in its deadline).
    fn wait_received(
        &mut self,
        up: &Upstream,
        lsn: Lsn,
    ) -> impl Future<Output = Result<(), ActError>> + Send;
    /// Disarms the fence: it no longer stops PostgreSQL.
    fn disarm_fence(&mut self);
    /// The failsafe gate: this member's promises not to race.
    fn gate(&self) -> &Gate;
    /// This member just took the leader key with `lease`.
    fn took_leader_key(&mut self, lease: i64);
    /// The cluster is a standby cluster (as `view`'s `config` and the local one say).
    fn is_standby_cluster(&self, view: Option<&ClusterView>) -> bool;
    /// A standby cluster's source, as an upstream.
    fn standby_source(&self, view: Option<&ClusterView>) -> Result<Upstream, ActError>;
    /// Forgets the data directory's last reading (PostgreSQL's data changed).
    fn forget_data(&mut self);
    /// Forgets the crashes counted towards a crash loop (this member no longer leads).
    fn forget_crashes(&mut self);
    /// Records how a switchover request ended, for the API.
    fn switchover_ended(&mut self, outcome: SwitchoverOutcome) -> impl Future<Output = ()> + Send;
    /// Wakes the HA loop for another pass at once.
    fn wake(&self);
    /// After the leader's pass: what else the leader reads (the archiver's status).
    fn after_lead(&mut self) -> impl Future<Output = ()> + Send;
}

/// Carries out decision `d`, taken on snapshot `s`, at `now`.
pub async fn act(
    dcs: &impl Coordination,
    h: &mut impl Hands,
    d: &Decision,
    s: &Snapshot,
    now: Instant,
) -> Result<(), ActError> {
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
        h.apply_cluster_params(&params).await?;
    }
    match d {
        Decision::Bootstrap => h.bootstrap(s, &params).await,
        Decision::RecoverFromArchive { why } => h.recover_from_archive(s, &params, why).await,
        Decision::Clone { leader } => {
            let up = upstream(view, leader)?;
            // The leader's keys outlive it by up to a TTL. pg_basebackup from a gone leader
            // fails by itself; a backup restored for one leaves a replica with nobody to follow
            // (in synchronous mode one that may never be promoted).
            if let Some(m) = view.and_then(|v| v.members.get(leader))
                && !h.answers(leader, m).await
            {
                return Err(ActError::Other(format!(
                    "{leader} holds the leader key but does not answer; not copying it"
                )));
            }
            h.announce(s, MemberState::CreatingReplica).await;
            h.copy_of(&up).await?;
            h.forget_data();
            h.start(false, Some(up), &params)
        }
        Decision::Rewind { leader, .. } => {
            let up = upstream(view, leader)?;
            rewind_against(h, s, up, &params).await
        }
        Decision::Start {
            role: StartAs::Primary,
            ..
        } => {
            h.start(true, None, &params)?;
            h.arm_fence();
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
            h.start(false, up, &params)
        }
        Decision::Follow { leader } => {
            let up = upstream(view, leader)?;
            h.follow(up, &params).await
        }
        Decision::Start {
            role: StartAs::StandbyLeader,
            ..
        } => {
            let source = h.standby_source(view)?;
            h.start(false, Some(source), &params)
        }
        Decision::FollowSource { .. } => lead_standby(h, view, &params).await,
        Decision::RewindFromSource { .. } => {
            let source = h.standby_source(view)?;
            // A source of another system would replace this cluster's data with its own.
            let theirs = h.system_identifier_of(&source).await?;
            if let Some(ours) = view.and_then(|v| v.initialize.as_deref())
                && theirs != ours
            {
                return Err(ActError::Other(format!(
                    "the source {} is database system {theirs}, this cluster {ours}; not \
                     rewinding against it",
                    source.name
                )));
            }
            rewind_against(h, s, source, &params).await
        }
        Decision::AcquireLeader { why } => {
            let lease = s
                .lease
                .id
                .ok_or_else(|| ActError::Other("no lease".into()))?;
            // From here on this member confirms no failsafe primary; refused if it just
            // promised one not to race.
            if let Err((primary, _)) = h.gate().close_for_race(now) {
                tracing::info!(%primary, "not racing: this member just confirmed a failsafe primary");
                return Ok(());
            }
            if dcs.try_acquire_leader(lease).await? {
                tracing::info!("took the leader key");
                h.took_leader_key(lease);
                if h.is_standby_cluster(view) {
                    // A standby cluster's new leader replicates from the source instead.
                    return lead_standby(h, view, &params).await;
                }
                promote(dcs, h, why, view).await
            } else {
                tracing::info!("another member took the leader key first");
                h.gate().open();
                Ok(())
            }
        }
        Decision::ReclaimLeader { .. } => {
            let lease = s
                .lease
                .id
                .ok_or_else(|| ActError::Other("no lease".into()))?;
            if dcs.try_acquire_leader(lease).await? {
                tracing::info!("took the leader key back after failsafe mode kept this primary");
                h.took_leader_key(lease);
                h.arm_fence();
            } else {
                tracing::warn!("another member took the leader key; this primary will demote");
            }
            Ok(())
        }
        Decision::Promote { why } => promote(dcs, h, why, view).await,
        Decision::Lead => {
            leading::lead(dcs, h, view, now).await;
            h.after_lead().await;
            Ok(())
        }
        Decision::Switchover { to, lease } => switchover(dcs, h, s, view, to, *lease).await,
        Decision::ClearSwitchover { why } => {
            if let Some(req) = view.and_then(|v| v.switchover.as_ref()) {
                dcs.clear_switchover(req).await?;
                let result = match &view.and_then(|v| v.leader.as_ref()) {
                    Some(l) if req.candidate.as_ref() == Some(&l.name) => Ok(l.name.clone()),
                    _ => Err(why.clone()),
                };
                h.switchover_ended(SwitchoverOutcome {
                    request: req.clone(),
                    result,
                })
                .await;
            }
            Ok(())
        }
        Decision::StepDown { .. } => {
            // Flush while writes still run, so the shutdown checkpoint is short; a failed
            // CHECKPOINT only makes the stop slower.
            if let Err(e) = h.checkpoint().await {
                tracing::warn!(error = %e, "CHECKPOINT before stepping down failed");
            }
            h.disarm_fence();
            h.stop(StopMode::Fast).await;
            h.forget_data();
            Ok(())
        }
        Decision::Demote { .. } => {
            h.disarm_fence();
            h.stop(StopMode::Immediate).await;
            h.forget_data();
            Ok(())
        }
        Decision::ReleaseLeader { .. } => {
            h.disarm_fence();
            h.stop(StopMode::Fast).await;
            if let Some(id) = s.lease.id {
                dcs.release_leader(id).await?;
            }
            h.forget_crashes();
            h.forget_data();
            Ok(())
        }
        Decision::Wait { .. } | Decision::Fatal { .. } => Ok(()),
    }
}

/// Promotes this member ([`promotion::promote`]) and looks again at once.
async fn promote(
    dcs: &impl Coordination,
    h: &mut impl Hands,
    why: &str,
    view: Option<&ClusterView>,
) -> Result<(), ActError> {
    promotion::promote(dcs, h, why, view).await?;
    h.wake();
    Ok(())
}

/// Rewinds against `up` (a member, or a standby cluster's source) and starts as its replica.
async fn rewind_against(
    h: &mut impl Hands,
    s: &Snapshot,
    up: Upstream,
    params: &BTreeMap<String, String>,
) -> Result<(), ActError> {
    // pg_rewind reads the source's timeline from its control file, which a fresh primary only
    // updates at its first checkpoint after promotion. This also proves the leader is
    // reachable before the local server is stopped (a standby cluster's source: that one of
    // its endpoints accepts writes, so a copy after a failed rewind is of a primary).
    h.checkpoint_on(&up).await?;
    h.disarm_fence();
    h.stop(StopMode::Fast).await;
    h.announce(s, MemberState::Rewinding).await;
    match h.rewind_from(&up).await {
        Ok(summary) => tracing::info!(output = summary, "pg_rewind finished"),
        Err(e) => {
            tracing::warn!(error = %e, upstream = %up.name, "pg_rewind failed; copying the upstream again");
            h.wipe()?;
            h.announce(s, MemberState::CreatingReplica).await;
            h.clone_from(&up).await?;
        }
    }
    h.forget_data();
    h.start(false, Some(up), params)
}

/// As the standby cluster's leader: replicate from the source, and keep a slot for each other
/// member (they replicate from this one).
async fn lead_standby(
    h: &mut impl Hands,
    view: Option<&ClusterView>,
    params: &BTreeMap<String, String>,
) -> Result<(), ActError> {
    let source = h.standby_source(view)?;
    h.follow(source, params).await?;
    if let Some(view) = view
        && let Err(e) = h.sync_slots(view).await
    {
        tracing::warn!(error = %e, "cannot manage replication slots");
    }
    Ok(())
}

/// A switchover on the leader ([`hand_over`]); a failure drops the request, and the outcome is
/// recorded either way.
async fn switchover(
    dcs: &impl Coordination,
    h: &mut impl Hands,
    s: &Snapshot,
    view: Option<&ClusterView>,
    to: &MemberName,
    to_lease: i64,
) -> Result<(), ActError> {
    let request = view.and_then(|v| v.switchover.clone());
    let started = Instant::now();
    let result = hand_over(dcs, h, s, view, to, to_lease).await;
    let outcome = match &result {
        Ok(()) => {
            tracing::info!(
                to = %to,
                took_ms = started.elapsed().as_millis() as u64,
                "switchover: handed the leader key over; this member follows once {to} leads"
            );
            Ok(to.clone())
        }
        Err(e) => {
            tracing::error!(to = %to, error = %e, "switchover failed; staying the leader");
            if let Some(req) = &request
                && let Err(e) = dcs.clear_switchover(req).await
            {
                tracing::warn!(error = %e, "cannot remove the failed switchover request");
            }
            Err(e.to_string())
        }
    };
    if let Some(request) = request {
        h.switchover_ended(SwitchoverOutcome {
            request,
            result: outcome,
        })
        .await;
    }
    h.forget_data();
    h.wake();
    result
}

/// CHECKPOINT while still writable, a fast stop (the walsenders send every record, the
/// shutdown checkpoint included, before PostgreSQL exits), a check with live positions that
/// the candidate received that checkpoint, then the leader key moved to the candidate in one
/// compare-and-swap. A failure before the hand-over leaves this member the leader: the next
/// pass restarts its primary in place.
async fn hand_over(
    dcs: &impl Coordination,
    h: &mut impl Hands,
    s: &Snapshot,
    view: Option<&ClusterView>,
    to: &MemberName,
    to_lease: i64,
) -> Result<(), ActError> {
    let lease = s
        .lease
        .id
        .ok_or_else(|| ActError::Other("no lease".into()))?;
    let up = upstream(view, to)?;
    if !h.streams_to(to).await? {
        return Err(ActError::Other(format!(
            "{to} is not streaming from this primary"
        )));
    }
    // Flush dirty buffers while still accepting writes, so the shutdown checkpoint is short.
    h.checkpoint().await?;
    h.disarm_fence();
    h.stop(StopMode::Fast).await;
    let checkpoint = h.shutdown_checkpoint().await?;
    h.wait_received(&up, checkpoint).await?;
    if !dcs.hand_over_leader(lease, to, to_lease).await? {
        return Err(ActError::Other(format!(
            "the leader key or {to}'s member key changed; not handing over"
        )));
    }
    h.forget_crashes();
    Ok(())
}

fn cluster_params(view: Option<&ClusterView>) -> BTreeMap<String, String> {
    view.and_then(|v| v.config.as_ref())
        .map(|c| c.postgresql_parameters.clone())
        .unwrap_or_default()
}

/// `leader` as an upstream, from its member key in `view`.
pub fn upstream(view: Option<&ClusterView>, leader: &MemberName) -> Result<Upstream, ActError> {
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
