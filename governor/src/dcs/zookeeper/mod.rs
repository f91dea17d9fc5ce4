//! [`Coordination`] on Apache ZooKeeper: the second, real implementation of the trait the HA
//! loop's actions use, held to the same contract test as etcd
//! (`governor/tests/zookeeper_contract.rs`); `governor run` uses it with `zookeeper:` in its
//! configuration ([`crate::dcs::Store`]). The client
//! is `zookeeper-client`: async on tokio, multi-ops, session states with distinct
//! `Disconnected` and `Expired`, TLS and SASL.
//!
//! The mapping (the paths are the etcd keys of [`Keyspace`], as znodes):
//! - **A lease is a ZooKeeper session** with the lease's TTL as its session timeout (refused
//!   when the server negotiates a longer one: the fence's arithmetic assumes the TTL). Each
//!   session owns the ephemeral znode `leases/<id>` ([`Keyspace::lease_marker`]): the lease
//!   is alive exactly while it exists. Renewing a lease is a write in its session that the
//!   ensemble's leader answers; a lease not renewed for a TTL is closed; revoking closes the
//!   session.
//! - **Keys bound to a lease** whose owner is the caller's session are ephemeral znodes of
//!   that session: `members/<name>` and the `initialize` placeholder. The **`leader`** znode
//!   is persistent and never deleted: its value is `{name, lease}`, and it counts only while
//!   that lease is alive (released: empty). A hand-over can then name another member's lease
//!   in one multi-op, which an ephemeral znode could not (it belongs to its creator's
//!   session), and versions never repeat, so a version check cannot be fooled by a leader
//!   deleted and created again (ABA).
//! - **Compare-and-swap** is a multi-op whose first operations check versions (the leader's,
//!   the lease marker's, the member's); a failed check is `Ok(false)`, as a failed etcd
//!   compare. `sync`'s revision is the znode's `mzxid` (0: absent).
//!
//! Where it differs from etcd: a member can use only the leases its own connection granted
//! (an etcd lease id is usable from any client; tested); a switchover request written or
//! rewritten between the leader's read and its hand-over makes the hand-over fail (etcd's
//! removes whatever is there); moving a member key to another of its leases is a delete and
//! a create, not one put; a read is a `sync`, a listing and one multi-read of the listed keys
//! (`view`: consistent among them, not one linearizable range; ZooKeeper 3.6 or newer). The crate pings a session on its own, which would keep a lease alive
//! without renewals: so each lease has a task that closes its session a TTL after the
//! sending of its last renewal (tested), as etcd ends an unrenewed lease; if the whole
//! process stalls, that task stalls with it and the server ends the session instead.

pub mod lease;
mod operations;
mod view;
pub mod watch;

use super::{Coordination, DcsError, encode, parse_view};
use crate::ha::ClusterView;
use spilo_model::{HistoryEntry, Keyspace, MemberName, MemberStatus, SwitchoverRequest, SyncState};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zookeeper_client as zk;

/// The value of the `leader` znode.
use spilo_model::keys::ZooKeeperLeader as LeaderValue;

/// A lease this connection granted: its session, when it was last renewed (the sending of
/// the renewal the ensemble's leader answered), and the task that closes the session once a
/// TTL passes without one, as etcd ends an unrenewed lease (the client would otherwise keep
/// the session alive with its own pings).
struct Lease {
    client: zk::Client,
    renewed: Arc<Mutex<Instant>>,
    expiry: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

/// Closes lease `id`'s session (by dropping the last client) once `ttl` passed since its
/// last renewal.
async fn expire(
    id: i64,
    ttl: Duration,
    renewed: Arc<Mutex<Instant>>,
    sessions: Arc<Mutex<BTreeMap<i64, Lease>>>,
) {
    loop {
        // Under the sessions' lock, which a renewal holds while it moves `renewed`: a
        // renewal either lands before this reading or finds the session gone.
        let Ok(mut all) = sessions.lock() else { return };
        let due = match renewed.lock() {
            Ok(at) => *at + ttl,
            Err(_) => Instant::now(),
        };
        if Instant::now() >= due {
            let ended = all.remove(&id);
            drop(all);
            if ended.is_some() {
                tracing::warn!(
                    lease = id,
                    ?ttl,
                    "a lease was not renewed within its ttl: ended"
                );
            }
            drop(ended);
            return;
        }
        drop(all);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// ZooKeeper scoped to one cluster and one member.
pub struct ZooKeeper {
    hosts: String,
    /// The connection for reads and for writes not bound to a lease; made again when its
    /// session expires ([`Self::fresh`]).
    main: std::sync::RwLock<zk::Client>,
    sessions: Arc<Mutex<BTreeMap<i64, Lease>>>,
    keys: Keyspace,
    me: MemberName,
    timeout: Duration,
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// A multi-op that failed on one of its operations (a check or a conditional write): the
/// condition did not hold.
fn lost(e: &zk::MultiWriteError) -> bool {
    matches!(
        e,
        zk::MultiWriteError::OperationFailed {
            source: zk::Error::NoNode | zk::Error::BadVersion | zk::Error::NodeExists,
            ..
        }
    )
}

fn lease_gone(lease: i64) -> DcsError {
    DcsError::LeaseNotFound(lease)
}

impl ZooKeeper {
    /// Connects to the ensemble `hosts` (`host:port` each) for member `me` of the cluster
    /// whose keys are `keys`, creating the cluster's parent znodes when missing. Every call
    /// is bounded by `timeout`.
    pub async fn connect(
        hosts: &[String],
        keys: Keyspace,
        me: MemberName,
        timeout: Duration,
    ) -> Result<Self, DcsError> {
        let hosts = hosts.join(",");
        let main = within(
            timeout,
            zk::Client::connector()
                .with_session_timeout(timeout.max(Duration::from_secs(4)))
                .connect(&hosts),
        )
        .await?;
        let me_ = Self {
            hosts,
            main: std::sync::RwLock::new(main),
            sessions: Arc::new(Mutex::new(BTreeMap::new())),
            keys,
            me,
            timeout,
        };
        for dir in [me_.keys.members_dir(), me_.keys.lease_marker_dir()] {
            match me_.within(me_.main().mkdir(&dir, &persistent())).await {
                Ok(()) | Err(DcsError::ZooKeeper(zk::Error::NodeExists)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(me_)
    }

    /// The cluster's keys.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// The member this connection writes for.
    pub fn member(&self) -> &MemberName {
        &self.me
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn main(&self) -> zk::Client {
        match self.main.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Brings the main connection's server up to date with the ensemble's leader (`sync`), so
    /// the reads that follow see every write acknowledged before (a lease's session may be on
    /// another server); a main session that expired is replaced by a new one first.
    async fn fresh(&self) -> Result<(), DcsError> {
        let dir = self.keys.prefix().trim_end_matches('/').to_string();
        match self.within(self.main().sync(&dir)).await {
            Err(DcsError::ZooKeeper(zk::Error::SessionExpired | zk::Error::ClientClosed)) => {
                let client = self
                    .within(
                        zk::Client::connector()
                            .with_session_timeout(self.timeout.max(Duration::from_secs(4)))
                            .connect(&self.hosts),
                    )
                    .await?;
                if let Ok(mut main) = self.main.write() {
                    *main = client;
                }
                tracing::warn!("the ZooKeeper session for reads expired: connected again");
                self.within(self.main().sync(&dir)).await
            }
            r => r,
        }
    }

    async fn within<T>(
        &self,
        fut: impl Future<Output = Result<T, zk::Error>>,
    ) -> Result<T, DcsError> {
        within(self.timeout, fut).await
    }

    /// The session of `lease`, when this connection granted it.
    fn session(&self, lease: i64) -> Option<zk::Client> {
        let sessions = self.sessions.lock().ok()?;
        sessions.get(&lease).map(|l| l.client.clone())
    }

    /// A znode's data and stat; `None` when it does not exist.
    async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, zk::Stat)>, DcsError> {
        match self.within(self.main().get_data(path)).await {
            Ok(found) => Ok(Some(found)),
            Err(DcsError::ZooKeeper(zk::Error::NoNode)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, path: &str) -> Result<Option<zk::Stat>, DcsError> {
        self.within(self.main().check_stat(path)).await
    }

    async fn lease_alive(&self, lease: i64) -> Result<bool, DcsError> {
        Ok(self.exists(&self.keys.lease_marker(lease)).await?.is_some())
    }

    /// The `leader` znode: its value while it names a live lease, and its stat.
    async fn leader(&self) -> Result<Option<(Option<LeaderValue>, zk::Stat)>, DcsError> {
        let Some((data, stat)) = self.get(&self.keys.leader()).await? else {
            return Ok(None);
        };
        let value = match serde_json::from_slice::<LeaderValue>(&data) {
            Ok(v) if self.lease_alive(v.lease).await? => Some(v),
            _ => None,
        };
        Ok(Some((value, stat)))
    }

    /// The `leader` znode's version while it names this member with the live `lease`.
    async fn held(&self, lease: i64) -> Result<Option<i32>, DcsError> {
        Ok(match self.leader().await? {
            Some((Some(v), stat)) if v.name == self.me.as_str() && v.lease == lease => {
                Some(stat.version)
            }
            _ => None,
        })
    }

    /// Commits `w`: `Ok(false)` when a check or conditional write failed.
    async fn commit(&self, mut w: zk::MultiWriter<'_>) -> Result<bool, DcsError> {
        match tokio::time::timeout(self.timeout, w.commit()).await {
            Err(_) => Err(DcsError::Timeout(self.timeout)),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if lost(&e) => Ok(false),
            Ok(Err(e)) => Err(DcsError::ZooKeeper(e.into())),
        }
    }

    /// Waits until `lease`'s marker is gone (a closed session's ephemeral znodes go with it,
    /// shortly after the close).
    async fn until_gone(&self, lease: i64) -> Result<(), DcsError> {
        let deadline = Instant::now() + self.timeout;
        while self.lease_alive(lease).await? {
            if Instant::now() >= deadline {
                return Err(DcsError::Timeout(self.timeout));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, zk::Error>>,
) -> Result<T, DcsError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(DcsError::ZooKeeper),
        Err(_) => Err(DcsError::Timeout(timeout)),
    }
}

impl Coordination for ZooKeeper {
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        let all = self.read_all().await?;
        Ok(parse_view(
            &self.keys,
            all.iter()
                .map(|(k, v, lease, rev)| (k.as_str(), v.as_slice(), *lease, *rev)),
        ))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, DcsError> {
        let asked = Instant::now();
        let client = self
            .within(
                zk::Client::connector()
                    .with_session_timeout(ttl)
                    .connect(&self.hosts),
            )
            .await?;
        // A shorter session would end the key before the holder's fence stops its writes.
        if client.session_timeout() < ttl {
            return Err(DcsError::Refused(format!(
                "ZooKeeper granted a session timeout of {:?}, shorter than the ttl {ttl:?}: \
                 the key would go before the primary's fence stops it (raise the server's \
                 maxSessionTimeout, or lower the ttl)",
                client.session_timeout()
            )));
        }
        if client.session_timeout() > ttl {
            tracing::warn!(
                granted = ?client.session_timeout(),
                ?ttl,
                "ZooKeeper granted a longer session than the ttl: a failover waits that long"
            );
        }
        let id = client.session_id().0;
        let marker = self.keys.lease_marker(id);
        within(self.timeout, client.create(&marker, b"", &ephemeral())).await?;
        let renewed = Arc::new(Mutex::new(asked));
        let expiry = tokio::spawn(expire(id, ttl, renewed.clone(), self.sessions.clone()));
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(
                id,
                Lease {
                    client,
                    renewed,
                    expiry,
                },
            );
        }
        Ok(id)
    }

    async fn renew_lease(&self, lease: i64) -> Result<bool, DcsError> {
        let Some(session) = self.session(lease) else {
            return Ok(false);
        };
        let sent = Instant::now();
        // A write request in the session itself (a multi of one version check): the
        // ensemble's leader answers it, and only while the session lives there; a read could
        // be answered by a follower cut off from the quorum.
        let mut w = session.new_multi_writer();
        w.add_check_version(&self.keys.lease_marker(lease), 0)?;
        let alive = match tokio::time::timeout(self.timeout, w.commit()).await {
            Err(_) => return Err(DcsError::Timeout(self.timeout)),
            Ok(Ok(_)) => true,
            Ok(Err(e)) if lost(&e) => false,
            Ok(Err(e)) => match zk::Error::from(e) {
                zk::Error::SessionExpired | zk::Error::ClientClosed => false,
                e => return Err(DcsError::ZooKeeper(e)),
            },
        };
        let Ok(mut sessions) = self.sessions.lock() else {
            return Ok(alive);
        };
        match sessions.get(&lease) {
            // Ended meanwhile by its ttl: a renewal after the ttl does not bring it back.
            None => Ok(false),
            Some(l) if alive => {
                if let Ok(mut at) = l.renewed.lock() {
                    *at = (*at).max(sent);
                }
                Ok(true)
            }
            Some(_) => {
                sessions.remove(&lease);
                Ok(false)
            }
        }
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), DcsError> {
        let session = self.sessions.lock().ok().and_then(|mut s| s.remove(&lease));
        let Some(session) = session else {
            return Err(lease_gone(lease));
        };
        if !self.lease_alive(lease).await? {
            return Err(lease_gone(lease));
        }
        // The last client of a session closes it when dropped.
        drop(session);
        self.until_gone(lease).await
    }

    async fn try_claim_initialize(&self, lease: i64) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.initialize();
        if self.exists(&key).await?.is_some() {
            return Ok(false);
        }
        let session = self.session(lease).ok_or_else(|| lease_gone(lease))?;
        match within(self.timeout, session.create(&key, b"", &ephemeral())).await {
            Ok(_) => Ok(true),
            Err(DcsError::ZooKeeper(zk::Error::NodeExists)) => Ok(false),
            Err(DcsError::ZooKeeper(zk::Error::SessionExpired)) => Err(lease_gone(lease)),
            Err(e) => Err(e),
        }
    }

    async fn set_initialize(&self, sysid: &str) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.initialize();
        let Some((data, stat)) = self.get(&key).await? else {
            return Ok(false);
        };
        if !data.is_empty() {
            return Ok(false);
        }
        // The placeholder is ephemeral; the identifier outlives its bootstrapper.
        let main = self.main();
        let mut w = main.new_multi_writer();
        w.add_check_version(&key, stat.version)?;
        w.add_delete(&key, Some(stat.version))?;
        w.add_create(&key, sysid.as_bytes(), &persistent())?;
        self.commit(w).await
    }

    async fn try_acquire_leader(&self, lease: i64) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.leader();
        let current = self.leader().await?;
        if matches!(current, Some((Some(_), _))) {
            return Ok(false);
        }
        if self.session(lease).is_none() || !self.lease_alive(lease).await? {
            return Err(lease_gone(lease));
        }
        let value = encode(
            &key,
            &LeaderValue {
                name: self.me.to_string(),
                lease,
            },
        )?;
        let main = self.main();
        let mut w = main.new_multi_writer();
        w.add_check_version(&self.keys.lease_marker(lease), 0)?;
        match current {
            Some((_, stat)) => w.add_set_data(&key, &value, Some(stat.version))?,
            None => w.add_create(&key, &value, &persistent())?,
        }
        self.commit(w).await
    }

    async fn release_leader(&self, lease: i64) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.leader();
        let Some(version) = self.held(lease).await? else {
            return Ok(false);
        };
        let main = self.main();
        let mut w = main.new_multi_writer();
        w.add_check_version(&self.keys.lease_marker(lease), 0)?;
        w.add_set_data(&key, b"", Some(version))?;
        self.commit(w).await
    }

    async fn hand_over_leader(
        &self,
        lease: i64,
        to: &MemberName,
        to_lease: i64,
    ) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.leader();
        let Some(version) = self.held(lease).await? else {
            return Ok(false);
        };
        let member = self.keys.member(to);
        let Some(to_stat) = self.exists(&member).await? else {
            return Ok(false);
        };
        if to_stat.ephemeral_owner != to_lease {
            return Ok(false);
        }
        let value = encode(
            &key,
            &LeaderValue {
                name: to.to_string(),
                lease: to_lease,
            },
        )?;
        let switchover = self.keys.switchover();
        let request = self.exists(&switchover).await?;
        let main = self.main();
        let mut w = main.new_multi_writer();
        w.add_check_version(&self.keys.lease_marker(lease), 0)?;
        w.add_check_version(&self.keys.lease_marker(to_lease), 0)?;
        w.add_check_version(&member, to_stat.version)?;
        w.add_set_data(&key, &value, Some(version))?;
        if let Some(stat) = request {
            w.add_delete(&switchover, Some(stat.version))?;
        }
        self.commit(w).await
    }

    async fn write_sync(&self, sync: Option<&SyncState>, revision: i64) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.sync();
        // Never deleted (an empty value is "absent"), so its version never repeats.
        let current = self.get(&key).await?;
        let now = match &current {
            Some((data, stat)) if !data.is_empty() => stat.mzxid,
            _ => 0,
        };
        if now != revision {
            return Ok(false);
        }
        let value = sync
            .map(|s| encode(&key, s))
            .transpose()?
            .unwrap_or_default();
        let main = self.main();
        let mut w = main.new_multi_writer();
        match current {
            Some((_, stat)) => w.add_set_data(&key, &value, Some(stat.version))?,
            None if value.is_empty() => return Ok(true),
            None => w.add_create(&key, &value, &persistent())?,
        }
        self.commit(w).await
    }

    async fn write_failsafe(
        &self,
        members: Option<&BTreeMap<MemberName, String>>,
        lease: i64,
    ) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.failsafe();
        let Some(version) = self.held(lease).await? else {
            return Ok(false);
        };
        let value = members.map(|m| encode(&key, m)).transpose()?;
        let main = self.main();
        let mut w = main.new_multi_writer();
        w.add_check_version(&self.keys.leader(), version)?;
        w.add_check_version(&self.keys.lease_marker(lease), 0)?;
        match (value, self.exists(&key).await?) {
            (Some(v), Some(stat)) => w.add_set_data(&key, &v, Some(stat.version))?,
            (Some(v), None) => w.add_create(&key, &v, &persistent())?,
            (None, Some(stat)) => w.add_delete(&key, Some(stat.version))?,
            (None, None) => {}
        }
        self.commit(w).await
    }

    async fn clear_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.switchover();
        let Some((data, stat)) = self.get(&key).await? else {
            return Ok(false);
        };
        if data != encode(&key, req)? {
            return Ok(false);
        }
        match self
            .within(self.main().delete(&key, Some(stat.version)))
            .await
        {
            Ok(()) => Ok(true),
            Err(DcsError::ZooKeeper(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn put_member(&self, status: &MemberStatus, lease: i64) -> Result<(), DcsError> {
        self.fresh().await?;
        let key = self.keys.member(&self.me);
        let value = encode(&key, status)?;
        let session = self.session(lease).ok_or_else(|| lease_gone(lease))?;
        match self.exists(&key).await? {
            Some(stat) if stat.ephemeral_owner == lease => {
                self.within(self.main().set_data(&key, &value, None))
                    .await?;
                return Ok(());
            }
            // Bound to another of this member's leases: moved to this one.
            Some(stat) => match self
                .within(self.main().delete(&key, Some(stat.version)))
                .await
            {
                Ok(()) | Err(DcsError::ZooKeeper(zk::Error::NoNode)) => {}
                Err(e) => return Err(e),
            },
            None => {}
        }
        match within(self.timeout, session.create(&key, &value, &ephemeral())).await {
            Ok(_) => Ok(()),
            Err(DcsError::ZooKeeper(zk::Error::SessionExpired)) => Err(lease_gone(lease)),
            Err(e) => Err(e),
        }
    }

    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), DcsError> {
        self.fresh().await?;
        let key = self.keys.history();
        // Losing the race five times means others keep appending: the entry is theirs to add.
        for _ in 0..5 {
            let current = self.get(&key).await?;
            let mut list: Vec<HistoryEntry> = match &current {
                Some((data, _)) => serde_json::from_slice(data).unwrap_or_default(),
                None => Vec::new(),
            };
            if list.iter().any(|h| h.timeline == entry.timeline) {
                return Ok(());
            }
            list.push(entry.clone());
            let value = encode(&key, &list)?;
            let written = match &current {
                Some((_, stat)) => self
                    .within(self.main().set_data(&key, &value, Some(stat.version)))
                    .await
                    .map(|_| ()),
                None => self
                    .within(self.main().create(&key, &value, &persistent()))
                    .await
                    .map(|_| ()),
            };
            match written {
                Ok(()) => return Ok(()),
                Err(DcsError::ZooKeeper(zk::Error::BadVersion | zk::Error::NodeExists)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
