//! The writes outside the HA loop's [`Coordination`](crate::dcs::Coordination) contract, on
//! ZooKeeper, with the meaning the etcd adapter gives them: an operator's switchover request
//! and the cluster's `config` (compare-and-swap on the znode's `mzxid`, the revision the view
//! reports), the drill record and the catalog status, the `initialize` placeholder left by a
//! failed bootstrap and the system identifier a major upgrade adopts.

use super::{LeaderValue, ZooKeeper, persistent};
use crate::dcs::{DcsError, encode};
use spilo_model::{ClusterConfig, MemberName, SwitchoverRequest};
use zookeeper_client as zk;

/// A conditional write that lost: the condition did not hold.
fn lost_race(e: &DcsError) -> bool {
    matches!(
        e,
        DcsError::ZooKeeper(zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode)
    )
}

impl ZooKeeper {
    /// Creates `key` with `value` unless it exists; whether it was created.
    async fn create_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, DcsError> {
        match self
            .within(self.main().create(key, value, &persistent()))
            .await
        {
            Ok(_) => Ok(true),
            Err(DcsError::ZooKeeper(zk::Error::NodeExists)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `key` if its `mzxid` is still `revision` (0: absent).
    async fn put_if_revision(
        &self,
        key: &str,
        value: &[u8],
        revision: i64,
    ) -> Result<bool, DcsError> {
        self.fresh().await?;
        let written = match self.get(key).await? {
            Some((_, stat)) if stat.mzxid == revision => self
                .within(self.main().set_data(key, value, Some(stat.version)))
                .await
                .map(|_| ()),
            None if revision == 0 => self
                .within(self.main().create(key, value, &persistent()))
                .await
                .map(|_| ()),
            _ => return Ok(false),
        };
        match written {
            Ok(()) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes this member's `boot/<name>` report, if there is one (reports are written on
    /// AWS, where the store is etcd; a member that runs clears it wherever it is).
    pub async fn delete_boot_failure(&self) -> Result<(), DcsError> {
        match self
            .within(self.main().delete(&self.keys.boot(&self.me), None))
            .await
        {
            Ok(()) | Err(DcsError::ZooKeeper(zk::Error::NoNode)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the empty `initialize` placeholder after a failed bootstrap.
    pub async fn abandon_initialize(&self) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.initialize();
        let Some((data, stat)) = self.get(&key).await? else {
            return Ok(false);
        };
        if !data.is_empty() {
            return Ok(false);
        }
        match self
            .within(self.main().delete(&key, Some(stat.version)))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// As [`crate::dcs::Dcs::adopt_upgraded_system`]: `initialize` takes `sysid` and
    /// `history` is emptied in one multi-op, while no member holds the leader key (the
    /// `leader` znode's version is checked, or it is created empty when absent, so a leader
    /// elected meanwhile fails it).
    pub async fn adopt_upgraded_system(
        &self,
        sysid: &str,
        old: Option<&str>,
    ) -> Result<bool, DcsError> {
        self.fresh().await?;
        let key = self.keys.initialize();
        let Some((current, stat)) = self.get(&key).await? else {
            return Ok(false);
        };
        if current == sysid.as_bytes() {
            return Ok(true);
        }
        if old.is_some_and(|o| o.as_bytes() != current.as_slice()) {
            return Ok(false);
        }
        let leader = self.leader().await?;
        if matches!(leader, Some((Some(LeaderValue { .. }), _))) {
            return Ok(false);
        }
        let history = self.keys.history();
        let history_stat = self.exists(&history).await?;
        let main = self.main();
        let mut w = main.new_multi_writer();
        match &leader {
            Some((_, leader_stat)) => {
                w.add_check_version(&self.keys.leader(), leader_stat.version)?;
            }
            // Made empty (released) here, so a leader elected meanwhile fails the multi-op.
            None => w.add_create(&self.keys.leader(), b"", &persistent())?,
        }
        w.add_set_data(&key, sysid.as_bytes(), Some(stat.version))?;
        match history_stat {
            Some(h) => w.add_set_data(&history, b"[]", Some(h.version))?,
            None => w.add_create(&history, b"[]", &persistent())?,
        }
        self.commit(w).await
    }

    /// Writes a switchover request unless one is pending. Returns whether it was written.
    pub async fn request_switchover(&self, req: &SwitchoverRequest) -> Result<bool, DcsError> {
        let key = self.keys.switchover();
        self.create_if_absent(&key, &encode(&key, req)?).await
    }

    /// Removes any switchover request. Returns whether there was one.
    pub async fn cancel_switchover(&self) -> Result<bool, DcsError> {
        match self
            .within(self.main().delete(&self.keys.switchover(), None))
            .await
        {
            Ok(()) => Ok(true),
            Err(DcsError::ZooKeeper(zk::Error::NoNode)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The `config` value and its revision (the znode's `mzxid`; 0 when absent).
    pub async fn read_config(&self) -> Result<(Option<serde_json::Value>, i64), DcsError> {
        self.fresh().await?;
        Ok(match self.get(&self.keys.config()).await? {
            Some((data, stat)) => (serde_json::from_slice(&data).ok(), stat.mzxid),
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
        self.put_if_revision(&key, &encode(&key, config)?, revision)
            .await
    }

    /// Creates `config` if it does not exist yet.
    pub async fn create_config_if_absent(&self, config: &ClusterConfig) -> Result<bool, DcsError> {
        let key = self.keys.config();
        self.create_if_absent(&key, &encode(&key, config)?).await
    }

    /// The lease (session) a member key is bound to, if the key exists.
    pub async fn member_lease(&self, name: &MemberName) -> Result<Option<i64>, DcsError> {
        self.fresh().await?;
        Ok(self
            .exists(&self.keys.member(name))
            .await?
            .map(|s| s.ephemeral_owner))
    }

    /// Records a drill in `drill` (see [`crate::dcs::Dcs::record_drill`]).
    pub async fn record_drill(
        &self,
        next: impl Fn(Option<&spilo_model::DrillRecord>) -> spilo_model::DrillRecord,
    ) -> Result<(), DcsError> {
        let key = self.keys.drill();
        for _ in 0..5 {
            self.fresh().await?;
            let (previous, revision) = match self.get(&key).await? {
                Some((data, stat)) => (
                    serde_json::from_slice::<spilo_model::DrillRecord>(&data).ok(),
                    stat.mzxid,
                ),
                None => (None, 0),
            };
            let value = encode(&key, &next(previous.as_ref()))?;
            if self.put_if_revision(&key, &value, revision).await? {
                return Ok(());
            }
        }
        Err(DcsError::Conflict(key))
    }

    /// Creates `drill` if it does not exist yet.
    pub async fn create_drill_if_absent(
        &self,
        record: &spilo_model::DrillRecord,
    ) -> Result<bool, DcsError> {
        let key = self.keys.drill();
        self.create_if_absent(&key, &encode(&key, record)?).await
    }

    /// Writes the `catalog` status (its one writer: the leader).
    pub async fn put_catalog_status(
        &self,
        status: &spilo_model::catalog::CatalogStatus,
    ) -> Result<(), DcsError> {
        let key = self.keys.catalog();
        let value = encode(&key, status)?;
        for _ in 0..5 {
            match self.within(self.main().set_data(&key, &value, None)).await {
                Ok(_) => return Ok(()),
                Err(DcsError::ZooKeeper(zk::Error::NoNode)) => {
                    if self.create_if_absent(&key, &value).await? {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(DcsError::Conflict(key))
    }
}
