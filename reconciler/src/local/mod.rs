//! The local target: the cluster files that select `target: local`, realized on this machine
//! by `spilo up` (etcd, one governor + PostgreSQL per instance, HAProxy in the role the AWS
//! load balancer plays), inspected by `spilo status` and stopped by `spilo down`.
//!
//! Pure parts: [`ports`] (derivation and clashes), [`haproxy`] (its configuration),
//! [`governor_config`] (a member's configuration), [`plan`] (desired against running).
//! [`preview`] is `spilo plan --local`: the plan of an edit, with a major upgrade's checks.
//! Processes: [`cluster`] supervises one cluster; [`up`] is the foreground reconcile loop;
//! [`standby`] carries `spec.standby` edits into running clusters (a switchover between
//! clusters among them); [`state`] is the `state.json` contract that [`status`] and [`down`] read; [`tls`] is the
//! cluster's CA and the certificates of etcd and of `spilo` itself.

pub mod catalog;
pub mod cluster;
pub mod down;
pub mod governor_config;
pub mod haproxy;
pub mod major;
pub mod plan;
pub mod ports;
pub mod preview;
pub mod progress;
pub mod standby;
pub mod state;
pub mod status;
pub mod tls;
pub mod up;
pub mod user;
pub mod verify;

use std::path::{Path, PathBuf};
use user::RunAs;

/// The state directory to use: `explicit`, or `.spilo/` beside the cluster files. When that is
/// out of reach for the user clusters run as (a checkout under `/root` when running as root),
/// `/var/lib/spilo/<checkout path>` is used instead, and the caller is told.
pub fn state_dir(
    explicit: Option<&Path>,
    cluster_paths: &[PathBuf],
    run_as: &RunAs,
) -> anyhow::Result<(PathBuf, Option<String>)> {
    if let Some(dir) = explicit {
        let dir = std::path::absolute(dir)?;
        if let Some(blocker) = run_as.unreachable_ancestor(&dir) {
            anyhow::bail!(
                "--state-dir {}: the {} user cannot enter {}; choose a directory it can reach",
                dir.display(),
                run_as.name,
                blocker.display()
            );
        }
        return Ok((dir, None));
    }
    let default = state::default_root(cluster_paths);
    match run_as.unreachable_ancestor(&default) {
        None => Ok((default, None)),
        Some(blocker) => {
            let flat: String = default
                .to_string_lossy()
                .trim_matches('/')
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let fallback = PathBuf::from("/var/lib/spilo").join(flat);
            let note = format!(
                "the {} user cannot enter {}, so the state of local clusters is kept in {} instead of {}",
                run_as.name,
                blocker.display(),
                fallback.display(),
                default.display()
            );
            Ok((fallback, Some(note)))
        }
    }
}
