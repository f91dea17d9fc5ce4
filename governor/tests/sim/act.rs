//! Carrying out a member's decision in the simulated world, as `runtime::act` does on the real
//! one: the etcd writes go through [`super::coordination`] (the runtime's own trait), the
//! PostgreSQL side is the model of [`super::world`].

use super::TTL;
use super::coordination::SimCoordination;
use super::etcd::Etcd;
use super::world::{BootstrapFault, Clock, Data, Member, Pg, Standbys};
use futures::executor::block_on;
use governor::dcs::Coordination;
use governor::ha::sync::Standby;
use governor::ha::{ClusterView, Decision, StartAs};
use governor::runtime;
use governor::runtime::bootstrap::{Cleanup, after_failed_bootstrap};
use spilo_model::{Lsn, MemberName, TimelineId};
use std::time::{Duration, SystemTime};

/// What an action did that the checker must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing of note.
    None,
    /// This member was promoted (not a bootstrap).
    Promoted,
    /// An injected bootstrap fault, and what the member did with its data.
    BootstrapFailed(Cleanup),
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
            Decision::RecoverFromArchive { .. } => {
                return Err(
                    "recovery from an archive, which the simulated members do not have".into(),
                );
            }
            Decision::Bootstrap => {
                let Some(lease) = lease else {
                    return Ok(Event::None);
                };
                if !done(block_on(self.dcs(&me).try_claim_initialize(lease))) {
                    return Ok(Event::None);
                }
                let fault = self.members[i].bootstrap_fault.take();
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
                // `attempted`: the failure came after the write of the system identifier.
                let failed = match fault {
                    Some(BootstrapFault::BeforeInitialize) => Some(false),
                    _ => {
                        let written = done(block_on(self.dcs(&me).set_initialize("7000")));
                        if fault.is_none() && !written {
                            return Err("the initialize key changed during bootstrap".into());
                        }
                        fault.map(|_| true)
                    }
                };
                if let Some(attempted) = failed {
                    return Ok(self.bootstrap_failed(i, lease, attempted, fault));
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
                    StartAs::StandbyLeader => {
                        return Err(format!(
                            "{me} started as a standby leader outside a standby cluster"
                        ));
                    }
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
            Decision::Lead => self.lead(i),
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
            Decision::FollowSource { .. }
            | Decision::StepDown { .. }
            | Decision::RewindFromSource { .. } => {
                return Err(format!(
                    "{me} decided as a standby cluster's member, which the simulation never configures: {d}"
                ));
            }
        }
        Ok(Event::None)
    }

    /// The runtime's own promotion (`runtime::promotion::promote`): the `sync` key first,
    /// the fence armed, PostgreSQL promoted, the new timeline recorded in `history`.
    fn promote(&mut self, i: usize) -> Result<Event, String> {
        let me = self.members[i].name.clone();
        let reaches = self.members[i].reaches_etcd(self.etcd);
        let view = self.etcd.view();
        // The simulated PostgreSQL takes the next timeline nobody has used.
        let next_timeline = self
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
            .unwrap_or(1)
            + 1;
        let mut pending = std::mem::take(&mut self.members[i].sync_pending);
        let mut history = self.members[i].pending_history.take();
        let promoted = block_on(runtime::promotion::promote(
            &me,
            &SimCoordination::new(self.etcd, &me, self.real_now, TTL).reaching(reaches),
            &mut SimPg {
                members: self.members,
                i,
                next_timeline,
            },
            &mut pending,
            &mut history,
            "simulated",
            Some(&view),
            SystemTime::UNIX_EPOCH + Duration::from_millis(self.real_now),
        ));
        self.members[i].sync_pending = pending;
        self.members[i].pending_history = history;
        Ok(match promoted {
            Ok(()) => Event::Promoted,
            // A failed action: the runtime logs it and decides again.
            Err(_) => Event::None,
        })
    }

    /// A bootstrap step failed: the runtime's own rule decides whether the data may go
    /// (`runtime::bootstrap::after_failed_bootstrap`, from the `initialize` key read after the
    /// failure); kept, PostgreSQL goes on as the primary holding the leader key; wiped, the
    /// member stops it, hands the key back and drops the empty claim, as `creation_failed`.
    fn bootstrap_failed(
        &mut self,
        i: usize,
        lease: i64,
        attempted: bool,
        fault: Option<BootstrapFault>,
    ) -> Event {
        let me = self.members[i].name.clone();
        let cleanup = if fault == Some(BootstrapFault::AfterInitializeWiped) {
            Cleanup::Wipe
        } else {
            after_failed_bootstrap(attempted, Ok(&self.etcd.initialize), Some("7000"))
        };
        if cleanup == Cleanup::Wipe {
            let m = &mut self.members[i];
            m.stop(None);
            m.data = None;
            let _ = block_on(self.dcs(&me).release_leader(lease));
            if self.etcd.initialize.as_deref() == Some("") {
                self.etcd.initialize = None;
                self.etcd.initialize_lease = None;
            }
        }
        Event::BootstrapFailed(cleanup)
    }

    /// The runtime's own leader pass (`runtime::leading::lead`): the fence, the failsafe key,
    /// a pending history entry and the synchronous standbys, on the cluster as this member
    /// sees it (nothing when it does not reach etcd).
    fn lead(&mut self, i: usize) {
        let reaches = self.members[i].reaches_etcd(self.etcd);
        let view = reaches.then(|| self.etcd.view());
        let m = &mut self.members[i];
        let me = m.name.clone();
        let url = m.status().api_url;
        let lease = m.lease;
        let mut pending = std::mem::take(&mut m.sync_pending);
        let mut history = m.pending_history.take();
        let mut absent = std::mem::take(&mut m.failsafe_absent);
        let mut asked = None;
        block_on(runtime::leading::lead(
            runtime::leading::Leader {
                name: &me,
                api_url: &url,
                lease,
                ttl: Duration::from_millis(TTL),
            },
            &SimCoordination::new(self.etcd, &me, self.real_now, TTL).reaching(reaches),
            &mut SimPg {
                members: self.members,
                i,
                next_timeline: 0,
            },
            runtime::leading::Memory {
                sync_pending: &mut pending,
                pending_history: &mut history,
                failsafe_absent: &mut absent,
            },
            view.as_ref(),
            self.clock.at(self.now),
            |peers| asked = Some(peers),
        ));
        let m = &mut self.members[i];
        m.sync_pending = pending;
        m.pending_history = history;
        m.failsafe_absent = absent;
        if let Some(peers) = asked {
            m.failsafe_peers = peers.map(|p| p.into_iter().map(|p| p.name).collect());
        }
    }

    /// `me`'s connection to etcd, at etcd's (real) time.
    fn dcs(&mut self, me: &MemberName) -> SimCoordination<'_> {
        let reaches = self
            .index(me)
            .is_none_or(|i| self.members[i].reaches_etcd(self.etcd));
        SimCoordination::new(self.etcd, me, self.real_now, TTL).reaching(reaches)
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

/// Member `i`'s PostgreSQL as the runtime's synchronous replication and promotion see it:
/// its standbys (the members streaming from it), its `synchronous_standby_names`, which the
/// simulated PostgreSQL applies at once, in every walsender, and its promotion.
struct SimPg<'a> {
    members: &'a mut [Member],
    i: usize,
    /// The timeline a promotion starts.
    next_timeline: u32,
}

impl runtime::promotion::Promotable for SimPg<'_> {
    fn arm_fence(&mut self) {
        let m = &mut self.members[self.i];
        m.fence_lease = m.lease;
    }

    async fn promote(&mut self) -> Result<Option<(TimelineId, Lsn)>, runtime::ActError> {
        let m = &mut self.members[self.i];
        let switch_lsn = Lsn(m.lsn());
        let d = m
            .data
            .as_mut()
            .ok_or_else(|| runtime::ActError::Other("no data to promote".into()))?;
        d.timeline = self.next_timeline;
        d.was_primary = true;
        d.clean_checkpoint = None;
        m.pg = Pg::Primary;
        m.streaming = false;
        m.not_streaming_since = None;
        Ok(Some((TimelineId(self.next_timeline), switch_lsn)))
    }
}

impl runtime::leading::Leading for SimPg<'_> {
    /// The simulated etcd always holds a `config` (the pass never asks).
    async fn create_config_if_absent(&mut self) -> Result<(), runtime::ActError> {
        Ok(())
    }

    /// Replication slots are not modelled: a standby streams without one.
    async fn sync_slots(&mut self, _view: &ClusterView) -> Result<(), runtime::ActError> {
        Ok(())
    }
}

impl runtime::sync::Replication for SimPg<'_> {
    fn waits_for_standbys(&self) -> bool {
        self.members[self.i].standbys != Standbys::None
    }

    async fn replication(&mut self) -> Result<(Vec<Standby>, Lsn), runtime::ActError> {
        let primary = &self.members[self.i];
        let me = &primary.name;
        let standbys = self
            .members
            .iter()
            .filter(|m| {
                m.pg == Pg::Replica {
                    upstream: Some(me.clone()),
                } && m.streaming
            })
            .map(|m| {
                let named = match &primary.standbys {
                    Standbys::All(names) | Standbys::Quorum(_, names) => names.contains(&m.name),
                    Standbys::Any => true,
                    Standbys::None => false,
                };
                Standby {
                    name: m.name.clone(),
                    streaming: true,
                    sync: named && primary.standbys != Standbys::Any,
                    named,
                    flush: Some(Lsn(m.lsn())),
                }
            })
            .collect();
        Ok((standbys, Lsn(primary.lsn())))
    }

    async fn set_standby_names(&mut self, names: &str) -> Result<bool, runtime::ActError> {
        let parsed = Standbys::parse(names);
        let m = &mut self.members[self.i];
        let changed = m.standbys != parsed;
        m.standbys = parsed;
        Ok(changed)
    }

    async fn nudge_sync_standbys(&mut self) {}
}
