//! The simulated etcd behind [`governor::dcs::Coordination`], the trait the real adapter
//! (`governor::dcs::Dcs`) implements. Each method mirrors the real transaction: the same
//! compares in the same order, the same writes, and etcd's answer for a dead lease (an error
//! saying "lease not found") where a write would bind a key to it. The contract test
//! (`coordination_contract.rs`) holds both to one script.

use super::etcd::Etcd;
use governor::dcs::{Coordination, DcsError};
use governor::ha::ClusterView;
use spilo_model::{HistoryEntry, MemberName, MemberStatus, SwitchoverRequest, SyncState};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One member's connection to the simulated etcd at real (etcd) time `now`.
pub struct SimCoordination<'a> {
    etcd: Mutex<&'a mut Etcd>,
    me: MemberName,
    now: u64,
    ttl: u64,
    /// The member reaches etcd (not partitioned or cut off from it).
    reaches: bool,
}

impl<'a> SimCoordination<'a> {
    /// `me`'s connection at `now` (ms); leases last `ttl` ms.
    pub fn new(etcd: &'a mut Etcd, me: &MemberName, now: u64, ttl: u64) -> Self {
        SimCoordination {
            etcd: Mutex::new(etcd),
            me: me.clone(),
            now,
            ttl,
            reaches: true,
        }
    }

    /// The connection of a member that `reaches` etcd or not (cut off, every call times out).
    pub fn reaching(mut self, reaches: bool) -> Self {
        self.reaches = reaches;
        self
    }

    /// Reads or changes the simulated etcd directly, as the model of what the real runtime
    /// does through calls outside the `Coordination` trait (reads of `initialize` and
    /// `history`, dropping an empty `initialize` claim).
    pub fn etcd<R>(&self, f: impl FnOnce(&mut Etcd) -> R) -> R {
        let mut etcd = self.etcd.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut etcd)
    }

    /// The store, or "did not answer" while it is stalled or out of reach.
    fn store(&self) -> Result<MutexGuard<'_, &'a mut Etcd>, DcsError> {
        let etcd = self.etcd.lock().unwrap_or_else(|e| e.into_inner());
        if etcd.available && self.reaches {
            Ok(etcd)
        } else {
            Err(DcsError::Timeout(Duration::from_millis(self.ttl / 2)))
        }
    }
}

/// What etcd answers when a put names a lease it does not know.
fn lease_not_found() -> DcsError {
    DcsError::Etcd(etcd_client::Error::LeaseKeepAliveError(
        "etcdserver: requested lease not found".into(),
    ))
}

impl Coordination for SimCoordination<'_> {
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        Ok(self.store()?.view())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        let expires = self.now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(self.store()?.grant(expires))
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, DcsError> {
        let expires = self.now + self.ttl;
        Ok(self.store()?.keepalive(lease, expires))
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        let mut etcd = self.store()?;
        if !etcd.alive(lease) {
            return Err(lease_not_found());
        }
        etcd.revoke(lease);
        Ok(())
    }

    async fn try_claim_initialize(&self, lease: i64) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        if etcd.initialize.is_some() {
            return Ok(false);
        }
        if !etcd.alive(lease) {
            return Err(lease_not_found());
        }
        etcd.initialize = Some(String::new());
        etcd.initialize_lease = Some(lease);
        Ok(true)
    }

    async fn set_initialize(&self, sysid: &str) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        if etcd.initialize.as_deref() != Some("") {
            return Ok(false);
        }
        etcd.initialize = Some(sysid.to_string());
        etcd.initialize_lease = None;
        Ok(true)
    }

    async fn try_acquire_leader(&self, lease: i64) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        if etcd.leader.is_some() {
            return Ok(false);
        }
        if !etcd.alive(lease) {
            return Err(lease_not_found());
        }
        etcd.leader = Some((self.me.clone(), lease));
        etcd.leader_version += 1;
        Ok(true)
    }

    async fn release_leader(&self, lease: i64) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        if etcd.leader.as_ref() != Some(&(self.me.clone(), lease)) {
            return Ok(false);
        }
        etcd.leader = None;
        etcd.leader_version += 1;
        Ok(true)
    }

    async fn hand_over_leader(
        &self,
        lease: i64,
        to: &MemberName,
        to_lease: i64,
    ) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        let member_ok = etcd.members.get(to).is_some_and(|(_, l)| *l == to_lease);
        if etcd.leader.as_ref() != Some(&(self.me.clone(), lease)) || !member_ok {
            return Ok(false);
        }
        etcd.leader = Some((to.clone(), to_lease));
        etcd.leader_version += 1;
        etcd.switchover = None;
        Ok(true)
    }

    async fn write_sync(&self, sync: Option<&SyncState>, revision: i64) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        let current = etcd.sync.as_ref().map_or(0, |(_, r)| *r);
        if current != revision {
            return Ok(false);
        }
        etcd.sync = sync.map(|s| (s.clone(), etcd.bump()));
        Ok(true)
    }

    async fn write_failsafe(
        &self,
        members: Option<&BTreeMap<MemberName, String>>,
        lease: i64,
    ) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        if etcd.leader.as_ref() != Some(&(self.me.clone(), lease)) {
            return Ok(false);
        }
        etcd.failsafe = members.cloned();
        Ok(true)
    }

    async fn clear_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        let mut etcd = self.store()?;
        if etcd.switchover.as_ref() != Some(req) {
            return Ok(false);
        }
        etcd.switchover = None;
        Ok(true)
    }

    async fn put_member(&self, status: &MemberStatus, lease: i64) -> Result<(), DcsError> {
        let mut etcd = self.store()?;
        if !etcd.alive(lease) {
            return Err(lease_not_found());
        }
        etcd.members
            .insert(self.me.clone(), (status.clone(), lease));
        Ok(())
    }

    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), DcsError> {
        let mut etcd = self.store()?;
        if !etcd.history.iter().any(|h| h.timeline == entry.timeline) {
            etcd.history.push(entry.clone());
        }
        Ok(())
    }
}
