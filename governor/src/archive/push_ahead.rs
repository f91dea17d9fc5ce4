//! Parallel archiving. PostgreSQL runs `archive_command` for one file at a time and waits for
//! it, so a slow store would hold back the whole backlog. `governor wal-push` therefore also
//! uploads up to `upload_concurrency - 1` other files that are ready (`archive_status/*.ready`),
//! all at once, and records each one it stored in `pg_wal/spilo_archive_status/<name>` with
//! the file's identity (inode, size, modification time). When PostgreSQL then asks for one of
//! those, the record is checked against the file and the call returns at once without
//! reading it or touching the store.
//!
//! A record is only a shortcut: PostgreSQL never changes a file it marked ready, and if the
//! file no longer matches its record it is pushed the normal way (which still refuses to
//! overwrite different content). Records of files that left `pg_wal` are removed.

use super::store::Store;
use super::{
    ArchiveConfig, ArchiveError, Pushed, archivable, archivable_name, read_wal, wal_push_data,
};
use std::path::{Path, PathBuf};

/// The directory, under `pg_wal`, of the records of files pushed ahead.
pub const STATUS_DIR: &str = "spilo_archive_status";

/// A file's identity (inode, size, modification time in ns): what a record holds.
pub fn fingerprint(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{} {} {}.{:09}",
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// Up to `n` files other than `name` that PostgreSQL marked ready, oldest first.
fn ready_besides(pg_wal: &Path, name: &str, n: usize) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .filter(|r| r != name && archivable(r))
        .collect();
    ready.sort();
    ready.truncate(n);
    ready.into_iter().map(|r| pg_wal.join(r)).collect()
}

/// Archives `path` (PostgreSQL's `%p`), pushing other ready files ahead alongside it.
pub async fn push(
    cfg: &ArchiveConfig,
    store: &impl Store,
    path: &Path,
) -> Result<Pushed, ArchiveError> {
    let name = archivable_name(path)?.to_string();
    let pg_wal = path.parent().unwrap_or(Path::new("."));
    let records = pg_wal.join(STATUS_DIR);
    forget_gone(pg_wal, &records);
    let record = records.join(&name);
    if let Ok(recorded) = std::fs::read_to_string(&record) {
        let _ = std::fs::remove_file(&record);
        if fingerprint(path).is_some_and(|now| now == recorded) {
            return Ok(Pushed::AlreadyThere);
        }
        tracing::warn!(
            name,
            "{name} changed after it was pushed ahead; pushing it again"
        );
    }
    let data = read_wal(path).await?;
    let ahead = ready_besides(pg_wal, &name, cfg.upload_concurrency() - 1);
    let others = ahead.iter().map(|p| async move {
        let print = fingerprint(p);
        let data = read_wal(p).await?;
        let file = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        wal_push_data(cfg, store, file, data).await?;
        Ok::<_, ArchiveError>((file.to_string(), print))
    });
    let (own, others) = futures::future::join(
        wal_push_data(cfg, store, &name, data),
        futures::future::join_all(others),
    )
    .await;
    let mut stored = 0;
    for other in others {
        match other {
            Ok((file, print)) => {
                stored += 1;
                // Without its identity the file is simply pushed again when asked for.
                let Some(print) = print else { continue };
                if let Err(e) = std::fs::create_dir_all(&records).and_then(|()| {
                    let tmp = records.join(format!("{file}.tmp"));
                    std::fs::write(&tmp, print)?;
                    std::fs::rename(&tmp, records.join(&file))
                }) {
                    tracing::warn!(file, error = %e, "cannot record a file pushed ahead");
                }
            }
            // PostgreSQL archives it itself later, and sees the error then.
            Err(e) => tracing::warn!(error = %e, "pushing ahead failed"),
        }
    }
    if stored > 0 {
        tracing::info!(
            name,
            "pushed {stored} other ready file(s) ahead along with {name}"
        );
    }
    own
}

/// Removes the records of files no longer in `pg_wal` (archived and recycled).
fn forget_gone(pg_wal: &Path, records: &Path) {
    let Ok(rd) = std::fs::read_dir(records) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let stale_tmp = name.to_str().is_some_and(|n| n.ends_with(".tmp"));
        if stale_tmp || !pg_wal.join(&name).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{AnyStore, codec::Method, key};

    #[tokio::test]
    async fn ready_files_are_pushed_ahead_and_then_acknowledged_from_the_record() {
        let tmp = tempfile::tempdir().expect("tmp");
        let bucket = tmp.path().join("bucket");
        let cfg = ArchiveConfig {
            prefix: "p/".into(),
            compression: Method::Lz4,
            directory: Some(bucket.clone()),
            s3: None,
            verify: None,
            backups: None,
            replicas_from_backup: false,
            upload_concurrency: Some(3),
            prefetch: 0,
            recover_after: None,
        };
        let store = AnyStore::open(&cfg).await;
        let pg_wal = tmp.path().join("pg_wal");
        std::fs::create_dir_all(pg_wal.join("archive_status")).expect("mkdir");
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ];
        for (i, n) in names.iter().enumerate() {
            std::fs::write(pg_wal.join(n), vec![i as u8; 1 << 16]).expect("write");
            std::fs::write(pg_wal.join("archive_status").join(format!("{n}.ready")), "")
                .expect("ready");
        }
        let stored = |n: &str| bucket.join(key("p/", n, Method::Lz4)).exists();

        let first = push(&cfg, &store, &pg_wal.join(names[0]))
            .await
            .expect("push");
        assert_eq!(first, Pushed::Stored);
        // Two more went along (concurrency 3), oldest first; the fourth waits.
        assert!(stored(names[0]) && stored(names[1]) && stored(names[2]));
        assert!(!stored(names[3]));
        assert!(pg_wal.join(STATUS_DIR).join(names[1]).exists());

        // PostgreSQL marks the first done and asks for the second: answered from the record.
        std::fs::remove_file(
            pg_wal
                .join("archive_status")
                .join(format!("{}.ready", names[0])),
        )
        .expect("done");
        std::fs::remove_file(bucket.join(key("p/", names[1], Method::Lz4))).expect("rm");
        let second = push(&cfg, &store, &pg_wal.join(names[1]))
            .await
            .expect("push");
        assert_eq!(second, Pushed::AlreadyThere);
        assert!(!stored(names[1]), "the record answered without the store");
        assert!(!pg_wal.join(STATUS_DIR).join(names[1]).exists());

        // A file that changed after it was pushed ahead is pushed again, and refused there.
        std::fs::write(pg_wal.join(names[2]), b"changed").expect("write");
        let e = push(&cfg, &store, &pg_wal.join(names[2]))
            .await
            .expect_err("different");
        assert!(matches!(e, ArchiveError::Different(_)), "{e}");

        // Records of files that left pg_wal are forgotten.
        std::fs::remove_file(pg_wal.join(names[2])).expect("recycled");
        std::fs::write(pg_wal.join(STATUS_DIR).join(names[2]), "x").expect("record");
        push(&cfg, &store, &pg_wal.join(names[3]))
            .await
            .expect("push");
        assert!(!pg_wal.join(STATUS_DIR).join(names[2]).exists());
    }
}
