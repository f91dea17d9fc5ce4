//! The simulated etcd's state: leases that expire on the virtual clock, the cluster's keys,
//! and a stall (unavailable to everyone) that, like a real etcd leader change, extends every
//! lease on recovery. Its writes go through [`super::coordination`], the same trait the real
//! adapter implements.

use governor::ha::{ClusterView, LeaderKey};
use spilo_model::{
    ClusterConfig, HistoryEntry, MemberName, MemberStatus, SwitchoverRequest, SyncState,
};
use std::collections::BTreeMap;

/// The store.
#[derive(Debug, Clone, Default)]
pub struct Etcd {
    /// Answers requests.
    pub available: bool,
    next_lease: i64,
    /// Lease id -> when etcd expires it (virtual ms).
    pub leases: BTreeMap<i64, u64>,
    /// `initialize`.
    pub initialize: Option<String>,
    /// The lease `initialize` is bound to while it holds the empty placeholder.
    pub initialize_lease: Option<i64>,
    /// `leader`: name and lease.
    pub leader: Option<(MemberName, i64)>,
    /// `members/*`: status and lease.
    pub members: BTreeMap<MemberName, (MemberStatus, i64)>,
    /// `config`.
    pub config: ClusterConfig,
    /// `history`.
    pub history: Vec<HistoryEntry>,
    /// `sync` and its mod revision.
    pub sync: Option<(SyncState, i64)>,
    /// `switchover`.
    pub switchover: Option<SwitchoverRequest>,
    /// `failsafe`.
    pub failsafe: Option<BTreeMap<MemberName, String>>,
    revision: i64,
    /// Bumped whenever `leader` changes (the watch wakes members).
    pub leader_version: u64,
}

impl Etcd {
    /// An available, empty store with `config`.
    pub fn new(config: ClusterConfig) -> Self {
        Etcd {
            available: true,
            next_lease: 1,
            config,
            revision: 1,
            ..Default::default()
        }
    }

    /// Expires leases whose time has come, with the keys bound to them.
    pub fn expire(&mut self, now: u64) {
        if !self.available {
            return;
        }
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.revoke(id);
        }
    }

    /// Back from a stall: every lease gets a full TTL from now.
    pub fn recover(&mut self, now: u64, ttl: u64) {
        self.available = true;
        for at in self.leases.values_mut() {
            *at = (*at).max(now + ttl);
        }
    }

    /// Whether lease `id` is alive.
    pub fn alive(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Grants a lease expiring at `expires`.
    pub fn grant(&mut self, expires: u64) -> i64 {
        let id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(id, expires);
        id
    }

    /// Renews lease `id` to expire at `expires`; false when it is gone.
    pub fn keepalive(&mut self, id: i64, expires: u64) -> bool {
        match self.leases.get_mut(&id) {
            Some(at) => {
                *at = expires;
                true
            }
            None => false,
        }
    }

    /// The view a member reads.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            initialize: self.initialize.clone(),
            leader: self.leader.as_ref().map(|(name, lease)| LeaderKey {
                name: name.clone(),
                lease: *lease,
            }),
            members: self
                .members
                .iter()
                .map(|(n, (s, _))| (n.clone(), s.clone()))
                .collect(),
            history: self.history.clone(),
            config: Some(self.config.clone()),
            switchover: self.switchover.clone(),
            failsafe: self.failsafe.clone(),
            // The simulated cluster has no standby clusters.
            fenced_by: None,
            sync: self.sync.as_ref().map(|(s, _)| s.clone()),
            sync_revision: self.sync.as_ref().map_or(0, |(_, r)| *r),
            member_leases: self
                .members
                .iter()
                .map(|(n, (_, l))| (n.clone(), *l))
                .collect(),
        }
    }

    /// Revokes lease `id`: every key bound to it goes.
    pub fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
        self.drop_keys_of(id);
    }

    /// Deletes the keys bound to lease `id`.
    fn drop_keys_of(&mut self, id: i64) {
        if self.leader.as_ref().is_some_and(|(_, l)| *l == id) {
            self.leader = None;
            self.leader_version += 1;
        }
        self.members.retain(|_, (_, l)| *l != id);
        if self.initialize_lease == Some(id) {
            self.initialize = None;
            self.initialize_lease = None;
        }
    }

    /// The next revision, for a write.
    pub fn bump(&mut self) -> i64 {
        self.revision += 1;
        self.revision
    }
}
