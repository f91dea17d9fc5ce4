//! The fence: a task that stops a primary's PostgreSQL at once (SIGQUIT, immediate shutdown)
//! when this member's lease is about to end without having been renewed.
//!
//! It is independent of the HA loop on purpose: whatever the loop is stuck on (a hung query,
//! a slow disk, a long action), a primary stops accepting writes before etcd can hand the
//! leader key to anyone else. It only acts on the pid the runtime armed it with, and only while
//! armed, so replicas keep running through etcd outages.

use crate::ha::LeaseView;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// What the fence guards: the postmaster to stop, if any.
pub type Armed = Option<u32>;

/// Runs until `cancel` fires. `fired` is set when the fence stopped PostgreSQL, and `wake`
/// notified so the HA loop looks at once.
pub async fn run(
    mut armed: watch::Receiver<Armed>,
    mut lease: watch::Receiver<LeaseView>,
    margin: Duration,
    fired: Arc<AtomicBool>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        let pid = *armed.borrow_and_update();
        let view = *lease.borrow_and_update();
        let Some(pid) = pid else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = armed.changed() => if r.is_err() { return },
            }
            continue;
        };
        let deadline = match (view.id, view.valid_until) {
            (Some(_), Some(until)) => until.checked_sub(margin).unwrap_or_else(Instant::now),
            _ => Instant::now(),
        };
        if Instant::now() >= deadline {
            tracing::error!(
                pid,
                "fence: the leader lease is about to end without renewal; stopping PostgreSQL immediately"
            );
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                Signal::SIGQUIT,
            );
            fired.store(true, Ordering::SeqCst);
            wake.notify_one();
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = armed.changed() => if r.is_err() { return },
            }
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline.into()) => {}
            r = armed.changed() => if r.is_err() { return },
            r = lease.changed() => if r.is_err() { return },
        }
    }
}
