//! Failover candidate ranking, as a pure function over the members' own answers.
//!
//! When the leader key is gone, each running replica asks the others for their status and
//! ranks everyone by (timeline, WAL position) descending, then name ascending, so every member
//! computes the same single winner from the same answers and only that one tries to take the
//! key. Positions are compared among the members themselves, never against the dead leader's
//! last published position, which froze when it died.
//!
//! Nobody takes over while a member that answered is still starting PostgreSQL: its position
//! is not known yet and may be the best.
//!
//! Not eligible: members tagged `nofailover`, members not running as replicas, members on an
//! older timeline than the best, and members further than `maximum_lag_on_failover` bytes
//! behind the most advanced member (eligible or not). A member that did not answer is ignored.

use super::snapshot::PeerView;
use spilo_model::{Lsn, MemberName, MemberRole, MemberState, TimelineId};

/// One member as a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its name.
    pub name: MemberName,
    /// Its timeline.
    pub timeline: TimelineId,
    /// Its best WAL position (received or replayed).
    pub lsn: Lsn,
    /// Whether it must never be promoted.
    pub nofailover: bool,
}

/// The outcome for the asking member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The asking member is the one to take over.
    Me {
        /// Why.
        why: String,
    },
    /// Someone else should, or nobody may.
    NotMe {
        /// Why.
        why: String,
    },
}

/// Decides whether `me` should take leadership, given the other members' answers.
pub fn choose(me: &Candidate, peers: &[PeerView], maximum_lag: u64) -> Verdict {
    let mut all = vec![me.clone()];
    for peer in peers {
        let Some(st) = &peer.status else { continue };
        if st.running_as(MemberRole::Primary) {
            return Verdict::NotMe {
                why: format!(
                    "{} still runs as primary; waiting for it to demote",
                    peer.name
                ),
            };
        }
        if st.state == MemberState::Starting {
            // Its WAL position is not known until PostgreSQL answers, and it may be the most
            // advanced (found when a whole cluster restarted: the replica that was up first
            // took over and the former primary's last commits were rewound away). Starting
            // ends within seconds, with running or with an exit, so this cannot wait forever.
            return Verdict::NotMe {
                why: format!(
                    "{} is starting; waiting to compare WAL positions with it",
                    peer.name
                ),
            };
        }
        if !st.running_as(MemberRole::Replica) {
            continue;
        }
        all.push(Candidate {
            name: peer.name.clone(),
            timeline: st.timeline.unwrap_or_default(),
            lsn: st.wal.best().unwrap_or_default(),
            nofailover: st.tags.nofailover,
        });
    }
    let best = all
        .iter()
        .map(|c| (c.timeline, c.lsn))
        .max()
        .unwrap_or((me.timeline, me.lsn));
    let eligible = |c: &Candidate| {
        !c.nofailover && c.timeline == best.0 && best.1.bytes_ahead_of(c.lsn) <= maximum_lag
    };
    if !eligible(me) {
        let why = if me.timeline < best.0 {
            format!(
                "this member is on timeline {}, others on {}",
                me.timeline, best.0
            )
        } else {
            format!(
                "this member is {} bytes behind the most advanced member (limit {maximum_lag})",
                best.1.bytes_ahead_of(me.lsn)
            )
        };
        return Verdict::NotMe { why };
    }
    let mut ranked: Vec<&Candidate> = all.iter().filter(|c| eligible(c)).collect();
    ranked.sort_by(|a, b| {
        (b.timeline, b.lsn)
            .cmp(&(a.timeline, a.lsn))
            .then_with(|| a.name.cmp(&b.name))
    });
    match ranked.first() {
        Some(first) if first.name == me.name => Verdict::Me {
            why: format!(
                "healthiest of {} eligible member(s): timeline {}, WAL {}",
                ranked.len(),
                me.timeline,
                me.lsn
            ),
        },
        Some(first) => Verdict::NotMe {
            why: format!(
                "{} ranks first (timeline {}, WAL {}; this member: timeline {}, WAL {})",
                first.name, first.timeline, first.lsn, me.timeline, me.lsn
            ),
        },
        None => Verdict::NotMe {
            why: "no eligible member".into(),
        },
    }
}
