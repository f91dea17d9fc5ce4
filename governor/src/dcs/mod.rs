//! The governor's etcd adapter: every read and write of the cluster's keys, with the
//! compare-and-swap guards that make one writer per key safe under races.
//!
//! Key paths come from [`spilo_model::Keyspace`]; nothing here builds a path by hand. Every call
//! is bounded by the operation timeout (`ha.retry_timeout`), and every failure is a
//! [`DcsError`], so the runtime can tell "etcd said no" (a lost compare) from "etcd did not
//! answer" (unknown).
//!
//! Lease renewal ([`lease`]) and change notification ([`watch`]) run as their own tasks.

pub mod coordination;
pub use spilo_discovery as discovery;
pub mod lease;
mod store;
pub mod view;
pub mod watch;
pub mod zookeeper;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use spilo_model::{ClusterConfig, Keyspace, MemberName, SwitchoverRequest};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use coordination::Coordination;
pub use store::Store;
pub use view::{parse_view, read_view};

/// A failure of the coordination store (etcd, or ZooKeeper: [`Store`]).
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// The store (etcd or ZooKeeper) did not answer in time.
    #[error("the coordination store did not answer within {0:?}")]
    Timeout(Duration),
    /// etcd answered with an error, or the connection failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// No endpoint could be found (DNS discovery found nothing).
    #[error(transparent)]
    Discovery(#[from] spilo_discovery::DiscoveryError),
    /// A value could not be encoded.
    #[error("cannot encode {key}: {source}")]
    Encode {
        /// The key.
        key: String,
        /// The error.
        source: serde_json::Error,
    },
    /// A compare-and-swap lost to other writers again and again.
    #[error("{0} kept changing while it was being written")]
    Conflict(String),
    /// ZooKeeper answered with an error, or the connection failed.
    #[error("ZooKeeper: {0}")]
    ZooKeeper(#[from] zookeeper_client::Error),
    /// A lease this connection does not hold (revoked, expired, or another's).
    #[error("requested lease not found: {0:#x}")]
    LeaseNotFound(i64),
    /// The coordination store cannot give what the governor's timing needs.
    #[error("{0}")]
    Refused(String),
    /// The store could not be reached at all (at start).
    #[error("cannot reach {at}: {source}")]
    Unreachable {
        /// Where it was looked for: `etcd at <endpoints>`, `ZooKeeper at <hosts>`.
        at: String,
        /// Why not.
        source: Box<DcsError>,
    },
}

/// A connection to etcd scoped to one cluster and one member.
///
/// Clones share one client, which [`Dcs::reconnect`] replaces for all of them (a renewed
/// member certificate becomes the identity of every later connection).
#[derive(Clone)]
pub struct Dcs {
    client: Arc<RwLock<Client>>,
    endpoints: Arc<Vec<String>>,
    keys: Keyspace,
    me: MemberName,
    timeout: Duration,
}

/// A client for `endpoints` that answered a status call within `timeout`.
async fn open(
    endpoints: &[String],
    tls: Option<&discovery::EtcdTls>,
    timeout: Duration,
) -> Result<Client, DcsError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(1), timeout);
    if let Some(t) = tls {
        options = options.with_tls(t.options());
    }
    let mut client = bounded(timeout, Client::connect(endpoints, Some(options))).await?;
    bounded(timeout, client.status()).await?;
    Ok(client)
}

impl Dcs {
    /// Connects to `endpoints` (URLs), over TLS with `tls` (etcd's certificate checked against
    /// its CA, this member's certificate presented). Fails when none answers a status call within `timeout`.
    pub async fn connect(
        endpoints: &[String],
        tls: Option<&discovery::EtcdTls>,
        keys: Keyspace,
        me: MemberName,
        timeout: Duration,
    ) -> Result<Self, DcsError> {
        let client = open(endpoints, tls, timeout).await?;
        Ok(Self {
            client: Arc::new(RwLock::new(client)),
            endpoints: Arc::new(endpoints.to_vec()),
            keys,
            me,
            timeout,
        })
    }

    /// Connects again with `tls` (a renewed certificate) and makes the new client the one
    /// every clone uses from now on; streams opened on the old one end with their
    /// connections and are reopened on the new one. The old client stays in use when the
    /// new one cannot connect.
    pub async fn reconnect(&self, tls: Option<&discovery::EtcdTls>) -> Result<(), DcsError> {
        let client = open(&self.endpoints, tls, self.timeout).await?;
        match self.client.write() {
            Ok(mut c) => *c = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
        Ok(())
    }

    /// Writes this member's `boot/<name>` report, bound to a lease of one day: the key's
    /// only writer is the boot layer of this member's instance.
    pub async fn put_boot_failure(
        &self,
        report: &spilo_model::BootFailure,
    ) -> Result<(), DcsError> {
        let key = self.keys.boot(&self.me);
        let value = encode(&key, report)?;
        let mut client = self.client();
        let lease = bounded(self.timeout, client.lease_grant(86_400, None)).await?;
        bounded(
            self.timeout,
            client.put(key, value, Some(PutOptions::new().with_lease(lease.id()))),
        )
        .await?;
        Ok(())
    }

    /// Deletes this member's `boot/<name>` report (the member runs now).
    pub async fn delete_boot_failure(&self) -> Result<(), DcsError> {
        let mut client = self.client();
        bounded(self.timeout, client.delete(self.keys.boot(&self.me), None)).await?;
        Ok(())
    }

    /// The member this connection writes for.
    pub fn member(&self) -> &MemberName {
        &self.me
    }

    /// The keyspace.
    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    /// The raw client, for the lease and watch tasks (the current one: take it again for
    /// every new stream).
    pub fn client(&self) -> Client {
        match self.client.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Deletes the empty `initialize` placeholder after a failed bootstrap.
    pub async fn abandon_initialize(&self) -> Result<bool, DcsError> {
        let key = self.keys.initialize();
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, "")])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(txn).await
    }

    /// After a major upgrade (`governor upgrade commit`): `initialize` takes the upgraded
    /// system's identifier and `history` is emptied (its timelines were the old system's),
    /// in one transaction that holds only while no member holds the leader key. Returns
    /// whether `initialize` holds `sysid` afterwards (written now or before).
    /// `old`: the system identifier `initialize` must hold now (the upgraded data's former
    /// one), when it is known.
    pub async fn adopt_upgraded_system(
        &self,
        sysid: &str,
        old: Option<&str>,
    ) -> Result<bool, DcsError> {
        let key = self.keys.initialize();
        let resp = bounded(self.timeout, self.client().get(key.clone(), None)).await?;
        let current = resp.kvs().first().map(|kv| kv.value().to_vec());
        if current.as_deref() == Some(sysid.as_bytes()) {
            return Ok(true);
        }
        let Some(current) = current else {
            return Ok(false);
        };
        if old.is_some_and(|o| o.as_bytes() != current.as_slice()) {
            // Another system's cluster under this scope: not ours to take over.
            return Ok(false);
        }
        let txn = Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, current),
                Compare::create_revision(self.keys.leader(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key, sysid, None),
                TxnOp::put(self.keys.history(), "[]", None),
            ]);
        self.txn(txn).await
    }

    /// Writes a switchover request unless one is pending. Returns whether it was written.
    pub async fn request_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        let key = self.keys.switchover();
        let value = encode(&key, req)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(txn).await
    }

    /// Removes any switchover request. Returns whether there was one.
    pub async fn cancel_switchover(&self) -> Result<bool, DcsError> {
        let resp = bounded(
            self.timeout,
            self.client().delete(self.keys.switchover(), None),
        )
        .await?;
        Ok(resp.deleted() > 0)
    }

    /// The `config` value and its revision (0 when absent).
    pub async fn read_config(&self) -> Result<(Option<serde_json::Value>, i64), DcsError> {
        let key = self.keys.config();
        let resp = bounded(self.timeout, self.client().get(key.clone(), None)).await?;
        Ok(match resp.kvs().first() {
            Some(kv) => (serde_json::from_slice(kv.value()).ok(), kv.mod_revision()),
            None => (None, 0),
        })
    }

    /// Writes `config` if its revision is still `revision`. Returns whether it was written.
    pub async fn write_config(
        &self,
        config: &ClusterConfig,
        revision: i64,
    ) -> Result<bool, DcsError> {
        let key = self.keys.config();
        let value = encode(&key, config)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(txn).await
    }

    /// The lease a member key is bound to, if the key exists.
    pub async fn member_lease(&self, name: &MemberName) -> Result<Option<i64>, DcsError> {
        let resp = bounded(
            self.timeout,
            self.client().get(self.keys.member(name), None),
        )
        .await?;
        Ok(resp.kvs().first().map(|kv| kv.lease()))
    }

    /// Records a drill in `drill`: `next` turns the record read (if any parses) into the one
    /// to write, so two members recording drills at the same moment both count (a requested
    /// drill on one member, the scheduled one on another).
    pub async fn record_drill(
        &self,
        next: impl Fn(Option<&spilo_model::DrillRecord>) -> spilo_model::DrillRecord,
    ) -> Result<(), DcsError> {
        let key = self.keys.drill();
        self.update_json(&key, |previous: Option<spilo_model::DrillRecord>| {
            Some(next(previous.as_ref()))
        })
        .await?;
        Ok(())
    }

    /// Rewrites the JSON value at `key` by compare-and-swap on its revision (retried a few
    /// times on a lost race): `next` turns the value read (`None`: absent or not parsing) into
    /// the one to write, or `None` to leave it. Returns whether it wrote.
    pub(crate) async fn update_json<T: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        key: &str,
        next: impl Fn(Option<T>) -> Option<T>,
    ) -> Result<bool, DcsError> {
        for _ in 0..5 {
            let resp = bounded(self.timeout, self.client().get(key.to_string(), None)).await?;
            let (previous, revision) = match resp.kvs().first() {
                Some(kv) => (
                    serde_json::from_slice::<T>(kv.value()).ok(),
                    kv.mod_revision(),
                ),
                None => (None, 0),
            };
            let Some(value) = next(previous) else {
                return Ok(false);
            };
            let value = encode(key, &value)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key, value, None)]);
            if self.txn(txn).await? {
                return Ok(true);
            }
        }
        Err(DcsError::Conflict(key.to_string()))
    }

    /// Writes the `catalog` status (its one writer: the leader).
    pub async fn put_catalog_status(
        &self,
        status: &spilo_model::catalog::CatalogStatus,
    ) -> Result<(), DcsError> {
        let key = self.keys.catalog();
        let value = encode(&key, status)?;
        bounded(self.timeout, self.client().put(key, value, None)).await?;
        Ok(())
    }

    /// Creates `drill` if it does not exist yet (any member whose drill schedule starts).
    pub async fn create_drill_if_absent(
        &self,
        record: &spilo_model::DrillRecord,
    ) -> Result<bool, DcsError> {
        let key = self.keys.drill();
        let value = encode(&key, record)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(txn).await
    }

    /// Creates `config` if it does not exist yet.
    pub async fn create_config_if_absent(&self, config: &ClusterConfig) -> Result<bool, DcsError> {
        let key = self.keys.config();
        let value = encode(&key, config)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(txn).await
    }

    async fn txn(&self, txn: Txn) -> Result<bool, DcsError> {
        let resp = bounded(self.timeout, self.client().txn(txn)).await?;
        Ok(resp.succeeded())
    }
}

fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, DcsError> {
    serde_json::to_vec(value).map_err(|source| DcsError::Encode {
        key: key.to_string(),
        source,
    })
}

/// Runs an etcd call with a deadline.
pub async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, DcsError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(DcsError::from),
        Err(_) => Err(DcsError::Timeout(timeout)),
    }
}
