//! `spilo verify-backup CLUSTER` for a cluster `spilo up` runs: a restore drill of its
//! archive, run by the cluster's own governor program (`governor verify-backup`, as the user
//! PostgreSQL runs as) with a member's configuration, so it reads the same archive with the
//! same code a recovery would. Nothing of the running members is touched.

use super::state::Layout;
use super::user::RunAs;
use anyhow::{Context, bail};
use std::path::PathBuf;

/// The report's form.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// `spilo verify-backup`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The cluster.
    pub cluster: String,
    /// The backup, or LATEST.
    #[arg(long, default_value = "LATEST")]
    pub backup: String,
    /// Replay up to this time (RFC 3339) instead of the archive's end.
    #[arg(long)]
    pub target_time: Option<String>,
    /// A query that must return true on the restored database.
    #[arg(long)]
    pub sql: Option<String>,
    /// How to print the report.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// The state directory (default: .spilo/ beside clusters/).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Runs the drill; returns its exit status (0 verified, 2 a check failed, 1 error).
pub async fn verify(a: VerifyArgs, layout: &Layout) -> anyhow::Result<u8> {
    let dir = layout.cluster(&a.cluster);
    let state = layout
        .read(&a.cluster)
        .with_context(|| format!("cluster {} is not one spilo up runs here", a.cluster))?;
    let Some(member) = state.members.first() else {
        bail!("cluster {} has no member", a.cluster);
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
