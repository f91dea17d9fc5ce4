//! The watch task: wakes the HA loop when a key the decisions depend on changes, so a deleted
//! leader key is acted on within milliseconds rather than at the next periodic run. It carries
//! no data; the loop always re-reads the keys it decides on.
//!
//! Members re-publish their WAL positions all the time; those updates do not wake anyone
//! (they would make every loop wake every other loop). A member key wakes the loop only when it
//! appears, disappears, or changes role, state or timeline.

use super::Dcs;
use etcd_client::{Event, EventType, WatchOptions};
use spilo_model::{KeyKind, Keyspace, MemberStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Watches the cluster's prefix until `cancel` fires, notifying each of `wakes` on every
/// change and on reconnects. Every (re)opened watch uses the connection's current client.
pub async fn run(dcs: Dcs, wakes: Vec<Arc<Notify>>, cancel: CancellationToken) {
    let wake = || wakes.iter().for_each(|w| w.notify_one());
    let keys = dcs.keys().clone();
    let prefix = keys.prefix().to_string();
    loop {
        let mut watcher = dcs.client();
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(
                Duration::from_secs(2),
                watcher.watch(
                    prefix.clone(),
                    Some(WatchOptions::new().with_prefix().with_prev_key()),
                ),
            ) => r,
        };
        if let Ok(Ok(mut stream)) = opened {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = stream.message() => m,
                };
                match msg {
                    Ok(Some(resp)) => {
                        if resp.events().iter().any(|e| matters(&keys, e)) {
                            wake();
                        }
                        if resp.canceled() {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
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

/// Whether a member's republished status can change a decision (not its WAL positions,
/// which change all the time).
pub fn member_change_matters(old: &MemberStatus, new: &MemberStatus) -> bool {
    old.role != new.role
        || old.state != new.state
        || old.timeline != new.timeline
        || old.conn_url != new.conn_url
        || old.tags != new.tags
}

/// Whether an event can change a decision.
fn matters(keys: &Keyspace, event: &Event) -> bool {
    let Some(kv) = event.kv() else { return true };
    let Ok(key) = kv.key_str() else { return true };
    match keys.classify(key) {
        Some(KeyKind::Member(_)) if event.event_type() == EventType::Put => {
            let parse = |v: &[u8]| serde_json::from_slice::<MemberStatus>(v).ok();
            match (
                event.prev_kv().and_then(|p| parse(p.value())),
                parse(kv.value()),
            ) {
                (Some(old), Some(new)) => member_change_matters(&old, &new),
                _ => true,
            }
        }
        _ => true,
    }
}
