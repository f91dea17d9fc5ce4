//! The faults the simulation injects (crashes of a governor with its PostgreSQL or of
//! PostgreSQL alone, partitions, cuts from etcd, frozen governors,
//! etcd stalls, slow actions, switchover requests, wall-clock jumps) and their scheduled undoing.

use super::world::{Pg, Standbys};
use super::{Sim, TTL};
use spilo_model::SwitchoverRequest;

#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    Crash,
    PostgresCrash,
    Partition,
    EtcdCut,
    Freeze,
    EtcdStall,
    Slow,
    Switchover,
    WallClockJump,
}

pub(super) struct Scheduled {
    pub(super) at: u64,
    pub(super) what: Undo,
}

pub(super) enum Undo {
    Restart(usize),
    Heal(usize),
    Reconnect(usize),
    Thaw(usize),
    EtcdBack,
}

impl Sim {
    pub(super) fn inject(&mut self) {
        let kinds = [
            Fault::Crash,
            Fault::Crash,
            Fault::PostgresCrash,
            Fault::PostgresCrash,
            Fault::Partition,
            Fault::EtcdCut,
            Fault::Freeze,
            Fault::EtcdStall,
            Fault::Slow,
            Fault::Switchover,
            Fault::WallClockJump,
        ];
        let kind = kinds[self.rng.usize(..kinds.len())];
        // Mostly the primary, sometimes anyone.
        let target = match self.primary() {
            Some(p) if self.rng.u8(..3) > 0 => p,
            _ => self.rng.usize(..self.members.len()),
        };
        let m = &self.members[target];
        if !m.up
            || m.frozen
            || m.partitioned
            || m.etcd_cut
            || (matches!(kind, Fault::PostgresCrash) && m.pg == Pg::Stopped)
        {
            return;
        }
        let len = 1_000 + self.rng.u64(..9_000);
        let at = self.now + len;
        self.stats.faults += 1;
        let name = m.name.clone();
        match kind {
            Fault::Crash => {
                let m = &mut self.members[target];
                m.up = false;
                m.stop(None);
                m.lease = None;
                m.valid_until = None;
                m.confirmed_until = None;
                // A new governor process starts with a fresh `Instance`.
                m.standbys = Standbys::None;
                m.sync_pending = Default::default();
                self.undo.push(Scheduled {
                    at,
                    what: Undo::Restart(target),
                });
            }
            Fault::PostgresCrash => {
                // The postmaster alone dies; its governor sees the exit on its next pass and
                // counts it, as `runtime::gather` does (restart in place, or hand over after
                // a crash loop).
                let leading = self.etcd.leader.as_ref().is_some_and(|(n, _)| *n == name);
                let m = &mut self.members[target];
                m.stop(None);
                let local = m.local(self.now);
                m.crashes.push(local);
                if leading {
                    m.primary_down_since.get_or_insert(local);
                }
            }
            Fault::Partition => {
                self.members[target].partitioned = true;
                self.undo.push(Scheduled {
                    at,
                    what: Undo::Heal(target),
                });
            }
            Fault::EtcdCut => {
                self.members[target].etcd_cut = true;
                self.undo.push(Scheduled {
                    at,
                    what: Undo::Reconnect(target),
                });
            }
            Fault::Freeze => {
                self.members[target].frozen = true;
                self.undo.push(Scheduled {
                    at,
                    what: Undo::Thaw(target),
                });
            }
            Fault::EtcdStall => {
                if !self.etcd.available {
                    return;
                }
                self.etcd.available = false;
                self.undo.push(Scheduled {
                    at: self.now + 500 + self.rng.u64(..5_000),
                    what: Undo::EtcdBack,
                });
            }
            Fault::Slow => self.members[target].busy_until = at.min(self.now + 5_000),
            Fault::WallClockJump => {
                let jump = self.rng.i64(-3600..=3600);
                self.members[target].wall_offset_s += jump;
            }
            Fault::Switchover => {
                if self.etcd.switchover.is_none() && self.etcd.available {
                    let leader = self.etcd.leader.as_ref().map(|(n, _)| n.clone());
                    let candidate = self.rng.bool().then(|| {
                        self.members[self.rng.usize(..self.members.len())]
                            .name
                            .clone()
                    });
                    // Sometimes scheduled a few seconds ahead, so wall-clock jumps matter.
                    let scheduled_at = self
                        .rng
                        .bool()
                        .then(|| self.now / 1000 + 1 + self.rng.u64(..5));
                    self.etcd.switchover = Some(SwitchoverRequest {
                        leader,
                        candidate,
                        scheduled_at,
                        failover: false,
                        requested_at: self.now / 1000,
                    });
                }
            }
        }
        self.log(format!("fault {kind:?} on {name} for {len} ms"));
    }

    pub(super) fn undo_due(&mut self) {
        let now = self.now;
        let due: Vec<Scheduled> = {
            let (due, rest): (Vec<_>, Vec<_>) = self.undo.drain(..).partition(|s| s.at <= now);
            self.undo = rest;
            due
        };
        for s in due {
            match s.what {
                Undo::Restart(i) => {
                    let m = &mut self.members[i];
                    m.up = true;
                    m.next_loop = now;
                    m.next_renew = now;
                    m.crashes.clear();
                    m.primary_down_since = None;
                    m.last = None;
                    let local = m.local(now);
                    m.restart_governor(local);
                    self.log(format!("{} restarts", self.members[i].name));
                }
                Undo::Heal(i) => {
                    self.members[i].partitioned = false;
                    self.log(format!("{} rejoins the network", self.members[i].name));
                }
                Undo::Reconnect(i) => {
                    self.members[i].etcd_cut = false;
                    self.log(format!("{} reaches etcd again", self.members[i].name));
                }
                Undo::Thaw(i) => {
                    self.members[i].frozen = false;
                    self.log(format!("{} thaws", self.members[i].name));
                }
                Undo::EtcdBack => {
                    self.etcd.recover(now, TTL);
                    self.log("etcd answers again".into());
                }
            }
        }
    }
}
