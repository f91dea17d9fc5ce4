//! A scratch repository for the local target: a `clusters/` directory the test writes cluster
//! files into, a state directory, and `spilo up` / `status` / `down` run as real processes.

use crate::proc::{self, Spawned};
use crate::wait;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A scratch repository.
pub struct LocalRepo {
    spilo: PathBuf,
    up: Option<Spawned>,
    runs: u32,
    dir: tempfile::TempDir,
}

impl LocalRepo {
    /// Creates the directory (reachable by the unprivileged user) and installs the binaries.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("spilo-local-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let spilo = proc::installed("spilo")?;
        std::fs::create_dir(dir.path().join("clusters"))?;
        Ok(Self {
            spilo,
            up: None,
            runs: 0,
            dir,
        })
    }

    /// The repository's root (clusters/ is inside).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the directory a git repository (once) and commits everything in it.
    pub fn commit_all(&self, message: &str) -> anyhow::Result<()> {
        let git = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("git")
                .arg("-C")
                .arg(self.dir.path())
                .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
                .args(args)
                .output()?;
            if !out.status.success() {
                anyhow::bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        if !self.dir.path().join(".git").exists() {
            git(&["init", "-q", "-b", "main"])?;
            std::fs::write(self.dir.path().join(".gitignore"), "state/\n")?;
        }
        git(&["add", "-A"])?;
        git(&["commit", "-q", "-m", message])
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The clusters directory.
    pub fn clusters(&self) -> PathBuf {
        self.dir.path().join("clusters")
    }

    /// Writes `clusters/<file>`.
    pub fn write(&self, file: &str, text: &str) -> anyhow::Result<()> {
        std::fs::write(self.clusters().join(file), text)?;
        Ok(())
    }

    /// [`Self::cluster_yaml`] with `postgresql.version: <version>`.
    pub fn cluster_yaml_on(name: &str, instances: u32, base: u16, version: u32) -> String {
        let yaml = Self::cluster_yaml(name, instances, base);
        assert!(yaml.contains("postgresql: {parameters:"), "{yaml}");
        yaml.replace(
            "postgresql: {parameters:",
            &format!("postgresql: {{version: {version}, parameters:"),
        )
    }

    /// A cluster file with explicit ports starting at `base`: primary `base`, replica
    /// `base+1`, etcd `base+2..3`, PostgreSQL from `base+10`, REST from `base+20`.
    pub fn cluster_yaml(name: &str, instances: u32, base: u16) -> String {
        format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n  \
             postgresql: {{parameters: {{shared_buffers: 16MB, max_connections: 40}}}}\n  \
             endpoints: {{replica: {{enabled: true, port: 5433}}, healthCheck: {{interval: 1}}}}\n  \
             local:\n    ports: {{primary: {base}, replica: {}, etcd: {}, postgres: {}, api: {}, proxy: {}}}\n",
            base + 1,
            base + 2,
            base + 10,
            base + 20,
            base + 25
        )
    }

    /// Runs `spilo up` in the background (each run prints to a log of its own).
    pub fn up(&mut self) -> anyhow::Result<()> {
        self.up_with(&[])
    }

    /// [`Self::up`] with more arguments.
    pub fn up_with(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.up_env(args, &[])
    }

    /// [`Self::up`] with more arguments and environment variables.
    pub fn up_env(&mut self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.runs += 1;
        let mut cmd = Command::new(&self.spilo);
        cmd.envs(env.iter().copied());
        cmd.arg("up")
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .arg(self.clusters());
        self.up = Some(Spawned::start(cmd, &self.up_log_path())?);
        Ok(())
    }

    fn up_log_path(&self) -> PathBuf {
        self.dir.path().join(format!("up-{}.log", self.runs))
    }

    /// What the latest `spilo up` printed so far.
    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.up_log_path()).unwrap_or_default()
    }

    /// Waits until `spilo up` printed `text`; fails early if it exited.
    pub async fn wait_printed(&mut self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let log = self.up_log_path();
        wait::until(&format!("spilo up to print {text:?}"), timeout, || {
            let exited = self.up.as_mut().is_none_or(|p| p.exited());
            let log = log.clone();
            async move {
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                if out.contains(text) || exited {
                    Some(())
                } else {
                    None
                }
            }
        })
        .await?;
        if !self.up_log().contains(text) {
            anyhow::bail!(
                "spilo up exited before printing {text:?}:\n{}",
                self.up_log()
            );
        }
        Ok(())
    }

    /// Sends SIGINT (what Ctrl-C sends) to `spilo up`.
    pub fn interrupt_up(&self) {
        if let Some(p) = &self.up {
            p.signal(nix::sys::signal::Signal::SIGINT);
        }
    }

    /// kill -9 of `spilo up` and of the processes in its process group (the `governor`
    /// steps it runs, their pg_upgrade), as a crash; what it starts in process groups of their
    /// own (governors, etcd, HAProxy) is left as a crash would leave it.
    pub fn kill_up(&mut self) {
        if let Some(mut p) = self.up.take() {
            p.kill_group();
        }
    }

    /// Waits for `spilo up` to exit; returns its exit code.
    pub fn wait_up_exit(&mut self, timeout: Duration) -> Option<i32> {
        let p = self.up.as_mut()?;
        p.wait_exit(timeout).map(|s| s.code().unwrap_or(-1))
    }

    /// Starts `spilo watch --target local` on this repository's `main` branch (resync every
    /// second, `/metrics` on `127.0.0.1:<listen>`), logging to `watch.log` in the repository.
    pub fn watch_local(&self, listen: u16) -> anyhow::Result<Spawned> {
        let mut watch = Command::new(&self.spilo);
        watch
            .args([
                "watch", "--target", "local", "--branch", "main", "--resync", "1s",
            ])
            .args(["--no-leader-after", "1h", "--listen"])
            .arg(format!("127.0.0.1:{listen}"))
            .arg("--repo")
            .arg(self.path())
            .arg("--state-dir")
            .arg(self.state());
        Spawned::start(watch, &self.path().join("watch.log"))
    }

    /// Runs a `spilo` command against this repository's state directory.
    pub fn spilo(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(&self.spilo)
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .current_dir(self.dir.path())
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs `spilo up` in the foreground (for refusals) and returns (code, stdout, stderr).
    pub fn up_once(&self) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(&self.spilo)
            .arg("up")
            .arg("--state-dir")
            .arg(self.state())
            .arg(self.clusters())
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `spilo status --format json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, out, err) = self.spilo(&["status", "--format", "json"])?;
        anyhow::ensure!(code == 0, "spilo status failed: {err}");
        Ok(serde_json::from_str(&out)?)
    }

    /// `cluster`'s members in `spilo status`.
    fn members(&self, cluster: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let s = self.status()?;
        s["clusters"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == cluster))
            .and_then(|c| c["members"].as_array())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no cluster {cluster} in {s}"))
    }

    /// How many of `cluster`'s members run as replicas, per `spilo status`.
    pub fn running_replicas(&self, cluster: &str) -> anyhow::Result<usize> {
        Ok(self
            .members(cluster)?
            .iter()
            .filter(|m| m["role"] == "replica" && m["state"] == "running")
            .count())
    }

    /// kill -9 of `cluster`'s primary: its governor and all its PostgreSQL processes.
    /// Returns the member's name and its governor's pid.
    pub fn kill_primary(&self, cluster: &str) -> anyhow::Result<(String, u32)> {
        let members = self.members(cluster)?;
        let primary = members
            .iter()
            .find(|m| m["role"] == "primary")
            .ok_or_else(|| anyhow::anyhow!("no primary: {members:?}"))?;
        let name = primary["name"].as_str().unwrap_or_default().to_string();
        let governor = u32::try_from(primary["governor_pid"].as_u64().unwrap_or(0))?;
        let postmaster = u32::try_from(primary["postmaster_pid"].as_u64().unwrap_or(0))?;
        anyhow::ensure!(governor > 0 && postmaster > 0, "{primary}");
        proc::kill_group(governor);
        proc::kill_postgres(postmaster);
        Ok((name, governor))
    }

    /// A connection string to `port` as the cluster's superuser.
    pub fn dsn(&self, cluster: &str, port: u16) -> anyhow::Result<String> {
        let pw = std::fs::read_to_string(self.state().join(cluster).join("secrets/superuser"))?;
        Ok(format!(
            "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres connect_timeout=2 \
             sslmode=verify-full sslrootcert={}",
            pw.trim(),
            self.state().join(cluster).join("tls/ca.crt").display()
        ))
    }

    /// A connection string to `port` as the cluster's superuser, without TLS: a cluster on an
    /// etcd of its own choosing (`dcs.hosts`) speaks none.
    pub fn plain_dsn(&self, cluster: &str, port: u16) -> anyhow::Result<String> {
        let pw = std::fs::read_to_string(self.state().join(cluster).join("secrets/superuser"))?;
        Ok(format!(
            "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres connect_timeout=2",
            pw.trim()
        ))
    }

    /// The seconds of the write downtime `spilo up` printed for a major upgrade
    /// ("... runs PostgreSQL 18: write downtime 4.1s").
    pub fn printed_downtime(&self) -> anyhow::Result<f64> {
        let log = self.up_log();
        log.split("write downtime ")
            .nth(1)
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no write downtime in {log}"))
    }

    /// Processes whose command line mentions the state directory.
    pub fn processes(&self) -> Vec<u32> {
        spilo::local::down::processes_under(&self.state())
    }

    /// Passes a test's result through, printing `spilo up`'s output and the member logs first
    /// when it is an error.
    pub fn finish<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() {
            eprintln!("===== spilo up =====\n{}", self.up_log());
            print_logs(&self.state());
        }
        result
    }
}

fn print_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            print_logs(&p);
        } else if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "===== {} =====\n{}",
                p.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

impl Drop for LocalRepo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== spilo up =====\n{}", self.up_log());
            print_logs(&self.state());
        }
        if let Some(p) = self.up.as_mut()
            && !p.exited()
        {
            p.signal(nix::sys::signal::Signal::SIGTERM);
            p.wait_exit(Duration::from_secs(120));
        }
        if !self.processes().is_empty() {
            let _ = self.spilo(&["down"]);
        }
    }
}
