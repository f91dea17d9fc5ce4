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
        // Writable until the lease backing the leader key ends, or until failsafe mode's
        // confirmation does.
        let valid_until = view
            .id
            .filter(|id| guard.is_some_and(|g| g.lease == Some(*id)))
            .and(view.valid_until)
            .into_iter()
            .chain(*failsafe.borrow_and_update())
            .max();
        // The watchdog's deadline is half a margin after this task's own, still half a margin
        // before the lease can end: normally this task fires first and knows it did.
        let message = match (pid, valid_until) {
            (Some(pid), Some(until)) => Message::Arm {
                pid,
                left: until
                    .checked_sub(margin / 2)
                    .unwrap_or_else(Instant::now)
                    .saturating_duration_since(Instant::now()),
            },
            (Some(pid), ..) => Message::Arm {
                pid,
                left: Duration::ZERO,
            },
            (None, ..) => Message::Disarm,
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
        let deadline = match valid_until {
            Some(until) => until.checked_sub(margin).unwrap_or_else(Instant::now),
            None => Instant::now(),
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
            r = failsafe.changed() => if r.is_err() { return },
        }
    }
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
