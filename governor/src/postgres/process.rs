//! The postmaster as a child process of the governor.
//!
//! The governor starts `postgres` itself rather than through `pg_ctl`, so it learns of a crash
//! the moment the child exits instead of by polling. The child is put in its own process group
//! (a Ctrl-C meant for the governor does not reach PostgreSQL first) and asked to receive
//! SIGQUIT, PostgreSQL's immediate shutdown, when the governor dies: **PostgreSQL never
//! outlives its governor**, so a killed governor can never leave a primary accepting writes
//! while its lease runs out and a replica is promoted.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How to stop PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back open transactions, write a shutdown checkpoint; replicas receive all
    /// WAL before the postmaster exits.
    Fast,
    /// SIGQUIT: stop every process at once; crash recovery runs at the next start.
    Immediate,
}

/// A running (or exited) postmaster started by this governor.
pub struct Postmaster {
    pid: u32,
    /// Reaps the child and reports its exit; it ends when the child does.
    _waiter: tokio::task::JoinHandle<()>,
    exit: watch::Receiver<Option<ExitStatus>>,
    stop_requested: bool,
}

impl Postmaster {
    /// Starts `postgres -D data_dir -c config_file=...`, appending its output to `log_file`.
    /// `wake` is notified when the process exits.
    pub fn spawn(
        bin_dir: &Path,
        data_dir: &Path,
        config_file: &Path,
        log_file: &Path,
        wake: Arc<Notify>,
    ) -> std::io::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)?;
        let mut cmd = tokio::process::Command::new(bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(data_dir)
            .arg("-c")
            .arg(format!("config_file={}", config_file.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        die_with_parent(&mut cmd, Signal::SIGQUIT);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("postgres exited before its pid was read"))?;
        let (tx, rx) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(status.ok().or_else(|| Some(ExitStatus::default())));
            wake.notify_one();
        });
        Ok(Self {
            pid,
            _waiter: waiter,
            exit: rx,
            stop_requested: false,
        })
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Whether the governor asked it to stop (so an exit is not a crash).
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// Sends `signal` to the postmaster (ignored when it has exited).
    pub fn signal(&self, signal: Signal) {
        if self.exited().is_none() {
            let _ = kill(pid_of(self.pid), signal);
        }
    }

    /// Stops the postmaster with `mode`, escalating to immediate shutdown and then SIGKILL of
    /// the whole process group when it does not exit within `timeout`.
    pub async fn stop(&mut self, mode: StopMode, timeout: Duration) {
        self.stop_requested = true;
        let first = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        self.signal(first);
        if self.wait_exit(timeout).await {
            return;
        }
        tracing::warn!(
            pid = self.pid,
            ?mode,
            "PostgreSQL did not stop in time; sending SIGQUIT"
        );
        self.signal(Signal::SIGQUIT);
        if self.wait_exit(Duration::from_secs(5)).await {
            return;
        }
        tracing::warn!(
            pid = self.pid,
            "PostgreSQL ignored SIGQUIT; killing its process group"
        );
        let _ = kill(pid_of(self.pid).neg_group(), Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(5)).await;
    }

    /// Waits up to `timeout` for the exit; returns whether it happened.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let mut rx = self.exit.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.is_some()))
            .await
            .is_ok()
    }
}

trait GroupPid {
    fn neg_group(self) -> Pid;
}

impl GroupPid for Pid {
    fn neg_group(self) -> Pid {
        Pid::from_raw(-self.as_raw())
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Asks the kernel to send `signal` to the child when the governor exits.
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command, signal: Signal) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

/// A postmaster left running by an earlier governor on this data directory, if any: the pid in
/// `postmaster.pid` when that process is alive.
pub fn stale_postmaster(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let alive = kill(pid_of(pid), None).is_ok();
    let is_postgres = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("postgres"))
        .unwrap_or(false);
    (alive && is_postgres).then_some(pid)
}
