//! Carrying out a member's decision in the simulated world with the runtime's own
//! `runtime::act::act`: the etcd writes go through [`super::coordination`] (the runtime's
//! `Coordination` trait), and [`SimMember`] implements the runtime's `Hands` trait (and the
//! `Leading`, `Promotable` and `Replication` traits under it) on the PostgreSQL model of
//! [`super::world`]. The order of the steps (the gate closed before a race, the fence armed
//! before a promotion, the key released after a clean stop, the switchover's checks) is the
//! runtime's; what a step does to PostgreSQL (a copy, a rewind, a start) is the model's.

use super::TTL;
use super::coordination::SimCoordination;
use super::etcd::Etcd;
use super::world::{BootstrapFault, Clock, Data, Member, Pg, Standbys};
use futures::executor::block_on;
use governor::dcs::Coordination;
use governor::ha::sync::{Moment, Pending, Standby};
use governor::ha::{ClusterView, Decision, Snapshot, StartAs};
use governor::postgres::Upstream;
use governor::postgres::process::StopMode;
use governor::runtime::bootstrap::{Cleanup, after_failed_bootstrap};
use governor::runtime::failsafe::Peer;
use governor::runtime::{self, ActError};
use governor::shared::SwitchoverOutcome;
use governor::shared::failsafe::Gate;
use spilo_model::{HistoryEntry, Lsn, MemberName, MemberState, MemberStatus, TimelineId};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// What carrying out a decision did.
pub struct Acted {
    /// What the checker must know.
    pub event: Event,
    /// The action failed (the runtime logs it, publishes nothing and tries again after
    /// `loop_wait`).
    pub failed: bool,
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
    /// The negative control: arming the fence does nothing.
    pub fence_never_armed: bool,
}

impl Ctx<'_> {
    /// Carries out decision `d` of member `i`, taken on snapshot `s` at the same virtual
    /// instant (so nothing moved in between), with the runtime's `act`. An error is a failed
    /// action, which the runtime logs before it decides again; a decision the simulated
    /// cluster can never call for, or a step that breaks the model, fails the run.
    pub fn act(&mut self, i: usize, d: &Decision, s: &Snapshot) -> Result<Acted, String> {
        let me = self.members[i].name.clone();
        match d {
            Decision::Fatal { why } => return Err(format!("{me} decided fatal: {why}")),
            Decision::RecoverFromArchive { .. } => {
                return Err(
                    "recovery from an archive, which the simulated members do not have".into(),
                );
            }
            Decision::FollowSource { .. }
            | Decision::StepDown { .. }
            | Decision::RewindFromSource { .. }
            | Decision::Start {
                role: StartAs::StandbyLeader,
                ..
            } => {
                return Err(format!(
                    "{me} decided as a standby cluster's member, which the simulation never configures: {d}"
                ));
            }
            _ => {}
        }
        let reaches = self.members[i].reaches_etcd(self.etcd);
        if reaches {
            // As `gather`: the leader key as this pass read it.
            self.members[i].leader_seen = self.etcd.leader.clone();
        }
        let dcs = SimCoordination::new(self.etcd, &me, self.real_now, TTL).reaching(reaches);
        let now = self.clock.at(self.now);
        let mut member = SimMember {
            members: self.members,
            i,
            dcs: &dcs,
            next_id: self.next_id,
            now,
            fence_never_armed: self.fence_never_armed,
            event: Event::None,
            broken: None,
        };
        let done = block_on(runtime::act::act(&dcs, &mut member, d, s, now));
        match member.broken {
            Some(why) => Err(why),
            None => Ok(Acted {
                event: member.event,
                failed: done.is_err(),
            }),
        }
    }
}

/// Member `i` of the simulated world, as the runtime's `act` drives it.
pub struct SimMember<'a, 'e> {
    members: &'a mut [Member],
    i: usize,
    /// This member's connection to etcd (the same one `act` writes through).
    dcs: &'a SimCoordination<'e>,
    next_id: &'a mut u64,
    /// This member's clock at this pass.
    now: Instant,
    /// The negative control: arming the fence does nothing.
    fence_never_armed: bool,
    /// What the action did that the checker must know.
    event: Event,
    /// A step broke the model: the run fails with this.
    broken: Option<String>,
}

impl SimMember<'_, '_> {
    fn me(&mut self) -> &mut Member {
        &mut self.members[self.i]
    }

    fn index(&self, name: &MemberName) -> Option<usize> {
        self.members.iter().position(|m| m.name == *name)
    }

    fn id(&mut self) -> u64 {
        *self.next_id += 1;
        *self.next_id
    }

    /// Fails the run (a step the model cannot take), and the action.
    fn broken(&mut self, why: String) -> ActError {
        self.broken.get_or_insert(why.clone());
        ActError::Other(why)
    }

    /// `up` if this member and it reach each other and it runs PostgreSQL as the primary.
    fn reachable_primary(&self, up: &Upstream) -> Result<usize, ActError> {
        let j = self
            .index(&up.name)
            .filter(|j| {
                !self.members[self.i].partitioned
                    && !self.members[*j].partitioned
                    && self.members[*j].pg == Pg::Primary
            })
            .ok_or_else(|| ActError::Other(format!("{} is not a reachable primary", up.name)))?;
        Ok(j)
    }

    /// A copy of `up`'s data directory, as `pg_basebackup` takes it.
    fn copy(&mut self, up: &Upstream) -> Result<(), ActError> {
        let j = self.reachable_primary(up)?;
        let mut d = self.members[j].data.clone().expect("primary has data");
        d.was_primary = false;
        d.clean_checkpoint = None;
        self.me().data = Some(d);
        Ok(())
    }

    /// A clean stop of this member's primary: the shutdown checkpoint is written and sent to
    /// every standby streaming from it before PostgreSQL exits.
    fn clean_stop(&mut self) {
        let id = self.id();
        let i = self.i;
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

    /// The simulated bootstrap: claim `initialize`, start the first primary, take the leader
    /// key, write the system identifier; an injected fault fails one of those steps and the
    /// runtime's own rule decides what happens to the data.
    async fn bootstrap_model(&mut self, lease: i64) -> Result<(), ActError> {
        if !self.dcs.try_claim_initialize(lease).await? {
            return Ok(());
        }
        let fault = self.me().bootstrap_fault.take();
        let armed = !self.fence_never_armed;
        let m = self.me();
        m.data = Some(Data {
            log: Vec::new(),
            timeline: 1,
            was_primary: true,
            clean_checkpoint: None,
        });
        m.pg = Pg::Primary;
        // The bootstrap arms the fence with the lease that claimed `initialize`.
        m.fence_lease = Some(lease);
        m.fence_armed = armed;
        if !self.dcs.try_acquire_leader(lease).await? {
            return Err(self.broken("the leader key was taken during bootstrap".into()));
        }
        // `attempted`: the failure came after the write of the system identifier.
        let failed = match fault {
            Some(BootstrapFault::BeforeInitialize) => Some(false),
            _ => {
                let written = matches!(self.dcs.set_initialize("7000").await, Ok(true));
                if fault.is_none() && !written {
                    return Err(self.broken("the initialize key changed during bootstrap".into()));
                }
                fault.map(|_| true)
            }
        };
        if let Some(attempted) = failed {
            self.bootstrap_failed(lease, attempted, fault).await;
        }
        Ok(())
    }

    /// A bootstrap step failed: the runtime's own rule decides whether the data may go
    /// (`runtime::bootstrap::after_failed_bootstrap`, from the `initialize` key read after the
    /// failure); kept, PostgreSQL goes on as the primary holding the leader key; wiped, the
    /// member stops it, hands the key back and drops the empty claim, as `creation_failed`.
    async fn bootstrap_failed(
        &mut self,
        lease: i64,
        attempted: bool,
        fault: Option<BootstrapFault>,
    ) {
        let initialize = self.dcs.etcd(|e| e.initialize.clone());
        let cleanup = if fault == Some(BootstrapFault::AfterInitializeWiped) {
            Cleanup::Wipe
        } else {
            after_failed_bootstrap(attempted, Ok(&initialize), Some("7000"))
        };
        if cleanup == Cleanup::Wipe {
            let m = self.me();
            m.stop(None);
            m.data = None;
            let _ = self.dcs.release_leader(lease).await;
            self.dcs.etcd(|e| {
                if e.initialize.as_deref() == Some("") {
                    e.initialize = None;
                    e.initialize_lease = None;
                }
            });
        }
        self.event = Event::BootstrapFailed(cleanup);
    }
}

impl runtime::sync::Replication for SimMember<'_, '_> {
    fn name(&self) -> &MemberName {
        &self.members[self.i].name
    }

    fn sync_pending(&mut self) -> &mut Pending {
        &mut self.me().sync_pending
    }

    fn waits_for_standbys(&self) -> bool {
        self.members[self.i].standbys != Standbys::None
    }

    /// The members streaming from this one; `synchronous_standby_names` is in force at once,
    /// in every walsender.
    async fn replication(&mut self) -> Result<(Vec<Standby>, Moment), ActError> {
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
        Ok((
            standbys,
            Moment {
                flush: Lsn(primary.lsn()),
                at: self.now,
            },
        ))
    }

    async fn set_standby_names(&mut self, names: &str) -> Result<bool, ActError> {
        let parsed = Standbys::parse(names);
        let m = self.me();
        let changed = m.standbys != parsed;
        m.standbys = parsed;
        Ok(changed)
    }

    async fn nudge_sync_standbys(&mut self) {}
}

impl runtime::promotion::Promotable for SimMember<'_, '_> {
    /// Armed with the lease of the leader key as this member last saw it, when it names this
    /// member (none otherwise: the fence then stops PostgreSQL at once), as the runtime's.
    fn arm_fence(&mut self) {
        if self.fence_never_armed {
            return;
        }
        let m = self.me();
        m.fence_lease = m
            .leader_seen
            .as_ref()
            .filter(|(name, _)| *name == m.name)
            .map(|(_, lease)| *lease);
        m.fence_armed = true;
    }

    /// Promotes onto the next timeline nobody has used.
    async fn promote(&mut self) -> Result<Option<(TimelineId, Lsn)>, ActError> {
        let in_history = self
            .dcs
            .etcd(|e| e.history.iter().map(|h| h.timeline.0).max());
        let next = in_history
            .into_iter()
            .chain(
                self.members
                    .iter()
                    .filter_map(|m| m.data.as_ref().map(|d| d.timeline)),
            )
            .max()
            .unwrap_or(1)
            + 1;
        let m = self.me();
        let switch_lsn = Lsn(m.lsn());
        let Some(d) = m.data.as_mut() else {
            return Err(self.broken("promoted without data".into()));
        };
        d.timeline = next;
        d.was_primary = true;
        d.clean_checkpoint = None;
        m.pg = Pg::Primary;
        m.streaming = false;
        m.not_streaming_since = None;
        self.event = Event::Promoted;
        Ok(Some((TimelineId(next), switch_lsn)))
    }

    fn pending_history(&mut self) -> &mut Option<HistoryEntry> {
        &mut self.me().pending_history
    }
}

impl runtime::leading::Leading for SimMember<'_, '_> {
    fn api_url(&self) -> String {
        self.members[self.i].status().api_url
    }

    fn lease(&self) -> Option<i64> {
        self.members[self.i].lease
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(TTL)
    }

    fn failsafe_absent(&mut self) -> &mut BTreeMap<MemberName, Instant> {
        &mut self.me().failsafe_absent
    }

    fn ask_failsafe(&mut self, peers: Option<Vec<Peer>>) {
        self.me().failsafe_peers = peers.map(|p| p.into_iter().map(|p| p.name).collect());
    }

    /// The simulated etcd always holds a `config` (the pass never asks).
    async fn create_config_if_absent(&mut self) -> Result<(), ActError> {
        Ok(())
    }

    /// Replication slots are not modelled: a standby streams without one.
    async fn sync_slots(&mut self, _view: &ClusterView) -> Result<(), ActError> {
        Ok(())
    }
}

impl runtime::act::Hands for SimMember<'_, '_> {
    /// The model has no PostgreSQL parameters.
    async fn apply_cluster_params(
        &mut self,
        _params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        Ok(())
    }

    async fn bootstrap(
        &mut self,
        s: &Snapshot,
        _params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        match s.lease.id {
            Some(lease) => self.bootstrap_model(lease).await,
            None => Ok(()),
        }
    }

    async fn recover_from_archive(
        &mut self,
        _s: &Snapshot,
        _params: &BTreeMap<String, String>,
        _why: &str,
    ) -> Result<(), ActError> {
        Err(self.broken("recovery from an archive, which the simulated members do not have".into()))
    }

    /// A peer's REST API answers while its governor runs and the two reach each other.
    async fn answers(&mut self, leader: &MemberName, _status: &MemberStatus) -> bool {
        let me = &self.members[self.i];
        self.index(leader).is_some_and(|j| {
            let p = &self.members[j];
            p.up && !p.frozen && !p.partitioned && !me.partitioned
        })
    }

    /// The model publishes a member's state from its PostgreSQL when asked.
    async fn announce(&mut self, _s: &Snapshot, _state: MemberState) {}

    async fn copy_of(&mut self, up: &Upstream) -> Result<(), ActError> {
        self.copy(up)
    }

    async fn clone_from(&mut self, up: &Upstream) -> Result<(), ActError> {
        self.copy(up)
    }

    /// Keeps the common history with `up`'s and takes its timeline.
    async fn rewind_from(&mut self, up: &Upstream) -> Result<String, ActError> {
        let j = self.reachable_primary(up)?;
        let src = self.members[j].data.clone().expect("primary has data");
        let Some(d) = self.me().data.as_mut() else {
            return Err(self.broken("rewind without data".into()));
        };
        let keep = d.common(&src);
        d.log.truncate(keep);
        d.timeline = src.timeline;
        d.was_primary = false;
        d.clean_checkpoint = None;
        Ok(format!("kept {keep} records"))
    }

    fn wipe(&mut self) -> Result<(), ActError> {
        self.me().data = None;
        Ok(())
    }

    fn start(
        &mut self,
        primary: bool,
        up: Option<Upstream>,
        _params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        let m = self.me();
        let Some(d) = m.data.as_mut() else {
            return Err(ActError::Other("no data to start".into()));
        };
        d.clean_checkpoint = None;
        d.was_primary = primary;
        if primary {
            m.pg = Pg::Primary;
        } else {
            m.standbys = Standbys::None;
            m.pg = Pg::Replica {
                upstream: up.map(|u| u.name),
            };
            m.not_streaming_since = None;
        }
        Ok(())
    }

    async fn follow(
        &mut self,
        up: Upstream,
        _params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        let m = self.me();
        let wanted = Pg::Replica {
            upstream: Some(up.name),
        };
        if m.pg != wanted {
            m.pg = wanted;
            m.not_streaming_since = None;
        }
        Ok(())
    }

    /// A fast stop of a primary is clean (its standbys receive the shutdown checkpoint); every
    /// other stop is not.
    async fn stop(&mut self, mode: StopMode) {
        if mode == StopMode::Fast && self.members[self.i].pg == Pg::Primary {
            self.clean_stop();
        } else {
            self.me().stop(None);
        }
    }

    async fn checkpoint(&mut self) -> Result<(), ActError> {
        Ok(())
    }

    async fn checkpoint_on(&mut self, up: &Upstream) -> Result<(), ActError> {
        self.reachable_primary(up).map(|_| ())
    }

    async fn system_identifier_of(&mut self, _up: &Upstream) -> Result<String, ActError> {
        Err(self.broken("a standby cluster's source, which the simulation never configures".into()))
    }

    async fn streams_to(&mut self, to: &MemberName) -> Result<bool, ActError> {
        if self.members[self.i].pg != Pg::Primary {
            return Err(ActError::Other(
                "PostgreSQL does not run as the primary".into(),
            ));
        }
        let me = self.members[self.i].name.clone();
        Ok(self.index(to).is_some_and(|j| {
            self.members[j].pg == (Pg::Replica { upstream: Some(me) }) && self.members[j].streaming
        }))
    }

    async fn shutdown_checkpoint(&mut self) -> Result<Lsn, ActError> {
        self.members[self.i]
            .data
            .as_ref()
            .and_then(|d| d.clean_checkpoint)
            .map(Lsn)
            .ok_or_else(|| ActError::Other("PostgreSQL did not shut down cleanly".into()))
    }

    /// Whether `up` holds every record of this member's WAL (the model's records are unique,
    /// so that is "received past the shutdown checkpoint").
    async fn wait_received(&mut self, up: &Upstream, _lsn: Lsn) -> Result<(), ActError> {
        let mine = self.members[self.i].data.clone();
        let got = self
            .index(&up.name)
            .is_some_and(|j| match (&mine, &self.members[j].data) {
                (Some(mine), Some(theirs)) => mine.prefix_of(theirs),
                _ => false,
            });
        if got {
            Ok(())
        } else {
            Err(ActError::Other(format!(
                "{} did not receive the shutdown checkpoint",
                up.name
            )))
        }
    }

    fn disarm_fence(&mut self) {
        self.me().fence_armed = false;
    }

    fn gate(&self) -> &Gate {
        &self.members[self.i].gate
    }

    fn took_leader_key(&mut self, lease: i64) {
        let m = self.me();
        m.leader_seen = Some((m.name.clone(), lease));
    }

    fn is_standby_cluster(&self, _view: Option<&ClusterView>) -> bool {
        false
    }

    fn standby_source(&self, _view: Option<&ClusterView>) -> Result<Upstream, ActError> {
        Err(ActError::Other("not a standby cluster".into()))
    }

    /// The model reads the data directory afresh for every snapshot.
    fn forget_data(&mut self) {}

    fn forget_crashes(&mut self) {
        let m = self.me();
        m.crashes.clear();
        m.primary_down_since = None;
    }

    /// The model has no REST API to report it on.
    async fn switchover_ended(&mut self, _outcome: SwitchoverOutcome) {}

    /// The model schedules each member's next pass itself.
    fn wake(&self) {}

    async fn after_lead(&mut self) {}
}
