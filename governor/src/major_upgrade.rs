//! A major-version upgrade of one member's data directory (`governor upgrade ...`), run by
//! whoever orchestrates the cluster (the local target's `spilo up`) on the primary's member
//! while no governor of the cluster runs. The configuration it is given is the member's for
//! the *new* version (its `bin_dir`); the old version's programs are named apart.
//!
//! The steps, each safe to run again after a crash:
//! - [`check`]: `pg_upgrade --check` against the running old server (a live check; a stopped
//!   one is refused) and a scratch cluster of the new version, and the member's settings as
//!   the new version's server reads them (`settings`: pg_upgrade does not start the new
//!   server with them), and the column options it would not take (`column_options`);
//!   what they find are the blockers. It may run while the cluster's
//!   governors run (a plan asks for it).
//! - [`link`]: the old server stopped cleanly, a new cluster is made beside the data
//!   directory (`<data>.upgrade`), the settings checked again against it, and
//!   `pg_upgrade --link` fills it. pg_upgrade starts and
//!   stops the old server once (a shutdown checkpoint more in its WAL, with the settings it
//!   ran with: `standby_options`), and renames its `global/pg_control` to
//!   `pg_control.old` (its guard against starting it); nothing else of the old directory
//!   changes, and [`roll_back`] renames the control file back.
//! - [`commit`], the point of no return: the directories swap (the old one becomes
//!   `<data>.pre-upgrade`) and etcd's `initialize` takes the new system identifier while no
//!   member holds the leader key, `history` emptied (the new system's timelines start at 1).
//! - [`discard_old`]: once the new version runs, the old directory goes (its files are the
//!   new one's too, by hard link: only the names are removed).
//!
//! Every `governor upgrade` process holds [`Paths::lock`] while it runs ([`take_turn`]): a
//! check asked for by a plan in another process waits for a link, and a link for a check. The
//! lock is the governor process's own (pg_upgrade and the servers it starts do not inherit
//! it); leftovers of a killed step are for the orchestrator to stop (`spilo up` sweeps a
//! cluster's processes when it starts).

mod column_options;
pub mod in_place;
mod output;
mod settings;
mod tail;

use crate::config::Loaded;
use crate::dcs::Store;
use crate::postgres::tools::{self, ToolError};
use crate::postgres::{Instance, controldata};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// pg_upgrade's deadline: the copy is by hard link, so it is about the catalog dump.
const PG_UPGRADE_TIMEOUT: Duration = Duration::from_secs(1800);

/// Why a step could not be done.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The check (the new version's take on the settings, `pg_upgrade --check`) found what
    /// keeps the upgrade from working; nothing was changed.
    #[error("the upgrade check found blockers:\n{}", .0.iter().map(|b| format!("  - {b}")).collect::<Vec<_>>().join("\n"))]
    Blocked(Vec<String>),
    /// The data directory is not in the state the step needs.
    #[error("{0}")]
    State(String),
    /// A PostgreSQL program failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The coordination store (etcd or ZooKeeper) could not be reached or refused the change.
    #[error("coordination store: {0}")]
    Etcd(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Io { what, source }
}

/// The directories and programs of one member's upgrade.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The old version's programs.
    pub old_bin: PathBuf,
    /// The new version's programs (the configuration's `bin_dir`).
    pub new_bin: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// Where the new cluster is made: `<data>.upgrade`.
    pub upgraded: PathBuf,
    /// Where the old cluster goes at [`commit`]: `<data>.pre-upgrade`.
    pub previous: PathBuf,
    /// The scratch cluster of [`check`]: `<data>.upgrade-check`.
    pub scratch: PathBuf,
    /// The run directory: pg_upgrade's sockets and working directory.
    pub run_dir: PathBuf,
    /// The lock every step holds: `<data>.upgrade.lock`.
    pub lock: PathBuf,
}

fn beside(data: &Path, suffix: &str) -> PathBuf {
    let mut s = data.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl Paths {
    /// The paths of `loaded`'s member, the old programs in `old_bin`.
    pub fn of(loaded: &Loaded, old_bin: &Path) -> Self {
        let data = loaded.config.postgresql.data_dir.clone();
        Self {
            old_bin: old_bin.to_path_buf(),
            new_bin: loaded.config.postgresql.bin_dir.clone(),
            upgraded: beside(&data, ".upgrade"),
            previous: beside(&data, ".pre-upgrade"),
            scratch: beside(&data, ".upgrade-check"),
            lock: beside(&data, ".upgrade.lock"),
            run_dir: loaded.config.run_dir(),
            data,
        }
    }
}

/// Waits for this member's upgrade lock and holds it until the value is dropped: one step
/// at a time, whichever process asks.
pub fn take_turn(paths: &Paths) -> Result<nix::fcntl::Flock<std::fs::File>, UpgradeError> {
    let what = format!("lock {}", paths.lock.display());
    // Read-only when it exists (a lock file another user left is still lockable).
    let file = std::fs::File::open(&paths.lock)
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&paths.lock)
        })
        .map_err(io(what.clone()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io(what)(e.into()))
}

/// The pid in `dir`'s `postmaster.pid` when that process is alive: a server runs there (one
/// pg_upgrade started, perhaps, and left behind).
pub fn live_postmaster(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .is_ok()
        .then_some(pid)
}

fn no_server_in(dirs: &[&Path]) -> Result<(), UpgradeError> {
    for d in dirs {
        if let Some(pid) = live_postmaster(d) {
            return Err(UpgradeError::State(format!(
                "a PostgreSQL server (pid {pid}) runs in {}: stop it first",
                d.display()
            )));
        }
    }
    Ok(())
}

/// A directory left by an earlier upgrade keeps this one from starting: commit would have
/// nowhere to put the old cluster.
fn no_leftover(paths: &Paths) -> Result<(), UpgradeError> {
    if paths.previous.exists() {
        return Err(UpgradeError::Blocked(vec![format!(
            "{} is left from an earlier upgrade: remove it first",
            paths.previous.display()
        )]));
    }
    Ok(())
}

/// The major version of a data directory (`PG_VERSION`), if it has one.
pub fn data_version(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A new, empty cluster of the new version in `dir`, made the way the governor makes every
/// cluster (checksums, the superuser, UTF8, C locale): pg_upgrade needs them to match.
async fn initdb(loaded: &Loaded, dir: &Path) -> Result<(), UpgradeError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("remove {}", dir.display())))?;
    }
    let mut l = loaded.clone();
    l.config.postgresql.run_dir = Some(loaded.config.run_dir());
    l.config.postgresql.data_dir = dir.to_path_buf();
    let pg = Instance::new(&l, Arc::new(tokio::sync::Notify::new()));
    pg.initdb()
        .await
        .map_err(|e| UpgradeError::State(format!("initdb {}: {e}", dir.display())))
}

/// Runs pg_upgrade from the data directory into `new_data` (`--check` or `--link`).
async fn pg_upgrade(
    loaded: &Loaded,
    paths: &Paths,
    new_data: &Path,
    mode: &[&str],
    options: &str,
) -> Result<String, ToolError> {
    let port = loaded.config.postgresql.listen.port();
    let mut args: Vec<String> = mode.iter().map(|m| m.to_string()).collect();
    args.extend([
        "-o".into(),
        options.into(),
        "-O".into(),
        options.into(),
        "-b".into(),
        paths.old_bin.display().to_string(),
        "-B".into(),
        paths.new_bin.display().to_string(),
        "-d".into(),
        paths.data.display().to_string(),
        "-D".into(),
        new_data.display().to_string(),
        "-U".into(),
        loaded
            .config
            .postgresql
            .authentication
            .superuser
            .username
            .clone(),
        "-p".into(),
        port.to_string(),
        // The servers pg_upgrade starts listen on a socket only; the new one beside a live
        // old one needs another number.
        "-P".into(),
        port.checked_add(1).unwrap_or(port - 1).to_string(),
        "--socketdir".into(),
        paths.run_dir.display().to_string(),
    ]);
    let env = [("PGPASSWORD", loaded.superuser_password.clone())];
    tools::run_in(
        &paths.new_bin,
        "pg_upgrade",
        &args,
        &env,
        &paths.run_dir,
        PG_UPGRADE_TIMEOUT,
    )
    .await
}

/// `pg_upgrade --check` of the data directory, whose server must run (a live check: on a
/// stopped one pg_upgrade would start a server of its own, which its governor starting
/// PostgreSQL would meet), against a scratch cluster of the new version. Changes nothing but
/// the scratch directory, removed afterwards.
///
/// `cluster` holds the cluster's parameters (etcd's `config`) the new version must take:
/// those it starts with, and, when the orchestrator writes new ones after the upgrade, those
/// too; each set is checked.
pub async fn check(
    loaded: &Loaded,
    cluster: &[&BTreeMap<String, String>],
    paths: &Paths,
) -> Result<(), UpgradeError> {
    if live_postmaster(&paths.data).is_none() {
        return Err(UpgradeError::State(format!(
            "no PostgreSQL server runs in {}: the check asks the running server",
            paths.data.display()
        )));
    }
    match data_version(&paths.data) {
        Some(v) if Some(v) == new_version(paths).await => {
            return Err(UpgradeError::State(format!(
                "{} holds PostgreSQL {v} already",
                paths.data.display()
            )));
        }
        Some(_) => {}
        None => {
            return Err(UpgradeError::State(format!(
                "{} holds no cluster",
                paths.data.display()
            )));
        }
    }
    no_leftover(paths)?;
    let cd = controldata::read(&paths.old_bin, &paths.data)
        .await
        .map_err(io(format!("pg_controldata {}", paths.data.display())))?;
    initdb(loaded, &paths.scratch).await?;
    let found = check_scratch(loaded, cluster, paths, &cd).await;
    let _ = std::fs::remove_dir_all(&paths.scratch);
    found
}

/// The settings check and `pg_upgrade --check` against the scratch cluster: every blocker
/// either finds, the settings' first.
async fn check_scratch(
    loaded: &Loaded,
    cluster: &[&BTreeMap<String, String>],
    paths: &Paths,
    cd: &controldata::ControlData,
) -> Result<(), UpgradeError> {
    let mut found = Vec::new();
    let mut sets = cluster.to_vec();
    sets.dedup();
    for set in sets {
        found.extend(
            settings::blockers(
                loaded,
                set,
                &paths.new_bin,
                (&paths.scratch, &paths.run_dir),
            )
            .await?,
        );
    }
    let version = version_of(&paths.new_bin)
        .await
        .map_or("the new version".to_string(), |v| format!("PostgreSQL {v}"));
    found.extend(column_options::blockers(loaded, &version).await?);
    // With --link, as the real run: pg_upgrade then checks that hard links work.
    let r = pg_upgrade(
        loaded,
        paths,
        &paths.scratch,
        &["--check", "--link"],
        &standby_options(cd),
    )
    .await;
    match r {
        Ok(_) => {}
        Err(ToolError::Failed { output, .. }) => {
            found.extend(output::blockers(&output, &paths.scratch))
        }
        Err(e) => return Err(e.into()),
    }
    // pg_upgrade says some things twice (its output, and a report in each of its runs).
    let mut seen = std::collections::BTreeSet::new();
    found.retain(|b| seen.insert(b.clone()));
    if found.is_empty() {
        Ok(())
    } else {
        Err(UpgradeError::Blocked(found))
    }
}

async fn new_version(paths: &Paths) -> Option<u32> {
    version_of(&paths.new_bin).await
}

/// The major version of the PostgreSQL programs in `bin` (`pg_config --version`).
pub async fn version_of(bin: &Path) -> Option<u32> {
    let out = tools::run(
        bin,
        "pg_config",
        &["--version".into()],
        &[],
        Duration::from_secs(10),
    )
    .await
    .ok()?;
    // "PostgreSQL 18.6"
    out.split_whitespace()
        .nth(1)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// What [`link`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    /// The new cluster's system identifier.
    pub system: String,
    /// The old server's WAL files its archiver left unarchived at its shutdown, archived
    /// before pg_upgrade with `old` (the member's configuration for the old version).
    pub archived: Vec<String>,
}

/// pg_upgrade --link into `<data>.upgrade`. The old server must have stopped cleanly; when
/// `old` (the member's configuration for the old version) archives, what its archiver left
/// unarchived is archived first (`tail::archive_ready`). A half-done earlier attempt is
/// rolled back first.
pub async fn link(
    loaded: &Loaded,
    cluster: &BTreeMap<String, String>,
    paths: &Paths,
    old: Option<&Loaded>,
) -> Result<Linked, UpgradeError> {
    no_leftover(paths)?;
    if paths.data.join("postmaster.pid").exists() {
        return Err(UpgradeError::State(format!(
            "PostgreSQL still runs in {} (postmaster.pid): stop it cleanly first",
            paths.data.display()
        )));
    }
    roll_back(paths)?;
    let cd = controldata::read(&paths.old_bin, &paths.data)
        .await
        .map_err(io(format!("pg_controldata {}", paths.data.display())))?;
    // A primary's clean stop: not a replica's ("shut down in recovery"), which is not the
    // cluster's last word.
    if cd.get("Database cluster state") != Some("shut down") {
        return Err(UpgradeError::State(format!(
            "{} is not a primary shut down cleanly ({}): the upgrade starts from the primary",
            paths.data.display(),
            cd.get("Database cluster state").unwrap_or("unknown state")
        )));
    }
    let archived = match old.and_then(|o| o.config.archive.as_ref()) {
        Some(archive) => tail::archive_ready(archive, &paths.data).await?,
        None => Vec::new(),
    };
    initdb(loaded, &paths.upgraded).await?;
    // The settings again: the check may have been against another configuration.
    let refused = settings::blockers(
        loaded,
        cluster,
        &paths.new_bin,
        (&paths.upgraded, &paths.run_dir),
    )
    .await?;
    if !refused.is_empty() {
        return Err(UpgradeError::Blocked(refused));
    }
    if let Err(e) = pg_upgrade(
        loaded,
        paths,
        &paths.upgraded,
        &["--link"],
        &standby_options(&cd),
    )
    .await
    {
        // A pg_upgrade killed on its deadline leaves the servers it started running.
        stop_server(&paths.old_bin, &paths.data).await;
        stop_server(&paths.new_bin, &paths.upgraded).await;
        return Err(output::with_consulted_log(e).into());
    }
    let new = controldata::read(&paths.new_bin, &paths.upgraded)
        .await
        .map_err(io(format!("pg_controldata {}", paths.upgraded.display())))?;
    let system = new.sysid().map(str::to_string).ok_or_else(|| {
        UpgradeError::State(format!(
            "pg_controldata {} printed no system identifier",
            paths.upgraded.display()
        ))
    })?;
    Ok(Linked { system, archived })
}

/// The settings a hot standby must match or exceed on its primary, as `pg_controldata`
/// names them and as PostgreSQL does.
const STANDBY_SETTINGS: [(&str, &str); 7] = [
    ("max_connections setting", "max_connections"),
    ("max_worker_processes setting", "max_worker_processes"),
    ("max_wal_senders setting", "max_wal_senders"),
    ("max_prepared_xacts setting", "max_prepared_transactions"),
    ("max_locks_per_xact setting", "max_locks_per_transaction"),
    ("wal_level setting", "wal_level"),
    ("track_commit_timestamp setting", "track_commit_timestamp"),
];

/// `-c` options with the old cluster's values of [`STANDBY_SETTINGS`], for both servers
/// pg_upgrade starts (`-o`, `-O`). They start with their data directories' `postgresql.conf`
/// (initdb's defaults, not the governor's settings), and each writes what it ran with into
/// its control file: the old one's rolled back, or the new one, would then be refused as a
/// hot standby ("max_connections = 40 is a lower setting than on the primary server, where
/// its value was 100") when the governor starts it read-only before it wins the leader key.
fn standby_options(old: &controldata::ControlData) -> String {
    standby_settings(old)
        .into_iter()
        .map(|(guc, v)| format!("-c {guc}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The old cluster's values of [`STANDBY_SETTINGS`], by setting name.
fn standby_settings(old: &controldata::ControlData) -> Vec<(&'static str, String)> {
    STANDBY_SETTINGS
        .iter()
        .filter_map(|(field, guc)| old.get(field).map(|v| (*guc, v.to_string())))
        .collect()
}

/// `pg_ctl stop -m fast` of a server that runs in `dir`, if one does.
async fn stop_server(bin: &Path, dir: &Path) {
    if live_postmaster(dir).is_some() {
        let args: Vec<String> = vec![
            "stop".into(),
            "-D".into(),
            dir.display().to_string(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
        ];
        let _ = tools::run(bin, "pg_ctl", &args, &[], Duration::from_secs(60)).await;
    }
}

/// Undoes [`link`] before the point of no return: the old cluster's control file back, the
/// new cluster gone. Returns whether there was anything to undo. Refused while a server runs
/// in either directory, and once [`commit`] swapped them.
pub fn roll_back(paths: &Paths) -> Result<bool, UpgradeError> {
    no_server_in(&[&paths.data, &paths.upgraded])?;
    if paths.previous.exists() {
        return Err(UpgradeError::State(format!(
            "{} exists: the upgrade was committed, and cannot be rolled back",
            paths.previous.display()
        )));
    }
    let global = paths.data.join("global");
    let (control, renamed) = (global.join("pg_control"), global.join("pg_control.old"));
    let mut undone = false;
    if renamed.exists() && !control.exists() {
        std::fs::rename(&renamed, &control)
            .map_err(io(format!("rename {} back", renamed.display())))?;
        undone = true;
    }
    if paths.upgraded.exists() {
        std::fs::remove_dir_all(&paths.upgraded)
            .map_err(io(format!("remove {}", paths.upgraded.display())))?;
        undone = true;
    }
    Ok(undone)
}

/// The point of no return: the upgraded cluster becomes the data directory and the cluster's
/// system in etcd. Run again after a crash, it finishes what is left.
pub async fn commit(loaded: &Loaded, paths: &Paths) -> Result<String, UpgradeError> {
    no_server_in(&[&paths.data, &paths.upgraded])?;
    // Swapped and its old directory removed already (a crash before the record was cleared).
    let done = !paths.upgraded.exists()
        && data_version(&paths.data).is_some()
        && data_version(&paths.data) == new_version(paths).await;
    if paths.upgraded.exists() {
        // pg_upgrade removes its output directory only when it succeeded.
        if paths.upgraded.join("pg_upgrade_output.d").exists() {
            return Err(UpgradeError::State(format!(
                "{} holds pg_upgrade_output.d: pg_upgrade did not finish; roll back",
                paths.upgraded.display()
            )));
        }
        if paths.data.exists() {
            if paths.previous.exists() {
                return Err(UpgradeError::State(format!(
                    "{} exists from an earlier upgrade: remove it first",
                    paths.previous.display()
                )));
            }
            std::fs::rename(&paths.data, &paths.previous)
                .map_err(io(format!("rename {}", paths.data.display())))?;
        }
        std::fs::rename(&paths.upgraded, &paths.data)
            .map_err(io(format!("rename {}", paths.upgraded.display())))?;
    } else if !paths.previous.exists() && !done {
        return Err(UpgradeError::State(format!(
            "neither {} nor {} exists: nothing to commit",
            paths.upgraded.display(),
            paths.previous.display()
        )));
    }
    let cd = controldata::read(&paths.new_bin, &paths.data)
        .await
        .map_err(io(format!("pg_controldata {}", paths.data.display())))?;
    let sysid = cd.sysid().map(str::to_string).ok_or_else(|| {
        UpgradeError::State(format!(
            "pg_controldata {} printed no system identifier",
            paths.data.display()
        ))
    })?;
    let old = old_system_identifier(&paths.previous);
    let dcs = connect(loaded).await?;
    let adopted = dcs
        .adopt_upgraded_system(&sysid, old.as_deref())
        .await
        .map_err(|e| UpgradeError::Etcd(e.to_string()))?;
    if !adopted {
        return Err(UpgradeError::Etcd(format!(
            "`initialize` was not changed to {sysid}: a member holds the leader key, the \
             cluster has no `initialize` key, or it names another system than the upgraded \
             data's ({})",
            old.as_deref().unwrap_or("unknown")
        )));
    }
    Ok(sysid)
}

/// The system identifier of the old cluster moved to `previous`, from its control file
/// (`global/pg_control.old` after `--link`): the file begins with it, a native-endian `u64`.
fn old_system_identifier(previous: &Path) -> Option<String> {
    let global = previous.join("global");
    let bytes = std::fs::read(global.join("pg_control.old"))
        .or_else(|_| std::fs::read(global.join("pg_control")))
        .ok()?;
    let first: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(first).to_string())
}

/// Removes the old cluster's directory once the new version runs.
pub fn discard_old(paths: &Paths) -> Result<bool, UpgradeError> {
    if !paths.previous.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&paths.previous)
        .map_err(io(format!("remove {}", paths.previous.display())))?;
    Ok(true)
}

async fn connect(loaded: &Loaded) -> Result<Store, UpgradeError> {
    let cfg = &loaded.config;
    let etcd = |e: &dyn std::fmt::Display| UpgradeError::Etcd(e.to_string());
    // Over TLS with the member's certificate, as the governor itself speaks to etcd.
    let tls = match crate::certs::MemberCert::new(cfg, loaded.ca_key.as_deref()) {
        Some(c) if cfg.etcd_over_tls() => {
            c.ensure(std::time::SystemTime::now())
                .map_err(|e| etcd(&e))?;
            Some(c.etcd_tls().map_err(|e| etcd(&e))?)
        }
        _ => None,
    };
    let timeout = cfg.ha.retry_timeout().max(Duration::from_secs(3));
    let (store, _) = Store::connect(cfg, tls.as_ref(), loaded.name.clone(), timeout)
        .await
        .map_err(|e| etcd(&e))?;
    Ok(store)
}

#[cfg(test)]
mod tests;
