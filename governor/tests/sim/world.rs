//! The simulated members: each a governor (lease task, fence, watchdog, HA loop) beside a
//! PostgreSQL whose WAL is a log of unique entries. The HA loop builds a real
//! [`governor::ha::Snapshot`], calls the real [`governor::ha::decide`] (and, on the primary,
//! the real [`governor::ha::sync::step`]) and carries the decision out on the simulated
//! etcd and PostgreSQL, the way `runtime::act` does on the real ones.

use super::TTL;
use super::coordination::SimCoordination;
use super::etcd::Etcd;
use futures::executor::block_on;
use governor::dcs::Coordination;
use governor::ha::sync::{self, Standby, SyncMode};
use governor::ha::{
    DataDir, DcsView, Decision, FailsafeView, LeaseView, LocalState, PeerView, PgState, RunningPg,
    Snapshot, StartAs,
};
use governor::runtime::failsafe;
use spilo_model::{
    HistoryEntry, Lsn, MemberName, MemberRole, MemberState, MemberStatus, MemberTags, SyncState,
    TimelineId, WalPositions,
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
}

impl Standbys {
    /// Parses what `sync::standby_names` renders.
    pub fn parse(s: &str) -> Standbys {
        match s {
            "" => Standbys::None,
            "*" => Standbys::Any,
            _ => {
                let inner = s
                    .split_once('(')
                    .map_or("", |(_, r)| r.trim_end_matches(')'));
                Standbys::All(
                    inner
                        .split(',')
                        .filter_map(|n| MemberName::new(n.trim().trim_matches('"')).ok())
                        .collect(),
                )
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
    pub sync_pending: BTreeMap<MemberName, Lsn>,
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
    /// Failsafe: the next round of confirmations.
    pub next_confirm: u64,
    /// Failsafe: since when members of the key have been missing from etcd.
    pub failsafe_absent: BTreeMap<MemberName, Instant>,
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
            sync_pending: BTreeMap::new(),
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
            fence_lease: None,
            rate_ppm: 1_000_000,
            offset_ms: 0,
            wall_offset_s: 0,
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
    }

    /// Runs as a writable primary.
    pub fn writable(&self) -> bool {
        self.pg == Pg::Primary
    }

    /// Its WAL position.
    pub fn lsn(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.log.len() as u64)
    }

    /// What it publishes in its member key.
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
            tags: MemberTags::default(),
            pending_restart: false,
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
                status: (p.up && !p.frozen && !p.partitioned && !m.partitioned).then(|| p.status()),
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
        tags: MemberTags::default(),
        dcs,
        lease: LeaseView {
            id: m.lease,
            valid_until: m.valid_until.map(|t| clock.at(t)),
        },
        local: LocalState {
            data,
            postgres,
            recent_crashes: m
                .crashes
                .iter()
                .filter(|t| now.saturating_sub(**t) < 300_000)
                .count() as u32,
            primary_down_since: m.primary_down_since.map(|t| clock.at(t)),
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

/// What an action did that the checker must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing of note.
    None,
    /// This member was promoted (not a bootstrap).
    Promoted,
}

/// The world's mutable parts an action touches.
pub struct Ctx<'a> {
    /// The members.
    pub members: &'a mut [Member],
    /// etcd.
    pub etcd: &'a mut Etcd,
    /// Unique ids for WAL entries.
    pub next_id: &'a mut u64,
    /// The member's own clock.
    pub now: u64,
    /// Real (etcd's) time.
    pub real_now: u64,
    /// Maps it onto instants.
    pub clock: Clock,
}

impl Ctx<'_> {
    fn id(&mut self) -> u64 {
        *self.next_id += 1;
        *self.next_id
    }

    fn index(&self, name: &MemberName) -> Option<usize> {
        self.members.iter().position(|m| m.name == *name)
    }

    /// A clean stop of member `i`'s primary: the shutdown checkpoint is written and sent to
    /// every standby streaming from it before PostgreSQL exits.
    fn clean_stop(&mut self, i: usize) {
        let id = self.id();
        self.members[i].stop(Some(id));
        let Some(src) = self.members[i].data.clone() else {
            return;
        };
        let name = self.members[i].name.clone();
        for m in self.members.iter_mut() {
            if m.pg
                == (Pg::Replica {
                    upstream: Some(name.clone()),
                })
                && m.streaming
                && !m.partitioned
                && let Some(d) = &mut m.data
                && d.prefix_of(&src)
            {
                d.log = src.log.clone();
            }
        }
    }

    fn reachable_primary(&self, i: usize, leader: &MemberName) -> Option<usize> {
        let j = self.index(leader)?;
        (!self.members[i].partitioned
            && !self.members[j].partitioned
            && self.members[j].pg == Pg::Primary)
            .then_some(j)
    }

    /// Carries out decision `d` of member `i` (the snapshot it decided on was taken at the
    /// same virtual instant, so nothing moved in between).
    pub fn act(&mut self, i: usize, d: &Decision) -> Result<Event, String> {
        let me = self.members[i].name.clone();
        let lease = self.members[i].lease;
        match d {
            Decision::Bootstrap => {
                let Some(lease) = lease else {
                    return Ok(Event::None);
                };
                if !done(block_on(self.dcs(&me).try_claim_initialize(lease))) {
                    return Ok(Event::None);
                }
                let m = &mut self.members[i];
                m.data = Some(Data {
                    log: Vec::new(),
                    timeline: 1,
                    was_primary: true,
                    clean_checkpoint: None,
                });
                m.pg = Pg::Primary;
                m.fence_lease = Some(lease);
                if !done(block_on(self.dcs(&me).try_acquire_leader(lease))) {
                    return Err("the leader key was taken during bootstrap".into());
                }
                if !done(block_on(self.dcs(&me).set_initialize("7000"))) {
                    return Err("the initialize key changed during bootstrap".into());
                }
            }
            Decision::Clone { leader } => {
                if let Some(j) = self.reachable_primary(i, leader) {
                    let mut d = self.members[j].data.clone().expect("primary has data");
                    d.was_primary = false;
                    d.clean_checkpoint = None;
                    let m = &mut self.members[i];
                    m.data = Some(d);
                    m.standbys = Standbys::None;
                    m.pg = Pg::Replica {
                        upstream: Some(leader.clone()),
                    };
                    m.not_streaming_since = None;
                }
            }
            Decision::Rewind { leader, .. } => {
                if let Some(j) = self.reachable_primary(i, leader) {
                    let src = self.members[j].data.clone().expect("primary has data");
                    let m = &mut self.members[i];
                    m.stop(None);
                    let d = m.data.as_mut().expect("rewind needs data");
                    let keep = d.common(&src);
                    d.log.truncate(keep);
                    d.timeline = src.timeline;
                    d.was_primary = false;
                    d.clean_checkpoint = None;
                    m.standbys = Standbys::None;
                    m.pg = Pg::Replica {
                        upstream: Some(leader.clone()),
                    };
                }
            }
            Decision::Start { role, .. } => {
                let m = &mut self.members[i];
                let d = m.data.as_mut().expect("start needs data");
                d.clean_checkpoint = None;
                match role {
                    StartAs::Primary => {
                        d.was_primary = true;
                        m.pg = Pg::Primary;
                        m.fence_lease = lease;
                    }
                    StartAs::Replica { upstream } => {
                        d.was_primary = false;
                        m.standbys = Standbys::None;
                        m.pg = Pg::Replica {
                            upstream: upstream.clone(),
                        };
                        m.not_streaming_since = None;
                    }
                }
            }
            Decision::Follow { leader } => {
                let m = &mut self.members[i];
                if m.pg
                    != (Pg::Replica {
                        upstream: Some(leader.clone()),
                    })
                {
                    m.pg = Pg::Replica {
                        upstream: Some(leader.clone()),
                    };
                    m.not_streaming_since = None;
                }
            }
            Decision::AcquireLeader { .. } => {
                let Some(lease) = lease else {
                    return Ok(Event::None);
                };
                // The gate, as in `runtime::act`: no race while a promise holds; closed
                // while racing.
                let m = &mut self.members[i];
                if m.gate.close_for_race(self.clock.at(self.now)).is_err() {
                    return Ok(Event::None);
                }
                if done(block_on(self.dcs(&me).try_acquire_leader(lease))) {
                    return self.promote(i);
                }
                self.members[i].gate.open();
            }
            Decision::ReclaimLeader { .. } => {
                if let Some(lease) = lease
                    && done(block_on(self.dcs(&me).try_acquire_leader(lease)))
                {
                    self.members[i].fence_lease = Some(lease);
                }
            }
            Decision::Promote { .. } => return self.promote(i),
            Decision::Lead => {
                self.members[i].fence_lease = lease;
                self.lead(i);
            }
            Decision::Switchover {
                to,
                lease: to_lease,
            } => {
                let Some(lease) = lease else {
                    return Ok(Event::None);
                };
                let Some(j) = self.index(to) else {
                    return Ok(Event::None);
                };
                let streams = self.members[j].pg
                    == (Pg::Replica {
                        upstream: Some(me.clone()),
                    })
                    && self.members[j].streaming;
                if !streams {
                    self.clear_switchover(&me);
                    return Ok(Event::None);
                }
                self.clean_stop(i);
                let mine = self.members[i].data.clone().expect("data");
                let got = self.members[j]
                    .data
                    .as_ref()
                    .is_some_and(|d| mine.prefix_of(d));
                if !got
                    || !done(block_on(
                        self.dcs(&me).hand_over_leader(lease, to, *to_lease),
                    ))
                {
                    self.clear_switchover(&me);
                }
            }
            Decision::ClearSwitchover { .. } => self.clear_switchover(&me),
            Decision::Demote { .. } => self.members[i].stop(None),
            Decision::ReleaseLeader { .. } => {
                if self.members[i].pg == Pg::Primary {
                    self.clean_stop(i);
                } else {
                    self.members[i].stop(None);
                }
                if let Some(lease) = lease {
                    let _ = block_on(self.dcs(&me).release_leader(lease));
                }
                self.members[i].crashes.clear();
                self.members[i].primary_down_since = None;
            }
            Decision::Wait { .. } => {}
            Decision::Fatal { why } => return Err(format!("{me} decided fatal: {why}")),
        }
        Ok(Event::None)
    }

    fn promote(&mut self, i: usize) -> Result<Event, String> {
        let me = self.members[i].name.clone();
        if let Some(mode) = SyncMode::from_config(Some(&self.etcd.config)) {
            let rev = self.etcd.sync.as_ref().map_or(0, |(_, r)| *r);
            let fresh = SyncState {
                leader: Some(me.clone()),
                members: Vec::new(),
            };
            if !done(block_on(self.dcs(&me).write_sync(Some(&fresh), rev))) {
                return Ok(Event::None);
            }
            self.members[i].sync_pending.clear();
            self.members[i].standbys = if mode.strict {
                Standbys::Any
            } else {
                Standbys::None
            };
        }
        let top = self
            .etcd
            .history
            .iter()
            .map(|h| h.timeline.0)
            .chain(
                self.members
                    .iter()
                    .filter_map(|m| m.data.as_ref().map(|d| d.timeline)),
            )
            .max()
            .unwrap_or(1);
        let tl = top + 1;
        let entry = HistoryEntry {
            timeline: TimelineId(tl),
            switch_lsn: Lsn(self.members[i].lsn()),
            reason: "simulated".into(),
            promoted_at: String::new(),
            member: me.clone(),
        };
        let _ = block_on(self.dcs(&me).append_history(&entry));
        let m = &mut self.members[i];
        let d = m.data.as_mut().expect("promoted member has data");
        d.timeline = tl;
        d.was_primary = true;
        d.clean_checkpoint = None;
        m.pg = Pg::Primary;
        m.fence_lease = m.lease;
        m.streaming = false;
        m.not_streaming_since = None;
        Ok(Event::Promoted)
    }

    fn lead(&mut self, i: usize) {
        self.manage_failsafe(i);
        let me = self.members[i].name.clone();
        let mode = SyncMode::from_config(Some(&self.etcd.config));
        let my_len = self.members[i].lsn();
        let standbys: Vec<Standby> = self
            .members
            .iter()
            .filter(|m| {
                m.pg == Pg::Replica {
                    upstream: Some(me.clone()),
                } && m.streaming
            })
            .map(|m| Standby {
                name: m.name.clone(),
                streaming: true,
                sync: match &self.members[i].standbys {
                    Standbys::All(names) => names.contains(&m.name),
                    _ => false,
                },
                flush: Some(Lsn(m.lsn())),
            })
            .collect();
        let key = self.etcd.sync.as_ref().map(|(s, _)| s.clone());
        let rev = self.etcd.sync.as_ref().map_or(0, |(_, r)| *r);
        let step = sync::step(
            &me,
            mode,
            key.as_ref(),
            &standbys,
            &|_| true,
            &self.members[i].sync_pending,
            Lsn(my_len),
        );
        if let Some(k) = &step.key
            && !done(block_on(self.dcs(&me).write_sync(k.as_ref(), rev)))
        {
            return;
        }
        self.members[i].sync_pending = step.pending;
        self.members[i].standbys = Standbys::parse(&step.standby_names);
    }

    /// The leader's `failsafe` key and its confirmation peers, through the runtime's own
    /// functions.
    fn manage_failsafe(&mut self, i: usize) {
        let me = self.members[i].name.clone();
        let Some(lease) = self.members[i].lease else {
            return;
        };
        if !self.etcd.config.failsafe_mode {
            self.members[i].failsafe_peers = None;
            if self.etcd.failsafe.is_some() {
                let _ = block_on(self.dcs(&me).write_failsafe(None, lease));
            }
            return;
        }
        let url = self.members[i].status().api_url;
        let seen: BTreeMap<MemberName, MemberStatus> = self
            .etcd
            .members
            .iter()
            .map(|(n, (st, _))| (n.clone(), st.clone()))
            .collect();
        let current = self.etcd.failsafe.clone();
        let wanted = failsafe::key_members(
            (&me, &url),
            &seen,
            current.as_ref(),
            &mut self.members[i].failsafe_absent,
            self.clock.at(self.now),
            Duration::from_millis(3 * TTL),
        );
        // As the runtime: confirmations count only once the key read back lists this member.
        self.members[i].failsafe_peers =
            current.as_ref().filter(|k| k.contains_key(&me)).map(|_| {
                failsafe::peers(&me, &wanted, current.as_ref())
                    .into_iter()
                    .map(|p| p.name)
                    .collect()
            });
        if current.as_ref() != Some(&wanted) {
            let _ = block_on(self.dcs(&me).write_failsafe(Some(&wanted), lease));
        }
    }

    /// `me`'s connection to etcd, at etcd's (real) time.
    fn dcs(&mut self, me: &MemberName) -> SimCoordination<'_> {
        SimCoordination::new(self.etcd, me, self.real_now, TTL)
    }

    /// Drops the pending switchover request, as the runtime does when it refuses or fails it.
    fn clear_switchover(&mut self, me: &MemberName) {
        if let Some(req) = self.etcd.switchover.clone() {
            let _ = block_on(self.dcs(me).clear_switchover(&req));
        }
    }
}

/// Whether a conditional write happened (an error is a failed action, as in the runtime).
fn done(r: Result<bool, governor::dcs::DcsError>) -> bool {
    matches!(r, Ok(true))
}
