//! Base backups in the archive: `backup-push` streams `pg_basebackup`'s tar output into
//! compressed parts (`<prefix>basebackups_005/<name>/tar_partitions/part_NNN.tar.lz4`) without
//! staging the backup on local disk, waits until the WAL the backup needs is archived, and
//! writes `<name>_backup_stop_sentinel.json` last: a backup without its sentinel is not
//! complete. `backup-list` reads the sentinels; `backup-fetch` streams the parts back through
//! a tar reader into an empty directory, from which PostgreSQL recovers with `wal-fetch`.
//!
//! Names follow WAL-G (`base_<WAL file of the start position>`). The parts are the tar stream
//! cut at fixed sizes, not WAL-G's per-file partitions, so WAL-G cannot restore these backups;
//! standard tools can (`for p in part_*; do lz4 -dc $p; done | tar -x`).

use super::codec::{self, Method};
use super::store::Store;
use super::{ArchiveConfig, ArchiveError};
use serde::{Deserialize, Serialize};
use spilo_model::TargetTime;
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Uncompressed bytes per part.
pub const PART_SIZE: usize = 32 << 20;

/// What a finished backup records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentinel {
    /// `base_<WAL file>`.
    pub name: String,
    /// Where the backup starts (`START WAL LOCATION`).
    pub start_lsn: String,
    /// The WAL file holding the start position (the oldest WAL the backup needs).
    pub start_wal_file: String,
    /// The server's position when the copy finished (the backup is consistent once recovery
    /// replayed past it).
    pub finish_lsn: String,
    /// `START TIME` from the backup label.
    pub start_time: String,
    /// When the backup was complete (RFC 3339 with microseconds): taken after the WAL
    /// holding its end was archived, so never before its consistency point.
    pub finish_time: String,
    /// How many parts.
    pub parts: u32,
    /// Bytes of tar stream.
    pub uncompressed_size: u64,
    /// Bytes stored.
    pub compressed_size: u64,
    /// `lz4` or `zst`.
    pub compression: String,
}

/// How to reach the local PostgreSQL for a backup.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// PostgreSQL's programs.
    pub bin_dir: &'a Path,
    /// The socket directory.
    pub socket_dir: &'a Path,
    /// The port.
    pub port: u16,
    /// The superuser (local socket connections are trusted).
    pub user: &'a str,
}

fn backups(cfg: &ArchiveConfig) -> String {
    format!("{}basebackups_005/", super::under(&cfg.prefix))
}

/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)` and `START TIME: ...`
/// from the `backup_label` that opens the base tar stream.
fn label(first: &[u8]) -> Option<(String, String, String)> {
    let header = first.get(..512)?;
    let name = std::str::from_utf8(&header[..100])
        .ok()?
        .trim_end_matches('\0');
    if name != "backup_label" {
        return None;
    }
    let size = u64::from_str_radix(
        std::str::from_utf8(&header[124..136])
            .ok()?
            .trim_matches(|c| c == '\0' || c == ' '),
        8,
    )
    .ok()?;
    let body = std::str::from_utf8(first.get(512..512 + usize::try_from(size).ok()?)?).ok()?;
    let mut lsn = None;
    let mut file = None;
    let mut time = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            let (l, f) = rest.split_once(" (file ")?;
            lsn = Some(l.to_string());
            file = Some(f.trim_end_matches(')').to_string());
        } else if let Some(t) = line.strip_prefix("START TIME: ") {
            time = Some(t.to_string());
        }
    }
    Some((lsn?, file?, time?))
}

async fn read_part(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(PART_SIZE);
    let mut chunk = vec![0u8; 1 << 20];
    while buf.len() < PART_SIZE {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

fn io(what: &str) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::Io(format!("{what}: {e}"))
}

/// Takes a base backup of `src` into the archive.
pub async fn backup_push(
    cfg: &ArchiveConfig,
    store: &impl Store,
    src: &Source<'_>,
) -> Result<Sentinel, ArchiveError> {
    let mut child = tokio::process::Command::new(src.bin_dir.join("pg_basebackup"))
        .arg("-h")
        .arg(src.socket_dir)
        .args(["-p", &src.port.to_string(), "-U", src.user, "-w"])
        .args(["-D", "-", "-F", "tar", "-X", "none", "--checkpoint=fast"])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("start pg_basebackup"))?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| ArchiveError::Io("pg_basebackup has no stdout".into()))?;
    let first = read_part(&mut out)
        .await
        .map_err(io("read pg_basebackup"))?;
    let Some((start_lsn, start_wal_file, start_time)) = label(&first) else {
        let o = child
            .wait_with_output()
            .await
            .map_err(io("pg_basebackup"))?;
        return Err(ArchiveError::Io(format!(
            "pg_basebackup did not start with a backup label: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    };
    let name = format!("base_{start_wal_file}");
    let dir = format!("{}{name}/tar_partitions/", backups(cfg));
    let ext = cfg.compression.extension();
    let (mut parts, mut raw, mut stored) = (0u32, 0u64, 0u64);
    let mut part = first;
    while !part.is_empty() {
        parts += 1;
        raw += part.len() as u64;
        let data = codec::compress(cfg.compression, &part).map_err(io("compress"))?;
        stored += data.len() as u64;
        store
            .put(&format!("{dir}part_{parts:03}.tar.{ext}"), data)
            .await?;
        part = read_part(&mut out)
            .await
            .map_err(io("read pg_basebackup"))?;
    }
    let o = child
        .wait_with_output()
        .await
        .map_err(io("pg_basebackup"))?;
    if !o.status.success() {
        return Err(ArchiveError::Io(format!(
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    let finish_lsn = wait_archived(src).await?;
    let sentinel = Sentinel {
        name: name.clone(),
        start_lsn,
        start_wal_file,
        finish_lsn,
        start_time,
        finish_time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        parts,
        uncompressed_size: raw,
        compressed_size: stored,
        compression: ext.to_string(),
    };
    let json = serde_json::to_vec_pretty(&sentinel)
        .map_err(|e| ArchiveError::Io(format!("encode the sentinel: {e}")))?;
    store
        .put(
            &format!("{}{name}_backup_stop_sentinel.json", backups(cfg)),
            json,
        )
        .await?;
    Ok(sentinel)
}

/// On a primary: switches to a new WAL file and waits until the one holding the backup's end
/// is archived, so the backup is restorable from the archive alone. Returns the end position.
async fn wait_archived(src: &Source<'_>) -> Result<String, ArchiveError> {
    let mut session = crate::postgres::query::Session::local(
        src.socket_dir.to_path_buf(),
        src.port,
        src.user,
        Duration::from_secs(10),
    );
    let sql = |e: crate::postgres::query::SqlError| ArchiveError::Io(format!("SQL: {e}"));
    let end = session.current_lsn_after_switch().await.map_err(sql)?;
    let Some((lsn, file)) = end else {
        // A replica cannot switch WAL; its archive is its primary's.
        return session
            .replay_lsn()
            .await
            .map_err(sql)
            .map(|l| l.unwrap_or_default());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (done, last) = session.archived_through(&file).await.map_err(sql)?;
        if done {
            return Ok(lsn);
        }
        if std::time::Instant::now() > deadline {
            return Err(ArchiveError::Io(format!(
                "{file}, which the backup needs, was not archived within 120s (last archived: {})",
                last.unwrap_or_else(|| "none".into())
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The finished backups, oldest first.
pub async fn backup_list(
    cfg: &ArchiveConfig,
    store: &impl Store,
) -> Result<Vec<Sentinel>, ArchiveError> {
    let base = backups(cfg);
    let mut out = Vec::new();
    for key in store.list(&base).await? {
        if !key.ends_with("_backup_stop_sentinel.json") {
            continue;
        }
        if let Some(bytes) = store.get(&key).await?
            && let Ok(s) = serde_json::from_slice::<Sentinel>(&bytes)
        {
            out.push(s);
        }
    }
    out.sort_by(|a, b| a.start_wal_file.cmp(&b.start_wal_file));
    Ok(out)
}

/// Which finished backup a restore starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The newest.
    Latest,
    /// The one with this name.
    Named(String),
    /// The newest one that finished before this moment: recovery can stop only after the
    /// backup's consistency point, so a backup that ended later cannot reach the target.
    Before(TargetTime),
}

impl Pick {
    /// `LATEST` or a backup's name, narrowed to the backups before `target` when given.
    pub fn from_args(name: &str, target: Option<TargetTime>) -> Self {
        match (name, target) {
            (_, Some(t)) if name == "LATEST" => Pick::Before(t),
            ("LATEST", None) => Pick::Latest,
            _ => Pick::Named(name.to_string()),
        }
    }
}

/// Why no backup fits a [`Pick`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// Nothing to restore from.
    #[error("the archive holds no finished backup")]
    Empty,
    /// No backup has that name.
    #[error("no finished backup {0}")]
    NoSuchBackup(String),
    /// Every backup ended at or after the target.
    #[error(
        "no backup finished before the target time {target}: the oldest finished backup, \
         {oldest}, finished at {finished}; recovery cannot stop before the end of the backup it \
         starts from"
    )]
    TargetBeforeOldest {
        /// The target.
        target: TargetTime,
        /// The oldest finished backup.
        oldest: String,
        /// When it finished.
        finished: String,
    },
}

impl Sentinel {
    /// When the backup was complete, as late as the sentinel allows: `finish_time` is taken
    /// after the WAL holding the backup's end was archived, so it is never before the
    /// consistency point; a time written to the second (older sentinels) counts as the end
    /// of that second.
    pub fn finished_at(&self) -> Option<TargetTime> {
        let t = TargetTime::parse(&self.finish_time).ok()?;
        if self.finish_time.contains('.') {
            Some(t)
        } else {
            TargetTime::from_unix_micros(t.unix_micros() + 999_999)
        }
    }
}

/// The backup `which` selects among `all` (oldest first, as [`backup_list`] returns them).
pub fn pick<'a>(all: &'a [Sentinel], which: &Pick) -> Result<&'a Sentinel, PickError> {
    match which {
        Pick::Latest => all.last().ok_or(PickError::Empty),
        Pick::Named(name) => all
            .iter()
            .find(|s| s.name == *name)
            .ok_or_else(|| PickError::NoSuchBackup(name.clone())),
        Pick::Before(target) => {
            let oldest = all.first().ok_or(PickError::Empty)?;
            all.iter()
                .rev()
                .find(|s| s.finished_at().is_some_and(|f| f < *target))
                .ok_or_else(|| PickError::TargetBeforeOldest {
                    target: *target,
                    oldest: oldest.name.clone(),
                    finished: oldest.finish_time.clone(),
                })
        }
    }
}

/// Restores the backup `which` selects into the empty directory `dest`.
pub async fn backup_fetch(
    cfg: &ArchiveConfig,
    store: &impl Store,
    which: &Pick,
    dest: &Path,
) -> Result<Sentinel, ArchiveError> {
    backup_fetch_with_progress(cfg, store, which, dest, &mut |_, _, _| {}).await
}

/// [`backup_fetch`], calling `progress(part, parts, uncompressed bytes so far)` after each part.
pub async fn backup_fetch_with_progress(
    cfg: &ArchiveConfig,
    store: &impl Store,
    which: &Pick,
    dest: &Path,
    progress: &mut (dyn FnMut(u32, u32, u64) + Send),
) -> Result<Sentinel, ArchiveError> {
    let all = backup_list(cfg, store).await?;
    let sentinel = pick(&all, which)?.clone();
    if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ArchiveError::Io(format!("{} is not empty", dest.display())));
    }
    std::fs::create_dir_all(dest).map_err(io("create the target"))?;
    let method = Method::of(&format!("x.{}", sentinel.compression))
        .ok_or_else(|| ArchiveError::Io(format!("unknown compression {}", sentinel.compression)))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let target = dest.to_path_buf();
    let unpack = tokio::task::spawn_blocking(move || {
        let mut archive = tar::Archive::new(Parts {
            rx,
            cur: std::io::Cursor::new(Vec::new()),
        });
        archive.set_preserve_permissions(true);
        archive.unpack(&target)
    });
    let dir = format!("{}{}/tar_partitions/", backups(cfg), sentinel.name);
    let mut restored = 0u64;
    for n in 1..=sentinel.parts {
        let key = format!("{dir}part_{n:03}.tar.{}", sentinel.compression);
        let data = store
            .get(&key)
            .await?
            .ok_or_else(|| ArchiveError::Io(format!("{key} is missing")))?;
        let raw = codec::decompress(method, &data).map_err(|source| ArchiveError::Corrupt {
            key: key.clone(),
            source,
        })?;
        restored += raw.len() as u64;
        if tx.send(raw).is_err() {
            break;
        }
        progress(n, sentinel.parts, restored);
    }
    drop(tx);
    unpack
        .await
        .map_err(|e| ArchiveError::Io(format!("unpack: {e}")))?
        .map_err(io("unpack the backup"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
        .map_err(io("set the data directory's mode"))?;
    Ok(sentinel)
}

/// The decompressed parts as one reader.
struct Parts {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    cur: std::io::Cursor<Vec<u8>>,
}

impl Read for Parts {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = Read::read(&mut self.cur, buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.recv() {
                Ok(next) => self.cur = std::io::Cursor::new(next),
                Err(_) => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_label_names_the_backup() {
        let body = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\nSTART TIME: 2026-11-26 04:00:00 UTC\n";
        let mut header = vec![0u8; 512];
        header[..12].copy_from_slice(b"backup_label");
        let size = format!("{:011o}\0", body.len());
        header[124..136].copy_from_slice(size.as_bytes());
        let mut first = header;
        first.extend_from_slice(body.as_bytes());
        assert_eq!(
            label(&first),
            Some((
                "0/2000028".into(),
                "000000010000000000000002".into(),
                "2026-11-26 04:00:00 UTC".into()
            ))
        );
        first[0] = b'x';
        assert_eq!(label(&first), None);
    }

    fn sentinel(name: &str, finished: &str) -> Sentinel {
        Sentinel {
            name: name.into(),
            start_lsn: "0/2000028".into(),
            start_wal_file: name.trim_start_matches("base_").into(),
            finish_lsn: "0/2000100".into(),
            start_time: String::new(),
            finish_time: finished.into(),
            parts: 1,
            uncompressed_size: 1,
            compressed_size: 1,
            compression: "lz4".into(),
        }
    }

    #[test]
    fn a_target_picks_the_newest_backup_that_finished_before_it() {
        let all = [
            sentinel(
                "base_000000010000000000000002",
                "2026-11-26T01:00:05.000000Z",
            ),
            sentinel(
                "base_000000010000000000000008",
                "2026-11-27T01:00:04.250000Z",
            ),
            sentinel(
                "base_00000002000000000000000F",
                "2026-11-28T01:00:07.000000Z",
            ),
        ];
        let at = |s: &str| Pick::Before(TargetTime::parse(s).expect("time"));
        let name = |p: &Pick| pick(&all, p).map(|s| s.name.clone());
        assert_eq!(
            name(&at("2026-11-27T12:00:00Z")),
            Ok("base_000000010000000000000008".into())
        );
        assert_eq!(
            name(&at("2026-11-27T01:00:04.250001Z")),
            Ok("base_000000010000000000000008".into())
        );
        // The same moment as the end is not before it.
        assert_eq!(
            name(&at("2026-11-27T01:00:04.25Z")),
            Ok("base_000000010000000000000002".into())
        );
        assert_eq!(
            name(&at("2026-11-29T00:00:00+02:00")),
            Ok("base_00000002000000000000000F".into())
        );
        let early = pick(&all, &at("2026-11-26T01:00:00Z")).expect_err("before the oldest");
        assert!(
            early.to_string().contains(
                "the oldest finished backup, base_000000010000000000000002, finished at 2026-11-26T01:00:05.000000Z"
            ),
            "{early}"
        );
        assert_eq!(
            name(&Pick::Latest),
            Ok("base_00000002000000000000000F".into())
        );
        assert_eq!(
            name(&Pick::Named("base_x".into())),
            Err(PickError::NoSuchBackup("base_x".into()))
        );
        assert_eq!(pick(&[], &Pick::Latest).map(|_| ()), Err(PickError::Empty));
        assert_eq!(
            pick(&[], &at("2026-11-27T12:00:00Z")).map(|_| ()),
            Err(PickError::Empty)
        );
    }

    #[test]
    fn a_finish_time_to_the_second_counts_as_the_end_of_that_second() {
        let old = sentinel("base_000000010000000000000002", "2026-11-26T01:00:05Z");
        let just_after = TargetTime::parse("2026-11-26T01:00:05.5Z").expect("time");
        assert!(pick(std::slice::from_ref(&old), &Pick::Before(just_after)).is_err());
        let next_second = TargetTime::parse("2026-11-26T01:00:06Z").expect("time");
        assert!(pick(std::slice::from_ref(&old), &Pick::Before(next_second)).is_ok());
    }

    #[test]
    fn backup_fetch_arguments_name_the_pick() {
        let t = TargetTime::parse("2026-11-26T01:00:06Z").expect("time");
        assert_eq!(Pick::from_args("LATEST", None), Pick::Latest);
        assert_eq!(Pick::from_args("LATEST", Some(t)), Pick::Before(t));
        assert_eq!(
            Pick::from_args("base_1", None),
            Pick::Named("base_1".into())
        );
    }

    #[test]
    fn backups_live_beside_the_wal() {
        let cfg = ArchiveConfig {
            prefix: "spilo/demo/wal/15/".into(),
            compression: Method::Lz4,
            directory: Some("/b".into()),
            s3: None,
            verify: None,
            backups: None,
            replicas_from_backup: false,
            upload_concurrency: Some(1),
            prefetch: 0,
            recover_after: None,
        };
        assert_eq!(backups(&cfg), "spilo/demo/wal/15/basebackups_005/");
    }
}
