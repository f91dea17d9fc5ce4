//! Retention: `backup-delete --retain N` keeps the newest N finished base backups and deletes
//! the older ones with the WAL that only they need.
//!
//! [`plan`] is pure: from the archive's key listing and the finished backups it computes what
//! to delete. A WAL segment is kept when its segment number is at or after the start of the
//! oldest kept backup, on any timeline; timeline history files are always kept (they are tiny
//! and recovery follows them). Unfinished backup directories older than the oldest kept
//! backup are abandoned copies and go too. Deletion order makes a failure halfway harmless:
//! sentinels first (so a backup being deleted is no longer listed as restorable), then the
//! parts, then WAL; running the command again finishes the job.

use super::backup::Sentinel;
use super::store::Store;
use super::{ArchiveConfig, ArchiveError};
use spilo_model::Lsn;

/// What a retention run deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deletion {
    /// The finished backups deleted, oldest first.
    pub backups: Vec<String>,
    /// Every key to delete, in the order to delete them.
    pub keys: Vec<String>,
    /// How many of `keys` are WAL files.
    pub wal_files: usize,
    /// The oldest kept backup's first WAL file: nothing from it on is deleted.
    pub keep_from: Option<String>,
}

/// The segment number (log and segment, without the timeline) of a WAL file name.
fn segment_number(file: &str) -> Option<u64> {
    let hex = file.get(8..24)?;
    if file.len() < 24 || !file.bytes().take(24).all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn start_lsn(s: &Sentinel) -> Lsn {
    s.start_lsn.parse().unwrap_or_default()
}

/// What to delete to keep the newest `retain` finished backups. `under` is the archive's key
/// prefix ([`super::under`]); `keys` lists everything under it. Nothing is deleted while there
/// are no more than `retain` finished backups.
pub fn plan(under: &str, keys: &[String], finished: &[Sentinel], retain: usize) -> Deletion {
    let mut sorted: Vec<&Sentinel> = finished.iter().collect();
    sorted.sort_by_key(|s| start_lsn(s));
    if retain == 0 || sorted.len() <= retain {
        return Deletion {
            keep_from: sorted.first().map(|s| s.start_wal_file.clone()),
            ..Deletion::default()
        };
    }
    let (dropped, kept) = sorted.split_at(sorted.len() - retain);
    let oldest = kept[0];
    let Some(keep_from) = segment_number(&oldest.start_wal_file) else {
        return Deletion::default();
    };
    let backups_dir = format!("{under}basebackups_005/");
    let wal_dir = format!("{under}wal_005/");
    let kept_names: Vec<&str> = kept.iter().map(|s| s.name.as_str()).collect();
    let dropped_names: Vec<&str> = dropped.iter().map(|s| s.name.as_str()).collect();

    let mut sentinels = Vec::new();
    let mut parts = Vec::new();
    let mut wal = Vec::new();
    for key in keys {
        if let Some(rest) = key.strip_prefix(&backups_dir) {
            if let Some(name) = rest.strip_suffix("_backup_stop_sentinel.json") {
                if dropped_names.contains(&name) {
                    sentinels.push(key.clone());
                }
            } else if let Some((name, _)) = rest.split_once('/') {
                let finished_and_dropped = dropped_names.contains(&name);
                let abandoned = !kept_names.contains(&name)
                    && !finished.iter().any(|s| s.name == name)
                    && name
                        .strip_prefix("base_")
                        .and_then(segment_number)
                        .is_some_and(|n| n < keep_from);
                if finished_and_dropped || abandoned {
                    parts.push(key.clone());
                }
            }
        } else if let Some(file) = key.strip_prefix(&wal_dir) {
            let history = file.split('.').nth(1) == Some("history");
            if !history && segment_number(file).is_some_and(|n| n < keep_from) {
                wal.push(key.clone());
            }
        }
    }
    let wal_files = wal.len();
    Deletion {
        backups: dropped_names.iter().map(|n| n.to_string()).collect(),
        keys: sentinels.into_iter().chain(parts).chain(wal).collect(),
        wal_files,
        keep_from: Some(oldest.start_wal_file.clone()),
    }
}

/// Deletes all but the newest `retain` finished backups and the WAL only they need.
pub async fn backup_delete(
    cfg: &ArchiveConfig,
    store: &impl Store,
    retain: usize,
) -> Result<Deletion, ArchiveError> {
    if retain == 0 {
        return Err(ArchiveError::Io(
            "--retain must be at least 1: deleting every backup is not a retention policy".into(),
        ));
    }
    let finished = super::backup::backup_list(cfg, store).await?;
    let under = super::under(&cfg.prefix);
    let keys = store.list(&under).await?;
    let deletion = plan(&under, &keys, &finished, retain);
    store.delete(&deletion.keys).await?;
    Ok(deletion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(file: &str, lsn: &str) -> Sentinel {
        Sentinel {
            name: format!("base_{file}"),
            start_lsn: lsn.into(),
            start_wal_file: file.into(),
            finish_lsn: lsn.into(),
            start_time: String::new(),
            finish_time: String::new(),
            parts: 1,
            uncompressed_size: 0,
            compressed_size: 0,
            compression: "lz4".into(),
        }
    }

    const U: &str = "spilo/demo/wal/15/";

    fn keys(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| format!("{U}{f}")).collect()
    }

    fn archive() -> (Vec<String>, Vec<Sentinel>) {
        let keys = keys(&[
            "basebackups_005/base_000000010000000000000002/tar_partitions/part_001.tar.lz4",
            "basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json",
            "basebackups_005/base_000000010000000000000003/tar_partitions/part_001.tar.lz4",
            "basebackups_005/base_000000020000000000000005/tar_partitions/part_001.tar.lz4",
            "basebackups_005/base_000000020000000000000005/tar_partitions/part_002.tar.lz4",
            "basebackups_005/base_000000020000000000000005_backup_stop_sentinel.json",
            "basebackups_005/base_000000020000000000000007/tar_partitions/part_001.tar.lz4",
            "basebackups_005/base_000000020000000000000007_backup_stop_sentinel.json",
            "basebackups_005/base_000000020000000000000009/tar_partitions/part_001.tar.lz4",
            "wal_005/000000010000000000000001.lz4",
            "wal_005/000000010000000000000002.lz4",
            "wal_005/000000010000000000000002.00000028.backup.lz4",
            "wal_005/000000010000000000000004.partial.zst",
            "wal_005/000000010000000000000004.lz4",
            "wal_005/00000002.history.lz4",
            "wal_005/000000020000000000000004.lz4",
            "wal_005/000000020000000000000005.lz4",
            "wal_005/000000020000000000000006.lz4",
            "wal_005/000000020000000000000007.lz4",
        ]);
        let finished = vec![
            sentinel("000000020000000000000007", "0/7000028"),
            sentinel("000000010000000000000002", "0/2000028"),
            sentinel("000000020000000000000005", "0/5000060"),
        ];
        (keys, finished)
    }

    #[test]
    fn the_newest_backups_and_the_wal_they_need_are_kept() {
        let (keys, finished) = archive();
        let d = plan(U, &keys, &finished, 2);
        assert_eq!(d.backups, vec!["base_000000010000000000000002"]);
        assert_eq!(d.keep_from.as_deref(), Some("000000020000000000000005"));
        let expected = self::keys(&[
            // The sentinel first, so the backup stops being listed before its parts go.
            "basebackups_005/base_000000010000000000000002_backup_stop_sentinel.json",
            "basebackups_005/base_000000010000000000000002/tar_partitions/part_001.tar.lz4",
            // Unfinished and older than every kept backup: abandoned.
            "basebackups_005/base_000000010000000000000003/tar_partitions/part_001.tar.lz4",
            "wal_005/000000010000000000000001.lz4",
            "wal_005/000000010000000000000002.lz4",
            "wal_005/000000010000000000000002.00000028.backup.lz4",
            "wal_005/000000010000000000000004.partial.zst",
            "wal_005/000000010000000000000004.lz4",
            "wal_005/000000020000000000000004.lz4",
        ]);
        assert_eq!(d.keys, expected);
        assert_eq!(d.wal_files, 6);
        // Kept: the history file, every segment from the oldest kept start on, and the
        // unfinished backup newer than it (it may still be running).
        for k in &keys {
            if !expected.contains(k) {
                assert!(
                    k.contains(".history")
                        || k.contains("0000000000000005")
                        || k.contains("0000000000000006")
                        || k.contains("0000000000000007")
                        || k.contains("0000000000000009"),
                    "{k} should have been deleted"
                );
            }
        }
    }

    #[test]
    fn nothing_goes_while_there_are_no_more_backups_than_to_keep() {
        let (keys, finished) = archive();
        for retain in [3, 4, 0] {
            let d = plan(U, &keys, &finished, retain);
            assert!(d.keys.is_empty(), "retain {retain}: {:?}", d.keys);
            assert!(d.backups.is_empty());
        }
        assert!(plan(U, &keys, &[], 1).keys.is_empty());
    }

    #[test]
    fn keeping_one_deletes_all_but_the_newest() {
        let (keys, finished) = archive();
        let d = plan(U, &keys, &finished, 1);
        assert_eq!(
            d.backups,
            vec![
                "base_000000010000000000000002",
                "base_000000020000000000000005"
            ]
        );
        assert!(
            d.keys
                .iter()
                .all(|k| !k.contains("0000000000000007") && !k.contains(".history"))
        );
        assert!(d.keys.contains(&format!(
            "{U}basebackups_005/base_000000020000000000000005/tar_partitions/part_002.tar.lz4"
        )));
        assert!(
            d.keys
                .contains(&format!("{U}wal_005/000000020000000000000006.lz4"))
        );
        // The unfinished backup after the newest finished one may be in progress.
        assert!(
            d.keys
                .iter()
                .all(|k| !k.contains("base_000000020000000000000009"))
        );
    }
}
