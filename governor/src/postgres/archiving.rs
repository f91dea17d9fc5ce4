//! The instance's side of archiving: the `archive_command` and `restore_command` that run
//! this governor program (`wal-push`, `wal-fetch`), creating the data directory of a clone
//! from another cluster's base backup and archive (`bootstrap.clone`), and recovering the
//! cluster from its own archive when every member lost its data.

use super::PgError;
use super::{Instance, UNFINISHED_MARKER, server_log, write_private};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("governor"))
}

/// `archive_command` and `restore_command` running this governor program with `config` (an
/// absolute path).
pub(super) fn archive_commands(config: &Path) -> (String, String) {
    let exe = exe();
    (
        format!("{} wal-push \"%p\" --config {}", quote(&exe), quote(config)),
        format!(
            "{} wal-fetch \"%f\" \"%p\" --config {}",
            quote(&exe),
            quote(config)
        ),
    )
}

/// Where a standby leader keeps its source's archive settings for `wal-fetch
/// --from-standby-source`, in the run directory.
pub const STANDBY_SOURCE_ARCHIVE: &str = "standby-source-archive.json";

/// `restore_command` reading a standby cluster's source archive (the settings in
/// [`STANDBY_SOURCE_ARCHIVE`]).
pub(super) fn standby_restore_command(config: &Path) -> String {
    format!(
        "{} wal-fetch \"%f\" \"%p\" --from-standby-source --config {}",
        quote(&exe()),
        quote(config)
    )
}

impl Instance {
    /// Creates a replica's data directory from the latest base backup in `archive`, to be
    /// started as a standby that recovers with the archive's WAL and then streams. Returns
    /// the backup's name, or `None` (and an empty data directory) when there is no finished
    /// backup or restoring it failed: the caller then copies the primary instead.
    pub async fn replica_from_backup(
        &self,
        archive: &crate::archive::ArchiveConfig,
    ) -> Result<Option<String>, PgError> {
        let store = crate::archive::AnyStore::open(archive).await;
        match crate::archive::backup::backup_list(archive, &store).await {
            Ok(all) if all.is_empty() => return Ok(None),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the archive's backups; copying the primary");
                return Ok(None);
            }
        }
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        write_private(&marker, "replica from backup")?;
        let r = crate::archive::backup::backup_fetch(
            archive,
            &store,
            &crate::archive::backup::Pick::Latest,
            &self.data_dir,
        )
        .await;
        match r {
            Ok(backup) => {
                std::fs::remove_file(&marker)?;
                tracing::info!(
                    backup = backup.name,
                    "restored the archive's latest base backup for a new replica"
                );
                Ok(Some(backup.name))
            }
            Err(e) => {
                tracing::warn!(error = %e, "restoring the latest backup failed; copying the primary");
                self.wipe_data()?;
                std::fs::remove_file(&marker)?;
                Ok(None)
            }
        }
    }

    /// Creates the data directory from `clone`'s archive, from the newest base backup that
    /// finished before the target time (the latest without one), recovers it with that
    /// archive's WAL to the target, then promotes. Returns once PostgreSQL accepts writes (it
    /// runs, started here).
    ///
    /// Fails with [`PgError::Permanent`] when the configuration cannot succeed however often
    /// it is tried (a target before the oldest backup, a setting PostgreSQL refuses); other
    /// failures may pass (the source has no backup yet or has not archived the WAL that
    /// reaches the target, the target is later than `now`, which may be this machine's clock).
    pub async fn restore_clone(
        &mut self,
        clone: &crate::config::CloneConfig,
        cluster: &BTreeMap<String, String>,
        now: spilo_model::TargetTime,
    ) -> Result<(), PgError> {
        use crate::archive::backup::{Pick, PickError, backup_fetch, backup_list, pick};
        let target = clone.target_time;
        if let Some(t) = target
            && t > now
        {
            return Err(PgError::Failed(format!(
                "bootstrap.clone.target_time {t} is in the future (now {now}): recovery would \
                 wait for WAL that does not exist yet; waiting for it"
            )));
        }
        let store = crate::archive::AnyStore::open(&clone.archive).await;
        let all = backup_list(&clone.archive, &store)
            .await
            .map_err(|e| PgError::Failed(format!("clone: list the source's backups: {e}")))?;
        let which = target.map_or(Pick::Latest, Pick::Before);
        let chosen = match pick(&all, &which) {
            Ok(s) => s.clone(),
            Err(e @ PickError::TargetBeforeOldest { .. }) => {
                return Err(PgError::Permanent(format!("clone: {e}")));
            }
            Err(e) => return Err(PgError::Failed(format!("clone: {e}"))),
        };
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        write_private(&marker, "clone from archive")?;
        let backup = backup_fetch(
            &clone.archive,
            &store,
            &Pick::Named(chosen.name.clone()),
            &self.data_dir,
        )
        .await
        .map_err(|e| PgError::Failed(format!("clone: {e}")))?;
        tracing::info!(
            backup = backup.name,
            finished = backup.finish_time,
            target = ?target.map(|t| t.to_string()),
            "restored the source's base backup"
        );
        write_private(&self.data_dir.join("recovery.signal"), "")?;
        std::fs::remove_file(&marker)?;
        let restore = format!(
            "{} wal-fetch \"%f\" \"%p\" --from-clone --config {}",
            quote(&exe()),
            quote(&self.config_path)
        );
        self.recover_and_promote(restore, target, cluster, |line| clone_exit(line, target))
            .await?;
        tracing::info!(target_time = ?target.map(|t| t.to_string()), "the clone recovered and was promoted");
        Ok(())
    }

    /// Recovers the cluster from its own archive when no member has data: the latest base
    /// backup, then every archived WAL file, then promotion (a new timeline). Checks first
    /// that the archive has a backup and no hole in its WAL from that backup on, and after
    /// fetching it that it is of `sysid` (the cluster's `initialize` key). Returns once
    /// PostgreSQL accepts writes (it runs, started here), with what it recovered.
    pub async fn recover_from_archive(
        &mut self,
        archive: &crate::archive::ArchiveConfig,
        sysid: &str,
        cluster: &BTreeMap<String, String>,
    ) -> Result<Recovered, PgError> {
        use crate::archive::backup::{Pick, backup_fetch, backup_list, pick};
        use crate::archive::store::Store;
        let store = crate::archive::AnyStore::open(archive).await;
        let all = backup_list(archive, &store)
            .await
            .map_err(|e| PgError::Failed(format!("list the archive's backups: {e}")))?;
        let latest = pick(&all, &Pick::Latest)
            .map_err(|_| {
                PgError::Failed(format!(
                    "the archive {} holds no finished base backup: there is nothing to recover \
                     the cluster from (its data is gone with its members)",
                    archive.prefix
                ))
            })?
            .clone();
        let wal_dir = format!("{}wal_005/", crate::archive::under(&archive.prefix));
        let keys = store
            .list(&wal_dir)
            .await
            .map_err(|e| PgError::Failed(format!("list the archive's WAL: {e}")))?;
        let newest = crate::archive::continuity::check(&latest.start_wal_file, &wal_dir, &keys)
            .map_err(PgError::Failed)?;
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        write_private(&marker, "recovery from the archive")?;
        let backup = backup_fetch(
            archive,
            &store,
            &Pick::Named(latest.name.clone()),
            &self.data_dir,
        )
        .await
        .map_err(|e| PgError::Failed(format!("fetch base backup {}: {e}", latest.name)))?;
        // (Not `data_state`, which empties a directory whose copy is marked unfinished.)
        let restored = super::controldata::read(&self.bin_dir, &self.data_dir)
            .await?
            .to_data_dir();
        match restored {
            Some(crate::ha::DataDir::Initialized { sysid: theirs, .. }) if theirs != sysid => {
                self.wipe_data()?;
                std::fs::remove_file(&marker)?;
                return Err(PgError::Permanent(format!(
                    "the archive's latest base backup {} belongs to system {theirs}, but this \
                     cluster is system {sysid} (etcd's initialize key): it is another \
                     cluster's archive",
                    backup.name
                )));
            }
            _ => {}
        }
        tracing::info!(
            backup = backup.name,
            finished = backup.finish_time,
            newest_segment = newest,
            "restored the archive's latest base backup; replaying every archived WAL file"
        );
        write_private(&self.data_dir.join("recovery.signal"), "")?;
        std::fs::remove_file(&marker)?;
        let (_, restore) = archive_commands(&self.config_path);
        self.recover_and_promote(restore, None, cluster, |line| {
            PgError::Failed(format!(
                "PostgreSQL exited while recovering from the archive: {}",
                line.unwrap_or_else(|| "no error in its log".into())
            ))
        })
        .await?;
        let (lsn, last_commit) = self.session.recovered_point().await?;
        Ok(Recovered {
            backup: backup.name,
            lsn,
            last_commit,
        })
    }

    /// Starts the restored data directory in recovery with `restore` as its
    /// `restore_command` (to `target`, or to the end of the archive), waits until it has
    /// promoted, and drops the recovery settings again. `exit` explains PostgreSQL exiting
    /// meanwhile from its error line.
    async fn recover_and_promote(
        &mut self,
        restore: String,
        target: Option<spilo_model::TargetTime>,
        cluster: &BTreeMap<String, String>,
        exit: impl Fn(Option<String>) -> PgError,
    ) -> Result<(), PgError> {
        self.clone_recovery = Some((restore, target.map(|t| t.to_postgres())));
        let log_from = server_log::offset(&self.log_file());
        self.start(true, None, cluster)?;
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if self
                .postmaster
                .as_ref()
                .is_none_or(|p| p.exited().is_some())
            {
                self.clone_recovery = None;
                return Err(exit(server_log::errors_since(&self.log_file(), log_from)));
            }
            if let Ok(s) = self.session.status().await
                && !s.in_recovery
            {
                break;
            }
            if Instant::now() > deadline {
                self.clone_recovery = None;
                return Err(PgError::Failed(
                    "recovery did not finish within an hour".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Promoted: the recovery settings have done their work.
        self.clone_recovery = None;
        self.write_conf(None, cluster)?;
        self.session.execute("SELECT pg_reload_conf()").await?;
        Ok(())
    }
}

/// What a recovery from the cluster's own archive reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The base backup it started from.
    pub backup: String,
    /// The last WAL position replayed (where the new timeline begins).
    pub lsn: Option<String>,
    /// The commit time of the last transaction replayed.
    pub last_commit: Option<String>,
}

/// Why PostgreSQL exited while recovering a clone, from its own error line: whether trying
/// again can help, and what to do.
fn clone_exit(pg_error: Option<String>, target: Option<spilo_model::TargetTime>) -> PgError {
    let Some(line) = pg_error else {
        return PgError::Failed(
            "PostgreSQL exited while recovering the clone without an error in its log".into(),
        );
    };
    if line.contains("recovery ended before configured recovery target was reached") {
        let t = target.map(|t| t.to_string()).unwrap_or_default();
        return PgError::Failed(format!(
            "the source's archive ends before bootstrap.clone.target_time {t}: no WAL after it \
             is archived yet, so recovery cannot tell where to stop (PostgreSQL: {line}); \
             retrying as the source archives more"
        ));
    }
    if line.contains("configuration file") || line.contains("invalid value for parameter") {
        return PgError::Permanent(format!("PostgreSQL refuses the clone's settings: {line}"));
    }
    PgError::Failed(format!(
        "PostgreSQL exited while recovering the clone: {line}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_that_exits_says_whether_retrying_can_help() {
        let t = spilo_model::TargetTime::parse("2026-11-27T11:24:03Z").ok();
        let short = clone_exit(
            Some("FATAL: recovery ended before configured recovery target was reached".into()),
            t,
        );
        assert!(matches!(short, PgError::Failed(_)), "{short:?}");
        assert!(
            short
                .to_string()
                .contains("ends before bootstrap.clone.target_time 2026-11-27T11:24:03.000000Z"),
            "{short}"
        );
        let bad = clone_exit(
            Some(
                "LOG: invalid value for parameter \"recovery_target_time\": \"x\"; \
                 FATAL: configuration file \"/p\" contains errors"
                    .into(),
            ),
            t,
        );
        assert!(matches!(bad, PgError::Permanent(_)), "{bad:?}");
        assert!(bad.to_string().contains("recovery_target_time"), "{bad}");
        assert!(matches!(clone_exit(None, t), PgError::Failed(_)));
    }
}
