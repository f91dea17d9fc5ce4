//! `spilo verify-backup CLUSTER`: a restore drill of a cluster's archive, on demand.
//!
//! - For a cluster `spilo up` runs here (no `--etcd`), the drill runs on this machine with a
//!   member's governor program and configuration ([`crate::local::verify`]), with progress on
//!   a terminal.
//! - For any other cluster (`--etcd`, e.g. on AWS), the designated member
//!   ([`spilo_model::drill_member`], the one the schedule uses) runs it: `POST /drill` on its
//!   REST API, which answers when the drill is done. It reads the archive with its own
//!   credentials (its instance role), restores into its own scratch directory and records the
//!   result in etcd `drill`, like a scheduled drill.
//!
//! Either way: exit 0 verified, 2 a check failed, 1 the drill could not run.

use super::{Api, ApiAuth, Target, read_state};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use spilo_model::{MemberName, drill_member};
use std::time::Duration;

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
    #[command(flatten)]
    pub target: Target,
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
    /// With `--etcd`: the member that runs the drill (default: the first running replica
    /// by name, else the leader, as scheduled drills do).
    #[arg(long)]
    pub member: Option<MemberName>,
    /// With `--etcd`: how long to wait for the drill.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// REST API credentials.
    #[command(flatten)]
    pub auth: ApiAuth,
}

/// Runs the drill; returns its exit status (0 verified, 2 a check failed, 1 error).
pub async fn verify_backup(a: VerifyArgs) -> anyhow::Result<u8> {
    if a.target.etcd.is_none() {
        let layout = a.target.layout().with_context(|| {
            format!(
                "cannot find the state directory of {}; give --etcd for a cluster spilo up does not run here",
                a.target.cluster
            )
        })?;
        return crate::local::verify::verify(&a, &layout).await;
    }
    let state = read_state(&a.target).await?;
    let member = match &a.member {
        Some(m) => m.clone(),
        None => drill_member(&state.members, state.leader.as_ref())
            .cloned()
            .with_context(|| format!("{} has no running member", a.target.cluster))?,
    };
    let url = &state.member(&member)?.api_url;
    let mut body = json!({ "backup": a.backup });
    if let Some(t) = &a.target_time {
        body["target_time"] = json!(t);
    }
    if let Some(q) = &a.sql {
        body["sql"] = json!(q);
    }
    eprintln!("{member} runs the restore drill");
    let api = Api::with_timeout(&a.auth, &a.target, a.timeout)?;
    let answer = api.post(url, "/drill", &body).await?;
    if !answer.ok() {
        bail!("{member}: {} (HTTP {})", answer.message, answer.status);
    }
    let ok = answer.body.get("ok").and_then(Value::as_bool);
    let (Some(ok), Some(report)) = (ok, answer.body.get("report")) else {
        bail!("{member} answered without a report: {}", answer.body);
    };
    match a.format {
        ReportFormat::Text => print!(
            "{}",
            answer
                .body
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
    }
    Ok(if ok { 0 } else { 2 })
}
