//! The instance's side of archiving: the `archive_command` and `restore_command` that run
//! this governor program (`wal-push`, `wal-fetch`), and creating the data directory of a clone
//! from another cluster's base backup and archive (`bootstrap.clone`).

use super::{Instance, UNFINISHED_MARKER, write_private};
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

impl Instance {
    /// Creates a replica's data directory from the latest base backup in `archive`, to be
    /// started as a standby that recovers with the archive's WAL and then streams. Returns
    /// the backup's name, or `None` (and an empty data directory) when there is no finished
    /// backup or restoring it failed: the caller then copies the primary instead.
    pub async fn replica_from_backup(
        &self,
        archive: &crate::archive::ArchiveConfig,
    ) -> Result<Option<String>, crate::runtime::ActError> {
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
        let r =
            crate::archive::backup::backup_fetch(archive, &store, "LATEST", &self.data_dir).await;
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

    /// Creates the data directory from the latest base backup of `clone`'s archive and
    /// recovers it with that archive's WAL to the target time, then promotes. Returns once
    /// PostgreSQL accepts writes (it runs, started here).
    pub async fn restore_clone(
        &mut self,
        clone: &crate::config::CloneConfig,
        cluster: &BTreeMap<String, String>,
    ) -> Result<(), crate::runtime::ActError> {
        use crate::runtime::ActError;
        let marker = self.run_dir.join(UNFINISHED_MARKER);
        write_private(&marker, "clone from archive")?;
        let store = crate::archive::AnyStore::open(&clone.archive).await;
        let backup =
            crate::archive::backup::backup_fetch(&clone.archive, &store, "LATEST", &self.data_dir)
                .await
                .map_err(|e| ActError::Other(format!("clone: {e}")))?;
        tracing::info!(
            backup = backup.name,
            "restored the source's latest base backup"
        );
        write_private(&self.data_dir.join("recovery.signal"), "")?;
        std::fs::remove_file(&marker)?;
        let restore = format!(
            "{} wal-fetch \"%f\" \"%p\" --from-clone --config {}",
            quote(&exe()),
            quote(&self.config_path)
        );
        self.clone_recovery = Some((restore, clone.target_time.clone()));
        self.start(true, None, cluster)?;
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if self
                .postmaster
                .as_ref()
                .is_none_or(|p| p.exited().is_some())
            {
                self.clone_recovery = None;
                return Err(ActError::Other(
                    "PostgreSQL exited while recovering the clone; see its log".into(),
                ));
            }
            if let Ok(s) = self.session.status().await
                && !s.in_recovery
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(ActError::Other(
                    "the clone did not finish recovering within an hour".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Promoted: the recovery settings have done their work.
        self.clone_recovery = None;
        self.write_conf(None, cluster)?;
        self.session.execute("SELECT pg_reload_conf()").await?;
        tracing::info!(target_time = ?clone.target_time, "the clone recovered and was promoted");
        Ok(())
    }
}
