//! The simulated members: each a governor (lease task, fence, watchdog, HA loop) beside a
//! PostgreSQL whose WAL is a log of unique entries. The HA loop builds a real
//! [`governor::ha::Snapshot`], calls the real [`governor::ha::decide`] (and, on the primary,
//! the real [`governor::ha::sync::step`]); [`super::act`] carries the decision out on the
//! simulated etcd and PostgreSQL, the way `runtime::act` does on the real ones.

use super::TTL;
use super::etcd::Etcd;
use governor::ha::{
    DataDir, DcsView, Decision, FailsafeView, LeaseView, LocalState, PeerView, PgState, RunningPg,
    Snapshot,
};
use governor::shared::failsafe;
use spilo_model::{
    Lsn, MemberName, MemberRole, MemberState, MemberStatus, MemberTags, TimelineId, WalPositions,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One WAL record: unique id (a commit or a shutdown checkpoint) and its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Unique across the run.
    pub id: u64,
    /// The timeline it was written on.
    pub tl: u32,
}

/// A data directory.
#[derive(Debug, Clone)]
pub struct Data {
    /// Its WAL.
    pub log: Vec<Entry>,
    /// Its timeline.
    pub timeline: u32,
    /// Last ran as a primary.
    pub was_primary: bool,
    /// After a clean primary shutdown: the shutdown checkpoint's position.
    pub clean_checkpoint: Option<u64>,
}

impl Data {
    /// Whether `self.log` is a prefix of `other` (ids are unique, so the last entry decides).
    pub fn prefix_of(&self, other: &Data) -> bool {
        match self.log.last() {
            None => true,
            Some(last) => other.log.get(self.log.len() - 1) == Some(last),
        }
    }

    /// The common prefix length with `other`.
    pub fn common(&self, other: &Data) -> usize {
        self.log
            .iter()
            .zip(&other.log)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// What the PostgreSQL process does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pg {
    /// Not running.
    Stopped,
    /// Accepting writes.
    Primary,
    /// In recovery, streaming from `upstream` if set.
    Replica {
        /// Its upstream.
        upstream: Option<MemberName>,
    },
}

/// `synchronous_standby_names` as the simulation reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Standbys {
    /// Empty: asynchronous.
    #[default]
    None,
    /// `*`: any one streaming standby.
    Any,
    /// `FIRST n (...)` naming all: every one of them.
    All(Vec<MemberName>),
    /// `ANY k (...)`: any `k` of them.
    Quorum(usize, Vec<MemberName>),
}

impl Standbys {
    /// Parses what `sync::standby_names` renders.
    pub fn parse(s: &str) -> Standbys {
        match s {
            "" => Standbys::None,
            "*" => Standbys::Any,
            _ => {
                let (head, inner) = s
                    .split_once('(')
                    .map_or(("", ""), |(h, r)| (h, r.trim_end_matches(')')));
                let names = inner
                    .split(',')
                    .filter_map(|n| MemberName::new(n.trim().trim_matches('"')).ok())
                    .collect();
                match head.trim().strip_prefix("ANY ") {
                    Some(k) => Standbys::Quorum(k.trim().parse().unwrap_or(usize::MAX), names),
                    None => Standbys::All(names),
                }
            }
        }
    }
}

/// One member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name.
    pub name: MemberName,
    /// The governor runs (not crashed).
    pub up: bool,
    /// The governor is frozen (SIGSTOP): none of its tasks run; its PostgreSQL and watchdog do.
    pub frozen: bool,
    /// Cut off from etcd and the other members (clients still reach it).
    pub partitioned: bool,
    /// Cut off from etcd only: the other members and clients still reach it.
    pub etcd_cut: bool,
    /// The governor's lease.
    pub lease: Option<i64>,
    /// Local end of the lease: send time of the last successful renewal + TTL.
    pub valid_until: Option<u64>,
    /// Next renewal.
    pub next_renew: u64,
    /// Next HA loop pass.
    pub next_loop: u64,
    /// A slow action keeps the loop busy until then.
    pub busy_until: u64,
    /// The leader version it last saw (the watch wakes it on change).
    pub seen_leader_version: u64,
    /// PostgreSQL.
    pub pg: Pg,
    /// The data directory; `None` when empty.
    pub data: Option<Data>,
    /// Streaming right now.
    pub streaming: bool,
    /// Since when it has had an upstream without streaming.
    pub not_streaming_since: Option<u64>,
    /// `synchronous_standby_names`.
    pub standbys: Standbys,
    /// `sync::step`'s pending confirmations.
    pub sync_pending: governor::ha::sync::Pending,
    /// Unexpected PostgreSQL exits.
    pub crashes: Vec<u64>,
    /// Since when the primary it leads has been down.
    pub primary_down_since: Option<u64>,
    /// The last decision, to tell a repeated one.
    pub last: Option<Decision>,
    /// When the governor process started (failsafe mode's start-up quiet period).
    pub started: u64,
    /// Failsafe: as primary, until when every member confirmed it.
    pub confirmed_until: Option<u64>,
    /// Failsafe: this member's promises, the runtime's own gate (on the member's clock).
    pub gate: Arc<failsafe::Gate>,
    /// Failsafe: the members the primary asks (set by `Lead` in failsafe mode).
    pub failsafe_peers: Option<Vec<MemberName>>,
    /// Its monotonic clock's rate, in millionths of real time (within the bounds the lease
    /// argument allows, unless a test says otherwise).
    pub rate_ppm: u64,
    /// How far its clock has jumped ahead, in ms.
    pub offset_ms: u64,
    /// How far its wall clock is off, in seconds (jumps; only scheduled switchovers read it).
    pub wall_offset_s: i64,
    /// The lease the fence counts (the one the leader key was bound to when it was armed).
    pub fence_lease: Option<i64>,
    /// The fence guards this member's PostgreSQL (armed by `act`, disarmed before a stop and
    /// when PostgreSQL exits).
    pub fence_armed: bool,
    /// The leader key as this member last saw it in etcd (the runtime's `leader_seen`): the
    /// fence counts its lease when it names this member.
    pub leader_seen: Option<(MemberName, i64)>,
    /// Failsafe: the next round of confirmations.
    pub next_confirm: u64,
    /// Failsafe: since when members of the key have been missing from etcd.
    pub failsafe_absent: BTreeMap<MemberName, Instant>,
    /// A promotion's history entry etcd has not taken yet (the leader's passes retry it).
    pub pending_history: Option<spilo_model::HistoryEntry>,
    /// Its tags (published in its member key and seen by its own decisions).
    pub tags: MemberTags,
    /// A failure its first bootstrap runs into.
    pub bootstrap_fault: Option<BootstrapFault>,
}

/// A failure injected into a bootstrap, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapFault {
    /// A step before the system identifier is written fails (initdb, the replication role).
    BeforeInitialize,
    /// The write of the system identifier into `initialize` commits, but its answer is lost.
    InitializeAnswerLost,
    /// A step after `initialize` holds the system identifier fails (the first `config`).
    AfterInitialize,
    /// The negative control: as `AfterInitialize`, but the data is wiped whatever the rule
    /// says, as the runtime did before it kept data the cluster depends on.
    AfterInitializeWiped,
}

impl Member {
    /// A fresh member, governor up, empty data directory.
    pub fn new(name: &str) -> Self {
        Member {
            name: MemberName::new(name).expect("valid"),
            up: true,
            frozen: false,
            partitioned: false,
            lease: None,
            valid_until: None,
            next_renew: 0,
            next_loop: 0,
            busy_until: 0,
            seen_leader_version: 0,
            pg: Pg::Stopped,
            data: None,
            streaming: false,
            not_streaming_since: None,
            standbys: Standbys::None,
            sync_pending: Default::default(),
            crashes: Vec::new(),
            primary_down_since: None,
            last: None,
            etcd_cut: false,
            started: 0,
            confirmed_until: None,
            gate: Arc::new(failsafe::Gate::default()),
            failsafe_peers: None,
            next_confirm: 0,
            failsafe_absent: BTreeMap::new(),
            pending_history: None,
            fence_lease: None,
            fence_armed: false,
            leader_seen: None,
            rate_ppm: 1_000_000,
            offset_ms: 0,
            wall_offset_s: 0,
            tags: MemberTags::default(),
            bootstrap_fault: None,
        }
    }

    /// Its own clock at real time `now`: every instant it records or compares is on this
    /// clock, while etcd expires leases on real time.
    pub fn local(&self, now: u64) -> u64 {
        self.offset_ms + now * self.rate_ppm / 1_000_000
    }

    /// Whether its governor reaches etcd.
    pub fn reaches_etcd(&self, etcd: &Etcd) -> bool {
        !self.partitioned && !self.etcd_cut && etcd.available
    }

    /// A new governor process: it forgets its promises and confirmations.
    pub fn restart_governor(&mut self, now: u64) {
        self.started = now;
        self.confirmed_until = None;
        self.gate = Arc::new(failsafe::Gate::default());
        self.failsafe_peers = None;
        self.failsafe_absent.clear();
        self.pending_history = None;
        self.leader_seen = None;
        self.fence_armed = false;
    }

    /// Runs as a writable primary.
    pub fn writable(&self) -> bool {
        self.pg == Pg::Primary
    }

    /// Its WAL position.
    pub fn lsn(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.log.len() as u64)
    }

    /// Its PostgreSQL's unexpected exits within the runtime's crash window (300 s).
    pub fn recent_crashes(&self, now: u64) -> u32 {
        self.crashes
            .iter()
            .filter(|t| now.saturating_sub(**t) < 300_000)
            .count() as u32
    }

    /// What it publishes (its member key, its REST status): [`Self::status`], tagged
    /// `nofailover` while it stays out of leader races after a crash loop, as the runtime does.
    pub fn published(&self, now: u64) -> MemberStatus {
        let mut st = self.status();
        st.tags.nofailover |= self.recent_crashes(now) >= super::MAX_PRIMARY_CRASHES;
        st
    }

    /// Its status from its PostgreSQL and data.
    pub fn status(&self) -> MemberStatus {
        let tl = self.data.as_ref().map(|d| TimelineId(d.timeline));
        let (role, state) = match (&self.pg, &self.data) {
            (Pg::Primary, _) => (MemberRole::Primary, MemberState::Running),
            (Pg::Replica { .. }, _) => (MemberRole::Replica, MemberState::Running),
            (Pg::Stopped, Some(_)) => (MemberRole::Replica, MemberState::Stopped),
            (Pg::Stopped, None) => (MemberRole::Uninitialized, MemberState::Stopped),
        };
        let lsn = Some(Lsn(self.lsn()));
        MemberStatus {
            conn_url: format!("postgres://{}:5432/postgres", self.name),
            api_url: format!("http://{}:8008", self.name),
            role,
            state,
            timeline: tl,
            wal: positions(role == MemberRole::Primary, lsn),
            tags: self.tags.clone(),
            pending_restart: false,
            error: None,
            postgres_version: None,
        }
    }

    /// Stops PostgreSQL. A clean stop of a primary writes a shutdown checkpoint (`checkpoint`
    /// is its id), which the caller replicates to the streaming standbys first.
    pub fn stop(&mut self, clean_checkpoint_id: Option<u64>) {
        if let (Pg::Primary, Some(id), Some(d)) = (&self.pg, clean_checkpoint_id, &mut self.data) {
            d.log.push(Entry { id, tl: d.timeline });
            d.clean_checkpoint = Some(d.log.len() as u64 - 1);
        } else if let Some(d) = &mut self.data {
            d.clean_checkpoint = None;
        }
        // `synchronous_standby_names` stays with the governor across a restart in place, as
        // in `postgres::Instance`; a start as a replica clears it.
        self.pg = Pg::Stopped;
        // The runtime disarms the fence when PostgreSQL exits.
        self.fence_armed = false;
        self.streaming = false;
        self.not_streaming_since = None;
    }
}

/// WAL positions as a member reports them: a primary its write position, a replica what it
/// received and replayed.
fn positions(primary: bool, lsn: Option<Lsn>) -> WalPositions {
    if primary {
        WalPositions {
            write: lsn,
            ..Default::default()
        }
    } else {
        WalPositions {
            receive: lsn,
            replay: lsn,
            write: None,
        }
    }
}

/// Maps virtual milliseconds onto `Instant`s for the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// Starting now.
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    /// The instant of virtual time `ms`.
    pub fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }
}

/// Builds member `i`'s snapshot at `now` (its own clock).
pub fn snapshot(members: &[Member], i: usize, etcd: &Etcd, now: u64, clock: Clock) -> Snapshot {
    let m = &members[i];
    let dcs = if !m.reaches_etcd(etcd) {
        DcsView::Unreachable {
            why: "simulated: unreachable".into(),
        }
    } else {
        DcsView::Known(etcd.view())
    };
    let no_leader = matches!(&dcs, DcsView::Known(v) if v.leader.is_none());
    let peers = if no_leader {
        members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| PeerView {
                name: p.name.clone(),
                status: (p.up && !p.frozen && !p.partitioned && !m.partitioned)
                    .then(|| p.published(now)),
            })
            .collect()
    } else {
        Vec::new()
    };
    let data = match &m.data {
        None => DataDir::Empty,
        Some(d) => DataDir::Initialized {
            sysid: "7000".into(),
            was_primary: d.was_primary,
            timeline: TimelineId(d.timeline),
            clean_checkpoint: d.clean_checkpoint.map(Lsn),
        },
    };
    let postgres = match &m.pg {
        Pg::Stopped => PgState::Stopped,
        pg => {
            let d = m.data.as_ref().expect("running PostgreSQL has data");
            let lsn = Some(Lsn(d.log.len() as u64));
            PgState::Running(RunningPg {
                in_recovery: *pg != Pg::Primary,
                timeline: Some(TimelineId(d.timeline)),
                wal: positions(*pg == Pg::Primary, lsn),
                upstream: match pg {
                    Pg::Replica { upstream } => upstream.clone(),
                    _ => None,
                },
                streaming: m.streaming,
                not_streaming_since: m.not_streaming_since.map(|t| clock.at(t)),
                pending_restart: false,
            })
        }
    };
    Snapshot {
        me: m.name.clone(),
        tags: m.tags.clone(),
        dcs,
        lease: LeaseView {
            id: m.lease,
            valid_until: m.valid_until.map(|t| clock.at(t)),
        },
        local: LocalState {
            data,
            postgres,
            recent_crashes: m.recent_crashes(now),
            primary_down_since: m.primary_down_since.map(|t| clock.at(t)),
            bootstrap_blocked: None,
            data_seen_at: clock.at(now),
        },
        peers,
        failsafe: failsafe_view(m, now, clock),
        unix_now: (now / 1000).saturating_add_signed(m.wall_offset_s),
    }
}

/// Failsafe mode as member `m` knows it, built as `runtime::gather` builds it.
fn failsafe_view(m: &Member, now: u64, clock: Clock) -> FailsafeView {
    let startup = clock.at(m.started + TTL);
    let (quiet_until, quiet_for) = match m.gate.promised(clock.at(now)) {
        Some((who, until)) if until >= startup => (until, Some(who)),
        _ => (startup, None),
    };
    FailsafeView {
        confirmed_until: m.confirmed_until.map(|t| clock.at(t)),
        quiet_until: Some(quiet_until),
        quiet_for,
    }
}
