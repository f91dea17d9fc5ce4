//! The lease task on ZooKeeper, as `dcs::lease` on etcd: grants this member's lease (a
//! session whose timeout is the TTL) and renews it on its own schedule, publishing a
//! [`LeaseView`] valid until a TTL after each renewal was *sent*. The session's timeout
//! (≥ TTL) runs from its last activity, which the answered renewal shows came after the send;
//! a follower tells the ensemble's leader (which expires sessions) of its sessions' activity
//! up to half a tick late, which the fence margin covers (hence `tickTime` ≤ 1000 ms); the
//! adapter's own expiry counts from the send. When the lease is gone, a new one is granted
//! and the runtime re-publishes the member key.

use super::ZooKeeper;
use crate::dcs::Coordination;
use crate::dcs::lease::retry_pause;
use crate::ha::LeaseView;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Keeps a lease alive until `cancel` fires; publishes every change on `tx`.
pub async fn run(
    store: Arc<ZooKeeper>,
    ttl: Duration,
    interval: Duration,
    tx: watch::Sender<LeaseView>,
    cancel: CancellationToken,
) {
    let mut id: Option<i64> = None;
    while !cancel.is_cancelled() {
        let sent = Instant::now();
        let next_pause = match id {
            None => match store.grant_lease(ttl).await {
                Ok(lease) => {
                    tracing::info!(
                        lease = format_args!("{lease:x}"),
                        ttl_s = ttl.as_secs(),
                        "granted a ZooKeeper session as the lease"
                    );
                    tx.send_replace(LeaseView {
                        id: Some(lease),
                        valid_until: Some(sent + ttl),
                    });
                    id = Some(lease);
                    interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot grant a ZooKeeper session as the lease");
                    interval
                }
            },
            Some(lease) => match store.renew_lease(lease).await {
                Ok(true) => {
                    tx.send_replace(LeaseView {
                        id: Some(lease),
                        valid_until: Some(sent + ttl),
                    });
                    interval
                }
                Ok(false) => {
                    tracing::warn!(
                        lease = format_args!("{lease:x}"),
                        "the lease's ZooKeeper session has ended; granting a new one"
                    );
                    tx.send_replace(LeaseView::default());
                    id = None;
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    retry_pause(interval)
                }
            },
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(next_pause) => {}
        }
    }
}
