//! What `decide` can answer: a closed set of actions, each carrying the reason it was chosen,
//! so the runtime can log "what and why" on one line.

use spilo_model::MemberName;
use std::fmt;

/// How to start PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// As the primary (this member holds the leader key).
    Primary,
    /// As the standby cluster's leader: a replica of the source cluster.
    StandbyLeader,
    /// As a replica, streaming from `upstream` if known, otherwise read-only and idle.
    Replica {
        /// The member to stream from.
        upstream: Option<MemberName>,
    },
}

/// The next action of this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Race for `initialize`; the winner runs initdb and becomes the first primary.
    Bootstrap,
    /// Take the leader key, restore the archive's latest base backup, replay every archived
    /// WAL file, and lead: no member has data (the cluster's `initialize` key says it exists).
    RecoverFromArchive {
        /// Why.
        why: String,
    },
    /// Copy the leader with pg_basebackup.
    Clone {
        /// Who to copy.
        leader: MemberName,
    },
    /// Stop PostgreSQL if it runs, pg_rewind against the leader (re-clone if that fails), then
    /// start as its replica.
    Rewind {
        /// The new primary.
        leader: MemberName,
        /// Why the local data may have diverged.
        why: String,
    },
    /// Start PostgreSQL.
    Start {
        /// In which role.
        role: StartAs,
        /// Why.
        why: String,
    },
    /// Keep streaming from the leader (re-pointing `primary_conninfo` if it changed).
    Follow {
        /// The primary to stream from.
        leader: MemberName,
    },
    /// As the standby cluster's leader that has not streamed from the source for a while:
    /// CHECKPOINT the source, stop, pg_rewind against it (copy it again if that fails), start
    /// as its replica. A former primary of a cluster promoted elsewhere rejoins this way.
    RewindFromSource {
        /// Why.
        why: String,
    },
    /// As the standby cluster's leader: keep replicating from the source (re-pointing
    /// `primary_conninfo` if the source changed).
    FollowSource {
        /// Why.
        why: String,
    },
    /// Try to take the leader key (compare-and-create); promote on success (in a standby
    /// cluster: replicate from the source instead).
    AcquireLeader {
        /// Why this member is the one to take over.
        why: String,
    },
    /// Promote the local replica: this member already holds the leader key.
    Promote {
        /// Why.
        why: String,
    },
    /// Take the leader key back (compare-and-create) for the PostgreSQL that kept running as
    /// primary in failsafe mode while etcd was unreachable; no promotion.
    ReclaimLeader {
        /// Why.
        why: String,
    },
    /// Stay primary: the lease is renewed by its own task; manage replication slots and history.
    Lead,
    /// Hand the primary role to `to`: CHECKPOINT, stop PostgreSQL (fast: the replicas receive
    /// every WAL record), check `to` received the shutdown checkpoint, then move the leader key
    /// to `to` bound to its lease `lease` in one compare-and-swap. Any failure before the
    /// hand-over restarts this primary and drops the request.
    Switchover {
        /// The new leader.
        to: MemberName,
        /// The lease of its member key.
        lease: i64,
    },
    /// Remove the switchover request: done, stale or refused.
    ClearSwitchover {
        /// Why.
        why: String,
    },
    /// The cluster became a standby cluster: CHECKPOINT, then a clean (fast) stop, so the WAL
    /// ends at a shutdown checkpoint the replicas and the new source received; the next
    /// decision starts this member as the standby leader, keeping the leader key.
    StepDown {
        /// Why.
        why: String,
    },
    /// Stop accepting writes at once (immediate shutdown); the next decisions rejoin as a replica.
    Demote {
        /// Why.
        why: String,
    },
    /// Give up leadership: stop PostgreSQL and delete the leader key so a replica takes over.
    ReleaseLeader {
        /// Why.
        why: String,
    },
    /// Do nothing now.
    Wait {
        /// Why.
        why: String,
    },
    /// A condition the governor must not work around; it exits non-zero.
    Fatal {
        /// Why.
        why: String,
    },
}

impl Decision {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Bootstrap => "bootstrap",
            Decision::RecoverFromArchive { .. } => "recover_from_archive",
            Decision::Clone { .. } => "clone",
            Decision::Rewind { .. } => "rewind",
            Decision::Start { .. } => "start",
            Decision::Follow { .. } => "follow",
            Decision::FollowSource { .. } => "follow_source",
            Decision::RewindFromSource { .. } => "rewind_from_source",
            Decision::AcquireLeader { .. } => "acquire_leader",
            Decision::Promote { .. } => "promote",
            Decision::ReclaimLeader { .. } => "reclaim_leader",
            Decision::Lead => "lead",
            Decision::Switchover { .. } => "switchover",
            Decision::ClearSwitchover { .. } => "clear_switchover",
            Decision::Demote { .. } => "demote",
            Decision::StepDown { .. } => "step_down",
            Decision::ReleaseLeader { .. } => "release_leader",
            Decision::Wait { .. } => "wait",
            Decision::Fatal { .. } => "fatal",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Bootstrap => write!(f, "bootstrap: no cluster exists yet"),
            Decision::RecoverFromArchive { why } => write!(f, "recover from the archive: {why}"),
            Decision::Clone { leader } => write!(f, "clone: copy {leader} with pg_basebackup"),
            Decision::Rewind { leader, why } => write!(f, "rewind against {leader}: {why}"),
            Decision::Start {
                role: StartAs::Primary,
                why,
            } => write!(f, "start as primary: {why}"),
            Decision::Start {
                role: StartAs::Replica { .. },
                why,
            } => {
                write!(f, "start as replica: {why}")
            }
            Decision::Start {
                role: StartAs::StandbyLeader,
                why,
            } => write!(f, "start as standby leader: {why}"),
            Decision::Follow { leader } => write!(f, "follow {leader}"),
            Decision::FollowSource { why } => write!(f, "follow the source: {why}"),
            Decision::RewindFromSource { why } => write!(f, "rewind against the source: {why}"),
            Decision::AcquireLeader { why } => write!(f, "acquire leader key: {why}"),
            Decision::Promote { why } => write!(f, "promote: {why}"),
            Decision::ReclaimLeader { why } => write!(f, "take the leader key back: {why}"),
            Decision::Lead => write!(f, "lead: holding the leader key as the running primary"),
            Decision::Switchover { to, .. } => {
                write!(f, "switchover: hand the primary role to {to}")
            }
            Decision::ClearSwitchover { why } => {
                write!(f, "remove the switchover request: {why}")
            }
            Decision::Demote { why } => write!(f, "demote: {why}"),
            Decision::StepDown { why } => write!(f, "step down to standby leader: {why}"),
            Decision::ReleaseLeader { why } => write!(f, "release leader key: {why}"),
            Decision::Wait { why } => write!(f, "wait: {why}"),
            Decision::Fatal { why } => write!(f, "fatal: {why}"),
        }
    }
}
