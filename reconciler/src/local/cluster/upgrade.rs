//! The major upgrade of a running local cluster whose file changed `postgresql.version`
//! (15 -> 18): checked first, then performed with the governor's `upgrade` steps on the
//! primary's member, each step recorded in the cluster's `upgrade.json` so that a `spilo up`
//! killed halfway rolls back (before the point of no return) or finishes (after it).
//!
//! The sequence: every member runs and every replica streams within [`MAX_LAG`];
//! `pg_upgrade --check` on the primary (live) finds no blocker; a base backup on the old
//! version; the governors stop (replicas, then the primary, which shuts PostgreSQL down
//! cleanly and releases the leader key); `pg_upgrade --link`; commit (the point of no
//! return: the directories swap, etcd's `initialize` takes the new system identifier); the
//! primary starts on the new version (the write downtime ends when it answers through
//! HAProxy), the replicas' old data is removed and they copy the upgraded primary; once they
//! stream: a base backup into the new version's archive (`wal/<version>/`),
//! `vacuumdb --analyze-in-stages`, the old data directory removed.

use super::{LocalCluster, postgres_answers};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use spilo_model::spec::ClusterFile;
use spilo_model::{MemberRole, NodeStatus};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How far (bytes of WAL) a replica may be behind the primary when the upgrade starts: the
/// replicas are copied again afterwards, but one far behind says the cluster is not healthy.
pub const MAX_LAG: u64 = 16 * 1024 * 1024;

/// How long the preconditions may take to hold, when `spilo up` is about to upgrade, before
/// what fails them is a blocker.
pub const SETTLE: Duration = Duration::from_secs(30);

/// How long the members may take to come back (primary) and to stream (replicas).
const START: Duration = Duration::from_secs(180);

/// Where an upgrade stands, as `upgrade.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The governors are being stopped; nothing is changed yet.
    Stopping,
    /// pg_upgrade runs; rolled back when interrupted.
    Linking,
    /// Past the point of no return: finished when interrupted.
    Committed,
}

/// `upgrade.json`: one upgrade in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The major version the cluster ran.
    pub from: u32,
    /// The major version it is upgraded to.
    pub to: u32,
    /// The member whose data is upgraded (the primary when it started).
    pub primary: usize,
    /// How far it got.
    pub step: Step,
}

/// What keeps a running cluster from being upgraded now, judged from each member's own
/// status (`None`: its REST API did not answer): the primary's index, or the blockers.
pub fn preconditions(statuses: &[Option<NodeStatus>], to: u32) -> Result<usize, Vec<String>> {
    let mut blockers = Vec::new();
    let primaries: Vec<(usize, &NodeStatus)> = statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
        .filter(|(_, s)| s.is_leader && s.member.running_as(MemberRole::Primary))
        .collect();
    let [(primary, p)] = primaries.as_slice() else {
        return Err(vec![format!(
            "the cluster has {} running primaries; an upgrade needs exactly one",
            primaries.len()
        )]);
    };
    let head = p.member.wal.write;
    for (i, s) in statuses.iter().enumerate() {
        if i == *primary {
            continue;
        }
        let Some(s) = s else {
            blockers.push(format!("member {i} does not answer: every member must run"));
            continue;
        };
        let name = &s.name;
        if !s.member.running_as(MemberRole::Replica) || !s.streaming {
            blockers.push(format!("{name} does not stream from the primary"));
            continue;
        }
        match (head, s.member.wal.best()) {
            (Some(h), Some(r)) if h.bytes_ahead_of(r) > MAX_LAG => blockers.push(format!(
                "{name} is {} MB behind the primary (at most {} MB)",
                h.bytes_ahead_of(r) / (1024 * 1024),
                MAX_LAG / (1024 * 1024)
            )),
            (Some(_), Some(_)) => {}
            _ => blockers.push(format!("{name}'s replication lag is unknown")),
        }
    }
    for s in statuses.iter().flatten() {
        if s.member.postgres_version == Some(to) {
            blockers.push(format!("{} runs PostgreSQL {to} already", s.name));
        }
    }
    if blockers.is_empty() {
        Ok(*primary)
    } else {
        Err(blockers)
    }
}

/// The major version a cluster's data holds: an upgrade past its point of no return counts
/// as done; else the first member's data directory that has one.
pub fn data_version(cluster_dir: &Path) -> Option<u32> {
    if let Ok(Some(r)) = read_record(cluster_dir)
        && r.step == Step::Committed
    {
        return Some(r.to);
    }
    let mut members: Vec<PathBuf> = std::fs::read_dir(cluster_dir.join("members"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    members.sort();
    members
        .iter()
        .find_map(|m| governor_version(&m.join("data")))
}

fn governor_version(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn record_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("upgrade.json")
}

/// The upgrade in progress, if any; an `upgrade.json` that cannot be read is an error, never
/// "no upgrade".
pub fn read_record(cluster_dir: &Path) -> anyhow::Result<Option<Record>> {
    let path = record_path(cluster_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    serde_json::from_str(&text).map(Some).with_context(|| {
        format!(
            "{} records an upgrade in progress but cannot be read; it says how far the major \
             upgrade got: repair it or remove it after checking the members' data directories",
            path.display()
        )
    })
}

/// An upgrade that stopped past its point of no return with no member running: `spilo up`
/// must not go on as if the cluster ran (it ends, and its next start finishes the upgrade).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stranded(pub String);

/// What an upgrade did.
#[derive(Debug)]
pub struct Upgraded {
    /// From the primary's stop to the upgraded primary answering through HAProxy.
    pub downtime: Duration,
    /// The lines to print about the steps after the downtime.
    pub notes: Vec<String>,
}

impl LocalCluster {
    /// Writes `upgrade.json` durably (the file and its directory synced) before the step it
    /// names begins: a crash must never find an older step than the data is in.
    fn write_record(&self, r: &Record) -> anyhow::Result<()> {
        use std::io::Write;
        let path = record_path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(r)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn clear_record(&self) {
        let _ = std::fs::remove_file(record_path(&self.dir));
    }

    /// Runs `governor upgrade <step>` for member `i` with its configuration for `to`
    /// (written beside its running one as `governor.upgrade.yaml`; a check's, which another
    /// process may ask for, as `governor.upgrade-check-<pid>.yaml`, removed afterwards). A
    /// link is also given the member's running configuration (`--old-config`), whose
    /// `archive_command` archives the old server's last WAL.
    async fn governor_upgrade(
        &self,
        step: &str,
        i: usize,
        to: &ClusterFile,
        old_bin: &Path,
    ) -> anyhow::Result<Result<String, String>> {
        let name = match step {
            "check" => format!("governor.upgrade-check-{}.yaml", std::process::id()),
            _ => "governor.upgrade.yaml".to_string(),
        };
        let path = self.member_dir(i).join(name);
        let text = self.render_member(i, to)?;
        std::fs::write(&path, text)?;
        self.run_as.own(&path)?;
        let old_config = self.member_dir(i).join("governor.yaml");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "upgrade".as_ref(),
            step.as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
            "--old-bin-dir".as_ref(),
            old_bin.as_os_str(),
        ];
        if step == "link" {
            args.extend(["--old-config".as_ref(), old_config.as_os_str()]);
        }
        let out = self.run_governor(&args).await;
        if step == "check" {
            let _ = std::fs::remove_file(&path);
        }
        out
    }

    /// Runs the cluster's governor program with `args` as the cluster's user: its output,
    /// `Err` when it failed.
    async fn run_governor(
        &self,
        args: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Result<String, String>> {
        let mut cmd = tokio::process::Command::new(&self.governor_bin);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        self.run_as.apply(&mut cmd);
        let out = cmd.output().await.with_context(|| {
            format!(
                "run governor {}",
                args.first()
                    .map(|a| a.to_string_lossy())
                    .unwrap_or_default()
            )
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        })
    }

    /// The blockers of upgrading to `to`'s version now, or the primary's index. Changes
    /// nothing. The preconditions may take `settle` to hold (a member that just started
    /// reports streaming on its governor's next loop): what still fails them then blocks.
    pub async fn upgrade_blockers(
        &self,
        to: &ClusterFile,
        settle: Duration,
    ) -> anyhow::Result<Result<usize, Vec<String>>> {
        let version = to.spec.postgresql.version;
        let deadline = Instant::now() + settle;
        let primary = loop {
            match preconditions(&self.statuses().await, version) {
                Ok(p) => break p,
                Err(b) if Instant::now() >= deadline => return Ok(Err(b)),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        let old_bin = crate::installed::postgres_bin_dir(&self.file.spec.postgresql);
        Ok(
            match self
                .governor_upgrade("check", primary, to, &old_bin)
                .await?
            {
                Ok(_) => Ok(primary),
                Err(out) => {
                    // The governor says them in its log and in its error: each once here.
                    let mut seen = std::collections::BTreeSet::new();
                    Err(out
                        .lines()
                        .map(str::trim)
                        .filter(|l| l.starts_with("- "))
                        .map(|l| l.trim_start_matches("- ").to_string())
                        .chain(
                            (!out.contains("found blockers"))
                                .then(|| out.trim().to_string())
                                .filter(|s| !s.is_empty()),
                        )
                        .filter(|b| seen.insert(b.clone()))
                        .collect())
                }
            },
        )
    }

    /// Upgrades the running cluster to `to`'s major version (the caller checked
    /// [`Self::upgrade_blockers`]; `primary` is what it found).
    pub async fn major_upgrade(
        &mut self,
        to: ClusterFile,
        primary: usize,
    ) -> anyhow::Result<Upgraded> {
        let record = Record {
            from: self.file.spec.postgresql.version,
            to: to.spec.postgresql.version,
            primary,
            step: Step::Stopping,
        };
        // A restore point on the old version, taken while it still serves.
        let mut notes = Vec::new();
        if self.file.spec.backup.is_none() {
            notes.push(
                "  no base backup before the upgrade: the file declares no archive (spec.backup)"
                    .into(),
            );
        } else if let Err(e) = self.backup(primary).await {
            bail!("the base backup before the upgrade failed: {e:#}; nothing was changed");
        } else {
            notes.push(format!(
                "  base backup on PostgreSQL {} taken before the upgrade",
                record.from
            ));
        }
        self.write_record(&record)?;
        let (downtime_from, stopped) = self.stop_governors().await;
        let old_bin = crate::installed::postgres_bin_dir(&self.file.spec.postgresql);
        if stopped != Some(primary) {
            // A failover during the base backup: the data checked is not the primary's.
            self.clear_record();
            self.start().await?;
            bail!(
                "the primary changed while the upgrade was prepared ({} led when the governors \
                 stopped, not {}-{primary}); nothing was changed, the cluster runs PostgreSQL {} \
                 again (an edit of its file tries again)",
                stopped.map_or("no member".into(), |i| self.member_name(i)),
                self.name,
                record.from
            );
        }
        self.write_record(&Record {
            step: Step::Linking,
            ..record.clone()
        })?;
        if stop_here("linking") {
            std::process::exit(3);
        }
        let linked = match self.governor_upgrade("link", primary, &to, &old_bin).await {
            Ok(Ok(out)) => {
                if let Some((_, what)) = out
                    .lines()
                    .find_map(|l| l.split_once("the old server's WAL its archiver left archived "))
                {
                    notes.push(format!(
                        "  PostgreSQL {}'s WAL its archiver left at shutdown archived before \
                         pg_upgrade {}",
                        record.from,
                        what.trim()
                    ));
                }
                Ok(())
            }
            Ok(Err(out)) => Err(out),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(out) = linked {
            // Before the point of no return: back to the old version, unless the roll back
            // itself fails (then the record stays, and the next `spilo up` tries again).
            let undo = self
                .governor_upgrade("rollback", primary, &to, &old_bin)
                .await?
                .map_err(|e| {
                    anyhow::anyhow!(
                        "pg_upgrade --link failed ({}), and so did the roll back: {}; the \
                         cluster stays stopped, and the next `spilo up` rolls back again",
                        out.trim(),
                        e.trim()
                    )
                })?;
            self.clear_record();
            self.start_primary_first(primary).await?;
            bail!(
                "pg_upgrade --link failed; rolled back ({}), cluster {} runs PostgreSQL {} again:\n{}",
                undo.trim(),
                self.name,
                record.from,
                out.trim()
            );
        }
        if stop_here("linked") {
            std::process::exit(3);
        }
        self.write_record(&Record {
            step: Step::Committed,
            ..record.clone()
        })?;
        self.finish_commit(&to, &record, &old_bin).await?;
        let downtime = downtime_from.elapsed();
        notes.extend(self.after_upgrade(&to, &record, &old_bin).await);
        Ok(Upgraded { downtime, notes })
    }

    /// Past the point of no return: commit, the replicas' old data gone, the members started
    /// on the new version; returns once the primary answers through HAProxy (the end of the
    /// write downtime).
    async fn finish_commit(
        &mut self,
        to: &ClusterFile,
        record: &Record,
        old_bin: &Path,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + commit_window();
        loop {
            match self
                .governor_upgrade("commit", record.primary, to, old_bin)
                .await?
            {
                Ok(_) => break,
                Err(out) if Instant::now() >= deadline => {
                    return Err(Stranded(format!(
                        "the upgrade of cluster {} is past its point of no return, and its \
                         commit failed: {}; `spilo up` finishes it when started again",
                        self.name,
                        out.trim()
                    ))
                    .into());
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        if stop_here("committed") {
            std::process::exit(3);
        }
        self.file = to.clone();
        for i in 0..self.members.len() {
            let data = self.member_dir(i).join("data");
            if i != record.primary && governor_version(&data) == Some(record.from) {
                std::fs::remove_dir_all(&data)
                    .with_context(|| format!("remove {}", data.display()))?;
            }
        }
        // The primary first; the replicas, with empty data directories, wait for it to lead
        // and copy it. HAProxy is not running yet when `spilo up` resumes an upgrade at its
        // start.
        self.start_member(record.primary)?;
        for i in 0..self.members.len() {
            if self.members[i].is_none() {
                self.start_member(i)?;
            }
        }
        self.start_or_reload_haproxy()?;
        self.write_state()?;
        self.wait_ready(START).await
    }

    /// After the downtime: the replicas stream, a base backup into the new archive, the
    /// statistics rebuilt, the old data removed, the record cleared. Returns what was done
    /// (a step that failed is said, not fatal: the cluster runs).
    async fn after_upgrade(
        &mut self,
        to: &ClusterFile,
        record: &Record,
        old_bin: &Path,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let replicas = self.members.len().saturating_sub(1);
        let deadline = Instant::now() + START;
        loop {
            let streaming = self
                .statuses()
                .await
                .iter()
                .flatten()
                .filter(|s| s.streaming && s.member.postgres_version == Some(record.to))
                .count();
            if streaming >= replicas {
                notes.push(format!(
                    "  {streaming} replicas copied from the upgraded primary and streaming"
                ));
                break;
            }
            if Instant::now() >= deadline {
                notes.push(format!(
                    "  only {streaming} of {replicas} replicas stream after {}s",
                    START.as_secs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let leader = self
            .leader_status()
            .await
            .map_or(record.primary, |(i, _)| i);
        if self.file.spec.backup.is_some() {
            notes.push(match self.backup(leader).await {
                Ok(()) => format!(
                    "  base backup on PostgreSQL {} taken (archive {})",
                    record.to,
                    self.file.wal_prefix()
                ),
                Err(e) => format!("  the base backup after the upgrade failed: {e:#}"),
            });
        }
        notes.push(match self.analyze(leader).await {
            Ok(()) => {
                "  statistics rebuilt where missing (vacuumdb --all --analyze-in-stages)".into()
            }
            Err(e) => format!("  vacuumdb --analyze-in-stages failed: {e:#}"),
        });
        match self
            .governor_upgrade("discard-old", record.primary, to, old_bin)
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(out)) => notes.push(format!("  the old data was not removed: {}", out.trim())),
            Err(e) => notes.push(format!("  the old data was not removed: {e:#}")),
        }
        self.clear_record();
        notes
    }

    /// At `spilo up`'s start, before the members start: an upgrade `upgrade.json` records
    /// as interrupted is rolled back (before the point of no return) or committed (after
    /// it), its replicas' old data removed. Returns what to print, and whether the steps
    /// after the downtime are still to run.
    pub async fn resume_upgrade(&mut self) -> anyhow::Result<Option<(String, bool)>> {
        let Some(record) = read_record(&self.dir)? else {
            return Ok(None);
        };
        self.start_etcd().await?;
        let on = |v: u32| crate::local::major::on_version(&self.file, v);
        let (from, to) = (on(record.from), on(record.to));
        let old_bin = crate::installed::postgres_bin_dir(&from.spec.postgresql);
        if record.step < Step::Committed {
            let undo = self
                .governor_upgrade("rollback", record.primary, &to, &old_bin)
                .await?
                .map_err(|e| anyhow::anyhow!("roll back the upgrade: {}", e.trim()))?;
            self.file = from;
            self.clear_record();
            self.start_primary_first(record.primary).await?;
            return Ok(Some((
                format!(
                    "the upgrade of cluster {} to PostgreSQL {} was interrupted before its point \
                     of no return: rolled back ({}); it runs PostgreSQL {} with its data",
                    self.name,
                    record.to,
                    undo.trim(),
                    record.from
                ),
                false,
            )));
        }
        self.finish_commit(&to, &record, &old_bin).await?;
        Ok(Some((
            format!(
                "the upgrade of cluster {} to PostgreSQL {} was interrupted after its point of \
                 no return: finished; it runs PostgreSQL {}",
                self.name, record.to, record.to
            ),
            true,
        )))
    }

    /// The steps after the downtime of an upgrade [`Self::resume_upgrade`] finished.
    pub async fn resume_after_upgrade(&mut self) -> Vec<String> {
        let Ok(Some(record)) = read_record(&self.dir) else {
            return Vec::new();
        };
        let mut from = self.file.clone();
        from.spec.postgresql.version = record.from;
        from.spec.postgresql.bin_dir = None;
        let old_bin = crate::installed::postgres_bin_dir(&from.spec.postgresql);
        let to = self.file.clone();
        self.after_upgrade(&to, &record, &old_bin).await
    }

    /// After a roll back: the member that was the primary starts first and leads (its WAL
    /// is ahead of the replicas', which stopped before it), then the others.
    async fn start_primary_first(&mut self, primary: usize) -> anyhow::Result<()> {
        if self.members.get(primary).is_some_and(Option::is_none) {
            self.start_member(primary)?;
        }
        self.start_or_reload_haproxy()?;
        self.wait_ready(START).await?;
        self.start().await
    }

    /// `governor backup-push` on member `i`.
    async fn backup(&self, i: usize) -> anyhow::Result<()> {
        let config = self.member_dir(i).join("governor.yaml");
        if let Err(out) = self
            .run_governor(&[
                "backup-push".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
            ])
            .await?
        {
            bail!("{}", out.trim().lines().last().unwrap_or("failed"));
        }
        Ok(())
    }

    /// `vacuumdb --all --analyze-in-stages` on member `i` (as the superuser, by its socket).
    async fn analyze(&self, i: usize) -> anyhow::Result<()> {
        let bin = crate::installed::postgres_bin_dir(&self.file.spec.postgresql);
        let mdir = self.member_dir(i);
        let port = self.ports.postgres + u16::try_from(i).unwrap_or(0);
        let mut cmd = tokio::process::Command::new(bin.join("vacuumdb"));
        cmd.arg("--all").arg("--analyze-in-stages");
        if self.file.spec.postgresql.version >= 18 {
            // pg_upgrade to 18 carries the planner statistics over (not the extended ones).
            cmd.arg("--missing-stats-only");
        }
        cmd.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg("postgres")
            .env("PGPASSFILE", self.dir.join("pgpass"))
            .current_dir(&mdir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(t) = &self.tls {
            cmd.env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &t.ca);
        }
        self.run_as.apply(&mut cmd);
        let out = tokio::time::timeout(Duration::from_secs(1800), cmd.output())
            .await
            .context("vacuumdb did not finish within 30 minutes")?
            .context("run vacuumdb")?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Whether the primary answers through HAProxy (for the downtime's end).
    pub async fn primary_answers(&self) -> bool {
        postgres_answers(self.ports.primary).await
    }
}

/// How long a failing commit is retried before `spilo up` ends: [`START`]; in tests,
/// `SPILO_TEST_COMMIT_FOR` seconds.
fn commit_window() -> Duration {
    std::env::var("SPILO_TEST_COMMIT_FOR")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(START, Duration::from_secs)
}

/// A test-only switch: `SPILO_TEST_UPGRADE_EXIT=<step>` makes `spilo up` exit at that step
/// as a crash would (`linking`: before pg_upgrade; `linked`: after it, before the commit;
/// `committed`: after the commit, before any member starts on the new version).
fn stop_here(step: &str) -> bool {
    std::env::var("SPILO_TEST_UPGRADE_EXIT").is_ok_and(|s| s == step)
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;
