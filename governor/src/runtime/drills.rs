//! Restore drills run by the governor: on the schedule of `archive.verify`, and on request
//! (`POST /drill`, which `spilo verify-backup` sends). One drill at a time: a request that
//! arrives during a drill waits for it.
//!
//! At each time of the schedule, every member's timer fires and only the designated member
//! ([`spilo_model::drill_member`]) runs the drill ([`crate::drill`]). A requested drill runs on
//! the member asked. The result of every drill of the newest state of the archive (the
//! scheduled ones, and requested ones of the latest backup without a target time or a query of
//! their own) is written to etcd `drill`, where `spilo` reads it for status, drift and metrics.
//! A request whose asker has gone (its HTTP request ended) is skipped.

use super::backups::next_after;
use crate::dcs::Store;
use crate::drill::{Drill, Report};
use crate::shared::{DrillRequest, Shared};
use chrono::Utc;
use spilo_model::{DrillRecord, DrillRun, MemberName, drill_member};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the drills task needs.
pub struct Drills {
    /// The drill with the configuration's defaults (latest backup, the schedule's SQL).
    pub drill: Drill,
    /// `archive.verify.schedule`, when drills are scheduled.
    pub schedule: Option<String>,
    /// The shared state (for the cluster view).
    pub shared: Arc<Shared>,
    /// Where results are recorded.
    pub dcs: Store,
    /// This member.
    pub me: MemberName,
}

/// Runs until `cancel` fires.
pub async fn run(d: Drills, mut requests: mpsc::Receiver<DrillRequest>, cancel: CancellationToken) {
    let cron = match d.schedule.as_deref().map(crate::archive::cron).transpose() {
        Ok(c) => c,
        Err(e) => {
            // The configuration was checked at load; this cannot happen with a valid file.
            tracing::error!(error = e, "no scheduled restore drills");
            None
        }
    };
    if cron.is_some() {
        // The drills' clock starts with the first member whose schedule starts.
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        if let Err(e) = d
            .dcs
            .create_drill_if_absent(&DrillRecord::scheduled(now))
            .await
        {
            tracing::warn!(error = %e, "cannot record when restore drills began");
        }
    }
    loop {
        let wait = cron
            .as_ref()
            .and_then(|c| next_after(c, Utc::now()))
            .map(|next| (next - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        let scheduled = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = scheduled => {
                if designated(&d).await {
                    tracing::info!("scheduled restore drill starting");
                    let drill = d.drill.clone();
                    let Some(outcome) = run_one(&drill, &cancel).await else { return };
                    record(&d, outcome.as_ref()).await;
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { return };
                if request.reply.is_closed() {
                    // Its asker gave up while it waited: nobody to answer.
                    continue;
                }
                tracing::info!("requested restore drill starting");
                let mut drill = d.drill.clone();
                drill.pick = request.pick;
                drill.target_time = request.target_time;
                // The cluster's record says what its own checks found: not another query's.
                let own_checks = request.sql.is_none();
                if request.sql.is_some() {
                    drill.sql = request.sql;
                }
                let Some(outcome) = run_one(&drill, &cancel).await else { return };
                if own_checks
                    && drill.pick == crate::archive::backup::Pick::Latest
                    && drill.target_time.is_none()
                {
                    record(&d, outcome.as_ref()).await;
                }
                // The asker may have gone (its HTTP request timed out): nobody to answer.
                let _ = request.reply.send(outcome.map_err(|e| e.to_string()));
            }
        }
    }
}

/// Whether this member is the one that runs scheduled drills now.
async fn designated(d: &Drills) -> bool {
    let view = d.shared.view.read().await;
    view.as_ref().is_some_and(|v| {
        drill_member(&v.members, v.leader.as_ref().map(|l| &l.name)) == Some(&d.me)
    })
}

/// One drill, or `None` when cancelled meanwhile.
async fn run_one(
    drill: &Drill,
    cancel: &CancellationToken,
) -> Option<Result<Report, crate::drill::DrillError>> {
    tokio::select! {
        () = cancel.cancelled() => None,
        r = crate::drill::run(drill) => Some(r),
    }
}

/// Logs the outcome and writes it to etcd `drill`.
async fn record(d: &Drills, outcome: Result<&Report, &crate::drill::DrillError>) {
    let run = to_run(&d.me, outcome, Utc::now().timestamp());
    if run.ok {
        tracing::info!(backup = ?run.backup, rpo_ms = ?run.rpo_ms, rto_ms = ?run.rto_ms, "restore drill passed");
    } else {
        tracing::warn!(backup = ?run.backup, failed = ?run.failed, "restore drill failed");
    }
    let recorded = d
        .dcs
        .record_drill(|previous| DrillRecord::after(previous, run.clone()))
        .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "cannot record the restore drill in etcd");
    }
}

/// The record of one drill's outcome.
fn to_run(
    me: &MemberName,
    outcome: Result<&Report, &crate::drill::DrillError>,
    unix: i64,
) -> DrillRun {
    let unix = u64::try_from(unix).unwrap_or(0);
    let ms = |s: Option<f64>| s.map(|s| (s.max(0.0) * 1000.0) as u64);
    match outcome {
        Ok(r) => DrillRun {
            unix,
            member: me.to_string(),
            backup: r.backup.clone(),
            ok: r.ok(),
            failed: r
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect(),
            rpo_ms: ms(r.rpo_seconds),
            rto_ms: ms(r.rto_seconds),
        },
        Err(e) => DrillRun {
            unix,
            member: me.to_string(),
            backup: None,
            ok: false,
            failed: vec![format!("error: {e}")],
            rpo_ms: None,
            rto_ms: None,
        },
    }
}
