//! WAL archiving, natively, in the layout WAL-G uses: `governor wal-push` (PostgreSQL's
//! `archive_command`) compresses a finished segment or timeline history file into
//! `<prefix>wal_005/<name>.lz4` (or `.zst`); `governor wal-fetch` (`restore_command`) brings
//! one back, refusing a stored copy whose checksum does not match.
//!
//! Pushing a file that is already archived with the same content succeeds (PostgreSQL retries
//! after a crash between upload and acknowledgement); a different file under the same name
//! fails loudly and is never overwritten. A missing file makes `wal-fetch` exit non-zero
//! without noise, as PostgreSQL expects while it probes for history files.

pub mod backup;
pub mod codec;
pub mod continuity;
pub mod prefetch;
pub mod push_ahead;
pub mod retention;
pub mod store;

use codec::Method;
pub use spilo_model::governor::{ArchiveConfig, BackupSchedule, S3Config};
use std::path::{Path, PathBuf};
use store::{Directory, S3, Store, StoreError};

/// A parsed schedule (`archive.backups.schedule`, `archive.verify.schedule`): cron, five
/// fields or six with seconds first (UTC).
pub fn cron(schedule: &str) -> Result<croner::Cron, String> {
    schedule
        .parse::<croner::Cron>()
        .map_err(|e| format!("schedule {schedule:?}: {e}"))
}

/// Why archiving failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// Not a name PostgreSQL archives.
    #[error("{0:?} is not a WAL segment, timeline history or backup label name")]
    BadName(String),
    /// A stored copy failed its checksum.
    #[error("{key}: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoder's complaint.
        source: codec::Corrupt,
    },
    /// No backup fits the restore's choice.
    #[error(transparent)]
    NoBackup(#[from] backup::PickError),
    /// Another file is archived under this name.
    #[error("{0} is archived already with different content; refusing to overwrite it")]
    Different(String),
}

/// The store an archive configuration names.
pub enum AnyStore {
    /// A directory.
    Directory(Directory),
    /// S3.
    S3(S3),
}

impl AnyStore {
    /// Opens the configured store.
    pub async fn open(cfg: &ArchiveConfig) -> AnyStore {
        match (&cfg.directory, &cfg.s3) {
            (Some(d), _) => AnyStore::Directory(Directory { root: d.clone() }),
            (None, Some(s)) => AnyStore::S3(
                S3::new(
                    &s.bucket,
                    &s.region,
                    s.endpoint.as_deref(),
                    s.path_style,
                    s.sse.as_deref(),
                )
                .await,
            ),
            (None, None) => AnyStore::Directory(Directory {
                root: PathBuf::from("/nonexistent"),
            }),
        }
    }
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            AnyStore::Directory(d) => d.get(key).await,
            AnyStore::S3(s) => s.get(key).await,
        }
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        match self {
            AnyStore::Directory(d) => d.put(key, data).await,
            AnyStore::S3(s) => s.put(key, data).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            AnyStore::Directory(d) => d.list(prefix).await,
            AnyStore::S3(s) => s.list(prefix).await,
        }
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        match self {
            AnyStore::Directory(d) => d.delete(keys).await,
            AnyStore::S3(s) => s.delete(keys).await,
        }
    }
}

/// Whether `name` is something PostgreSQL archives: a 24-hex-digit segment (possibly
/// `.partial`), `<timeline>.history`, or a `.backup` label.
pub fn archivable(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tl) = name.strip_suffix(".history") {
        return hex(tl, 8);
    }
    let base = name
        .strip_suffix(".partial")
        .or_else(|| {
            name.split_once('.')
                .filter(|(_, r)| r.ends_with(".backup"))
                .map(|(b, _)| b)
        })
        .unwrap_or(name);
    hex(base, 24)
}

/// The key of `name` compressed with `method`.
pub fn key(prefix: &str, name: &str, method: Method) -> String {
    format!("{}wal_005/{name}.{}", under(prefix), method.extension())
}

/// The archive's prefix as a key prefix: no leading `/`, a trailing `/` unless empty. WAL
/// (`wal_005/`) and base backups (`basebackups_005/`) go under it.
pub fn under(prefix: &str) -> String {
    let prefix = prefix.trim_start_matches('/');
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// What `wal_push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now.
    Stored,
    /// The same content was there already.
    AlreadyThere,
}

/// The name of the WAL file at `path`, when it is one PostgreSQL archives.
fn archivable_name(path: &Path) -> Result<&str, ArchiveError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| archivable(n))
        .ok_or_else(|| ArchiveError::BadName(path.display().to_string()))
}

/// Reads a local WAL file.
async fn read_wal(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| ArchiveError::Io(format!("read {}: {e}", path.display())))
}

/// Archives the file at `path` (relative to the working directory, as `%p` is), alone.
pub async fn wal_push(
    cfg: &ArchiveConfig,
    store: &impl Store,
    path: &Path,
) -> Result<Pushed, ArchiveError> {
    let name = archivable_name(path)?;
    wal_push_data(cfg, store, name, read_wal(path).await?).await
}

/// Archives `data` as the WAL file `name`.
pub async fn wal_push_data(
    cfg: &ArchiveConfig,
    store: &impl Store,
    name: &str,
    data: Vec<u8>,
) -> Result<Pushed, ArchiveError> {
    if !archivable(name) {
        return Err(ArchiveError::BadName(name.to_string()));
    }
    for method in [cfg.compression, other(cfg.compression)] {
        let k = key(&cfg.prefix, name, method);
        if let Some(stored) = store.get(&k).await? {
            let stored =
                codec::decompress(method, &stored).map_err(|source| ArchiveError::Corrupt {
                    key: k.clone(),
                    source,
                })?;
            return if stored == data {
                Ok(Pushed::AlreadyThere)
            } else {
                Err(ArchiveError::Different(k))
            };
        }
    }
    // Compression is the CPU part: off the async threads, so files pushed together use
    // every core.
    let method = cfg.compression;
    let compressed = tokio::task::spawn_blocking(move || codec::compress(method, &data))
        .await
        .map_err(|e| ArchiveError::Io(format!("compress {name}: {e}")))?
        .map_err(|e| ArchiveError::Io(format!("compress {name}: {e}")))?;
    store
        .put(&key(&cfg.prefix, name, cfg.compression), compressed)
        .await?;
    Ok(Pushed::Stored)
}

/// Restores `name` into `dest`. `Ok(false)` when it is not archived.
pub async fn wal_fetch(
    cfg: &ArchiveConfig,
    store: &impl Store,
    name: &str,
    dest: &Path,
) -> Result<bool, ArchiveError> {
    if !archivable(name) {
        return Err(ArchiveError::BadName(name.to_string()));
    }
    for method in [cfg.compression, other(cfg.compression)] {
        let k = key(&cfg.prefix, name, method);
        let Some(stored) = store.get(&k).await? else {
            continue;
        };
        let data = codec::decompress(method, &stored).map_err(|source| ArchiveError::Corrupt {
            key: k.clone(),
            source,
        })?;
        let tmp = dest.with_extension("spilo-fetch");
        let io = |e: std::io::Error| ArchiveError::Io(format!("write {}: {e}", dest.display()));
        tokio::fs::write(&tmp, &data).await.map_err(io)?;
        tokio::fs::rename(&tmp, dest).await.map_err(io)?;
        return Ok(true);
    }
    Ok(false)
}

fn other(m: Method) -> Method {
    match m {
        Method::Lz4 => Method::Zstd,
        Method::Zstd => Method::Lz4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, compression: Method) -> ArchiveConfig {
        ArchiveConfig {
            prefix: "spilo/demo/wal/15/".into(),
            compression,
            directory: Some(dir.to_path_buf()),
            s3: None,
            verify: None,
            backups: None,
            replicas_from_backup: false,
            upload_concurrency: Some(1),
            prefetch: 0,
            recover_after: None,
        }
    }

    #[test]
    fn names_and_keys_follow_postgres_and_walg() {
        for ok in [
            "000000010000000000000001",
            "00000002.history",
            "000000010000000000000002.partial",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(archivable(ok), "{ok}");
        }
        for bad in [
            "",
            "x",
            "../000000010000000000000001",
            "0000000100000000000000011",
            "2.history",
        ] {
            assert!(!archivable(bad), "{bad}");
        }
        assert_eq!(
            key("spilo/demo/wal/15/", "00000002.history", Method::Lz4),
            "spilo/demo/wal/15/wal_005/00000002.history.lz4"
        );
        assert_eq!(key("/p", "x", Method::Zstd), "p/wal_005/x.zst");
    }

    #[tokio::test]
    async fn push_is_idempotent_refuses_a_different_file_and_fetch_checks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let bucket = tmp.path().join("bucket");
        let c = cfg(&bucket, Method::Lz4);
        let store = AnyStore::open(&c).await;
        let seg = tmp.path().join("000000010000000000000001");
        let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 7) as u8).collect();
        std::fs::write(&seg, &data).expect("write");
        assert_eq!(
            wal_push(&c, &store, &seg).await.expect("push"),
            Pushed::Stored
        );
        assert_eq!(
            wal_push(&c, &store, &seg).await.expect("again"),
            Pushed::AlreadyThere
        );
        // Switching compression finds the copy stored the other way.
        let zc = cfg(&bucket, Method::Zstd);
        assert_eq!(
            wal_push(&zc, &store, &seg).await.expect("zstd"),
            Pushed::AlreadyThere
        );
        std::fs::write(&seg, b"something else").expect("write");
        let e = wal_push(&c, &store, &seg).await.expect_err("different");
        assert!(matches!(e, ArchiveError::Different(_)), "{e}");

        let dest = tmp.path().join("RECOVERYXLOG");
        assert!(
            wal_fetch(&c, &store, "000000010000000000000001", &dest)
                .await
                .expect("fetch")
        );
        assert_eq!(std::fs::read(&dest).expect("read"), data);
        assert!(
            !wal_fetch(&c, &store, "00000009.history", &dest)
                .await
                .expect("missing")
        );

        let stored = bucket.join("spilo/demo/wal/15/wal_005/000000010000000000000001.lz4");
        let mut bytes = std::fs::read(&stored).expect("stored");
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&stored, bytes).expect("corrupt it");
        let e = wal_fetch(&c, &store, "000000010000000000000001", &dest)
            .await
            .expect_err("corrupt");
        assert!(matches!(e, ArchiveError::Corrupt { .. }), "{e}");
    }
}
