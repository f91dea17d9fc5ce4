//! Reading a cluster's keys from ZooKeeper as one view: a listing of the keys, then one
//! multi-read of all of them with the live sessions' markers (which decide whether the
//! `leader` znode counts). ZooKeeper answers a multi-read at one point of its history, so
//! the keys that existed at the listing are read consistently, never torn across a multi-op;
//! a key created between the listing and the multi-read is missing until the next read. A
//! cluster whose directory does not exist reads as empty, as an etcd prefix with no keys.
//! Multi-reads need ZooKeeper 3.6 or newer.

use super::{LeaderValue, ZooKeeper};
use crate::dcs::DcsError;
use zookeeper_client as zk;

impl ZooKeeper {
    /// Every znode of the cluster as `(key, value, lease, revision)`, the shape etcd's range
    /// read has: an ephemeral znode's lease is its session, the leader's the one it names.
    pub(super) async fn read_all(&self) -> Result<Vec<(String, Vec<u8>, i64, i64)>, DcsError> {
        let prefix = self.keys.prefix();
        let dir = prefix.trim_end_matches('/');
        let (members_dir, markers_dir) = (self.keys.members_dir(), self.keys.lease_marker_dir());
        self.fresh().await?;
        let main = self.main();
        // Which keys exist, then every one of them in one multi-read: ZooKeeper answers it
        // at one point of its history, so the view is never torn (a leader key from before a
        // hand-over beside a switchover request from after it). Keys created between the two
        // reads are seen on the next pass.
        let mut lists = main.new_multi_reader();
        lists.add_get_children(dir)?;
        lists.add_get_children(&members_dir)?;
        let [top, members] = <[zk::MultiReadResult; 2]>::try_from(
            self.within(lists.commit()).await?,
        )
        .map_err(|_| {
            DcsError::Refused("ZooKeeper answered a multi-read of 2 with another count".into())
        })?;
        let mut paths: Vec<String> = children(top)?
            .into_iter()
            .map(|c| format!("{prefix}{c}"))
            .filter(|p| *p != members_dir && *p != markers_dir)
            .collect();
        paths.extend(
            children(members)?
                .into_iter()
                .map(|m| format!("{members_dir}/{m}")),
        );
        let mut read = main.new_multi_reader();
        for p in &paths {
            read.add_get_data(p)?;
        }
        read.add_get_children(&markers_dir)?;
        let mut results = self.within(read.commit()).await?;
        if results.len() != paths.len() + 1 {
            return Err(DcsError::Refused(format!(
                "ZooKeeper answered a multi-read of {} with {} results",
                paths.len() + 1,
                results.len()
            )));
        }
        let live = match results.pop() {
            Some(markers) => children(markers)?,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for (path, result) in paths.into_iter().zip(results) {
            let (data, stat) = match result {
                zk::MultiReadResult::Data { data, stat } => (data, stat),
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => continue,
                zk::MultiReadResult::Error { err } => return Err(err.into()),
                _ => {
                    return Err(DcsError::Refused(format!(
                        "ZooKeeper answered a read of {path} with a list of children"
                    )));
                }
            };
            if path == self.keys.leader() {
                // The leader key counts only while the session it names is alive.
                if let Ok(v) = serde_json::from_slice::<LeaderValue>(&data)
                    && live.contains(&format!("{:x}", v.lease))
                {
                    out.push((path, v.name.into_bytes(), v.lease, stat.mzxid));
                }
            } else if path.starts_with(&format!("{members_dir}/")) {
                out.push((path, data, stat.ephemeral_owner, stat.mzxid));
            } else if !data.is_empty() || path == self.keys.initialize() {
                // Written empty rather than deleted (`sync`): absent.
                out.push((path, data, stat.ephemeral_owner, stat.mzxid));
            }
        }
        Ok(out)
    }
}

/// The children a multi-read listed (none when the directory does not exist).
fn children(r: zk::MultiReadResult) -> Result<Vec<String>, DcsError> {
    match r {
        zk::MultiReadResult::Children { children } => Ok(children),
        zk::MultiReadResult::Error {
            err: zk::Error::NoNode,
        } => Ok(Vec::new()),
        zk::MultiReadResult::Error { err } => Err(err.into()),
        _ => Err(DcsError::Refused(
            "ZooKeeper answered a list of children with something else".into(),
        )),
    }
}
