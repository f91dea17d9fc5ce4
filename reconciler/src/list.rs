//! `spilo list CLUSTER --etcd URL`: the member table of a running cluster, read straight from
//! etcd (the `leader` and `members/*` keys), as text or JSON.

use anyhow::Context;
use etcd_client::GetOptions;
use spilo_model::{
    ClusterName, ClusterSummary, KeyKind, Keyspace, MemberName, MemberStatus, summarize,
};
use std::collections::BTreeMap;

/// Reads the member table of `scope` from etcd at `endpoints`.
pub async fn read_summary(
    endpoints: &[String],
    namespace: &str,
    scope: &ClusterName,
) -> anyhow::Result<ClusterSummary> {
    let timeout = crate::etcd::TIMEOUT;
    let mut client = crate::etcd::connect(endpoints)
        .await
        .map_err(anyhow::Error::msg)?;
    let keys = Keyspace::with_namespace(namespace, scope);
    let resp = tokio::time::timeout(
        timeout,
        client.get(keys.prefix(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("read {} from etcd", keys.prefix()))?;
    let mut leader = None;
    let mut paused = false;
    let mut members: BTreeMap<MemberName, MemberStatus> = BTreeMap::new();
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        match keys.classify(key) {
            Some(KeyKind::Leader) => {
                leader = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|s| MemberName::new(s).ok());
            }
            Some(KeyKind::Config) => {
                paused = serde_json::from_slice::<spilo_model::ClusterConfig>(kv.value())
                    .is_ok_and(|c| c.pause);
            }
            Some(KeyKind::Member(name)) => {
                let status = serde_json::from_slice(kv.value())
                    .with_context(|| format!("{key} does not hold a member status"))?;
                members.insert(name, status);
            }
            _ => {}
        }
    }
    if members.is_empty() && leader.is_none() {
        anyhow::bail!(
            "no cluster named {scope} in etcd (nothing under {})",
            keys.prefix()
        );
    }
    let mut summary = summarize(scope, leader.as_ref(), &members);
    summary.paused = paused;
    Ok(summary)
}

/// `spilo pause` / `spilo resume`: sets maintenance mode in the cluster's `config` key by
/// compare-and-swap (retried when another writer got there first).
pub async fn set_pause(
    endpoints: &[String],
    namespace: &str,
    scope: &ClusterName,
    pause: bool,
) -> anyhow::Result<()> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let mut client = crate::etcd::connect(endpoints)
        .await
        .map_err(anyhow::Error::msg)?;
    let key = Keyspace::with_namespace(namespace, scope).config();
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
            None => anyhow::bail!("no cluster named {scope} in etcd ({key} is absent)"),
        };
        config.pause = pause;
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
