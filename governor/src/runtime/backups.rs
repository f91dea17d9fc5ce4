//! Base backups the leader takes: at each time of `archive.backups.schedule`, and on demand
//! (`POST /backup`, `spilo backup`); after each, `retain` is enforced (older backups and the
//! WAL only they need are deleted).
//!
//! Every member runs the task; only the leader running as primary acts, so a failover moves
//! the schedule with the leader key, and a request sent to another member is refused with the
//! reason. A backup that outlasts the interval skips the times it missed rather than running
//! twice in a row; requests wait for a backup in progress. What happened is in `/status`
//! (`archive.backups`).

use crate::archive::{AnyStore, ArchiveConfig, BackupSchedule, backup, retention};
use crate::shared::Shared;
use chrono::{DateTime, Utc};
use spilo_model::MemberRole;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
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

use crate::shared::{BackupRefused as Refused, BackupRequest as Request};

/// The next time `cron` fires strictly after `now`.
pub fn next_after(cron: &croner::Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Runs until `cancel` fires: scheduled backups when `schedule` is set, and requested ones,
/// recording what it does in `shared.backups`.
pub async fn run(
    archive: ArchiveConfig,
    schedule: Option<BackupSchedule>,
    local: Local,
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<Request>,
    cancel: CancellationToken,
) {
    let runs = &shared.backups;
    let cron = match schedule
        .as_ref()
        .map(|s| crate::archive::cron(&s.schedule))
        .transpose()
    {
        Ok(c) => c,
        Err(e) => {
            // The configuration was checked at load; this cannot happen with a valid file.
            tracing::error!(error = e, "no scheduled backups");
            None
        }
    };
    let retain = schedule.as_ref().map(|s| s.retain);
    let store = AnyStore::open(&archive).await;
    loop {
        let next = cron.as_ref().and_then(|c| next_after(c, Utc::now()));
        runs.write().await.next = next.map(rfc3339);
        let wait = next.map(|n| (n - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        let request = tokio::select! {
            () = cancel.cancelled() => return,
            () = sleep_or_forever(wait) => None,
            r = requests.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
        };
        let leading = {
            let node = shared.node.read().await;
            node.is_leader && node.member.running_as(MemberRole::Primary)
        };
        if !leading {
            if let Some(r) = request {
                let _ = r.send(Err(Refused::NotLeader));
            }
            continue;
        }
        let src = backup::Source {
            bin_dir: &local.bin_dir,
            socket_dir: &local.socket_dir,
            port: local.port,
            user: &local.user,
        };
        let what = if request.is_some() {
            "requested"
        } else {
            "scheduled"
        };
        tracing::info!("{what} base backup starting");
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            r = take(&archive, &store, &src, retain) => r,
        };
        let mut r = runs.write().await;
        let answer = match outcome {
            Ok((name, deleted)) => {
                tracing::info!(backup = name, deleted, "{what} base backup finished");
                r.last = Some(name.clone());
                r.last_finished = Some(rfc3339(Utc::now()));
                r.error = None;
                r.deleted += deleted;
                Ok(name)
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} base backup failed");
                r.error = Some(e.to_string());
                Err(Refused::Failed(e.to_string()))
            }
        };
        if let Some(reply) = request {
            let _ = reply.send(answer);
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(w) => tokio::time::sleep(w).await,
        None => std::future::pending().await,
    }
}

/// One backup, then retention (when a schedule sets `retain`). Returns the backup's name and
/// how many old ones went.
async fn take(
    archive: &ArchiveConfig,
    store: &AnyStore,
    src: &backup::Source<'_>,
    retain: Option<usize>,
) -> Result<(String, u64), crate::archive::ArchiveError> {
    let sentinel = backup::backup_push(archive, store, src).await?;
    let deleted = match retain {
        Some(n) => retention::backup_delete(archive, store, n)
            .await?
            .backups
            .len() as u64,
        None => 0,
    };
    Ok((sentinel.name, deleted))
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
