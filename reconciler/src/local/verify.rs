//! `spilo verify-backup CLUSTER` ([`crate::operate::verify_backup`]) for a cluster `spilo up` runs: a restore drill of its
//! archive, run by the cluster's own governor program (`governor verify-backup`, as the user
//! PostgreSQL runs as) with a member's configuration, so it reads the same archive with the
//! same code a recovery would. Nothing of the running members is touched.

use super::state::Layout;
use super::user::RunAs;
use crate::operate::verify_backup::{ReportFormat, VerifyArgs};
use anyhow::{Context, bail};

/// Runs the drill; returns its exit status (0 verified, 2 a check failed, 1 error).
pub async fn verify(a: &VerifyArgs, layout: &Layout) -> anyhow::Result<u8> {
    let cluster = a.target.cluster.as_str();
    let dir = layout.cluster(cluster);
    let state = layout.read(cluster).with_context(|| {
        format!("cluster {cluster} is not one spilo up runs here (give --etcd for another)")
    })?;
    let Some(member) = state.members.first() else {
        bail!("cluster {cluster} has no member");
    };
    let config = dir.join("members").join(&member.name).join("governor.yaml");
    if !config.exists() {
        bail!("{} is missing", config.display());
    }
    let mut cmd = tokio::process::Command::new(dir.join("bin/governor"));
    cmd.arg("verify-backup")
        .arg("--config")
        .arg(&config)
        .arg("--backup")
        .arg(&a.backup);
    if let Some(t) = &a.target_time {
        cmd.arg("--target-time").arg(t);
    }
    if let Some(q) = &a.sql {
        cmd.arg("--sql").arg(q);
    }
    if a.format == ReportFormat::Json {
        cmd.arg("--json");
    }
    RunAs::detect()?.apply(&mut cmd);
    let status = cmd
        .status()
        .await
        .with_context(|| format!("run {}", dir.join("bin/governor").display()))?;
    Ok(match status.code() {
        Some(0) => 0,
        Some(2) => 2,
        _ => 1,
    })
}
