//! The HA core: `decide(&Snapshot, &HaConfig, now) -> Decision`.
//!
//! This module owns every rule about who leads, who follows, when to bootstrap, clone, rewind,
//! promote and demote. It performs no I/O and reads no clock: the runtime gathers a
//! [`Snapshot`] (etcd, the lease, the local PostgreSQL, the other members' REST answers), calls
//! [`decide`], logs the decision with its reason, and carries it out. Every branch is unit-tested
//! in `tests.rs` without processes or sockets.
//!
//! Safety rules encoded here:
//! - only the member whose lease backs the `leader` key may run PostgreSQL as a primary;
//! - a primary whose lease is about to end demotes (the runtime's fence enforces the same rule
//!   independently, so a hung loop cannot keep a stale primary writable);
//! - a replica only races for leadership when no leader key exists, no reachable member still
//!   runs as primary, and it is the healthiest eligible member (see [`candidate`]);
//! - in failsafe mode, a primary whose lease cannot be renewed stays writable only while every
//!   member confirmed it, and a member that confirmed it does not race until the confirmation
//!   has ended (see [`FailsafeView`]);
//! - in a standby cluster (`standby_cluster` in `config`) nobody accepts writes: the leader
//!   replicates from the source cluster, the other members from the leader, a primary demotes,
//!   and the first member copies the source instead of running initdb.

pub mod candidate;
mod decision;
pub(crate) mod race;
mod recovery;
mod snapshot;
pub mod switchover;
pub mod sync;

pub use decision::{Decision, StartAs};
pub use snapshot::{
    ClusterView, DataDir, DcsView, FailsafeView, LeaderKey, LeaseView, LocalState, PeerView,
    PgState, RunningPg, Snapshot,
};

use spilo_model::{HistoryEntry, Lsn, MemberName, MemberRole, StandbySource, TimelineId};
use std::time::{Duration, Instant};

/// The settings `decide` needs, already merged from the local file and the cluster's `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// A replica further behind the most advanced member than this many bytes is not promoted.
    pub maximum_lag_on_failover: u64,
    /// How long a crashed primary may take to come back before leadership is handed over.
    pub primary_start_timeout: Duration,
    /// How many unexpected PostgreSQL exits (within the runtime's window) a primary may have
    /// before it hands leadership over instead of restarting in place again.
    pub max_primary_crashes: u32,
    /// How long before its lease ends a primary stops accepting writes.
    pub fence_margin: Duration,
    /// A replica pointed at the leader that has not streamed for this long is checked for
    /// divergence with pg_rewind (PostgreSQL refuses to stream WAL that forked off its own).
    pub rewind_check_after: Duration,
    /// How long the cluster must have had no leader and no member with data before a member
    /// with an empty data directory recovers it from its archive; `None`: never.
    pub archive_recovery_after: Option<Duration>,
    /// The standby cluster's source: from the local file until the cluster's `config` exists,
    /// then from `config`, or the standby cluster promoted over this one
    /// ([`ClusterView::fenced_by`]) ([`HaConfig::merged`]).
    pub standby: Option<StandbySource>,
}

impl HaConfig {
    /// These settings with the cluster's `config` applied: `maximum_lag_on_failover` there
    /// wins over the local file, so a change in git reaches every member without a restart.
    pub fn merged(&self, view: &ClusterView) -> HaConfig {
        let mut cfg = self.clone();
        if let Some(lag) = view.config.as_ref().and_then(|c| c.maximum_lag_on_failover) {
            cfg.maximum_lag_on_failover = lag;
        }
        if let Some(c) = &view.config {
            // A standby cluster promoted over this one fences it: it follows that cluster.
            cfg.standby = c.standby_cluster.clone().or_else(|| view.fenced_by.clone());
        }
        cfg
    }

    /// [`HaConfig::merged`] when etcd was read, else these settings as they are.
    pub fn merged_opt(&self, view: Option<&ClusterView>) -> HaConfig {
        view.map_or_else(|| self.clone(), |v| self.merged(v))
    }
}

/// Decides what this member does next. Pure: same inputs, same answer.
///
/// In maintenance mode (`pause` in the cluster's `config`) only keeping things as they are is
/// allowed: leading, following, waiting, and demoting a primary that lost its leader key
/// (safety does not pause). Promotion, leader races, starts, clones, rewinds and hand-overs
/// become a `Wait` that says what would have happened.
/// A manual failover (an operator's explicit choice) is let through too.
pub fn decide(s: &Snapshot, cfg: &HaConfig, now: Instant) -> Decision {
    let d = decide_unpaused(s, cfg, now);
    let (paused, manual_failover) = match &s.dcs {
        DcsView::Known(v) => (
            v.paused(),
            v.switchover.as_ref().is_some_and(|r| r.failover),
        ),
        DcsView::Unreachable { .. } => (false, false),
    };
    match d {
        d if !paused => d,
        d @ (Decision::Lead
        | Decision::ReclaimLeader { .. }
        | Decision::Follow { .. }
        | Decision::FollowSource { .. }
        | Decision::Wait { .. }
        | Decision::Fatal { .. }
        | Decision::Demote { .. }
        | Decision::ClearSwitchover { .. }) => d,
        d @ (Decision::AcquireLeader { .. } | Decision::ReleaseLeader { .. })
            if manual_failover =>
        {
            d
        }
        other => Decision::Wait {
            why: format!("paused (maintenance mode); would {other}"),
        },
    }
}

fn decide_unpaused(s: &Snapshot, cfg: &HaConfig, now: Instant) -> Decision {
    let view = match &s.dcs {
        DcsView::Unreachable { why } => return dcs_unreachable(s, cfg, now, why),
        DcsView::Known(view) => view,
    };
    let cfg = &cfg.merged(view);
    let lease_ok = s.lease.valid_at(now, cfg.fence_margin);
    let i_lead = view
        .leader
        .as_ref()
        .is_some_and(|l| l.name == s.me && Some(l.lease) == s.lease.id);

    match (&view.initialize, &s.local.data) {
        (None, DataDir::Empty) => {
            return if s.tags.nofailover {
                Decision::Wait {
                    why: "no cluster yet, and members tagged nofailover never bootstrap one".into(),
                }
            } else if let Some(why) = &s.local.bootstrap_blocked {
                Decision::Wait { why: why.clone() }
            } else if s.lease.id.is_none() {
                Decision::Wait {
                    why: "no cluster yet; waiting for an etcd lease before racing to bootstrap"
                        .into(),
                }
            } else {
                Decision::Bootstrap
            };
        }
        (None, DataDir::Initialized { .. }) => {
            return Decision::Wait {
                why: "the data directory holds a cluster but etcd has no `initialize` key; \
                      refusing to guess whether it belongs to this scope"
                    .into(),
            };
        }
        (Some(sysid), _) if sysid.is_empty() => {
            return Decision::Wait {
                why: "another member is bootstrapping the cluster".into(),
            };
        }
        (Some(cluster_sysid), DataDir::Initialized { sysid, .. }) if sysid != cluster_sysid => {
            return Decision::Fatal {
                why: format!(
                    "the data directory belongs to system {sysid}, but the cluster is system \
                     {cluster_sysid}; move the data directory away to join as a new replica"
                ),
            };
        }
        (Some(_), DataDir::Empty) => {
            return match running_leader(view, cfg) {
                Some(leader) if leader != s.me => Decision::Clone { leader },
                _ if cfg.standby.is_some() => Decision::Wait {
                    why: "no running standby leader to copy; a standby cluster has no archive of \
                          its own to recover from"
                        .into(),
                },
                _ => recovery::from_archive(s, view, cfg, now),
            };
        }
        (Some(_), DataDir::Initialized { .. }) => {}
    }

    if let Some(l) = &view.leader
        && l.name == s.me
        && !i_lead
    {
        return Decision::Wait {
            why: "the leader key names this member but is bound to an older lease; \
                  waiting for that lease to end"
                .into(),
        };
    }

    match &s.local.postgres {
        PgState::Running(pg) if !pg.in_recovery => {
            running_primary(s, view, cfg, now, i_lead, lease_ok)
        }
        PgState::Running(pg) => running_replica(s, view, cfg, now, i_lead, lease_ok, pg),
        PgState::Starting { since, as_primary } => {
            starting(s, view, cfg, now, i_lead, *since, *as_primary)
        }
        PgState::Stopped => stopped(s, view, cfg, now, i_lead, lease_ok),
    }
}

fn dcs_unreachable(s: &Snapshot, cfg: &HaConfig, now: Instant, why: &str) -> Decision {
    let primary = matches!(&s.local.postgres, PgState::Running(pg) if !pg.in_recovery);
    if primary && !s.lease.valid_at(now, cfg.fence_margin) {
        if s.failsafe.confirmed_at(now, cfg.fence_margin) {
            return Decision::Wait {
                why: format!(
                    "etcd is unreachable ({why}); failsafe mode: every member confirmed this \
                     primary, so it stays writable"
                ),
            };
        }
        return Decision::Demote {
            why: format!("etcd is unreachable ({why}) and the leader lease is about to end"),
        };
    }
    let until = match s.lease.valid_until {
        Some(t) if primary => format!(
            "; the lease is valid for {:.1}s more",
            t.saturating_duration_since(now).as_secs_f64()
        ),
        _ => String::new(),
    };
    Decision::Wait {
        why: format!("etcd is unreachable ({why}){until}"),
    }
}

fn running_primary(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    now: Instant,
    i_lead: bool,
    lease_ok: bool,
) -> Decision {
    if i_lead && let Some(source) = &cfg.standby {
        return Decision::StepDown {
            why: format!(
                "the cluster is now a standby of {}; this primary stops accepting writes",
                source.describe()
            ),
        };
    }
    if i_lead && lease_ok {
        return match &view.switchover {
            Some(req) => switchover::as_leader(s, view, cfg, req),
            None => Decision::Lead,
        };
    }
    if view.failsafe_mode() && s.failsafe.confirmed_at(now, cfg.fence_margin) {
        // Every member promised not to race until after the confirmation ends, and members
        // outside the `failsafe` key never race: nobody else can hold the key now.
        if i_lead {
            return Decision::Wait {
                why: "the leader lease cannot be renewed; failsafe mode: every member confirmed \
                      this primary, so it stays writable"
                    .into(),
            };
        }
        if view.leader.is_none() {
            return if lease_ok {
                Decision::ReclaimLeader {
                    why: "etcd answers again and, in failsafe mode, every member confirmed this \
                          primary meanwhile"
                        .into(),
                }
            } else {
                Decision::Wait {
                    why: "failsafe mode: every member confirmed this primary; waiting for an \
                          etcd lease to take the leader key back"
                        .into(),
                }
            };
        }
    }
    let why = match &view.leader {
        _ if i_lead => "the leader lease is about to end and could not be renewed".to_string(),
        Some(l) => format!("{} holds the leader key", l.name),
        None => format!("{} runs as primary without holding the leader key", s.me),
    };
    Decision::Demote { why }
}

#[allow(clippy::too_many_arguments)]
fn running_replica(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    now: Instant,
    i_lead: bool,
    lease_ok: bool,
    pg: &RunningPg,
) -> Decision {
    if i_lead && let Some(source) = &cfg.standby {
        if let Some(since) = pg.not_streaming_since
            && now.saturating_duration_since(since) > cfg.rewind_check_after
        {
            return Decision::RewindFromSource {
                why: format!(
                    "not streaming from {} for {}s; checking whether this member's WAL forked off \
                     (a former primary, or the source was promoted elsewhere)",
                    source.describe(),
                    now.saturating_duration_since(since).as_secs()
                ),
            };
        }
        return Decision::FollowSource {
            why: format!(
                "this member leads the standby cluster and replicates from {}",
                source.describe()
            ),
        };
    }
    if i_lead {
        return if lease_ok {
            Decision::Promote {
                why: "this member holds the leader key and still runs as a replica".into(),
            }
        } else {
            Decision::Wait {
                why: "holding the leader key with a lease about to end; not promoting".into(),
            }
        };
    }
    match &view.leader {
        Some(leader) => {
            let Some(status) = leader_status(view, &leader.name, cfg) else {
                return Decision::Wait {
                    why: format!(
                        "{} holds the leader key but does not run as {} yet",
                        leader.name,
                        if cfg.standby.is_some() {
                            "standby leader"
                        } else {
                            "primary"
                        }
                    ),
                };
            };
            let leader_tl = status.timeline.unwrap_or_default();
            let streams_from_leader = pg.streaming && pg.upstream.as_ref() == Some(&leader.name);
            // A standby cluster's `history` is empty (its timelines are the source's): only
            // data that was a primary can have forked off there.
            let may_fork = cfg.standby.is_none()
                || matches!(
                    s.local.data,
                    DataDir::Initialized {
                        was_primary: true,
                        ..
                    }
                );
            if !streams_from_leader
                && may_fork
                && let Some(why) = diverged(pg.timeline, pg.wal.best(), leader_tl, &view.history)
            {
                return Decision::Rewind {
                    leader: leader.name.clone(),
                    why,
                };
            }
            if pg.upstream.as_ref() == Some(&leader.name)
                && let Some(since) = pg.not_streaming_since
                && now.saturating_duration_since(since) > cfg.rewind_check_after
            {
                return Decision::Rewind {
                    leader: leader.name.clone(),
                    why: format!(
                        "pointed at {} for {}s without streaming; checking whether this member's WAL forked off",
                        leader.name,
                        now.saturating_duration_since(since).as_secs()
                    ),
                };
            }
            Decision::Follow {
                leader: leader.name.clone(),
            }
        }
        None => race::race(s, view, cfg, now, lease_ok, pg),
    }
}

#[allow(clippy::too_many_arguments)]
fn starting(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    now: Instant,
    i_lead: bool,
    since: Instant,
    as_primary: bool,
) -> Decision {
    if as_primary && !i_lead {
        return Decision::Demote {
            why: "PostgreSQL is starting as primary but this member no longer holds the leader key"
                .into(),
        };
    }
    if as_primary && now.saturating_duration_since(since) > cfg.primary_start_timeout {
        return Decision::ReleaseLeader {
            why: format!(
                "the primary has not come back within {}s",
                cfg.primary_start_timeout.as_secs()
            ),
        };
    }
    let _ = (s, view);
    Decision::Wait {
        why: "PostgreSQL is starting".into(),
    }
}

fn stopped(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    now: Instant,
    i_lead: bool,
    lease_ok: bool,
) -> Decision {
    let DataDir::Initialized {
        was_primary,
        timeline,
        clean_checkpoint,
        ..
    } = &s.local.data
    else {
        return Decision::Wait {
            why: "no data directory".into(),
        };
    };
    if i_lead {
        if !lease_ok {
            return Decision::Wait {
                why: "holding the leader key with a lease about to end; not starting PostgreSQL"
                    .into(),
            };
        }
        if let Some(source) = &cfg.standby {
            return Decision::Start {
                role: StartAs::StandbyLeader,
                why: format!(
                    "this member leads the standby cluster; starting as a replica of {}",
                    source.describe()
                ),
            };
        }
        if let Some(d) = view
            .switchover
            .as_ref()
            .and_then(|r| switchover::leader_down(s, r))
        {
            return d;
        }
        if !*was_primary {
            return Decision::Start {
                role: StartAs::Replica { upstream: None },
                why: "this member holds the leader key; starting read-only before promoting".into(),
            };
        }
        let down_too_long = s
            .local
            .primary_down_since
            .is_some_and(|t| now.saturating_duration_since(t) > cfg.primary_start_timeout);
        if s.local.recent_crashes >= cfg.max_primary_crashes || down_too_long {
            return Decision::ReleaseLeader {
                why: format!(
                    "the primary crashed {} times recently{}; handing leadership to a replica",
                    s.local.recent_crashes,
                    if down_too_long {
                        " and stayed down too long"
                    } else {
                        ""
                    }
                ),
            };
        }
        return Decision::Start {
            role: StartAs::Primary,
            why: "the primary stopped while this member holds the leader key; restarting in place \
                  (crash recovery keeps every committed transaction, a failover might not)"
                .into(),
        };
    }
    match &view.leader {
        Some(leader) => match leader_status(view, &leader.name, cfg) {
            Some(status) => {
                let leader_tl = status.timeline.unwrap_or_default();
                if let Some(why) =
                    follows_cleanly(*clean_checkpoint, *timeline, leader_tl, &view.history)
                {
                    return Decision::Start {
                        role: StartAs::Replica {
                            upstream: Some(leader.name.clone()),
                        },
                        why: format!(
                            "{why}; starting as a replica of {} without pg_rewind",
                            leader.name
                        ),
                    };
                }
                if *was_primary || (*timeline < leader_tl && cfg.standby.is_none()) {
                    // pg_rewind compares the histories exactly and is cheap when nothing
                    // diverged, so stopped data that was a primary or lags a timeline behind is
                    // always handed to it instead of guessing from a possibly stale position.
                    return Decision::Rewind {
                        leader: leader.name.clone(),
                        why: format!(
                            "this data {} on timeline {timeline}; {} leads on timeline {leader_tl}",
                            if *was_primary {
                                "was a primary"
                            } else {
                                "is a replica"
                            },
                            leader.name
                        ),
                    };
                }
                Decision::Start {
                    role: StartAs::Replica {
                        upstream: Some(leader.name.clone()),
                    },
                    why: format!("{} leads; starting as its replica", leader.name),
                }
            }
            None => Decision::Start {
                role: StartAs::Replica { upstream: None },
                why: format!(
                    "{} holds the leader key but does not run as primary yet; starting read-only",
                    leader.name
                ),
            },
        },
        None => Decision::Start {
            role: StartAs::Replica { upstream: None },
            why: "no leader; starting read-only to take part in the election".into(),
        },
    }
}

/// The leader's published status, when it says it runs as primary (in a standby cluster: as a
/// replica, of the source).
fn leader_status<'a>(
    view: &'a ClusterView,
    leader: &MemberName,
    cfg: &HaConfig,
) -> Option<&'a spilo_model::MemberStatus> {
    let role = if cfg.standby.is_some() {
        MemberRole::Replica
    } else {
        MemberRole::Primary
    };
    view.members.get(leader).filter(|m| m.running_as(role))
}

/// The leader's name when it holds the key and runs as primary (standby leader).
fn running_leader(view: &ClusterView, cfg: &HaConfig) -> Option<MemberName> {
    let leader = view.leader.as_ref()?;
    leader_status(view, &leader.name, cfg).map(|_| leader.name.clone())
}

/// Why a primary that shut down cleanly at `checkpoint` on `timeline` can follow a leader on
/// `leader_tl` as it is: the next timeline began after its shutdown checkpoint, so every record
/// it has is also the new primary's (the case of a switchover, whose candidate received the
/// shutdown checkpoint before it was promoted). `None`: pg_rewind must decide.
fn follows_cleanly(
    checkpoint: Option<Lsn>,
    timeline: TimelineId,
    leader_tl: TimelineId,
    history: &[HistoryEntry],
) -> Option<String> {
    let checkpoint = checkpoint?;
    if leader_tl <= timeline {
        return None;
    }
    let next = TimelineId(timeline.0 + 1);
    let switch = history.iter().find(|h| h.timeline == next)?.switch_lsn;
    (checkpoint < switch).then(|| {
        format!(
            "this primary shut down cleanly at {checkpoint} on timeline {timeline}, before timeline {next} began at {switch}"
        )
    })
}

/// Whether a running replica on `timeline` at `lsn` has diverged from a leader on `leader_tl`,
/// by the switch points recorded in `history`. `None` means it can follow by streaming (with
/// `recovery_target_timeline = latest` it switches timelines by itself).
///
/// When the switch point is unknown the answer is "diverged": pg_rewind then decides for
/// certain, and it is cheap when nothing diverged.
fn diverged(
    timeline: Option<TimelineId>,
    lsn: Option<Lsn>,
    leader_tl: TimelineId,
    history: &[HistoryEntry],
) -> Option<String> {
    let tl = timeline?;
    let lsn = lsn?;
    if tl >= leader_tl {
        return None;
    }
    let next = TimelineId(tl.0 + 1);
    let switch = history
        .iter()
        .find(|h| h.timeline == next)
        .map(|h| h.switch_lsn);
    match switch {
        Some(switch) if lsn <= switch => None,
        Some(switch) => Some(format!(
            "this member reached {lsn} on timeline {tl}, past the switch to timeline {next} at {switch}"
        )),
        None => Some(format!(
            "this member is on timeline {tl}, the leader on {leader_tl}, and the switch point is unknown"
        )),
    }
}

#[cfg(test)]
mod failsafe_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod standby_tests;
#[cfg(test)]
mod switchover_tests;
#[cfg(test)]
mod test_world;
#[cfg(test)]
mod tests;
