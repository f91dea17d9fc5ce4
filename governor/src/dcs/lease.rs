//! The lease task: grants this member's etcd lease and renews it on its own schedule, so no
//! slow query, hung `pg_ctl` or long pg_basebackup in the HA loop can delay a renewal.
//!
//! It publishes a [`LeaseView`] after every renewal: the lease id and the instant until which
//! it is certainly valid, computed from when the renewal was *sent* (etcd may expire the lease
//! any time after that instant plus the TTL, never before). When etcd answers that the lease is
//! gone, the task grants a new one; the runtime then re-publishes the member key.

use super::{Coordination, Dcs, bounded};
use crate::ha::LeaseView;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Keeps a lease alive until `cancel` fires; publishes every change on `tx`.
pub async fn run(
    dcs: Dcs,
    ttl: Duration,
    interval: Duration,
    tx: watch::Sender<LeaseView>,
    cancel: CancellationToken,
) {
    let mut id: Option<i64> = None;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let lease = match id {
            Some(lease) => lease,
            None => {
                let sent = Instant::now();
                match dcs.grant_lease(ttl).await {
                    Ok(lease) => {
                        tracing::info!(
                            lease = format_args!("{lease:x}"),
                            ttl_s = ttl.as_secs(),
                            "granted an etcd lease"
                        );
                        tx.send_replace(LeaseView {
                            id: Some(lease),
                            valid_until: Some(sent + ttl),
                        });
                        id = Some(lease);
                        lease
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot grant an etcd lease");
                        if pause(&cancel, interval).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let (mut keeper, mut stream) =
            match bounded(dcs.timeout(), dcs.client().lease_keep_alive(lease)).await {
                Ok(pair) => pair,
                Err(e) if lease_gone(&e) => {
                    tracing::warn!(
                        lease = format_args!("{lease:x}"),
                        "etcd no longer knows the lease; granting a new one"
                    );
                    tx.send_replace(LeaseView::default());
                    id = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the lease keep-alive stream");
                    if pause(&cancel, interval).await {
                        return;
                    }
                    continue;
                }
            };
        loop {
            let sent = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                tracing::warn!(error = %e, "lease renewal could not be sent");
                break;
            }
            match tokio::time::timeout(dcs.timeout(), stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                    let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
                    tx.send_replace(LeaseView {
                        id: Some(lease),
                        valid_until: Some(sent + granted),
                    });
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(
                        lease = format_args!("{lease:x}"),
                        "etcd says the lease has expired"
                    );
                    tx.send_replace(LeaseView::default());
                    id = None;
                    break;
                }
                Ok(Ok(None)) => {
                    tracing::warn!("the lease keep-alive stream ended");
                    break;
                }
                Ok(Err(e)) => {
                    let e = super::DcsError::from(e);
                    if lease_gone(&e) {
                        tracing::warn!(
                            lease = format_args!("{lease:x}"),
                            "etcd no longer knows the lease"
                        );
                        tx.send_replace(LeaseView::default());
                        id = None;
                    } else {
                        tracing::warn!(error = %e, "lease renewal failed");
                    }
                    break;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?dcs.timeout(), "lease renewal got no answer in time");
                    break;
                }
            }
            if pause(&cancel, interval).await {
                return;
            }
        }
        if pause(&cancel, interval / 2).await {
            return;
        }
    }
}

/// Sleeps for `d`; returns true when cancelled meanwhile.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Whether etcd said the lease does not exist (it expired, or was revoked).
pub(crate) fn lease_gone(e: &super::DcsError) -> bool {
    e.to_string().contains("lease not found")
}
