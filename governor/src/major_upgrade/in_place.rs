//! The major upgrade of a member by its own governor, in place: the way of an instance,
//! where no orchestrator runs beside the governor (the AWS target). The orchestrator sends
//! the member's configuration for the new version to the leader (`POST /upgrade`, once the
//! other members are gone); between two HA passes the governor checks, stops PostgreSQL,
//! gives up the leader key and links ([`super::link`]), then ends its run, and [`resume`],
//! at its next start, commits ([`super::commit`]) and runs it on the new configuration.
//!
//! The record is three files beside the data directory ([`Files`]), each written before the
//! step it names and renamed (never rewritten) into the next:
//! - `<data>.upgrade.yaml.new`: the new configuration while the link runs;
//! - `<data>.upgrade.yaml`: the link finished; the commit is due;
//! - `<data>.upgraded.yaml`: committed. The member runs with it from then on, whichever
//!   configuration it is started with, as long as that one is for another version than its
//!   data (an instance's boot writes its launch template's, the old version's, until the
//!   instance is replaced).
//!
//! [`resume`] runs at every start and finishes what a crash interrupted: a link without its
//! record is rolled back (the old version runs on, with its data), a finished one committed.

use super::{Paths, UpgradeError, commit, data_version, discard_old, io, roll_back, stop_server};
use crate::config::{self, Loaded};
use std::path::{Path, PathBuf};

/// The record of an in-place upgrade, beside the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `<data>.upgrade.yaml.new`: the new configuration while the link runs.
    pub intent: PathBuf,
    /// `<data>.upgrade.yaml`: the link finished.
    pub linked: PathBuf,
    /// `<data>.upgraded.yaml`: committed; the configuration to run with.
    pub committed: PathBuf,
    /// `<data>.upgrade-check.yaml`: the configuration a check only is given (never a
    /// record).
    pub check: PathBuf,
}

impl Files {
    /// The record of the member whose data directory is `data`.
    pub fn of(data: &Path) -> Self {
        Self {
            intent: super::beside(data, ".upgrade.yaml.new"),
            linked: super::beside(data, ".upgrade.yaml"),
            committed: super::beside(data, ".upgraded.yaml"),
            check: super::beside(data, ".upgrade-check.yaml"),
        }
    }
}

/// Renames `from` to `to` and syncs their directory: a crash never finds an older record
/// than the data is in.
pub fn advance(from: &Path, to: &Path) -> Result<(), UpgradeError> {
    std::fs::rename(from, to).map_err(io(format!(
        "rename {} to {}",
        from.display(),
        to.display()
    )))?;
    sync_dir(to)
}

/// Writes `text` as `path` durably (the file and its directory synced before anything
/// depends on it).
pub fn write_durably(path: &Path, text: &str) -> Result<(), UpgradeError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(format!("write {}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("write {}", path.display())))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), UpgradeError> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("sync {}", dir.display())))?;
    }
    Ok(())
}

async fn load(path: &Path, like: &Loaded) -> Result<Loaded, UpgradeError> {
    config::load(path, &like.identity)
        .await
        .map_err(|e| UpgradeError::State(format!("the upgrade's configuration: {e}")))
}

/// What `loaded` (the configuration the governor was started with) becomes once an in-place
/// upgrade's record is read: the same, or the upgraded configuration. A link a crash
/// interrupted is rolled back first, a finished one committed.
pub async fn resume(loaded: Loaded) -> Result<Loaded, UpgradeError> {
    let data = loaded.config.postgresql.data_dir.clone();
    let files = Files::of(&data);
    let old_bin = loaded.config.postgresql.bin_dir.clone();
    if files.linked.exists() {
        let new = load(&files.linked, &loaded).await?;
        let paths = Paths::of(&new, &old_bin);
        let system = commit(&new, &paths).await?;
        advance(&files.linked, &files.committed)?;
        tracing::info!(
            %system,
            config = %files.committed.display(),
            "committed the in-place upgrade: the data directory holds the new version and \
             etcd's `initialize` its system identifier"
        );
        // The old directory stays until the new version has run on the data: before, it is
        // the way back by hand (its control file renamed back).
        return load(&files.committed, &loaded).await;
    }
    if files.intent.exists() {
        let paths = match load(&files.intent, &loaded).await {
            Ok(new) => Paths::of(&new, &old_bin),
            Err(_) => Paths::of(&loaded, &old_bin),
        };
        // pg_upgrade, killed with its governor, may have left its servers running.
        stop_server(&paths.new_bin, &paths.upgraded).await;
        stop_server(&old_bin, &data).await;
        let undone = roll_back(&paths)?;
        std::fs::remove_file(&files.intent)
            .map_err(io(format!("remove {}", files.intent.display())))?;
        tracing::warn!(
            undone,
            "an in-place upgrade was interrupted before its point of no return: rolled back, \
             the old version runs on"
        );
        return Ok(loaded);
    }
    if files.committed.exists() && data_version(&data) != own_version(&loaded).await {
        let new = load(&files.committed, &loaded).await?;
        tracing::info!(
            config = %files.committed.display(),
            "this member's data was upgraded in place: running with the upgraded configuration"
        );
        discard_once_run(&new);
        return Ok(new);
    }
    Ok(loaded)
}

/// Removes the old version's directory once the new version has started on the data
/// (PostgreSQL's `postmaster.opts` names the programs it last started with).
fn discard_once_run(new: &Loaded) {
    let paths = Paths::of(new, &new.config.postgresql.bin_dir);
    // PostgreSQL writes its program's real path (the image links 18's directory).
    let bins: Vec<String> = [
        Some(paths.new_bin.clone()),
        paths.new_bin.canonicalize().ok(),
    ]
    .into_iter()
    .flatten()
    .map(|b| b.display().to_string())
    .collect();
    let ran = std::fs::read_to_string(paths.data.join("postmaster.opts"))
        .is_ok_and(|o| bins.iter().any(|b| o.starts_with(b.as_str())));
    if ran {
        match discard_old(&paths) {
            Ok(true) => tracing::info!(
                old = %paths.previous.display(),
                "removed the old version's data directory"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the old data directory was not removed"),
        }
    }
}

/// The major version of `loaded`'s PostgreSQL programs.
async fn own_version(loaded: &Loaded) -> Option<u32> {
    super::version_of(&loaded.config.postgresql.bin_dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_lies_beside_the_data_directory() {
        let f = Files::of(Path::new("/home/postgres/pgdata/data"));
        assert_eq!(
            f,
            Files {
                intent: "/home/postgres/pgdata/data.upgrade.yaml.new".into(),
                linked: "/home/postgres/pgdata/data.upgrade.yaml".into(),
                committed: "/home/postgres/pgdata/data.upgraded.yaml".into(),
                check: "/home/postgres/pgdata/data.upgrade-check.yaml".into(),
            }
        );
    }

    #[test]
    fn advancing_renames_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Files::of(&dir.path().join("data"));
        write_durably(&f.intent, "scope: x\n").expect("write");
        advance(&f.intent, &f.linked).expect("advance");
        assert!(!f.intent.exists() && f.linked.exists());
        assert_eq!(
            std::fs::read_to_string(&f.linked).expect("read"),
            "scope: x\n"
        );
    }
}
