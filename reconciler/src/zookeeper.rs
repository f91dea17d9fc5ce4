//! A cluster's keys on ZooKeeper, as the `spilo` operations read and write them: the same
//! paths as etcd's keys ([`Keyspace`]), the `leader` znode's value a
//! [`ZooKeeperLeader`] that counts only while its session's marker exists (the governor's
//! layout, `governor::dcs::zookeeper`), a revision that is the znode's `mzxid`. Reads are
//! preceded by a `sync`, so they see every write acknowledged before.

use anyhow::Context;
use spilo_model::Keyspace;
use spilo_model::keys::ZooKeeperLeader;
use std::future::Future;
use zookeeper_client as zk;

async fn within<T>(
    what: &str,
    fut: impl Future<Output = Result<T, zk::Error>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(crate::etcd::TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("ZooKeeper did not answer within {:?}", crate::etcd::TIMEOUT))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| what.to_string())
}

/// A session with the ensemble `hosts` (`host:port` each).
pub async fn connect(hosts: &[String]) -> anyhow::Result<zk::Client> {
    let hosts = hosts.join(",");
    within(
        &format!("connect to ZooKeeper at {hosts}"),
        zk::Client::connector().connect(&hosts),
    )
    .await
}

/// A znode's data and `mzxid`; `None` when it does not exist.
pub async fn get(client: &zk::Client, path: &str) -> anyhow::Result<Option<(Vec<u8>, i64)>> {
    match tokio::time::timeout(crate::etcd::TIMEOUT, client.get_data(path)).await {
        Ok(Ok((data, stat))) => Ok(Some((data, stat.mzxid))),
        Ok(Err(zk::Error::NoNode)) => Ok(None),
        Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("read {path}"))),
        Err(_) => anyhow::bail!("read {path}: ZooKeeper did not answer in time"),
    }
}

/// Every key of the cluster as `(key, value, revision)`, the shape of etcd's range read: the
/// leader's value is the member name while its session lives (absent otherwise), and a key
/// written empty rather than deleted (`sync`) is absent.
pub async fn read_cluster(
    client: &zk::Client,
    keys: &Keyspace,
) -> anyhow::Result<Vec<(String, Vec<u8>, i64)>> {
    let prefix = keys.prefix();
    let dir = prefix.trim_end_matches('/');
    match tokio::time::timeout(crate::etcd::TIMEOUT, client.sync(dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(zk::Error::NoNode)) => return Ok(Vec::new()),
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context(format!("sync {dir}"))),
        Err(_) => anyhow::bail!("sync {dir}: ZooKeeper did not answer in time"),
    }
    let children = match tokio::time::timeout(crate::etcd::TIMEOUT, client.list_children(dir)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(zk::Error::NoNode)) => return Ok(Vec::new()),
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context(format!("list {dir}"))),
        Err(_) => anyhow::bail!("list {dir}: ZooKeeper did not answer in time"),
    };
    let mut out = Vec::new();
    for child in children {
        let path = format!("{prefix}{child}");
        if path == keys.members_dir() {
            let members = within(&format!("list {path}"), client.list_children(&path)).await?;
            for m in members {
                let key = format!("{path}/{m}");
                if let Some((data, rev)) = get(client, &key).await? {
                    out.push((key, data, rev));
                }
            }
            continue;
        }
        let Some((data, rev)) = get(client, &path).await? else {
            continue;
        };
        if path == keys.leader() {
            let Ok(v) = serde_json::from_slice::<ZooKeeperLeader>(&data) else {
                continue;
            };
            if get(client, &keys.lease_marker(v.lease)).await?.is_some() {
                out.push((path, v.name.into_bytes(), rev));
            }
            continue;
        }
        if data.is_empty() && path != keys.initialize() {
            continue;
        }
        out.push((path, data, rev));
    }
    Ok(out)
}

/// Writes `value` at `key` if its revision (`mzxid`) is still `revision` (0: creates it
/// while it does not exist); `false` when it changed (or was made, or deleted) meanwhile.
pub async fn put_if_revision(
    client: &zk::Client,
    key: &str,
    value: &[u8],
    revision: i64,
) -> anyhow::Result<bool> {
    if revision == 0 {
        let create = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        return match tokio::time::timeout(crate::etcd::TIMEOUT, client.create(key, value, &create))
            .await
        {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(zk::Error::NodeExists)) => Ok(false),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("create {key}"))),
            Err(_) => anyhow::bail!("create {key}: ZooKeeper did not answer in time"),
        };
    }
    let dir = key.rsplit_once('/').map_or(key, |(d, _)| d);
    within(&format!("sync {dir}"), client.sync(dir)).await?;
    let stat = match tokio::time::timeout(crate::etcd::TIMEOUT, client.check_stat(key)).await {
        Ok(Ok(Some(stat))) if stat.mzxid == revision => stat,
        Ok(Ok(_)) => return Ok(false),
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context(format!("read {key}"))),
        Err(_) => anyhow::bail!("read {key}: ZooKeeper did not answer in time"),
    };
    match tokio::time::timeout(
        crate::etcd::TIMEOUT,
        client.set_data(key, value, Some(stat.version)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(zk::Error::BadVersion | zk::Error::NoNode)) => Ok(false),
        Ok(Err(e)) => Err(anyhow::Error::from(e).context(format!("write {key}"))),
        Err(_) => anyhow::bail!("write {key}: ZooKeeper did not answer in time"),
    }
}
