//! `spilo down [CLUSTER] [--purge]`: stops local clusters and, with `--purge`, deletes their
//! state. A running `spilo up` is asked to stop the cluster itself (in order: replicas, primary,
//! HAProxy, etcd); without one, the recorded processes are stopped directly. Either way, every
//! process still running from the cluster's directory is stopped before `down` returns.

use super::state::{self, Layout};
use std::path::Path;
use std::time::{Duration, Instant};

/// Processes whose command line mentions `dir` (governors, postmasters, etcd, HAProxy).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) && state::alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

async fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| !state::alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every process left in a cluster's directory: governors first (each stops its
/// PostgreSQL and releases its keys), then the rest; SIGKILL after a grace period.
pub async fn sweep(layout: &Layout, cluster: &str) {
    let dir = layout.cluster(cluster);
    let governors: Vec<u32> = processes_under(&dir.join("members"));
    if !governors.is_empty() {
        for p in &governors {
            signal(*p, nix::sys::signal::Signal::SIGTERM);
        }
        if !wait_gone(&governors, Duration::from_secs(60)).await {
            governors
                .iter()
                .for_each(|p| signal(*p, nix::sys::signal::Signal::SIGKILL));
        }
    }
    let rest = processes_under(&dir);
    if rest.is_empty() {
        return;
    }
    for p in &rest {
        signal(*p, nix::sys::signal::Signal::SIGTERM);
    }
    if !wait_gone(&rest, Duration::from_secs(30)).await {
        rest.iter()
            .for_each(|p| signal(*p, nix::sys::signal::Signal::SIGKILL));
        wait_gone(&rest, Duration::from_secs(5)).await;
    }
}

/// Stops `cluster` (or every cluster) and optionally deletes its state.
pub async fn down(layout: &Layout, cluster: Option<&str>, purge: bool) -> anyhow::Result<()> {
    let names = match cluster {
        Some(c) => {
            if !layout.cluster(c).exists() {
                anyhow::bail!("no local cluster {c} in {}", layout.root.display());
            }
            vec![c.to_string()]
        }
        None => layout.clusters(),
    };
    for name in names {
        if let Ok(st) = layout.read(&name)
            && state::alive(st.supervisor_pid)
        {
            println!(
                "asking spilo up (pid {}) to stop cluster {name}",
                st.supervisor_pid
            );
            std::fs::write(layout.down_marker(&name), "")?;
            let deadline = Instant::now() + Duration::from_secs(150);
            while layout.down_marker(&name).exists()
                && state::alive(st.supervisor_pid)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        sweep(layout, &name).await;
        let _ = std::fs::remove_file(layout.down_marker(&name));
        let left = processes_under(&layout.cluster(&name));
        if !left.is_empty() {
            anyhow::bail!("cluster {name}: processes {left:?} are still running");
        }
        if purge {
            std::fs::remove_dir_all(layout.cluster(&name))?;
            println!("cluster {name}: stopped, state deleted");
        } else {
            println!(
                "cluster {name}: stopped (data kept in {})",
                layout.cluster(&name).display()
            );
        }
    }
    Ok(())
}
