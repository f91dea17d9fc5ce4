//! The election without a leader: whether this member may race for the leader key, and
//! whether it is the one to. Failsafe mode's promises, a pending switchover request,
//! synchronous mode's `sync` key (in quorum mode: enough voters seen, none further ahead) and
//! the candidate ranking each may hold it back.

use super::*;

pub(super) fn race(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    now: Instant,
    lease_ok: bool,
    pg: &RunningPg,
) -> Decision {
    if s.tags.nofailover {
        return Decision::Wait {
            why: "no leader, and this member is tagged nofailover".into(),
        };
    }
    if !lease_ok {
        return Decision::Wait {
            why: "no leader, and this member has no valid etcd lease to take leadership with"
                .into(),
        };
    }
    if let Some(d) = failsafe_holds_back(s, view, now) {
        return d;
    }
    if let Some(d) = view
        .switchover
        .as_ref()
        .and_then(|r| switchover::without_leader(s, r))
    {
        return d;
    }
    // A standby cluster's leader accepts no writes: synchronous mode has nothing to protect.
    let promotable = view.promotable().filter(|_| cfg.standby.is_none());
    let peers: Vec<PeerView> = match promotable {
        None => s.peers.clone(),
        Some(sync) if sync.contains(&s.me) => {
            let voters: Vec<PeerView> = s
                .peers
                .iter()
                .filter(|p| sync.contains(&p.name))
                .cloned()
                .collect();
            let mine = (
                pg.timeline.unwrap_or_default(),
                pg.wal.best().unwrap_or_default(),
            );
            if let Some(d) = quorum_holds_back(s, view, &voters, mine) {
                return d;
            }
            voters
        }
        Some(sync) if sync.is_empty() => {
            return Decision::Wait {
                why: "no leader, and synchronous mode lists no synchronous standby: promoting \
                      anyone could lose acknowledged commits (`spilo failover --to` overrides)"
                    .into(),
            };
        }
        Some(sync) => {
            let names: Vec<&str> = sync.iter().map(MemberName::as_str).collect();
            return Decision::Wait {
                why: format!(
                    "no leader, and in synchronous mode only {} may take over",
                    names.join(", ")
                ),
            };
        }
    };
    let me = candidate::Candidate {
        name: s.me.clone(),
        timeline: pg.timeline.unwrap_or_default(),
        lsn: pg.wal.best().unwrap_or_default(),
        nofailover: false,
    };
    // A member that handed leadership over because its primary kept crashing leaves the race
    // to a healthy replica that could take over (it publishes `nofailover` meanwhile, so the
    // others pass over it); with none, it races as before.
    if steps_aside(s.local.recent_crashes, cfg) {
        let healthy = peers.iter().find(|p| {
            p.status.as_ref().is_some_and(|st| {
                st.running_as(MemberRole::Replica)
                    && !st.tags.nofailover
                    && st.timeline.unwrap_or_default() == me.timeline
                    && me.lsn.bytes_ahead_of(st.wal.best().unwrap_or_default())
                        <= cfg.maximum_lag_on_failover
            })
        });
        if let Some(p) = healthy {
            return Decision::Wait {
                why: format!(
                    "this member's primary crashed {} times recently; {} takes over",
                    s.local.recent_crashes, p.name
                ),
            };
        }
    }
    match candidate::choose(&me, &peers, cfg.maximum_lag_on_failover) {
        candidate::Verdict::Me { why } => Decision::AcquireLeader { why },
        candidate::Verdict::NotMe { why } => Decision::Wait { why },
    }
}

/// Whether a member with `recent_crashes` stays out of leader races: its primary crashed as
/// often as makes it hand leadership over.
pub fn steps_aside(recent_crashes: u32, cfg: &HaConfig) -> bool {
    recent_crashes >= cfg.max_primary_crashes
}

/// In quorum mode, why this voter may not take over: it must see the positions of `n - k + 1`
/// voters (itself included), each no further than its own `mine` (timeline, WAL position), to
/// know it is not missing an acknowledged commit. A voter that answers further ahead holds it
/// back whatever the ranking says (it may be tagged `nofailover` since the key was written, and
/// then the ranking would pass over it and its commits). The primary that wrote the key has
/// every commit it acknowledged and need not ask.
fn quorum_holds_back(
    s: &Snapshot,
    view: &ClusterView,
    voters: &[PeerView],
    mine: (TimelineId, Lsn),
) -> Option<Decision> {
    let key = view.sync.as_ref().filter(|k| k.quorum.is_some())?;
    if key.leader.as_ref() == Some(&s.me) {
        return None;
    }
    let Some(need) = key.voters_to_see() else {
        return Some(Decision::Wait {
            why: "no leader, and quorum commit has no confirmed voters: promoting anyone could \
                  lose acknowledged commits (`spilo failover --to` overrides)"
                .into(),
        });
    };
    let mut seen = 1;
    for p in voters {
        let Some(st) = p
            .status
            .as_ref()
            .filter(|st| st.running_as(MemberRole::Replica))
        else {
            continue;
        };
        let theirs = (
            st.timeline.unwrap_or_default(),
            st.wal.best().unwrap_or_default(),
        );
        if theirs > mine {
            return Some(Decision::Wait {
                why: format!(
                    "no leader, and voter {} is further ahead (timeline {}, WAL {}) than this \
                     member (timeline {}, WAL {})",
                    p.name, theirs.0, theirs.1, mine.0, mine.1
                ),
            });
        }
        seen += 1;
    }
    (seen < need).then(|| Decision::Wait {
        why: format!(
            "no leader, and quorum commit needs the WAL positions of {need} of the {} voters to \
             be sure no acknowledged commit is missing; {seen} answered (this member included)",
            key.members.len()
        ),
    })
}

/// In failsafe mode, why this member must not race for the leader key yet: it promised a
/// primary confirmed through `POST /failsafe` not to (or restarted too recently to know), or
/// the primary never asked it (it is not in the `failsafe` key).
fn failsafe_holds_back(s: &Snapshot, view: &ClusterView, now: Instant) -> Option<Decision> {
    // A `failsafe` key left behind counts too: failsafe mode may have been switched off while
    // a primary that cannot reach etcd still relies on its members' promises.
    if !view.failsafe_mode() && view.failsafe.is_none() {
        return None;
    }
    if let Some(until) = s.failsafe.quiet_until
        && now < until
    {
        return Some(Decision::Wait {
            why: match &s.failsafe.quiet_for {
                Some(primary) => format!(
                    "no leader, but this member confirmed {primary} as primary in failsafe mode \
                     and does not race until that promise ends"
                ),
                None => "no leader, but in failsafe mode a governor that started less than a TTL \
                         ago may have promised a primary not to race"
                    .into(),
            },
        });
    }
    match &view.failsafe {
        Some(members) if !members.contains_key(&s.me) => Some(Decision::Wait {
            why: "no leader, and in failsafe mode only the members listed in the failsafe key \
                  may take over (the last primary never asked this one)"
                .into(),
        }),
        _ => None,
    }
}
