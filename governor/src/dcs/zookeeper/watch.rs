//! The watch task on ZooKeeper, as `dcs::watch` on etcd: wakes the HA loop when a znode the
//! decisions depend on changes, through one persistent recursive watch on the cluster's
//! znode. ZooKeeper's events carry no data, so a member's republished status is read and
//! compared with the last one seen: WAL positions alone wake nobody. A lease marker's
//! deletion (a session ended) wakes, since the leader it names stops counting. Session
//! events wake too: events during a reconnection can be lost (ZOOKEEPER-4698), and the loop
//! re-reads everything it decides on; when the connection's session expires, the watch is
//! opened again on a new one.

use super::ZooKeeper;
use crate::dcs::watch::member_change_matters;
use spilo_model::{KeyKind, MemberStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

/// Watches the cluster until `cancel` fires (or the connection's session ends), notifying
/// each of `wakes` on every change that matters.
pub async fn run(store: Arc<ZooKeeper>, wakes: Vec<Arc<Notify>>, cancel: CancellationToken) {
    let wake = || wakes.iter().for_each(|w| w.notify_one());
    let dir = store.keys().prefix().trim_end_matches('/').to_string();
    let mut seen: BTreeMap<String, MemberStatus> = BTreeMap::new();
    loop {
        let main = store.main();
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(
                Duration::from_secs(2),
                main.watch(&dir, zk::AddWatchMode::PersistentRecursive),
            ) => r,
        };
        if let Ok(Ok(mut watcher)) = opened {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = watcher.changed() => e,
                };
                if event.event_type == zk::EventType::Session {
                    wake();
                    if event.session_state.is_terminated() {
                        // The watcher must not be polled again; a new session gets a new one.
                        tracing::warn!(
                            state = ?event.session_state,
                            "the ZooKeeper session of the watch ended: watching again"
                        );
                        let _ = store.fresh().await;
                        break;
                    }
                    continue;
                }
                if matters(&store, &mut seen, &event).await {
                    wake();
                }
            }
        }
        // Something may have changed while the watch was down.
        wake();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Whether `event` can change a decision; a member's status is read now and remembered.
async fn matters(
    store: &ZooKeeper,
    seen: &mut BTreeMap<String, MemberStatus>,
    event: &zk::WatchedEvent,
) -> bool {
    let path = event.path.as_str();
    let lease_marker = path.starts_with(&format!("{}/", store.keys().lease_marker_dir()));
    if lease_marker {
        return event.event_type == zk::EventType::NodeDeleted;
    }
    if !matches!(store.keys().classify(path), Some(KeyKind::Member(_))) {
        return true;
    }
    if event.event_type != zk::EventType::NodeDataChanged {
        seen.remove(path);
        return true;
    }
    let now = match store.get(path).await {
        Ok(Some((data, _))) => serde_json::from_slice::<MemberStatus>(&data).ok(),
        _ => None,
    };
    match (seen.remove(path), now) {
        (Some(old), Some(new)) => {
            let changed = member_change_matters(&old, &new);
            seen.insert(path.to_string(), new);
            changed
        }
        (None, Some(new)) => {
            seen.insert(path.to_string(), new);
            true
        }
        _ => true,
    }
}
