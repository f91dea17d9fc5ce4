//! `spilo list CLUSTER [--etcd URL | --zookeeper HOSTS]`: the member table of a running
//! cluster, read straight from its store (the `leader` and `members/*` keys, with what `config` declares: its source when a
//! standby cluster, its roles with where each password is kept, its databases), as text or
//! JSON.

use crate::operate::Target;
use anyhow::Context;
use spilo_model::{ClusterSummary, Keyspace, summarize};

/// Reads the member table of the target cluster from its etcd.
pub async fn read_summary(target: &Target) -> anyhow::Result<ClusterSummary> {
    let state = crate::operate::read_state(target).await?;
    let mut summary = summarize(&target.cluster, state.leader.as_ref(), &state.members);
    let config = state.cluster_config();
    summary.paused = config.pause;
    summary.mark_synchronous(Some(&config), state.sync.as_ref());
    summary.mark_standby(Some(&config));
    summary.mark_catalog(Some(&config));
    summary.drill = state.drill;
    Ok(summary)
}

/// `spilo pause` / `spilo resume`: sets maintenance mode in the cluster's `config` key by
/// compare-and-swap (retried when another writer got there first).
pub async fn set_pause(target: &Target, pause: bool) -> anyhow::Result<()> {
    update_config(target, |c| c.pause = pause).await
}

/// The cluster has no `config` in etcd (not bootstrapped yet, or no such cluster).
#[derive(Debug, thiserror::Error)]
#[error("no cluster named {cluster} in its store ({key} is absent)")]
pub struct ConfigAbsent {
    /// The cluster.
    pub cluster: String,
    /// The key.
    pub key: String,
}

/// Changes the cluster's `config` key with `change`, by compare-and-swap on the revision read
/// (retried when another writer got there first); fails when the key is absent.
pub async fn update_config(
    target: &Target,
    change: impl Fn(&mut spilo_model::ClusterConfig),
) -> anyhow::Result<()> {
    let key = Keyspace::with_namespace(&target.namespace, &target.cluster).config();
    if let Some(hosts) = target.zookeeper_hosts() {
        let client = crate::zookeeper::connect(&hosts).await?;
        return update_config_znode(&client, target.cluster.as_str(), key, change).await;
    }
    let mut client = target.connect().await?;
    update_config_key(&mut client, target.cluster.as_str(), key, change).await
}

/// [`update_config`] on ZooKeeper: compare-and-swap on the znode's revision (`mzxid`).
async fn update_config_znode(
    client: &zookeeper_client::Client,
    cluster: &str,
    key: String,
    change: impl Fn(&mut spilo_model::ClusterConfig),
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let Some((value, revision)) = crate::zookeeper::get(client, &key).await? else {
            return Err(ConfigAbsent {
                cluster: cluster.to_string(),
                key,
            }
            .into());
        };
        let mut config = serde_json::from_slice::<spilo_model::ClusterConfig>(&value)
            .with_context(|| format!("{key} does not hold a cluster config"))?;
        let before = config.clone();
        change(&mut config);
        if config == before {
            return Ok(());
        }
        let value = serde_json::to_vec(&config)?;
        if crate::zookeeper::put_if_revision(client, &key, &value, revision).await? {
            return Ok(());
        }
    }
    anyhow::bail!("{key} kept changing under five attempts; try again")
}

/// [`update_config`] of `cluster`'s `config` at `key`, through `client`.
pub async fn update_config_key(
    client: &mut etcd_client::Client,
    cluster: &str,
    key: String,
    change: impl Fn(&mut spilo_model::ClusterConfig),
) -> anyhow::Result<()> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    for _ in 0..5 {
        let resp = client
            .get(key.clone(), None)
            .await
            .with_context(|| format!("read {key}"))?;
        let (mut config, revision) = match resp.kvs().first() {
            Some(kv) => (
                serde_json::from_slice::<spilo_model::ClusterConfig>(kv.value())
                    .with_context(|| format!("{key} does not hold a cluster config"))?,
                kv.mod_revision(),
            ),
            None => {
                return Err(ConfigAbsent {
                    cluster: cluster.to_string(),
                    key,
                }
                .into());
            }
        };
        let before = config.clone();
        change(&mut config);
        if config == before {
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(
                key.clone(),
                serde_json::to_string(&config)?,
                None,
            )]);
        if client
            .txn(txn)
            .await
            .with_context(|| format!("write {key}"))?
            .succeeded()
        {
            return Ok(());
        }
    }
    anyhow::bail!("{key} kept changing under five attempts; try again")
}
