//! Processes: the unprivileged user servers run as, spawning them with logs in files, and
//! stopping them for good.

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user PostgreSQL and the governors run as: `postgres` when the tests run as root (CI
/// does), otherwise the current user.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    /// User id.
    pub uid: Uid,
    /// Group id.
    pub gid: Gid,
}

impl RunAs {
    /// Picks the user as described above.
    pub fn detect() -> anyhow::Result<Self> {
        if Uid::effective().is_root() {
            let user = User::from_name("postgres")?.ok_or_else(|| {
                anyhow::anyhow!("running as root needs a `postgres` user for PostgreSQL")
            })?;
            Ok(Self {
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            Ok(Self {
                uid: Uid::effective(),
                gid: Gid::effective(),
            })
        }
    }

    /// Whether servers run as another user than the test.
    pub fn is_other_user(&self) -> bool {
        self.uid != Uid::effective()
    }

    /// Makes `path` belong to the run-as user.
    pub fn own(&self, path: &Path) -> anyhow::Result<()> {
        if self.is_other_user() {
            nix::unistd::chown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }

    /// A command that runs as this user.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if self.is_other_user() {
            use std::os::unix::process::CommandExt;
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
        cmd
    }
}

/// The workspace's target directory (where `cargo build --workspace` put the binaries).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let profile = dir.join("debug");
        if profile.exists() {
            return Ok(profile);
        }
    }
    // A test executable lives in <target>/<profile>/deps/, a binary in <target>/<profile>/.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| {
        anyhow::anyhow!("cannot find the target directory from {}", exe.display())
    })?;
    Ok(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

static INSTALLED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();

/// The workspace binaries (`governor`, `spilo`), copied once per build into a directory the
/// unprivileged user can enter even when the checkout lives under one it cannot (`/root`).
///
/// The copy happens once per test process, before any test spawns a process: a thread that
/// forks while another thread still holds a freshly copied executable open for writing makes
/// that executable fail to start with "Text file busy" (ETXTBSY).
pub fn installed(name: &str) -> anyhow::Result<PathBuf> {
    let dir = INSTALLED
        .get_or_init(|| install_all().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(dir.join(name))
}

fn install_all() -> anyhow::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let target = target_dir()?;
    let mut key = std::collections::hash_map::DefaultHasher::new();
    for name in ["governor", "spilo"] {
        let src = target.join(name);
        let meta = std::fs::metadata(&src).map_err(|_| {
            anyhow::anyhow!(
                "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
                src.display()
            )
        })?;
        meta.len().hash(&mut key);
        meta.modified()?.hash(&mut key);
    }
    let dir = std::env::temp_dir().join(format!("spilo-e2e-bin-{:016x}", key.finish()));
    std::fs::create_dir_all(&dir)?;
    // When it was last used: older copies of other builds are removed.
    std::fs::write(dir.join(".used"), b"")?;
    remove_older_installs(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    for name in ["governor", "spilo"] {
        let dst = dir.join(name);
        if dst.exists() {
            continue;
        }
        // Copy under a private name, then rename: another test process may install the same
        // build at the same time, and must never run a half-written file.
        let tmp = dir.join(format!("{name}.{}", std::process::id()));
        std::fs::copy(target.join(name), &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &dst)?;
    }
    Ok(dir)
}

/// Removes the copies of other builds (200 MB each) not used for an hour: a test run of
/// another build may still use a younger one.
fn remove_older_installs(current: &Path) {
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let old = std::fs::metadata(path.join(".used"))
            .or_else(|_| e.metadata())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if path != current
            && old
            && e.file_name()
                .to_string_lossy()
                .starts_with("spilo-e2e-bin-")
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A spawned process whose output goes to a log file. Killed (with its process group) on drop.
pub struct Spawned {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Spawned {
    /// Starts `cmd` in its own process group with stdout and stderr appended to `log`.
    pub fn start(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        let child = cmd.spawn()?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(pid(self.child.id()), signal);
    }

    /// Waits up to `timeout` for the exit; returns its code if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the whole process group, then reaps.
    pub fn kill_group(&mut self) {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.exited() {
            self.kill_group();
        }
    }
}

/// A pid as nix wants it.
pub fn pid(p: u32) -> Pid {
    Pid::from_raw(i32::try_from(p).unwrap_or(i32::MAX))
}

/// Kills a process group by its leader's pid.
pub fn kill_group(leader: u32) {
    let _ = kill(Pid::from_raw(-(leader as i32)), Signal::SIGKILL);
}

/// Whether a process exists and is not a zombie (an orphan nobody has reaped yet is dead).
pub fn alive(p: u32) -> bool {
    spilo::local::state::alive(p)
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(p);
        }
    }
    out
}

/// `kill -9` of a PostgreSQL instance: the postmaster and every backend and auxiliary process,
/// returning once all of them are dead, so a write sent afterwards cannot be acknowledged by
/// any of them. Backends are group leaders of their own (PostgreSQL calls setsid), so killing
/// the postmaster's group would leave them running. The postmaster is stopped first, and its
/// children are collected only once it is seen stopped: `kill` returns before the signal lands,
/// and a fork finishing in between would leave a backend nobody kills.
pub fn kill_postgres(postmaster: u32) {
    let _ = kill(pid(postmaster), Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(postmaster) && state_of(postmaster) != Some('T') {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let children = children_of(postmaster);
    let _ = kill(pid(postmaster), Signal::SIGKILL);
    for &c in &children {
        let _ = kill(pid(c), Signal::SIGKILL);
    }
    loop {
        let left: Vec<u32> = std::iter::once(postmaster)
            .chain(children.iter().copied())
            .filter(|&p| alive(p))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kill -9 of PostgreSQL {postmaster}: {left:?} still alive after 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The state letter of a process (`R`, `S`, `T`, `Z`, ...), from `/proc/<pid>/stat`.
fn state_of(p: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}
