//! Operator-requested moves of the primary role: which member a switchover may go to, and
//! what the leader, or without a leader the members racing for it, do about a pending
//! [`SwitchoverRequest`]. Pure like the rest of `ha`; the REST API runs [`check`] before it
//! writes a request so that a refusal is answered at once.

use super::{ClusterView, Decision, HaConfig, Snapshot};
use spilo_model::{MemberName, MemberRole, MemberState, SwitchoverRequest};

/// The member a switchover from `leader` goes to, and the lease its member key is bound to
/// (the leader key is handed over bound to that lease). An explicit `candidate` must be
/// eligible; without one the most advanced eligible replica is chosen.
///
/// Eligible: a running replica, not tagged `nofailover`, on the leader's timeline, within
/// `maximum_lag_on_failover` bytes of the leader's last published position, with a live
/// member key. The final "has it received everything" check happens with live positions when
/// the leader carries the switchover out.
pub fn check(
    view: &ClusterView,
    leader: &MemberName,
    candidate: Option<&MemberName>,
    cfg: &HaConfig,
) -> Result<(MemberName, i64), String> {
    if view.paused() {
        return Err("the cluster is paused (maintenance mode); `spilo resume` it first".into());
    }
    let cfg = &cfg.merged(view);
    let lead = view
        .members
        .get(leader)
        .filter(|m| m.running_as(MemberRole::Primary))
        .ok_or_else(|| format!("{leader} does not run as primary"))?;
    let leader_lsn = lead.wal.best().unwrap_or_default();
    let eligible = |name: &MemberName| -> Result<(u64, i64), String> {
        if name == leader {
            return Err(format!("{name} is already the leader"));
        }
        let m = view
            .members
            .get(name)
            .ok_or_else(|| format!("{name} is not a member of the cluster"))?;
        if !m.running_as(MemberRole::Replica) {
            return Err(format!(
                "{name} is {} {}, not a running replica",
                m.role.as_str(),
                m.state.as_str()
            ));
        }
        if m.tags.nofailover {
            return Err(format!("{name} is tagged nofailover"));
        }
        if let Some(sync) = view.promotable()
            && !sync.contains(name)
        {
            return Err(format!(
                "{name} is not a synchronous standby (synchronous mode is on)"
            ));
        }
        if let (Some(tl), Some(leader_tl)) = (m.timeline, lead.timeline)
            && tl != leader_tl
        {
            return Err(format!(
                "{name} is on timeline {tl}, the leader on {leader_tl}"
            ));
        }
        let lag = leader_lsn.bytes_ahead_of(m.wal.best().unwrap_or_default());
        if lag > cfg.maximum_lag_on_failover {
            return Err(format!(
                "{name} is {lag} bytes behind the leader (maximum_lag_on_failover is {})",
                cfg.maximum_lag_on_failover
            ));
        }
        let lease = *view
            .member_leases
            .get(name)
            .ok_or_else(|| format!("{name}'s member key has no lease"))?;
        Ok((lag, lease))
    };
    if let Some(c) = candidate {
        return eligible(c).map(|(_, lease)| (c.clone(), lease));
    }
    view.members
        .keys()
        .filter_map(|n| eligible(n).ok().map(|(lag, lease)| (lag, n, lease)))
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, n, lease)| (n.clone(), lease))
        .ok_or_else(|| {
            "no replica is eligible (running, streaming, caught up, not nofailover)".into()
        })
}

/// What the leader (holding a valid lease, running as primary) does about `req`.
pub fn as_leader(
    s: &Snapshot,
    view: &ClusterView,
    cfg: &HaConfig,
    req: &SwitchoverRequest,
) -> Decision {
    if req.candidate.as_ref() == Some(&s.me) {
        return Decision::ClearSwitchover {
            why: "this member leads, as requested".into(),
        };
    }
    if let Some(l) = &req.leader
        && *l != s.me
    {
        return Decision::ClearSwitchover {
            why: format!("it was made while {l} led"),
        };
    }
    if view.paused() || !req.due(s.unix_now) {
        return Decision::Lead;
    }
    match check(view, &s.me, req.candidate.as_ref(), cfg) {
        Ok((to, lease)) => Decision::Switchover { to, lease },
        Err(why) => Decision::ClearSwitchover {
            why: format!("switchover refused: {why}"),
        },
    }
}

/// Without a leader: a manual failover naming a candidate lets only that candidate take the
/// key, as long as it answers (the operator's explicit choice, past the ranking and the
/// synchronous list). A switchover request left by a leader that has since died is not a
/// failover order: `None`, and the usual rules choose.
pub fn without_leader(s: &Snapshot, req: &SwitchoverRequest) -> Option<Decision> {
    let c = req.candidate.as_ref().filter(|_| req.failover)?;
    if *c == s.me {
        return Some(Decision::AcquireLeader {
            why: "a manual failover to this member was requested".into(),
        });
    }
    let alive = s.peers.iter().any(|p| {
        p.name == *c
            && p.status
                .as_ref()
                .is_some_and(|st| st.state == MemberState::Running)
    });
    alive.then(|| Decision::Wait {
        why: format!("a manual failover to {c} was requested; leaving the leader key to it"),
    })
}

/// With a leader that holds the key but whose PostgreSQL is down: a manual failover to
/// another member makes it give the key up.
pub fn leader_down(s: &Snapshot, req: &SwitchoverRequest) -> Option<Decision> {
    let c = req.candidate.as_ref().filter(|c| **c != s.me)?;
    req.failover.then(|| Decision::ReleaseLeader {
        why: format!("a manual failover to {c} was requested while this primary is down"),
    })
}
