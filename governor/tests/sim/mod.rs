//! A seeded simulation of a cluster of governors: virtual time, a simulated etcd, network and
//! PostgreSQL, random faults, and the real HA decision code. [`run`] plays one seed and checks
//! the safety invariants after every step; any violation comes back as an error naming the
//! seed, so `SIM_SEED=<seed>` replays it.

pub mod act;
pub mod coordination;
pub mod etcd;
mod faults;
mod options;
pub mod world;

use act::{Ctx, Event};
use etcd::Etcd;
use faults::Scheduled;
use governor::dcs::Coordination;
use governor::ha::{self, Decision, HaConfig};
pub use options::Options;

/// How many crashes within the window make a primary hand leadership over (as the runtime).
pub const MAX_PRIMARY_CRASHES: u32 = 3;
use governor::runtime::bootstrap::Cleanup;
use governor::runtime::fence;
use spilo_model::{ClusterConfig, MemberName};
use std::time::Duration;
use world::{BootstrapFault, Clock, Member, Pg, Standbys};

/// Virtual milliseconds per step.
const TICK: u64 = 20;
pub const TTL: u64 = 4_000;
const LOOP_WAIT: u64 = 1_000;
const RENEW: u64 = TTL / 8;
const MARGIN: u64 = 1_000;
/// Faults are injected from here...
const FAULTS_FROM: u64 = 10_000;
/// ...to here; then the cluster must converge.
const FAULTS_UNTIL: u64 = 100_000;
/// It must have converged by here.
const END: u64 = 160_000;

/// What one seed did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Promotions after the bootstrap.
    pub failovers: u64,
    /// Faults injected.
    pub faults: u64,
    /// Commits acknowledged to clients.
    pub acked: u64,
    /// Steps in which a primary stayed writable without the leader key on failsafe mode's
    /// confirmations.
    pub failsafe_steps: u64,
    /// Bootstraps that failed on an injected fault: data kept, data wiped.
    pub bootstrap_kept: u64,
    pub bootstrap_wiped: u64,
    /// Seeds with a member tagged `nofailover`.
    pub tagged: u64,
    /// Seeds in quorum commit mode, and promotions after the bootstrap in them.
    pub quorum: u64,
    pub quorum_failovers: u64,
    /// Decisions carried out through the runtime's `act`, by kind (repeats counted).
    pub actions: std::collections::BTreeMap<&'static str, u64>,
}

struct Sim {
    rng: fastrand::Rng,
    clock: Clock,
    now: u64,
    etcd: Etcd,
    members: Vec<Member>,
    cfg: HaConfig,
    next_id: u64,
    /// Commits a primary wrote, not yet acknowledged: (member, position, id).
    pending: Vec<(usize, usize, u64)>,
    /// Acknowledged commit ids.
    acked: Vec<u64>,
    undo: Vec<Scheduled>,
    synchronous: bool,
    failsafe: bool,
    quorum: bool,
    /// The negative control of the quorum rule: members decide as if the `sync` key were a
    /// `FIRST` list.
    quorum_blind: bool,
    /// The negative control of the fence: `act` arms it, the model ignores it.
    fence_never_armed: bool,
    stats: Stats,
    trace: Vec<String>,
}

/// Plays `seed` in the default world.
pub fn run(seed: u64) -> Result<Stats, String> {
    run_with(seed, Options::default())
}

/// Plays `seed`. `Err` describes the first violated invariant, with the recent trace.
pub fn run_with(seed: u64, options: Options) -> Result<Stats, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = [2usize, 3, 3, 3, 4][rng.usize(..5)];
    let synchronous = rng.bool() || options.quorum_blind;
    let strict = synchronous && rng.u8(..4) == 0;
    // Quorum commit in half of the synchronous seeds, from a generator of its own so the other
    // seeds play exactly as before; with 4 members, ANY 2 of 3 in half of those.
    let mut q = fastrand::Rng::with_seed(seed ^ 0x5155_4f52_554d);
    let quorum = synchronous && (q.bool() || options.quorum_blind);
    let count = if quorum && n == 4 && q.bool() { 2 } else { 1 };
    let failsafe = rng.bool();
    let config = ClusterConfig {
        ttl: Some(TTL / 1000),
        loop_wait: Some(LOOP_WAIT / 1000),
        synchronous_mode: synchronous,
        synchronous_mode_strict: strict,
        synchronous_mode_quorum: quorum,
        synchronous_node_count: synchronous.then_some(count),
        failsafe_mode: failsafe,
        ..Default::default()
    };
    let mut sim = Sim {
        rng,
        clock: Clock::new(),
        now: 0,
        etcd: Etcd::new(config),
        members: (1..=n).map(|i| Member::new(&format!("m{i}"))).collect(),
        cfg: HaConfig {
            maximum_lag_on_failover: 1 << 20,
            primary_start_timeout: Duration::from_secs(30),
            max_primary_crashes: MAX_PRIMARY_CRASHES,
            fence_margin: Duration::from_millis(MARGIN),
            rewind_check_after: Duration::from_secs(15),
            // The simulated members have no archive.
            archive_recovery_after: None,
            standby: None,
        },
        next_id: 0,
        pending: Vec::new(),
        acked: Vec::new(),
        undo: Vec::new(),
        synchronous,
        failsafe,
        quorum,
        quorum_blind: options.quorum_blind,
        fence_never_armed: options.fence_never_armed,
        stats: Stats {
            quorum: u64::from(quorum),
            ..Stats::default()
        },
        trace: Vec::new(),
    };
    let (slowest, fastest) = options.clock_rate_ppm;
    for (i, m) in sim.members.iter_mut().enumerate() {
        m.next_loop = i as u64 * 7;
        m.rate_ppm = sim.rng.u64(slowest..=fastest);
    }
    // Tags and bootstrap faults come from a second generator, so the schedules the first one
    // draws (and the pinned seeds) stay as they were.
    let mut extra = fastrand::Rng::with_seed(seed ^ 0x5EED_7A65);
    if n >= 3 && extra.u8(..3) == 0 {
        sim.members[n - 1].tags.nofailover = true;
        sim.stats.tagged = 1;
    }
    let bootstrap_fault = if options.wipe_after_initialize {
        Some(BootstrapFault::AfterInitializeWiped)
    } else {
        [
            Some(BootstrapFault::BeforeInitialize),
            Some(BootstrapFault::InitializeAnswerLost),
            Some(BootstrapFault::AfterInitialize),
        ]
        .get(extra.usize(..8))
        .copied()
        .flatten()
    };
    for m in &mut sim.members {
        m.bootstrap_fault = bootstrap_fault;
    }
    let mut next_fault = FAULTS_FROM;
    while sim.now < END {
        if sim.now >= next_fault && sim.now < FAULTS_UNTIL {
            sim.inject();
            next_fault = sim.now + 3_000 + sim.rng.u64(..7_000);
        }
        sim.step().map_err(|e| sim.report(seed, &e))?;
        sim.now += TICK;
    }
    sim.converged().map_err(|e| sim.report(seed, &e))?;
    sim.stats.acked = sim.acked.len() as u64;
    Ok(sim.stats)
}

impl Sim {
    fn log(&mut self, line: String) {
        self.trace.push(format!("{:>7} ms  {line}", self.now));
        if self.trace.len() > 60 {
            self.trace.remove(0);
        }
    }

    fn report(&self, seed: u64, e: &str) -> String {
        format!(
            "seed {seed} ({} members, synchronous {}, failsafe {}): {e}\nlast events:\n{}",
            self.members.len(),
            self.synchronous,
            self.failsafe,
            self.trace.join("\n")
        )
    }

    fn primary(&self) -> Option<usize> {
        self.etcd
            .leader
            .as_ref()
            .and_then(|(n, _)| self.members.iter().position(|m| m.name == *n))
    }

    fn step(&mut self) -> Result<(), String> {
        self.undo_due();
        self.etcd.expire(self.now);
        self.leases();
        self.confirmations();
        self.fences();
        self.replicate();
        self.workload();
        self.loops()?;
        self.check()
    }

    /// The lease tasks: renew every TTL/8 when etcd answers; a lost lease is replaced.
    fn leases(&mut self) {
        let now = self.now;
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if !m.up || m.frozen || now < m.next_renew {
                continue;
            }
            let reachable = m.reaches_etcd(&self.etcd);
            let delay = self.rng.u64(..40);
            let m = &mut self.members[i];
            m.next_renew = now + RENEW;
            if !reachable {
                continue;
            }
            // etcd expires on real time; the member counts on its own clock.
            let expires = now + delay + TTL;
            let local = m.local(now);
            match m.lease {
                Some(id) if self.etcd.keepalive(id, expires) => m.valid_until = Some(local + TTL),
                _ => {
                    m.lease = Some(self.etcd.grant(expires));
                    m.valid_until = Some(local + TTL);
                }
            }
        }
    }

    /// The in-process fence (governor running) and the watchdog process (also while the
    /// governor is frozen) stop a primary whose lease is about to end.
    fn fences(&mut self) {
        let now = self.now;
        for i in 0..self.members.len() {
            let m = &self.members[i];
            // An unarmed fence (and the watchdog it tells) guards nothing.
            if m.pg != Pg::Primary || !m.up || !m.fence_armed {
                continue;
            }
            // The runtime's own rules (`runtime::fence`), on this member's clock.
            let lease = governor::ha::LeaseView {
                id: m.lease,
                valid_until: m.valid_until.map(|t| self.clock.at(t)),
            };
            let until = fence::writable_until(
                m.fence_lease,
                &lease,
                m.confirmed_until.map(|t| self.clock.at(t)),
            );
            let local = self.clock.at(m.local(now));
            let margin = Duration::from_millis(MARGIN);
            let fence = !m.frozen && local >= fence::fence_deadline(until, margin, local);
            let watchdog = local >= fence::watchdog_deadline(until, margin, local);
            if fence || watchdog {
                let name = m.name.clone();
                self.members[i].stop(None);
                self.log(format!(
                    "{name}: {} stops PostgreSQL",
                    if fence { "fence" } else { "watchdog" }
                ));
            }
        }
    }

    /// Failsafe mode's confirmation task, as `runtime::failsafe::run`: a primary whose lease
    /// is in trouble asks its peers each renewal interval; a peer accepts as the REST API
    /// does (it answers at all, runs no primary, its gate is open, and the leader key it sees
    /// names nobody else) and promises not to race for a TTL.
    fn confirmations(&mut self) {
        let now = self.now;
        for i in 0..self.members.len() {
            let m = &self.members[i];
            // Confirmations are promises about this member, not about one postmaster: they
            // stay until they end (the fence only counts them while it guards a primary).
            if m.pg != Pg::Primary || !m.up || m.frozen || now < m.next_confirm {
                continue;
            }
            let Some(peers) = m.failsafe_peers.clone() else {
                continue;
            };
            let lease = governor::ha::LeaseView {
                id: m.lease,
                valid_until: m.valid_until.map(|t| self.clock.at(t)),
            };
            let ttl = Duration::from_millis(TTL);
            let stale_key = m.lease != m.fence_lease;
            if !stale_key
                && !governor::runtime::failsafe::lease_in_trouble(
                    &lease,
                    self.clock.at(m.local(now)),
                    ttl,
                    Duration::from_millis(RENEW),
                )
            {
                continue;
            }
            self.members[i].next_confirm = now + RENEW;
            let me = self.members[i].name.clone();
            let cut_off = self.members[i].partitioned;
            let mut all = true;
            for name in &peers {
                let Some(j) = self.members.iter().position(|p| p.name == *name) else {
                    all = false;
                    continue;
                };
                let reaches = self.members[j].reaches_etcd(&self.etcd);
                let leader = self.etcd.leader.as_ref().map(|(n, _)| n.clone());
                let p = &mut self.members[j];
                // It answers at all; then the REST API's own checks (on what it sees of etcd:
                // the key's holder while it reaches etcd), then the runtime's gate on its
                // clock.
                let seen = governor::shared::failsafe::Seen {
                    failsafe_on: true,
                    leader: leader.as_ref().filter(|_| reaches),
                };
                let answers = p.up
                    && !p.frozen
                    && !cut_off
                    && !p.partitioned
                    && governor::shared::failsafe::may_confirm(
                        &me,
                        &p.name,
                        p.pg == Pg::Primary,
                        reaches && leader.as_ref() == Some(&p.name),
                        Some(seen),
                    )
                    .is_ok();
                let promise = governor::shared::failsafe::promise_length(ttl, TTL);
                let accepts = answers
                    && p.gate
                        .confirm(me.clone(), self.clock.at(p.local(now)), promise)
                        .is_ok();
                all &= accepts;
            }
            if all {
                let local = self.members[i].local(now);
                self.members[i].confirmed_until = Some(local + TTL);
            }
        }
    }

    /// Streaming: a replica whose WAL is a prefix of its reachable upstream primary's catches
    /// up by a few records per step; otherwise it does not stream.
    fn replicate(&mut self) {
        let now = self.now;
        for i in 0..self.members.len() {
            let Pg::Replica { upstream: Some(up) } = self.members[i].pg.clone() else {
                let m = &mut self.members[i];
                if m.pg != Pg::Primary {
                    m.streaming = false;
                    if m.pg != Pg::Stopped {
                        let local = m.local(now);
                        m.not_streaming_since.get_or_insert(local);
                    }
                }
                continue;
            };
            let src = self
                .members
                .iter()
                .position(|m| m.name == up)
                .filter(|&j| self.members[j].pg == Pg::Primary && !self.members[j].partitioned);
            let step = 1 + self.rng.usize(..4);
            // Copy only the records to ship, without cloning the upstream's whole WAL.
            let shipped = match (src, &self.members[i].data) {
                (Some(j), Some(d)) if !self.members[i].partitioned => {
                    let up = self.members[j].data.as_ref().expect("primary has data");
                    d.prefix_of(up).then(|| {
                        let to = (d.log.len() + step).min(up.log.len());
                        (up.log[d.log.len()..to].to_vec(), up.timeline)
                    })
                }
                _ => None,
            };
            let m = &mut self.members[i];
            let ok = match (shipped, &mut m.data) {
                (Some((records, tl)), Some(d)) => {
                    d.log.extend(records);
                    d.timeline = tl;
                    true
                }
                _ => false,
            };
            m.streaming = ok;
            if ok {
                m.not_streaming_since = None;
            } else {
                let local = m.local(now);
                m.not_streaming_since.get_or_insert(local);
            }
        }
    }

    /// Clients write to every member that accepts writes; a commit is acknowledged when the
    /// primary's synchronous standbys have it.
    fn workload(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].pg == Pg::Primary {
                self.next_id += 1;
                let id = self.next_id;
                let d = self.members[i].data.as_mut().expect("primary has data");
                d.log.push(world::Entry { id, tl: d.timeline });
                self.pending.push((i, d.log.len() - 1, id));
            }
        }
        let members = &self.members;
        let has = |j: usize, pos: usize, id: u64| {
            members[j]
                .data
                .as_ref()
                .is_some_and(|d| d.log.get(pos).is_some_and(|e| e.id == id))
        };
        let mut acked = Vec::new();
        self.pending.retain(|&(i, pos, id)| {
            let p = &members[i];
            if p.pg != Pg::Primary || !has(i, pos, id) {
                return false; // the client got an error: never acknowledged
            }
            let done = match &p.standbys {
                Standbys::None => true,
                Standbys::Any => members.iter().enumerate().any(|(j, m)| {
                    j != i
                        && m.pg
                            == (Pg::Replica {
                                upstream: Some(p.name.clone()),
                            })
                        && has(j, pos, id)
                }),
                Standbys::All(names) => names.iter().all(|n| {
                    members
                        .iter()
                        .position(|m| m.name == *n)
                        .is_some_and(|j| has(j, pos, id))
                }),
                Standbys::Quorum(k, names) => {
                    names
                        .iter()
                        .filter(|n| {
                            members
                                .iter()
                                .position(|m| m.name == **n)
                                .is_some_and(|j| has(j, pos, id))
                        })
                        .count()
                        >= *k
                }
            };
            if done {
                acked.push(id);
            }
            !done
        });
        self.acked.extend(acked);
    }

    /// The HA loops of the members that run and are due (or woken by a leader change).
    fn loops(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if !m.up || m.frozen || self.now < m.busy_until {
                continue;
            }
            let woken =
                m.reaches_etcd(&self.etcd) && m.seen_leader_version != self.etcd.leader_version;
            if self.now < m.next_loop && !woken {
                continue;
            }
            self.members[i].seen_leader_version = self.etcd.leader_version;
            // As `runtime::gather`: someone else leads and this member runs no primary, so
            // it confirms failsafe primaries again.
            let m = &mut self.members[i];
            if m.reaches_etcd(&self.etcd)
                && m.pg != Pg::Primary
                && self.etcd.leader.as_ref().is_none_or(|(n, _)| *n != m.name)
            {
                m.gate.open();
            }
            let local = self.members[i].local(self.now);
            let mut snap = world::snapshot(&self.members, i, &self.etcd, local, self.clock);
            if self.quorum_blind
                && let ha::DcsView::Known(v) = &mut snap.dcs
                && let Some(key) = &mut v.sync
            {
                key.quorum = None;
            }
            let d = ha::decide(&snap, &self.cfg, self.clock.at(local));
            let repeated = self.members[i].last.as_ref() == Some(&d);
            if !repeated {
                let line = format!("{}: {d}", self.members[i].name);
                self.log(line);
            }
            let was_primary = self.members[i].pg == Pg::Primary;
            let mut ctx = Ctx {
                members: &mut self.members,
                etcd: &mut self.etcd,
                next_id: &mut self.next_id,
                now: local,
                real_now: self.now,
                clock: self.clock,
                fence_never_armed: self.fence_never_armed,
            };
            let acted = ctx.act(i, &d, &snap)?;
            *self.stats.actions.entry(d.kind()).or_default() += 1;
            match acted.event {
                Event::Promoted => {
                    self.stats.failovers += 1;
                    self.stats.quorum_failovers += u64::from(self.quorum);
                    self.check_promotion(i)?;
                }
                Event::BootstrapFailed(cleanup) => {
                    let kept = matches!(cleanup, Cleanup::Keep { .. });
                    if kept {
                        self.stats.bootstrap_kept += 1;
                    } else {
                        self.stats.bootstrap_wiped += 1;
                    }
                    let line = format!(
                        "{}: bootstrap failed (injected): {cleanup:?}",
                        self.members[i].name
                    );
                    self.log(line);
                }
                Event::None => {}
            }
            if was_primary && self.members[i].pg != Pg::Primary {
                self.pending.retain(|(p, ..)| *p != i);
            }
            let m = &mut self.members[i];
            if acted.failed {
                // As the runtime's loop: a failed action publishes nothing and backs off.
                m.next_loop = self.now + LOOP_WAIT;
                m.last = Some(d);
                continue;
            }
            if let (Some(lease), true) = (m.lease, m.reaches_etcd(&self.etcd)) {
                let status = m.published(self.now);
                let name = m.name.clone();
                let dcs = coordination::SimCoordination::new(&mut self.etcd, &name, self.now, TTL);
                let _ = futures::executor::block_on(dcs.put_member(&status, lease));
            }
            let m = &mut self.members[i];
            let acts = !matches!(
                d,
                Decision::Wait { .. } | Decision::Lead | Decision::Follow { .. }
            );
            m.next_loop = if acts && !repeated {
                self.now + TICK
            } else {
                self.now + LOOP_WAIT
            };
            m.last = Some(d);
        }
        Ok(())
    }

    /// In synchronous mode nothing acknowledged may be missing on a newly promoted primary.
    fn check_promotion(&self, i: usize) -> Result<(), String> {
        if !self.synchronous {
            return Ok(());
        }
        let d = self.members[i].data.as_ref().expect("data");
        let have: std::collections::HashSet<u64> = d.log.iter().map(|e| e.id).collect();
        let missing: Vec<u64> = self
            .acked
            .iter()
            .filter(|id| !have.contains(id))
            .copied()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} was promoted without {} acknowledged commit(s), e.g. {:?}",
                self.members[i].name,
                missing.len(),
                &missing[..missing.len().min(5)]
            ))
        }
    }

    /// After every step: at most one member accepts writes, and it holds the leader key (in
    /// failsafe mode: or the key is gone and every member it must ask confirmed it); a member
    /// tagged `nofailover` never holds the leader key nor is named in `sync`.
    fn check(&mut self) -> Result<(), String> {
        for m in self.members.iter().filter(|m| m.tags.nofailover) {
            if self.etcd.leader.as_ref().is_some_and(|(n, _)| *n == m.name) {
                return Err(format!(
                    "{} is tagged nofailover but holds the leader key",
                    m.name
                ));
            }
            if self
                .etcd
                .sync
                .as_ref()
                .is_some_and(|(s, _)| s.members.contains(&m.name))
            {
                return Err(format!("{} is tagged nofailover but named in sync", m.name));
            }
        }
        let writable: Vec<&MemberName> = self
            .members
            .iter()
            .filter(|m| m.writable())
            .map(|m| &m.name)
            .collect();
        if writable.len() > 1 {
            return Err(format!("two writable members: {writable:?}"));
        }
        if let Some(w) = writable.first() {
            let holder = self.etcd.leader.as_ref().map(|(n, _)| n);
            let confirmed = self
                .members
                .iter()
                .find(|m| m.name == **w)
                .and_then(|m| m.confirmed_until.map(|t| m.local(self.now) < t))
                .unwrap_or(false);
            if holder.is_none() && confirmed && self.failsafe {
                self.stats.failsafe_steps += 1;
            } else if holder != Some(*w) {
                return Err(format!(
                    "{w} accepts writes but the leader key is {holder:?}"
                ));
            }
        }
        Ok(())
    }

    /// Once faults stop: one primary holding the key, every member running and streaming
    /// from it.
    fn converged(&self) -> Result<(), String> {
        let Some(p) = self.primary() else {
            return Err("no leader at the end".into());
        };
        let leader = &self.members[p];
        if !leader.writable() {
            return Err(format!(
                "{} holds the key but is not primary at the end",
                leader.name
            ));
        }
        for m in self.members.iter().filter(|m| m.name != leader.name) {
            let follows =
                m.pg == Pg::Replica {
                    upstream: Some(leader.name.clone()),
                } && m.streaming;
            if !follows {
                return Err(format!(
                    "{} does not stream from {} at the end ({:?}, streaming {})",
                    m.name, leader.name, m.pg, m.streaming
                ));
            }
        }
        Ok(())
    }
}
