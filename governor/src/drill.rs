//! Restore drills (`governor verify-backup`): proves that a base backup and the WAL archive
//! restore, without touching any member. The backup is restored into a scratch directory, a
//! throwaway PostgreSQL (no TCP, its socket in the scratch directory, archiving off) replays
//! the archive to its end (or a target time) and is promoted there, and then it is checked:
//!
//! - **backup**: every part named by the sentinel exists, decodes (its frame checksum) and
//!   the parts add up to the sentinel's sizes;
//! - **wal**: the segments from the backup's first to the newest archived one, each on the
//!   timeline the newest timeline's history assigns it, exist and decode; the first missing
//!   one is named with its timeline;
//! - **replay**: PostgreSQL reaches the end of the archive and accepts connections;
//! - **amcheck**: `pg_amcheck --all` (heap and btree) finds nothing;
//! - **checksums**: after a clean stop, `pg_checksums --check` finds nothing (when the
//!   cluster has data checksums, as spilo's initdb gives it);
//! - **sql**: the user's query returns `true`.
//!
//! The report carries the measured RPO (the newest restored commit against now) and RTO (wall
//! time of restore, replay and start). A failed check is exit status 2; an error (the archive
//! cannot be read, the scratch directory cannot be made) is 1.

use crate::archive::backup::{Pick, Sentinel, backup_fetch_with_progress, backup_list, pick};
use crate::archive::codec::{self, Method};
use crate::archive::continuity::{parse_history, segment_keys, timeline_path};
use crate::archive::store::Store;
use crate::archive::{AnyStore, ArchiveConfig, under};
use serde::Serialize;
use spilo_model::TargetTime;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to drill.
#[derive(Debug, Clone)]
pub struct Drill {
    /// The governor configuration file (its `archive` section; `wal-fetch` reads it too).
    pub config_path: PathBuf,
    /// The archive.
    pub archive: ArchiveConfig,
    /// PostgreSQL's programs.
    pub bin_dir: PathBuf,
    /// The superuser to connect as.
    pub superuser: String,
    /// Which backup.
    pub pick: Pick,
    /// Stop replay at this time instead of the archive's end.
    pub target_time: Option<TargetTime>,
    /// A query that must return `true`.
    pub sql: Option<String>,
    /// Where the scratch directory is made.
    pub scratch_parent: PathBuf,
    /// How long replay may take.
    pub timeout: Duration,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `backup`, `wal`, `replay`, `amcheck`, `checksums` or `sql`.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// The drill's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The backup restored.
    pub backup: Option<String>,
    /// Every check, in order; checks that could not run are absent.
    pub checks: Vec<Check>,
    /// The newest commit the restored database holds (PostgreSQL's text form).
    pub newest_commit: Option<String>,
    /// Seconds between that commit and the end of replay: what a restore now would lose.
    pub rpo_seconds: Option<f64>,
    /// Seconds from the start of the restore until the database accepted connections.
    pub rto_seconds: Option<f64>,
    /// WAL segments checked.
    pub wal_segments: usize,
    /// Bytes of backup restored (uncompressed).
    pub restored_bytes: u64,
}

impl Report {
    /// Every check passed.
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, name: &'static str, r: Result<String, String>) -> bool {
        let ok = r.is_ok();
        let detail = r.unwrap_or_else(|e| e);
        eprintln!("{name}: {} {detail}", if ok { "ok" } else { "FAILED" });
        self.checks.push(Check { name, ok, detail });
        ok
    }

    /// The text form.
    pub fn text(&self) -> String {
        let mut out = format!(
            "backup {}: {}\n",
            self.backup.as_deref().unwrap_or("none"),
            if self.ok() { "verified" } else { "FAILED" }
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<9} {}  {}\n",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                c.detail
            ));
        }
        if let (Some(commit), Some(rpo)) = (&self.newest_commit, self.rpo_seconds) {
            out.push_str(&format!(
                "  RPO {rpo:.1}s (newest restored commit {commit})\n"
            ));
        }
        if let Some(rto) = self.rto_seconds {
            out.push_str(&format!(
                "  RTO {rto:.1}s (restore {} bytes, replay {} WAL segments, start)\n",
                self.restored_bytes, self.wal_segments
            ));
        }
        out
    }
}

/// A drill that ran and found a problem (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("the restore drill failed: {0}")]
pub struct ChecksFailed(pub String);

/// Why a drill could not run at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DrillError(String);

fn err(what: &str) -> impl Fn(std::io::Error) -> DrillError + '_ {
    move |e| DrillError(format!("{what}: {e}"))
}

/// Runs the drill.
pub async fn run(d: &Drill) -> Result<Report, DrillError> {
    let started = Instant::now();
    let store = AnyStore::open(&d.archive).await;
    let mut report = Report {
        backup: None,
        checks: Vec::new(),
        newest_commit: None,
        rpo_seconds: None,
        rto_seconds: None,
        wal_segments: 0,
        restored_bytes: 0,
    };
    let all = backup_list(&d.archive, &store)
        .await
        .map_err(|e| DrillError(format!("list the backups: {e}")))?;
    let sentinel = match pick(&all, &d.pick) {
        Ok(s) => s.clone(),
        Err(e) => {
            report.check("backup", Err(e.to_string()));
            return Ok(report);
        }
    };
    report.backup = Some(sentinel.name.clone());
    if !report.check("backup", check_parts(&d.archive, &store, &sentinel).await) {
        return Ok(report);
    }
    let wal = check_wal(&d.archive, &store, &sentinel).await;
    if let Ok((n, _)) = &wal {
        report.wal_segments = *n;
    }
    report.check("wal", wal.map(|(_, detail)| detail));

    let scratch = tempfile::Builder::new()
        .prefix("spilo-drill-")
        .tempdir_in(&d.scratch_parent)
        .map_err(err("make the scratch directory"))?;
    let data = scratch.path().join("data");
    eprintln!("restoring {} into {}", sentinel.name, data.display());
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |part: u32, parts: u32, bytes: u64| {
        if terminal {
            eprint!(
                "\rrestoring: part {part} of {parts}, {:.1} MiB",
                bytes as f64 / 1_048_576.0
            );
            if part == parts {
                eprintln!();
            }
        }
    };
    if let Err(e) = backup_fetch_with_progress(
        &d.archive,
        &store,
        &Pick::Named(sentinel.name.clone()),
        &data,
        &mut progress,
    )
    .await
    {
        report.check("replay", Err(format!("the backup did not restore: {e}")));
        return Ok(report);
    }
    report.restored_bytes = sentinel.uncompressed_size;
    let mut pg = match Throwaway::start(d, scratch.path(), &data) {
        Ok(pg) => pg,
        Err(e) => return Err(DrillError(format!("start PostgreSQL: {e}"))),
    };
    let replayed = pg
        .wait_promoted(d.timeout, terminal, report.wal_segments)
        .await;
    if let Err(e) = replayed {
        report.check("replay", Err(e));
        pg.stop().await;
        return Ok(report);
    }
    report.rto_seconds = Some(started.elapsed().as_secs_f64());
    let (newest, age) = pg.newest_commit().await.unwrap_or((None, None));
    report.newest_commit = newest.clone();
    report.rpo_seconds = age;
    report.check(
        "replay",
        Ok(format!(
            "{}; newest commit {}",
            d.target_time.map_or_else(
                || "reached the end of the archive".to_string(),
                |t| format!("replayed to the target {}", t.to_postgres())
            ),
            newest.as_deref().unwrap_or("none")
        )),
    );
    report.check("amcheck", pg.amcheck().await);
    if let Some(sql) = &d.sql {
        report.check("sql", pg.user_sql(sql).await);
    }
    let checksums = pg.data_checksums().await;
    pg.stop().await;
    if checksums {
        report.check("checksums", pg_checksums(&d.bin_dir, &data).await);
    }
    Ok(report)
}

/// Every part of the backup decodes and the parts add up to the sentinel's sizes.
async fn check_parts(
    cfg: &ArchiveConfig,
    store: &AnyStore,
    s: &Sentinel,
) -> Result<String, String> {
    let method = Method::of(&format!("x.{}", s.compression))
        .ok_or_else(|| format!("unknown compression {:?} in the sentinel", s.compression))?;
    let dir = format!(
        "{}basebackups_005/{}/tar_partitions/",
        under(&cfg.prefix),
        s.name
    );
    let (mut stored, mut raw) = (0u64, 0u64);
    for n in 1..=s.parts {
        let key = format!("{dir}part_{n:03}.tar.{}", s.compression);
        let (data, decoded) = get_decoded(store, &key, method)
            .await?
            .ok_or_else(|| format!("{key} is missing (the sentinel lists {} parts)", s.parts))?;
        stored += data.len() as u64;
        raw += decoded.len() as u64;
    }
    if (stored, raw) != (s.compressed_size, s.uncompressed_size) {
        return Err(format!(
            "the parts hold {stored} bytes ({raw} uncompressed); the sentinel says {} ({})",
            s.compressed_size, s.uncompressed_size
        ));
    }
    Ok(format!("{} parts, {raw} bytes, checksums match", s.parts))
}

/// The WAL from the backup's first segment to the archive's newest, along the timelines.
async fn check_wal(
    cfg: &ArchiveConfig,
    store: &AnyStore,
    s: &Sentinel,
) -> Result<(usize, String), String> {
    let wal_dir = format!("{}wal_005/", under(&cfg.prefix));
    let keys = store
        .list(&wal_dir)
        .await
        .map_err(|e| format!("list {wal_dir}: {e}"))?;
    let timeline = |file: &str| u32::from_str_radix(file.get(..8)?, 16).ok();
    let newest_timeline = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&wal_dir))
        .filter_map(timeline)
        .max()
        .unwrap_or(1);
    let history = match keys.iter().find(|k| {
        k.strip_prefix(&wal_dir)
            .is_some_and(|f| f.starts_with(&format!("{newest_timeline:08X}.history.")))
    }) {
        Some(key) => {
            let (_, text) = get_stored(store, key).await?;
            parse_history(&String::from_utf8_lossy(&text))
        }
        None if newest_timeline > 1 => {
            return Err(format!(
                "timeline {newest_timeline} has no history file in the archive"
            ));
        }
        None => Vec::new(),
    };
    let path = timeline_path(
        &s.start_wal_file,
        &wal_dir,
        &keys,
        &history,
        newest_timeline,
    )
    .map_err(|g| {
        format!(
            "segment {} of timeline {} is missing: recovery stops there and leaves out \
                 everything archived after it",
            g.segment, g.timeline
        )
    })?;
    let key_of: std::collections::HashMap<&str, &String> = segment_keys(&wal_dir, &keys).collect();
    for name in &path {
        let key = key_of
            .get(name.as_str())
            .ok_or_else(|| format!("segment {name} vanished"))?;
        get_stored(store, key).await?;
    }
    let (first, last) = (
        path.first().cloned().unwrap_or_default(),
        path.last().cloned().unwrap_or_default(),
    );
    Ok((
        path.len(),
        format!(
            "{} segments from {first} to {last} on timeline{} {}, checksums match",
            path.len(),
            if history.is_empty() { "" } else { "s" },
            history
                .iter()
                .map(|h| h.timeline.to_string())
                .chain([newest_timeline.to_string()])
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// Runs a checking program: whether it exited 0, its stdout and its stderr.
async fn run_checker(
    mut cmd: tokio::process::Command,
    what: &str,
) -> Result<(bool, String, String), String> {
    let out = cmd.output().await.map_err(|e| format!("run {what}: {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The object at `key` as stored and decoded with `method` (its checksum checked); `None`
/// when absent; an error names the key.
async fn get_decoded(
    store: &AnyStore,
    key: &str,
    method: Method,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
    let Some(data) = store.get(key).await.map_err(|e| format!("{key}: {e}"))? else {
        return Ok(None);
    };
    let decoded = codec::decompress(method, &data).map_err(|e| format!("{key}: {e}"))?;
    Ok(Some((data, decoded)))
}

/// A listed archive object, decoded by the compression its name ends with.
async fn get_stored(store: &AnyStore, key: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let method = Method::of(key).ok_or_else(|| format!("{key}: unknown compression"))?;
    get_decoded(store, key, method)
        .await?
        .ok_or_else(|| format!("{key} vanished"))
}

/// `pg_checksums --check` on the stopped copy.
async fn pg_checksums(bin: &Path, data: &Path) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(bin.join("pg_checksums"));
    cmd.arg("--check").arg("-D").arg(data);
    match run_checker(cmd, "pg_checksums").await? {
        (true, _, _) => Ok("pg_checksums found no bad block".into()),
        // The bad blocks (stderr) first, then the summary.
        (false, out, err) => Err(first_lines(&format!("{err}{out}"), 5)),
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The restored copy's PostgreSQL: no TCP, its socket in the scratch directory.
struct Throwaway {
    child: tokio::process::Child,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    user: String,
    log: PathBuf,
}

/// The port in the socket's name (the socket directory is private, so any number works).
const PORT: u16 = 5432;

impl Throwaway {
    fn start(d: &Drill, scratch: &Path, data: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(data.join("standby.signal"));
        std::fs::write(data.join("recovery.signal"), "")?;
        let conf = scratch.join("drill.conf");
        std::fs::write(&conf, "")?;
        let hba = scratch.join("drill_hba.conf");
        std::fs::write(&hba, "local all all trust\n")?;
        let exe = std::env::current_exe()?;
        let restore = format!(
            "'{}' wal-fetch \"%f\" \"%p\" --config '{}'",
            exe.display(),
            d.config_path.display()
        );
        let log = scratch.join("postgres.log");
        let mut cmd = tokio::process::Command::new(d.bin_dir.join("postgres"));
        cmd.arg("-D").arg(data);
        let mut set = |k: &str, v: String| {
            cmd.arg("-c").arg(format!("{k}={v}"));
        };
        set("config_file", conf.display().to_string());
        set("hba_file", hba.display().to_string());
        set("listen_addresses", String::new());
        set("port", PORT.to_string());
        set("unix_socket_directories", scratch.display().to_string());
        set("archive_mode", "off".into());
        set("hot_standby", "off".into());
        set("restore_command", restore);
        set("recovery_target_timeline", "latest".into());
        set("recovery_target_action", "promote".into());
        if let Some(t) = d.target_time {
            set("recovery_target_time", t.to_postgres());
        }
        set("shared_preload_libraries", String::new());
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .kill_on_drop(true);
        Ok(Throwaway {
            child: cmd.spawn()?,
            socket_dir: scratch.to_path_buf(),
            bin_dir: d.bin_dir.clone(),
            user: d.superuser.clone(),
            log,
        })
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(PORT)
            .user(&self.user)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        c
    }

    async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config().connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("; ")
    }

    /// Waits until replay ended and the copy was promoted (it accepts connections only then:
    /// `hot_standby` is off).
    async fn wait_promoted(
        &mut self,
        timeout: Duration,
        progress: bool,
        segments: usize,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut shown = Instant::now();
        loop {
            if progress && shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                if let Some(last) = self.last_restored() {
                    eprint!("\rreplaying: restored {last} ({segments} segments in the archive)");
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "PostgreSQL exited ({status}) before the end of replay: {}",
                    self.log_tail()
                ));
            }
            if let Ok(c) = self.client().await
                && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                if progress {
                    eprintln!();
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replay did not finish within {}s: {}",
                    timeout.as_secs(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last WAL file the server log says was restored from the archive.
    fn last_restored(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines()
            .rev()
            .find_map(|l| l.split("restored log file \"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    }

    /// The newest replayed commit and its age in seconds.
    async fn newest_commit(&self) -> Option<(Option<String>, Option<f64>)> {
        let c = self.client().await.ok()?;
        let row = c
            .query_one(
                "SELECT pg_last_xact_replay_timestamp()::text, \
                 extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
                &[],
            )
            .await
            .ok()?;
        Some((row.get(0), row.get(1)))
    }

    async fn data_checksums(&self) -> bool {
        let Ok(c) = self.client().await else {
            return false;
        };
        c.query_one("SHOW data_checksums", &[])
            .await
            .is_ok_and(|r| r.get::<_, String>(0) == "on")
    }

    async fn amcheck(&self) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(self.bin_dir.join("pg_amcheck"));
        cmd.args(["--all", "--install-missing", "--heapallindexed"])
            .arg("--host")
            .arg(&self.socket_dir)
            .arg("--port")
            .arg(PORT.to_string())
            .arg("--username")
            .arg(&self.user);
        match run_checker(cmd, "pg_amcheck").await? {
            (true, out, err) if out.trim().is_empty() && err.trim().is_empty() => {
                Ok("pg_amcheck --all (heap and btree) found no corruption".into())
            }
            // The corrupt relations (stdout) first, then the server's messages.
            (_, out, err) => Err(first_lines(&format!("{out}{err}"), 5)),
        }
    }

    async fn user_sql(&self, sql: &str) -> Result<String, String> {
        let c = self.client().await.map_err(|e| e.to_string())?;
        let row = c
            .query_one(sql, &[])
            .await
            .map_err(|e| format!("{sql:?}: {e}"))?;
        match row.try_get::<_, bool>(0) {
            Ok(true) => Ok(format!("{sql:?} returned true")),
            Ok(false) => Err(format!("{sql:?} returned false")),
            Err(e) => Err(format!("{sql:?} must return one boolean: {e}")),
        }
    }

    /// A fast shutdown (a clean one: pg_checksums reads the stopped copy).
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}
