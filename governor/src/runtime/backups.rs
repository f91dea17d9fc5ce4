//! Scheduled base backups: a task that wakes at each time of `archive.backups.schedule`
//! and, when this member is the leader running as primary, takes a base backup into the
//! archive and then enforces `retain` (deleting older backups and the WAL only they need).
//!
//! Every member runs the task; only the leader acts, so a failover moves the schedule with the
//! leader key. A backup that outlasts the interval skips the times it missed rather than
//! running twice in a row. What happened is in `/status` (`archive.backups`).

use super::Shared;
use crate::archive::{AnyStore, ArchiveConfig, BackupSchedule, backup, retention};
use chrono::{DateTime, Utc};
use spilo_model::MemberRole;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How to reach the local PostgreSQL for a backup.
pub struct Local {
    /// PostgreSQL's programs.
    pub bin_dir: PathBuf,
    /// The socket directory.
    pub socket_dir: PathBuf,
    /// The port.
    pub port: u16,
    /// The superuser.
    pub user: String,
}

/// The next time `cron` fires strictly after `now`.
pub fn next_after(cron: &croner::Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs the schedule until `cancel` fires, recording what it does in `shared.backups`.
pub async fn run(
    archive: ArchiveConfig,
    schedule: BackupSchedule,
    local: Local,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let runs = &shared.backups;
    let cron = match schedule.cron() {
        Ok(c) => c,
        Err(e) => {
            // The configuration was checked at load; this cannot happen with a valid file.
            tracing::error!(error = e, "no scheduled backups");
            return;
        }
    };
    let store = AnyStore::open(&archive).await;
    loop {
        let Some(next) = next_after(&cron, Utc::now()) else {
            tracing::warn!(
                schedule = schedule.schedule,
                "the schedule never fires again"
            );
            return;
        };
        runs.write().await.next = Some(rfc3339(next));
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let leading = {
            let node = shared.node.read().await;
            node.is_leader && node.member.running_as(MemberRole::Primary)
        };
        if !leading {
            continue;
        }
        let src = backup::Source {
            bin_dir: &local.bin_dir,
            socket_dir: &local.socket_dir,
            port: local.port,
            user: &local.user,
        };
        tracing::info!("scheduled base backup starting");
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            r = take(&archive, &store, &src, schedule.retain) => r,
        };
        let mut r = runs.write().await;
        match outcome {
            Ok((name, deleted)) => {
                tracing::info!(backup = name, deleted, "scheduled base backup finished");
                r.last = Some(name);
                r.last_finished = Some(rfc3339(Utc::now()));
                r.error = None;
                r.deleted += deleted;
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduled base backup failed");
                r.error = Some(e.to_string());
            }
        }
    }
}

/// One backup, then retention. Returns the backup's name and how many old ones went.
async fn take(
    archive: &ArchiveConfig,
    store: &AnyStore,
    src: &backup::Source<'_>,
    retain: usize,
) -> Result<(String, u64), crate::archive::ArchiveError> {
    let sentinel = backup::backup_push(archive, store, src).await?;
    let deletion = retention::backup_delete(archive, store, retain).await?;
    Ok((sentinel.name, deletion.backups.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_schedules_fire_on_the_minute_and_six_field_ones_on_the_second() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let daily: croner::Cron = "0 1 * * *".parse().expect("cron");
        assert_eq!(
            next_after(&daily, at("2026-11-26T00:59:59Z")),
            Some(at("2026-11-26T01:00:00Z"))
        );
        assert_eq!(
            next_after(&daily, at("2026-11-26T01:00:00Z")),
            Some(at("2026-11-27T01:00:00Z"))
        );
        let every5s: croner::Cron = "*/5 * * * * *".parse().expect("cron");
        assert_eq!(
            next_after(&every5s, at("2026-11-26T01:00:03Z")),
            Some(at("2026-11-26T01:00:05Z"))
        );
        assert!("0 1 * *".parse::<croner::Cron>().is_err());
    }
}
