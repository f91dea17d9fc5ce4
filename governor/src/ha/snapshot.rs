//! The snapshot `decide` reads: everything the runtime gathered about etcd, this member's
//! lease, its local PostgreSQL and the other members, frozen at one moment. Plain data; the
//! runtime builds it, tests write it by hand.

use spilo_model::{
    ClusterConfig, HistoryEntry, Lsn, MemberName, MemberStatus, MemberTags, StandbySource,
    SwitchoverRequest, SyncState, TimelineId, WalPositions,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One gathered view of the world.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// This member.
    pub me: MemberName,
    /// This member's tags.
    pub tags: MemberTags,
    /// What etcd holds for the cluster, or why it could not be read.
    pub dcs: DcsView,
    /// This member's etcd lease.
    pub lease: LeaseView,
    /// The local data directory and PostgreSQL.
    pub local: LocalState,
    /// The other members' own answers, fetched only while the cluster has no leader.
    pub peers: Vec<PeerView>,
    /// Failsafe mode's confirmations, given and received.
    pub failsafe: FailsafeView,
    /// Wall-clock time as Unix seconds, for scheduled switchovers.
    pub unix_now: u64,
}

/// etcd as seen by this member.
// One per loop pass and never stored in bulk: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum DcsView {
    /// A consistent read of the cluster's keys.
    Known(ClusterView),
    /// The read failed; nothing is known about the cluster, which is not the same as "empty".
    Unreachable {
        /// The error.
        why: String,
    },
}

/// The cluster's keys, parsed.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// `initialize`: `Some("")` while a member bootstraps, the system identifier afterwards.
    pub initialize: Option<String>,
    /// `leader`.
    pub leader: Option<LeaderKey>,
    /// `members/*`.
    pub members: BTreeMap<MemberName, MemberStatus>,
    /// `history`.
    pub history: Vec<HistoryEntry>,
    /// `config`.
    pub config: Option<ClusterConfig>,
    /// `switchover`: a pending switchover or manual failover request.
    pub switchover: Option<SwitchoverRequest>,
    /// `sync`: the synchronous standbys, and the key's mod revision (0 when absent).
    pub sync: Option<SyncState>,
    /// The mod revision of `sync` (0 when absent).
    pub sync_revision: i64,
    /// The lease each member key is bound to (the lease a leader key handed to it must carry).
    pub member_leases: BTreeMap<MemberName, i64>,
    /// `failsafe`: the members a failsafe-mode primary must hear from, with their REST API
    /// URLs. `None` when absent or unreadable.
    pub failsafe: Option<BTreeMap<MemberName, String>>,
    /// Not a key: how this cluster follows a standby cluster of it (`downstream` in `config`)
    /// that a member of it answered runs as primary, i.e. was promoted over this cluster.
    /// The runtime asks them at every pass while `config` names no source.
    pub fenced_by: Option<StandbySource>,
}

impl ClusterView {
    /// Whether maintenance mode is on.
    pub fn paused(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.pause)
    }

    /// Whether synchronous mode is on.
    pub fn synchronous(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.synchronous_mode)
    }

    /// Whether failsafe mode is on.
    pub fn failsafe_mode(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.failsafe_mode)
    }

    /// In synchronous mode, the members that may be promoted: the `sync` key's standbys and
    /// the primary that wrote it (it has every commit it acknowledged; a primary that crashed
    /// before confirming any standby must be able to come back). Empty when there is no key.
    /// `None` outside synchronous mode: anyone may.
    pub fn promotable(&self) -> Option<Vec<MemberName>> {
        self.synchronous().then(|| {
            self.sync.as_ref().map_or_else(Vec::new, |s| {
                s.leader.iter().chain(&s.members).cloned().collect()
            })
        })
    }
}

/// The `leader` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// Who holds it.
    pub name: MemberName,
    /// The lease it is bound to.
    pub lease: i64,
}

/// Failsafe mode, as this member knows it.
///
/// A primary whose lease cannot be renewed asks every member (`POST /failsafe`); when all of
/// them accept, it may stay writable until `confirmed_until` (the send time plus the TTL).
/// A member that accepts promises not to take the leader key until `quiet_until` (the receipt
/// time plus the TTL, never earlier than the primary's own deadline).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailsafeView {
    /// As primary: until when every member confirmed it.
    pub confirmed_until: Option<Instant>,
    /// As replica: no leader race before this instant. Set by an accepted confirmation, and
    /// to the start of the governor plus the TTL (a restarted governor has forgotten what it
    /// promised).
    pub quiet_until: Option<Instant>,
    /// Whose confirmation set `quiet_until`; `None` for the start-up quiet period.
    pub quiet_for: Option<MemberName>,
}

impl FailsafeView {
    /// Whether the primary's confirmation still holds for more than `margin` at `now`.
    pub fn confirmed_at(&self, now: Instant, margin: Duration) -> bool {
        self.confirmed_until.is_some_and(|t| now + margin < t)
    }
}

/// This member's lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// The lease id, when one is granted and not known to have expired.
    pub id: Option<i64>,
    /// The local instant by which etcd may expire it: the send time of the last renewal that
    /// succeeded, plus the TTL.
    pub valid_until: Option<Instant>,
}

impl LeaseView {
    /// Whether the lease is still good for more than `margin` at `now`.
    pub fn valid_at(&self, now: Instant, margin: Duration) -> bool {
        self.id.is_some() && self.valid_until.is_some_and(|t| now + margin < t)
    }
}

/// The local data directory and PostgreSQL process.
#[derive(Debug, Clone)]
pub struct LocalState {
    /// What the data directory holds.
    pub data: DataDir,
    /// What PostgreSQL is doing.
    pub postgres: PgState,
    /// Unexpected PostgreSQL exits within the runtime's crash window.
    pub recent_crashes: u32,
    /// Since when a primary this member leads has been down, if it is.
    pub primary_down_since: Option<Instant>,
    /// Why this member must not try to bootstrap a new cluster now (its own last attempt
    /// failed and is not to be retried yet, or at all); `None` when it may.
    pub bootstrap_blocked: Option<String>,
    /// The last time this member saw a leader key or a member with data (its own start until
    /// it has seen one): how long the cluster has been without both.
    pub data_seen_at: Instant,
}

/// The data directory, as pg_controldata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// No PostgreSQL data yet.
    Empty,
    /// A PostgreSQL data directory.
    Initialized {
        /// The database system identifier.
        sysid: String,
        /// Whether it was last running as a primary (not in recovery).
        was_primary: bool,
        /// Its timeline.
        timeline: TimelineId,
        /// After a clean shutdown of a primary: the location of the shutdown checkpoint, the
        /// last record of its WAL. Lets it follow a new timeline that began after that point
        /// without pg_rewind.
        clean_checkpoint: Option<Lsn>,
    },
}

/// The local PostgreSQL process.
#[derive(Debug, Clone)]
pub enum PgState {
    /// Not running.
    Stopped,
    /// Started and not answering yet.
    Starting {
        /// When it was started.
        since: Instant,
        /// Whether it was started as a primary.
        as_primary: bool,
    },
    /// Answering queries.
    Running(RunningPg),
}

/// What a running PostgreSQL reported.
#[derive(Debug, Clone, Default)]
pub struct RunningPg {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The timeline it is on.
    pub timeline: Option<TimelineId>,
    /// Its WAL positions.
    pub wal: WalPositions,
    /// The member its `primary_conninfo` points at.
    pub upstream: Option<MemberName>,
    /// Whether a WAL receiver is streaming.
    pub streaming: bool,
    /// Since when it has had an upstream without streaming from it.
    pub not_streaming_since: Option<Instant>,
    /// A changed setting waits for a restart (published; no decision depends on it).
    pub pending_restart: bool,
}

/// Another member, as it answered on its REST API.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Its name.
    pub name: MemberName,
    /// Its answer; `None` when it did not answer in time.
    pub status: Option<MemberStatus>,
}
