//! Prefetching while a server recovers from the archive. PostgreSQL runs `restore_command`
//! for one segment at a time and replays it before asking for the next, so each fetch would
//! wait for a full round trip to the store. `governor wal-fetch` therefore starts a detached
//! `governor wal-prefetch` that fetches the next `prefetch` segments of the same timeline
//! into `pg_wal/spilo_prefetch/`, all at once; the next `wal-fetch` finds its segment there
//! and only renames it into place.
//!
//! A prefetched file went through the same checksum as any fetch, and is written aside and
//! renamed, so a present file is whole. Each name is claimed with an exclusive `.claim` file
//! while it downloads, so two prefetchers never write the same file. Files behind the
//! segment being asked for are deleted, and the governor empties the directory whenever it
//! starts or promotes PostgreSQL.

use super::store::Store;
use super::{ArchiveConfig, ArchiveError, wal_fetch};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory, under `pg_wal`, of prefetched segments.
pub const DIR: &str = "spilo_prefetch";

/// A claim older than this belongs to a prefetcher that died.
const STALE_CLAIM: Duration = Duration::from_secs(120);

/// Segments per log file with the default 16 MiB segment size.
const SEGMENTS_PER_LOG: u32 = 0x100;

fn parse(name: &str) -> Option<(&str, u32, u32)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u32::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u32::from_str_radix(&name[16..24], 16).ok()?;
    (seg < SEGMENTS_PER_LOG).then_some((&name[..8], log, seg))
}

/// The `n` segments after `name` on its timeline (none when `name` is not a segment).
pub fn following(name: &str, n: usize) -> Vec<String> {
    let Some((timeline, mut log, mut seg)) = parse(name) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        seg += 1;
        if seg == SEGMENTS_PER_LOG {
            seg = 0;
            log += 1;
        }
        out.push(format!("{timeline}{log:08X}{seg:08X}"));
    }
    out
}

/// The prefetch directory beside `dest` (PostgreSQL's `%p`, in `pg_wal`).
pub fn dir_for(dest: &Path) -> PathBuf {
    dest.parent().unwrap_or(Path::new(".")).join(DIR)
}

/// `wal-fetch`: takes `name` from the prefetch directory when it is there, else from the
/// store. When it was found and prefetching is on, returns the segments to prefetch next.
pub async fn fetch(
    cfg: &ArchiveConfig,
    store: &impl Store,
    name: &str,
    dest: &Path,
) -> Result<(bool, Vec<String>), ArchiveError> {
    let dir = dir_for(dest);
    let prefetched = dir.join(name);
    let found = if parse(name).is_some() && std::fs::rename(&prefetched, dest).is_ok() {
        tracing::info!(name, "{name} was prefetched");
        true
    } else {
        wal_fetch(cfg, store, name, dest).await?
    };
    if !found || cfg.prefetch == 0 || parse(name).is_none() {
        return Ok((found, Vec::new()));
    }
    forget_behind(&dir, name);
    let next = following(name, cfg.prefetch)
        .into_iter()
        .filter(|n| !dir.join(n).exists())
        .collect();
    Ok((true, next))
}

/// Deletes prefetched segments that sort before `name`'s segment (any timeline).
fn forget_behind(dir: &Path, name: &str) {
    let Some((_, log, seg)) = parse(name) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        if parse(file).is_some_and(|(_, l, s)| (l, s) < (log, seg)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Claims `name` for this prefetcher; `None` when another holds a fresh claim.
fn claim(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(format!("{name}.claim"));
    let stale = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_CLAIM);
    if stale {
        let _ = std::fs::remove_file(&path);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()
        .map(|_| path)
}

/// `wal-prefetch`: fetches `names` into `dir`, all at once. Missing ones (past the end of
/// the archive) are skipped quietly. Returns how many it stored.
pub async fn prefetch(
    cfg: &ArchiveConfig,
    store: &impl Store,
    names: &[String],
    dir: &Path,
) -> usize {
    if std::fs::create_dir_all(dir).is_err() {
        return 0;
    }
    let fetches = names.iter().map(|name| async move {
        if dir.join(name).exists() {
            return false;
        }
        let Some(claimed) = claim(dir, name) else {
            return false;
        };
        let got = wal_fetch(cfg, store, name, &dir.join(name)).await;
        let _ = std::fs::remove_file(claimed);
        match got {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(name, error = %e, "prefetch failed; wal-fetch will fetch it itself");
                false
            }
        }
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .filter(|stored| *stored)
        .count()
}

/// Empties the prefetch directory of the data directory `data_dir`.
pub fn forget_all(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(data_dir.join("pg_wal").join(DIR));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{AnyStore, codec::Method, wal_push};

    #[test]
    fn the_next_segments_cross_log_boundaries_and_keep_the_timeline() {
        assert_eq!(
            following("0000000300000001000000FE", 3),
            vec![
                "0000000300000001000000FF",
                "000000030000000200000000",
                "000000030000000200000001"
            ]
        );
        assert!(following("00000003.history", 3).is_empty());
        assert!(following("000000010000000000000001.partial", 3).is_empty());
    }

    #[tokio::test]
    async fn prefetched_segments_are_served_from_disk_and_old_ones_forgotten() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cfg = ArchiveConfig {
            prefix: "p/".into(),
            compression: Method::Zstd,
            directory: Some(tmp.path().join("bucket")),
            s3: None,
            verify: None,
            backups: None,
            replicas_from_backup: false,
            upload_concurrency: Some(1),
            prefetch: 2,
            recover_after: None,
        };
        let store = AnyStore::open(&cfg).await;
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        for i in 1..=3u8 {
            let path = src.join(format!("0000000100000000000000{i:02X}"));
            std::fs::write(&path, vec![i; 4096]).expect("write");
            wal_push(&cfg, &store, &path).await.expect("push");
        }
        let pg_wal = tmp.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).expect("mkdir");
        let dest = pg_wal.join("RECOVERYXLOG");

        let (found, next) = fetch(&cfg, &store, "000000010000000000000001", &dest)
            .await
            .expect("fetch");
        assert!(found);
        assert_eq!(
            next,
            ["000000010000000000000002", "000000010000000000000003"]
        );
        let dir = dir_for(&dest);
        assert_eq!(prefetch(&cfg, &store, &next, &dir).await, 2);
        // Past the end of the archive: nothing, quietly.
        assert_eq!(
            prefetch(
                &cfg,
                &store,
                &following("000000010000000000000003", 2),
                &dir
            )
            .await,
            0
        );

        // The next fetch is a rename: it works with the store gone.
        std::fs::remove_dir_all(tmp.path().join("bucket")).expect("rm bucket");
        let (found, next) = fetch(&cfg, &store, "000000010000000000000002", &dest)
            .await
            .expect("fetch");
        assert!(found);
        assert_eq!(std::fs::read(&dest).expect("read"), vec![2u8; 4096]);
        assert_eq!(next, ["000000010000000000000004"], "3 is there already");
        let (found, _) = fetch(&cfg, &store, "000000010000000000000003", &dest)
            .await
            .expect("fetch");
        assert!(found);
        assert_eq!(std::fs::read(&dest).expect("read"), vec![3u8; 4096]);
        let (found, _) = fetch(&cfg, &store, "000000010000000000000004", &dest)
            .await
            .expect("fetch");
        assert!(!found);

        // Segments behind the one asked for go; a fresh claim keeps a second prefetcher off.
        std::fs::write(dir.join("000000010000000000000001"), b"old").expect("write");
        std::fs::write(dir.join("000000010000000000000009.claim"), b"").expect("claim");
        forget_behind(&dir, "000000010000000000000003");
        assert!(!dir.join("000000010000000000000001").exists());
        assert!(claim(&dir, "000000010000000000000009").is_none());
        assert!(claim(&dir, "00000001000000000000000A").is_some());
    }
}
