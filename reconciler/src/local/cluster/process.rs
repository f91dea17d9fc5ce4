//! The processes a local cluster runs (etcd, governors, HAProxy): starting one as the
//! cluster's user with its log, signalling it, stopping it within a deadline, and whether a
//! PostgreSQL server answers on a port.

use super::super::user::RunAs;
use anyhow::Context;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A child process with its restart bookkeeping.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) started: Instant,
}

pub(super) fn spawn(mut cmd: Command, log: &Path, run_as: &RunAs) -> anyhow::Result<Proc> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    run_as.own(log)?;
    run_as.apply(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd
        .spawn()
        .with_context(|| format!("start {:?}", cmd.as_std().get_program()))?;
    let pid = child.id().unwrap_or(0);
    Ok(Proc {
        child,
        pid,
        started: Instant::now(),
    })
}

pub(super) fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

pub(super) async fn stop_proc(p: &mut Proc, what: &str, timeout: Duration) {
    signal(p.pid, nix::sys::signal::Signal::SIGTERM);
    if tokio::time::timeout(timeout, p.child.wait()).await.is_err() {
        eprintln!(
            "  {what} did not stop within {}s; killing it",
            timeout.as_secs()
        );
        if let Ok(pgid) = i32::try_from(p.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = p.child.wait().await;
    }
}

/// Whether a PostgreSQL server answers on `port`: it replies to an SSLRequest with one byte,
/// `N` or `S`, while HAProxy with no healthy server behind it just closes the connection.
pub async fn postgres_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        Some(b[0] == b'N' || b[0] == b'S')
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}
