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

/// How long one renewal attempt (opening a keep-alive stream, or an answer on it) may take
/// before a new one starts on a fresh stream: two renewal intervals, within the client's own
/// timeout. While etcd elects a new leader, a renewal sent to a follower can hang for
/// seconds after the election; a new request is answered as soon as there is a leader, so
/// short attempts retried at once keep a lease that one long wait would lose (losing one of
/// three etcd members must not fence the primary).
pub fn attempt_timeout(client_timeout: Duration, interval: Duration) -> Duration {
    client_timeout
        .min(interval * 2)
        .max(Duration::from_millis(200))
}

/// The pause before the next attempt after a failed one.
pub fn retry_pause(interval: Duration) -> Duration {
    (interval / 5).max(Duration::from_millis(20))
}

/// Keeps a lease alive until `cancel` fires; publishes every change on `tx`.
pub async fn run(
    dcs: Dcs,
    ttl: Duration,
    interval: Duration,
    tx: watch::Sender<LeaseView>,
    cancel: CancellationToken,
) {
    let attempt = attempt_timeout(dcs.timeout(), interval);
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
            match bounded(attempt, dcs.client().lease_keep_alive(lease)).await {
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
                    if pause(&cancel, retry_pause(interval)).await {
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
            match tokio::time::timeout(attempt, stream.message()).await {
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
                    tracing::warn!(timeout = ?attempt, "lease renewal got no answer in time; trying a new stream");
                    break;
                }
            }
            if pause(&cancel, interval).await {
                return;
            }
        }
        if pause(&cancel, retry_pause(interval)).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_attempts_fit_before_the_fence() {
        // The defaults: ttl 4 s, renewals every 0.5 s, a 2 s client timeout, a 1 s fence
        // margin: a renewal that failed right after the last success leaves 3 s, in which
        // attempts of 1 s with 0.1 s pauses fit at least twice more.
        let (interval, client) = (Duration::from_millis(500), Duration::from_secs(2));
        assert_eq!(attempt_timeout(client, interval), Duration::from_secs(1));
        assert_eq!(retry_pause(interval), Duration::from_millis(100));
        let window = Duration::from_secs(3);
        let per_try = attempt_timeout(client, interval) + retry_pause(interval);
        assert!(per_try * 2 < window);
        // A short client timeout is kept; a tiny interval never makes attempts shorter than
        // 200 ms.
        assert_eq!(
            attempt_timeout(Duration::from_millis(300), interval),
            Duration::from_millis(300)
        );
        assert_eq!(
            attempt_timeout(client, Duration::from_millis(10)),
            Duration::from_millis(200)
        );
    }
}
