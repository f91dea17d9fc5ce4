//! [`Coordination`]: the etcd operations the HA loop's actions rely on, as one trait. The
//! real adapter is [`Dcs`] (transactions on etcd); the seeded simulation implements the same
//! trait over its model of etcd, and a contract test (`governor/tests/coordination_contract.rs`)
//! plays one script against both and requires the same outcomes, so the simulation's etcd
//! behaves like the real one where safety depends on it: leases, compare-and-create of
//! `initialize` and `leader`, the hand-over transaction, revision checks on `sync`, the
//! leader-only `failsafe` key.

use super::{Dcs, DcsError, bounded, encode, read_view};
use crate::ha::ClusterView;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use spilo_model::{HistoryEntry, MemberName, MemberStatus, SwitchoverRequest, SyncState};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// etcd as the HA loop's actions use it, for one member of one cluster. Every write that
/// another member could race is conditional; `Ok(false)` means the condition did not hold
/// and nothing was written.
pub trait Coordination {
    /// Reads every key of the cluster.
    fn read_view(&self) -> impl Future<Output = Result<ClusterView, DcsError>> + Send;
    /// Grants a lease of `ttl`.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<i64, DcsError>> + Send;
    /// Renews `lease` once; `false` when etcd no longer knows it.
    fn renew_lease(&self, lease: i64) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Revokes a lease, deleting every key bound to it.
    fn revoke_lease(&self, lease: i64) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Creates `initialize` with an empty value bound to `lease`, if nobody has.
    fn try_claim_initialize(
        &self,
        lease: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Replaces the empty `initialize` placeholder with the system identifier.
    fn set_initialize(&self, sysid: &str) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Creates `leader` naming this member, bound to `lease`, if no leader key exists.
    fn try_acquire_leader(&self, lease: i64)
    -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Deletes `leader` if it names this member and is bound to `lease`.
    fn release_leader(&self, lease: i64) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Moves `leader` from this member (`lease`) to `to` (`to_lease`, which must be the lease
    /// of `to`'s member key) and removes the switchover request, in one step.
    fn hand_over_leader(
        &self,
        lease: i64,
        to: &MemberName,
        to_lease: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Writes `sync` (`None` deletes it) if its revision is still `revision` (0: absent).
    fn write_sync(
        &self,
        sync: Option<&SyncState>,
        revision: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Writes `failsafe` (`None` deletes it) while this member holds `leader` with `lease`.
    fn write_failsafe(
        &self,
        members: Option<&BTreeMap<MemberName, String>>,
        lease: i64,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Removes the switchover request if it is still `req`.
    fn clear_switchover(
        &self,
        req: &SwitchoverRequest,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Publishes this member's status, bound to `lease`.
    fn put_member(
        &self,
        status: &MemberStatus,
        lease: i64,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Appends to `history` unless its timeline is there already.
    fn append_history(
        &self,
        entry: &HistoryEntry,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
}

impl Coordination for Dcs {
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        read_view(&self.client(), &self.keys, self.timeout).await
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, DcsError> {
        let (mut keeper, mut stream) =
            match bounded(self.timeout, self.client().lease_keep_alive(lease)).await {
                Ok(pair) => pair,
                Err(e) if super::lease::lease_gone(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
        match bounded(self.timeout, keeper.keep_alive()).await {
            Err(e) if super::lease::lease_gone(&e) => return Ok(false),
            r => r?,
        }
        match bounded(self.timeout, stream.message()).await? {
            Some(resp) => Ok(resp.ttl() > 0),
            None => Ok(false),
        }
    }

    /// Grants a lease of `ttl`.
    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let resp = bounded(self.timeout, self.client().lease_grant(secs, None)).await?;
        Ok(resp.id())
    }

    /// Revokes a lease, deleting every key bound to it.
    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        bounded(self.timeout, self.client().lease_revoke(lease)).await?;
        Ok(())
    }

    /// Creates `initialize` with an empty value bound to `lease`, if nobody has. Returns
    /// whether this member won the bootstrap race.
    async fn try_claim_initialize(&self, lease: i64) -> Result<bool, DcsError> {
        let key = self.keys.initialize();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                "",
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.txn(txn).await
    }

    /// Replaces the empty `initialize` placeholder with the system identifier, unbound from any
    /// lease so it outlives the bootstrapper.
    async fn set_initialize(&self, sysid: &str) -> Result<bool, DcsError> {
        let key = self.keys.initialize();
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, "")])
            .and_then([TxnOp::put(key, sysid, None)]);
        self.txn(txn).await
    }

    /// Creates `leader` naming this member, bound to `lease`, if no leader key exists.
    async fn try_acquire_leader(&self, lease: i64) -> Result<bool, DcsError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.me.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.txn(txn).await
    }

    /// Deletes `leader` if it names this member and is bound to `lease`.
    async fn release_leader(&self, lease: i64) -> Result<bool, DcsError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, self.me.as_str()),
                Compare::lease(key.clone(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(txn).await
    }

    /// Moves `leader` from this member (bound to `lease`) to `to`, bound to `to_lease`, and
    /// removes the switchover request, in one transaction. It succeeds only if the key still
    /// names this member with this lease and `to`'s member key is still bound to `to_lease`:
    /// there is never a moment without a leader key for anyone else to race for.
    async fn hand_over_leader(
        &self,
        lease: i64,
        to: &MemberName,
        to_lease: i64,
    ) -> Result<bool, DcsError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, self.me.as_str()),
                Compare::lease(key.clone(), CompareOp::Equal, lease),
                Compare::lease(self.keys.member(to), CompareOp::Equal, to_lease),
            ])
            .and_then([
                TxnOp::put(
                    key,
                    to.as_str(),
                    Some(PutOptions::new().with_lease(to_lease)),
                ),
                TxnOp::delete(self.keys.switchover(), None),
            ]);
        self.txn(txn).await
    }

    /// Writes `sync` if its revision is still `revision` (0: absent); `None` deletes it.
    async fn write_sync(&self, sync: Option<&SyncState>, revision: i64) -> Result<bool, DcsError> {
        let key = self.keys.sync();
        let op = match sync {
            Some(s) => TxnOp::put(key.clone(), encode(&key, s)?, None),
            None => TxnOp::delete(key.clone(), None),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([op]);
        self.txn(txn).await
    }

    /// Writes `failsafe` (`None` deletes it), only while this member holds the leader key
    /// with `lease`: the key has one writer, the leader.
    async fn write_failsafe(
        &self,
        members: Option<&BTreeMap<MemberName, String>>,
        lease: i64,
    ) -> Result<bool, DcsError> {
        let key = self.keys.failsafe();
        let leader = self.keys.leader();
        let op = match members {
            Some(m) => TxnOp::put(key.clone(), encode(&key, m)?, None),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new()
            .when([
                Compare::value(leader.clone(), CompareOp::Equal, self.me.as_str()),
                Compare::lease(leader, CompareOp::Equal, lease),
            ])
            .and_then([op]);
        self.txn(txn).await
    }

    /// Removes the switchover request if it is still `req` (a newer request stays).
    async fn clear_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        let key = self.keys.switchover();
        let value = encode(&key, req)?;
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(txn).await
    }

    /// Publishes this member's status, bound to `lease`.
    async fn put_member(&self, status: &MemberStatus, lease: i64) -> Result<(), DcsError> {
        let key = self.keys.member(&self.me);
        let value = encode(&key, status)?;
        bounded(
            self.timeout,
            self.client()
                .put(key, value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        Ok(())
    }

    /// Appends an entry to `history` unless an entry for its timeline exists, with a
    /// compare-and-swap on the key's revision (retried a few times on a lost race).
    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), DcsError> {
        let key = self.keys.history();
        let appended = self
            .update_json(&key, |list: Option<Vec<HistoryEntry>>| {
                let mut list = list.unwrap_or_default();
                if list.iter().any(|h| h.timeline == entry.timeline) {
                    return None;
                }
                list.push(entry.clone());
                Some(list)
            })
            .await;
        // Losing the race five times means others keep appending: the entry is theirs to add.
        match appended {
            Err(DcsError::Conflict(_)) => Ok(()),
            r => r.map(|_| ()),
        }
    }
}
