//! Reads the cluster's keys in one linearizable range request and parses them into the
//! [`ClusterView`] the HA core decides on. A value that does not parse is reported and left out,
//! never guessed at.

use super::{DcsError, bounded};
use crate::ha::{ClusterView, LeaderKey};
use etcd_client::{Client, GetOptions};
use spilo_model::{KeyKind, Keyspace, MemberName};
use std::time::Duration;

/// Reads every key under the cluster's prefix.
pub async fn read_view(
    client: &Client,
    keys: &Keyspace,
    timeout: Duration,
) -> Result<ClusterView, DcsError> {
    let resp = bounded(
        timeout,
        client
            .clone()
            .get(keys.prefix(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    Ok(parse_view(
        keys,
        resp.kvs().iter().filter_map(|kv| {
            Some((
                kv.key_str().ok()?,
                kv.value(),
                kv.lease(),
                kv.mod_revision(),
            ))
        }),
    ))
}

/// Parses `(key, value, lease, mod revision)` tuples into a view. Keys outside the cluster
/// and values that do not parse are left out (and logged), never guessed at: a corrupt or
/// hostile value cannot crash the governor.
pub fn parse_view<'a>(
    keys: &Keyspace,
    kvs: impl Iterator<Item = (&'a str, &'a [u8], i64, i64)>,
) -> ClusterView {
    let mut view = ClusterView::default();
    for (key, value, lease, mod_revision) in kvs {
        let Some(kind) = keys.classify(key) else {
            continue;
        };
        match kind {
            KeyKind::Initialize => {
                view.initialize = Some(String::from_utf8_lossy(value).into_owned());
            }
            KeyKind::Leader => match std::str::from_utf8(value)
                .ok()
                .and_then(|s| MemberName::new(s).ok())
            {
                Some(name) => {
                    view.leader = Some(LeaderKey { name, lease });
                }
                None => tracing::warn!(key, "the leader key holds no valid member name"),
            },
            KeyKind::Member(name) => match serde_json::from_slice(value) {
                Ok(status) => {
                    view.member_leases.insert(name.clone(), lease);
                    view.members.insert(name, status);
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring a member key that does not parse")
                }
            },
            KeyKind::Config => match serde_json::from_slice(value) {
                Ok(config) => view.config = Some(config),
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring a config key that does not parse")
                }
            },
            KeyKind::History => match serde_json::from_slice(value) {
                Ok(history) => view.history = history,
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring a history key that does not parse")
                }
            },
            KeyKind::Switchover => match serde_json::from_slice(value) {
                Ok(request) => view.switchover = Some(request),
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring a switchover key that does not parse")
                }
            },
            KeyKind::Sync => match serde_json::from_slice(value) {
                Ok(sync) => {
                    view.sync = Some(sync);
                    view.sync_revision = mod_revision;
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring a sync key that does not parse")
                }
            },
            KeyKind::Failsafe => {
                match serde_json::from_slice::<std::collections::BTreeMap<MemberName, String>>(
                    value,
                ) {
                    Ok(members) => view.failsafe = Some(members),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "ignoring a failsafe key that does not parse")
                    }
                }
            }
            // The reconciler's lock and instances' boot reports: nothing the governor
            // decides on.
            KeyKind::ApplyLock
            | KeyKind::Boot(_)
            | KeyKind::Drill
            | KeyKind::Catalog
            | KeyKind::Upgrade => {}
        }
    }
    view
}
