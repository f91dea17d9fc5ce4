//! The old server's WAL into its archive before pg_upgrade (`governor upgrade link
//! --old-config`). At a clean shutdown PostgreSQL switches to a new segment when it archives
//! and wakes its archiver a last time, so every record before the shutdown checkpoint is
//! normally archived when `link` runs. But the archiver gives up after a few failed attempts
//! at shutdown (a store that is down), and what it leaves marked `.ready` in
//! `pg_wal/archive_status` would stay in a data directory the upgrade retires: a restore of
//! the old version would end before those writes. [`archive_ready`] pushes them with the old
//! configuration's archive, as `wal-push` would; one that cannot be pushed fails the link
//! before anything changed.

use super::UpgradeError;
use crate::archive::{AnyStore, ArchiveConfig, push_ahead};
use std::path::Path;

/// The files of `pg_wal` PostgreSQL marked ready to archive and has not archived, oldest
/// first (none without an `archive_status` directory).
pub fn ready(pg_wal: &Path) -> std::io::Result<Vec<String>> {
    let status = pg_wal.join("archive_status");
    let rd = match std::fs::read_dir(&status) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Pushes every file of `data`'s `pg_wal` marked ready into `archive` and marks it done, as
/// PostgreSQL does after its `archive_command`; the files pushed.
pub async fn archive_ready(
    archive: &ArchiveConfig,
    data: &Path,
) -> Result<Vec<String>, UpgradeError> {
    let pg_wal = data.join("pg_wal");
    let names = ready(&pg_wal).map_err(super::io(format!(
        "read {}",
        pg_wal.join("archive_status").display()
    )))?;
    if names.is_empty() {
        return Ok(names);
    }
    let store = AnyStore::open(archive).await;
    for name in &names {
        push_ahead::push(archive, &store, &pg_wal.join(name))
            .await
            .map_err(|e| {
                UpgradeError::State(format!(
                    "{name} of the old server is not archived ({e}): the upgrade waits until \
                     its archive takes it"
                ))
            })?;
        let status = pg_wal.join("archive_status");
        std::fs::rename(
            status.join(format!("{name}.ready")),
            status.join(format!("{name}.done")),
        )
        .map_err(super::io(format!("mark {name} archived")))?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::codec::Method;

    fn config(bucket: &Path) -> ArchiveConfig {
        ArchiveConfig {
            prefix: "p/".into(),
            compression: Method::Lz4,
            directory: Some(bucket.to_path_buf()),
            s3: None,
            verify: None,
            backups: None,
            replicas_from_backup: false,
            upload_concurrency: None,
            prefetch: 0,
            recover_after: None,
        }
    }

    fn segment(data: &Path, name: &str, status: &str) {
        let pg_wal = data.join("pg_wal");
        std::fs::create_dir_all(pg_wal.join("archive_status")).expect("mkdir");
        std::fs::write(pg_wal.join(name), vec![7u8; 1 << 16]).expect("write");
        std::fs::write(
            pg_wal
                .join("archive_status")
                .join(format!("{name}.{status}")),
            "",
        )
        .expect("status");
    }

    #[tokio::test]
    async fn what_the_archiver_left_ready_is_pushed_and_marked_done() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (data, bucket) = (tmp.path().join("data"), tmp.path().join("bucket"));
        segment(&data, "000000010000000000000001", "done");
        segment(&data, "000000010000000000000003", "ready");
        segment(&data, "000000010000000000000002", "ready");
        let pushed = archive_ready(&config(&bucket), &data).await.expect("push");
        assert_eq!(
            pushed,
            vec!["000000010000000000000002", "000000010000000000000003"],
            "the ready ones, oldest first"
        );
        assert!(
            ready(&data.join("pg_wal")).expect("read").is_empty(),
            "marked done"
        );
        let stored = |n: &str| {
            bucket
                .join(crate::archive::key("p/", n, Method::Lz4))
                .exists()
        };
        assert!(stored("000000010000000000000002") && stored("000000010000000000000003"));
        assert!(
            !stored("000000010000000000000001"),
            "PostgreSQL archived that one"
        );
        // Nothing left: nothing to do.
        assert!(
            archive_ready(&config(&bucket), &data)
                .await
                .expect("again")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_segment_the_archive_does_not_take_fails_the_link_and_stays_ready() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        // The "bucket" is a file: nothing can be stored under it.
        let bucket = tmp.path().join("bucket");
        std::fs::write(&bucket, "not a directory").expect("write");
        segment(&data, "000000010000000000000004", "ready");
        let e = archive_ready(&config(&bucket), &data)
            .await
            .expect_err("cannot store");
        assert!(
            e.to_string()
                .starts_with("000000010000000000000004 of the old server is not archived"),
            "{e}"
        );
        assert_eq!(
            ready(&data.join("pg_wal")).expect("read"),
            vec!["000000010000000000000004"]
        );
    }
}
