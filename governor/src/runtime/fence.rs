//! The fence: a task that stops a primary's PostgreSQL at once (SIGQUIT, immediate shutdown)
//! when this member's lease is about to end without having been renewed (or, in failsafe mode,
//! when the members' confirmation that stands in for the lease is about to end).
//!
//! It is independent of the HA loop on purpose: whatever the loop is stuck on (a hung query,
//! a slow disk, a long action), a primary stops accepting writes before etcd can hand the
//! leader key to anyone else. It only acts on the pid the runtime armed it with, and only while
//! armed, so replicas keep running through etcd outages.
//!
//! It also tells the external [`crate::watchdog`] process the same deadline at every change, so
//! that a governor frozen as a whole (where this task cannot run either) still loses its
//! PostgreSQL in time.

use crate::ha::LeaseView;
use crate::watchdog::Message;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// What the fence guards: the postmaster to stop, and the lease the leader key is bound to
/// (only that lease keeps it running; failsafe mode's confirmation may stand in for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// The postmaster.
    pub pid: u32,
    /// The lease backing this member's leader key.
    pub lease: Option<i64>,
}

/// The guard, if the fence is armed.
pub type Armed = Option<Guard>;

/// Runs until `cancel` fires. `fired` is set when the fence stopped PostgreSQL, and `wake`
/// notified so the HA loop looks at once.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut armed: watch::Receiver<Armed>,
    mut lease: watch::Receiver<LeaseView>,
    mut failsafe: watch::Receiver<Option<Instant>>,
    margin: Duration,
    fired: Arc<AtomicBool>,
    wake: Arc<Notify>,
    mut watchdog: Option<tokio::process::ChildStdin>,
    cancel: CancellationToken,
) {
    let mut told: Option<Message> = None;
    loop {
        let guard = *armed.borrow_and_update();
        let pid = guard.map(|g| g.pid);
        let view = *lease.borrow_and_update();
        let valid_until = writable_until(
            guard.and_then(|g| g.lease),
            &view,
            *failsafe.borrow_and_update(),
        );
        let now = Instant::now();
        let message = match pid {
            Some(pid) => Message::Arm {
                pid,
                left: watchdog_deadline(valid_until, margin, now).saturating_duration_since(now),
            },
            None => Message::Disarm,
        };
        if told != Some(message) {
            tell(&mut watchdog, message).await;
            told = Some(message);
        }
        let Some(pid) = pid else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = armed.changed() => if r.is_err() { return },
            }
            continue;
        };
        let deadline = fence_deadline(valid_until, margin, Instant::now());
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
            r = failsafe.changed() => if r.is_err() { return },
        }
    }
}

/// Until when a guarded primary may stay writable: until the lease backing its leader key
/// (`guard_lease`; another lease does not count) may end, or until failsafe mode's
/// confirmation does, whichever is later; `None` when neither backs it.
pub fn writable_until(
    guard_lease: Option<i64>,
    lease: &LeaseView,
    failsafe: Option<Instant>,
) -> Option<Instant> {
    lease
        .id
        .filter(|id| guard_lease == Some(*id))
        .and(lease.valid_until)
        .into_iter()
        .chain(failsafe)
        .max()
}

/// When the fence stops the primary: a margin before it may no longer be writable (at once,
/// `now`, when nothing backs it).
pub fn fence_deadline(until: Option<Instant>, margin: Duration, now: Instant) -> Instant {
    until.and_then(|u| u.checked_sub(margin)).unwrap_or(now)
}

/// When the watchdog process stops it: half a margin after the fence, still half a margin
/// before the lease can end, so the fence normally fires first and knows it did.
pub fn watchdog_deadline(until: Option<Instant>, margin: Duration, now: Instant) -> Instant {
    until.and_then(|u| u.checked_sub(margin / 2)).unwrap_or(now)
}

/// A test-only switch: when set, the governor runs without its watchdog process, so the fault
/// tests can show what it prevents (a frozen governor's primary writable beside a new one).
pub const FAULT_NO_WATCHDOG: &str = "SPILO_FAULT_NO_WATCHDOG";

/// Starts `governor watchdog` (this same program) with a pipe on its stdin. It dies with the
/// governor (PR_SET_PDEATHSIG) and on the pipe's end.
pub fn spawn_watchdog() -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("watchdog")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    crate::postgres::process::die_with_parent(&mut cmd, Signal::SIGKILL);
    cmd.spawn()
}

/// Sends `message` to the watchdog; a watchdog that cannot be written to is dropped (logged
/// once), leaving the in-process fence alone on guard.
async fn tell(watchdog: &mut Option<tokio::process::ChildStdin>, message: Message) {
    let Some(pipe) = watchdog.as_mut() else {
        return;
    };
    let line = message.line();
    let sent =
        tokio::time::timeout(Duration::from_millis(500), pipe.write_all(line.as_bytes())).await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::error!(
            "cannot reach the watchdog process; only the in-process fence guards PostgreSQL now"
        );
        *watchdog = None;
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    #[test]
    fn only_the_guarded_lease_or_a_failsafe_confirmation_keeps_a_primary_writable() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let lease = LeaseView {
            id: Some(7),
            valid_until: Some(t0 + s(4)),
        };
        assert_eq!(writable_until(Some(7), &lease, None), Some(t0 + s(4)));
        // Another lease does not back this leader key.
        assert_eq!(writable_until(Some(8), &lease, None), None);
        assert_eq!(writable_until(None, &lease, None), None);
        // Failsafe's confirmation stands in for it, the later one counts.
        assert_eq!(
            writable_until(Some(8), &lease, Some(t0 + s(2))),
            Some(t0 + s(2))
        );
        assert_eq!(
            writable_until(Some(7), &lease, Some(t0 + s(9))),
            Some(t0 + s(9))
        );
        // The fence a margin before, the watchdog half a margin before; at once without any.
        let margin = s(2);
        assert_eq!(fence_deadline(Some(t0 + s(4)), margin, t0), t0 + s(2));
        assert_eq!(watchdog_deadline(Some(t0 + s(4)), margin, t0), t0 + s(3));
        assert_eq!(fence_deadline(None, margin, t0), t0);
        assert_eq!(watchdog_deadline(None, margin, t0), t0);
    }
}
