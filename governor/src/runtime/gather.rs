//! Gathering a snapshot: the local PostgreSQL, the data directory, etcd, the lease and, while
//! there is no leader, the other members' own answers. All the I/O before a decision.

use super::{CRASH_WINDOW, Governor};
use crate::config::GovernorConfig;
use crate::dcs::Coordination;
use crate::dcs::{DcsError, Store};
use crate::ha::{DataDir, DcsView, LocalState, PgState, Snapshot};
use crate::postgres::Exit;
use spilo_model::{MemberName, MemberRole, MemberState, MemberStatus, NodeStatus, WalPositions};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Governor {
    pub(super) async fn gather(&mut self) -> Snapshot {
        let cfg = &self.loaded.config;
        let (postgres, exit) = self.pg.observe().await;
        let now = Instant::now();
        let fenced = self.fence_fired.swap(false, Ordering::SeqCst);
        if exit != Exit::None {
            let _ = self.fence.send(None);
        }
        if exit == Exit::Crashed && !fenced {
            self.crashes.push_back(now);
            if self.is_leading() {
                self.primary_down_since.get_or_insert(now);
            }
        }
        while self
            .crashes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > CRASH_WINDOW)
        {
            self.crashes.pop_front();
        }
        match &postgres {
            PgState::Running(pg) if !pg.in_recovery => self.primary_down_since = None,
            PgState::Running(_) => {
                // A replica is never fenced: it cannot accept writes.
                let _ = self.fence.send(None);
            }
            _ => {}
        }
        if matches!(postgres, PgState::Stopped) || self.data.is_none() {
            self.data = match self.pg.data_state().await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the data directory");
                    None
                }
            };
        }
        let data = self.data.clone().unwrap_or(DataDir::Empty);

        let mut dcs = match self.dcs.read_view().await {
            Ok(view) => DcsView::Known(view),
            Err(e) => DcsView::Unreachable { why: e.to_string() },
        };
        if let DcsView::Known(view) = &mut dcs {
            // Both ways of asking at once: each is bounded by a second.
            let (by_api, by_postgres) = tokio::join!(
                super::downstream::promoted_over_us(
                    &self.http,
                    view.config.as_ref(),
                    self.dcs.timeout(),
                ),
                super::downstream::primary_answers(&self.pg, view.config.as_ref()),
            );
            view.fenced_by = by_api.or(by_postgres);
        }
        if let DcsView::Known(view) = &dcs {
            if view
                .leader
                .as_ref()
                .is_none_or(|l| l.name != self.loaded.name)
            {
                self.primary_down_since = None;
            }
            self.leader_seen = view.leader.clone();
            if view.leader.is_some() || view.members.values().any(|m| m.timeline.is_some()) {
                self.data_seen_at = now;
                // Once the cluster exists and someone leads or has data, this member's failed
                // attempt to create it (initdb, a clone) or to recover it is history.
                if view.initialize.as_ref().is_some_and(|i| !i.is_empty()) {
                    self.bootstrap_failure = None;
                }
            }
            *self.shared.view.write().await = Some(view.clone());
            // This member neither holds the leader key nor runs a primary: it may confirm
            // failsafe primaries again (after losing a race, a race whose outcome was unknown,
            // or a demotion). A member that did take the key sees it here and stays closed.
            let primary = matches!(&postgres, PgState::Running(pg) if !pg.in_recovery);
            if view
                .leader
                .as_ref()
                .is_none_or(|l| l.name != self.loaded.name)
                && !primary
            {
                self.shared.failsafe.open();
            }
        }
        let lease = *self.lease.borrow();

        let peers = match (&dcs, &postgres) {
            (DcsView::Known(view), PgState::Running(pg))
                if view.leader.is_none() && pg.in_recovery =>
            {
                super::peers::fetch(
                    &self.http,
                    &self.loaded.name,
                    &view.members,
                    self.dcs.timeout(),
                )
                .await
            }
            _ => Vec::new(),
        };
        let failsafe = self.failsafe_view(now, &dcs);

        Snapshot {
            me: self.loaded.name.clone(),
            tags: cfg.tags.clone(),
            dcs,
            lease,
            local: LocalState {
                data,
                postgres,
                recent_crashes: u32::try_from(self.crashes.len()).unwrap_or(u32::MAX),
                primary_down_since: self.primary_down_since,
                bootstrap_blocked: self.bootstrap_failure.as_ref().and_then(|f| f.blocks(now)),
                data_seen_at: self.data_seen_at,
            },
            peers,
            failsafe,
            unix_now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Failsafe mode's state: the confirmation this primary holds, and the promise this member
    /// gave (at least a TTL from the governor's start: a restarted governor has forgotten
    /// what it promised before).
    fn failsafe_view(&self, now: Instant, dcs: &DcsView) -> crate::ha::FailsafeView {
        // The TTL the previous run may have promised with: its own, or the cluster's.
        let cluster_ttl = match dcs {
            DcsView::Known(v) => v.config.as_ref().and_then(|c| c.ttl).unwrap_or(0),
            DcsView::Unreachable { .. } => 0,
        };
        let ttl = self
            .loaded
            .config
            .ha
            .ttl()
            .max(std::time::Duration::from_secs(cluster_ttl.min(3600)));
        let startup = self.started + ttl;
        let promised = self.shared.failsafe.promised(now);
        let (quiet_until, quiet_for) = match promised {
            Some((who, until)) if until >= startup => (Some(until), Some(who)),
            _ => (Some(startup), None),
        };
        crate::ha::FailsafeView {
            confirmed_until: *self.failsafe_until.borrow(),
            quiet_until,
            quiet_for,
        }
    }

    /// Whether the last etcd read showed this member holding the leader key with its lease.
    pub(super) fn is_leading(&self) -> bool {
        let lease = self.lease.borrow().id;
        self.leader_seen
            .as_ref()
            .is_some_and(|l| l.name == self.loaded.name && Some(l.lease) == lease)
    }

    /// This member's status as published in etcd, from the snapshot the loop acted on.
    pub(super) fn member_status(
        &self,
        s: &Snapshot,
        state_override: Option<MemberState>,
    ) -> MemberStatus {
        let cfg = &self.loaded.config;
        let pending_restart = match &s.local.postgres {
            PgState::Running(pg) => pg.pending_restart,
            _ => false,
        };
        let (role, state, timeline, wal) = match &s.local.postgres {
            PgState::Running(pg) => (
                if pg.in_recovery {
                    MemberRole::Replica
                } else {
                    MemberRole::Primary
                },
                MemberState::Running,
                pg.timeline,
                pg.wal.clone(),
            ),
            PgState::Starting { .. } => (
                role_of(&s.local.data),
                MemberState::Starting,
                data_tl(&s.local.data),
                WalPositions::default(),
            ),
            PgState::Stopped => (
                role_of(&s.local.data),
                if s.local.recent_crashes > 0 && self.pg.postmaster_pid().is_none() {
                    MemberState::Crashed
                } else {
                    MemberState::Stopped
                },
                data_tl(&s.local.data),
                WalPositions::default(),
            ),
        };
        let failed = self
            .bootstrap_failure
            .as_ref()
            .filter(|_| matches!(s.local.data, DataDir::Empty));
        let state = match (state_override, failed) {
            (Some(o), _) => o,
            (None, Some(_)) if matches!(s.local.postgres, PgState::Stopped) => {
                MemberState::BootstrapFailed
            }
            (None, _) => state,
        };
        // The data directory's major version (absent before initdb or a copy).
        let postgres_version = match s.local.data {
            DataDir::Empty => None,
            _ => std::fs::read_to_string(cfg.postgresql.data_dir.join("PG_VERSION"))
                .ok()
                .and_then(|v| v.trim().parse().ok()),
        };
        MemberStatus {
            conn_url: format!("postgres://{}/postgres", cfg.pg_connect_address()),
            api_url: cfg.api_url(),
            role,
            state,
            timeline,
            wal,
            // A member whose primary crashed so often that it handed leadership over tells
            // the others not to elect it, until its crashes leave the crash window.
            tags: spilo_model::MemberTags {
                nofailover: cfg.tags.nofailover
                    || crate::ha::race::steps_aside(s.local.recent_crashes, &self.ha),
            },
            pending_restart,
            error: failed.map(super::bootstrap::Failure::describe),
            postgres_version,
        }
    }
}

fn role_of(data: &DataDir) -> MemberRole {
    match data {
        DataDir::Empty => MemberRole::Uninitialized,
        DataDir::Initialized { .. } => MemberRole::Replica,
    }
}

fn data_tl(data: &DataDir) -> Option<spilo_model::TimelineId> {
    match data {
        DataDir::Empty => None,
        DataDir::Initialized { timeline, .. } => Some(*timeline),
    }
}

/// The REST API's status before the first loop finishes.
pub(super) fn initial_node_status(cfg: &GovernorConfig, name: &MemberName) -> NodeStatus {
    NodeStatus {
        name: name.clone(),
        scope: cfg.scope.clone(),
        member: MemberStatus {
            conn_url: format!("postgres://{}/postgres", cfg.pg_connect_address()),
            api_url: cfg.api_url(),
            role: MemberRole::Uninitialized,
            state: MemberState::Stopped,
            timeline: None,
            wal: WalPositions::default(),
            tags: cfg.tags.clone(),
            pending_restart: false,
            error: None,
            postgres_version: None,
        },
        leader: None,
        is_leader: false,
        streaming: false,
        upstream: None,
        dcs_reachable: false,
        governor_pid: std::process::id(),
        postmaster_pid: None,
        last_decision: String::new(),
        archive: None,
        catalog_error: None,
    }
}

/// Refuses to start when another live governor already uses this member name, and revokes
/// the lease of a dead earlier run of this member so its keys do not linger for a TTL.
pub(super) async fn check_name_is_free(
    dcs: &Store,
    http: &reqwest::Client,
    my_api_url: &str,
) -> anyhow::Result<()> {
    let name = dcs.member().clone();
    let me = dcs.keys().member(&name);
    let Some(old_lease) = dcs.member_lease(&name).await? else {
        return Ok(());
    };
    let view = dcs.read_view().await?;
    if let Some(status) = view.members.get(&name) {
        let url = format!("{}/status", status.api_url.trim_end_matches('/'));
        if let Ok(resp) = http.get(&url).send().await
            && let Ok(node) = resp.json::<NodeStatus>().await
            && node.governor_pid != std::process::id()
        {
            anyhow::bail!(
                "member name {} is already used by a running governor (pid {}, REST API {}); \
                 each member needs its own name",
                node.name,
                node.governor_pid,
                status.api_url
            );
        }
    }
    tracing::info!(
        key = me,
        lease = format_args!("{old_lease:x}"),
        api = my_api_url,
        "revoking the lease of an earlier run of this member"
    );
    match dcs.revoke_lease(old_lease).await {
        // On ZooKeeper a lease is its own connection's session: an earlier run's ends with
        // its session timeout, and its member key is moved to this run's lease meanwhile.
        Err(DcsError::LeaseNotFound(_)) if dcs.etcd().is_none() => {
            tracing::info!(
                lease = format_args!("{old_lease:x}"),
                "the earlier run's ZooKeeper session ends with its timeout"
            );
            Ok(())
        }
        r => Ok(r?),
    }
}
