//! Patroni 4.x on the same machine, for side-by-side benchmarks: three members at a given
//! timing, on the same etcd version, PostgreSQL build and loopback network as ours.
//! Nothing of Patroni is part of spilo; this only drives the `patroni` program.

use crate::cluster::SUPERUSER_PASSWORD;
use crate::etcd::Etcd;
use crate::ports;
use crate::proc::{self, RunAs, Spawned};
use crate::wait;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One Patroni member.
pub struct PatroniMember {
    /// Its name.
    pub name: String,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// REST port.
    pub api_port: u16,
    dir: PathBuf,
    process: Option<Spawned>,
}

impl PatroniMember {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// A three-member Patroni cluster with its own etcd.
pub struct PatroniCluster {
    /// Members.
    pub members: Vec<PatroniMember>,
    /// Its etcd.
    pub etcd: Etcd,
    dir: tempfile::TempDir,
}

impl PatroniCluster {
    /// Starts etcd and `n` Patroni members at Patroni's default timing (`patroni` is the
    /// program in a virtualenv that the unprivileged user can run).
    pub async fn start(patroni: &Path, n: usize) -> anyhow::Result<Self> {
        Self::start_with(patroni, n, crate::bench::Timing::PATRONI_DEFAULT).await
    }

    /// As [`PatroniCluster::start`], at `timing` (the `bootstrap.dcs` section).
    pub async fn start_with(
        patroni: &Path,
        n: usize,
        timing: crate::bench::Timing,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("spilo-bench-patroni-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let run_as = RunAs::detect()?;
        let etcd = Etcd::start(dir.path()).await?;
        let mut members = Vec::new();
        for i in 1..=n {
            let name = format!("p{i}");
            let mdir = dir.path().join(&name);
            std::fs::create_dir(&mdir)?;
            std::fs::set_permissions(&mdir, std::fs::Permissions::from_mode(0o700))?;
            run_as.own(&mdir)?;
            let m = PatroniMember {
                name,
                pg_port: ports::free(),
                api_port: ports::free(),
                dir: mdir,
                process: None,
            };
            let cfg = m.dir.join("patroni.yml");
            std::fs::write(&cfg, config(&m, &etcd, timing))?;
            run_as.own(&cfg)?;
            members.push(m);
        }
        for m in &mut members {
            let mut cmd = run_as.command(patroni);
            cmd.arg(m.dir.join("patroni.yml"));
            m.process = Some(Spawned::start(cmd, &m.dir.join("patroni.log"))?);
        }
        Ok(Self { members, etcd, dir })
    }

    async fn code(&self, m: &PatroniMember, path: &str) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}{path}", m.api_port);
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        c.get(url).send().await.ok().map(|r| r.status().as_u16())
    }

    /// Waits for one primary and `n - 1` streaming replicas; returns the primary's name.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<String> {
        wait::until(
            "Patroni: one primary and streaming replicas",
            timeout,
            || async {
                let mut primary = None;
                let mut replicas = 0;
                for m in &self.members {
                    if self.code(m, "/primary").await == Some(200) {
                        primary = Some(m.name.clone());
                    } else if self.code(m, "/replica").await == Some(200) {
                        replicas += 1;
                    }
                }
                primary.filter(|_| replicas + 1 == self.members.len())
            },
        )
        .await
    }

    /// Waits as [`PatroniCluster::wait_ready`], then creates the probe table on the primary;
    /// returns the primary's name.
    pub async fn ready_with_probe_table(&self, timeout: Duration) -> anyhow::Result<String> {
        let primary = self.wait_ready(timeout).await?;
        let port = self
            .pg_port(&primary)
            .ok_or_else(|| anyhow::anyhow!("no port for {primary}"))?;
        crate::sql::connect(port)
            .await?
            .batch_execute(crate::probe::TABLE_DDL)
            .await?;
        Ok(primary)
    }

    /// `kill -9` of the member's Patroni and every process of its PostgreSQL.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<std::time::Instant> {
        let m = self
            .members
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let postmaster: Option<u32> = std::fs::read_to_string(m.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
        if let Some(p) = m.process.as_mut() {
            let _ = nix::sys::signal::kill(proc::pid(p.pid()), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(pm) = postmaster {
            proc::kill_postgres(pm);
        }
        let at = std::time::Instant::now();
        if let Some(mut p) = m.process.take() {
            p.kill_group();
        }
        Ok(at)
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of a member's Patroni process while it runs.
    pub fn manager_pid(&mut self, name: &str) -> Option<u32> {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .and_then(|m| m.process.as_mut().map(|p| p.pid()))
    }

    /// The pids of the members' Patroni processes that run.
    pub fn manager_pids(&mut self) -> Vec<u32> {
        self.members
            .iter_mut()
            .filter_map(|m| m.process.as_mut().map(|p| p.pid()))
            .collect()
    }

    /// The multi-host read-write connection string.
    pub fn read_write_dsn(&self) -> String {
        crate::sql::read_write_dsn(&self.members.iter().map(|m| m.pg_port).collect::<Vec<_>>())
    }

    /// Prints the tail of every member's Patroni log.
    pub fn print_logs(&self) {
        for m in &self.members {
            let text = std::fs::read_to_string(m.dir.join("patroni.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "===== {} patroni log =====\n{}",
                m.name,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }

    /// A member's Patroni configuration file (for `patronictl -c`).
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.dir.join("patroni.yml"))
            .unwrap_or_default()
    }

    /// The PostgreSQL port of a member.
    pub fn pg_port(&self, name: &str) -> Option<u16> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.pg_port)
    }
}

/// Patroni's configuration at `timing`.
fn config(m: &PatroniMember, etcd: &Etcd, timing: crate::bench::Timing) -> String {
    format!(
        "scope: bench\nname: {name}\n\
restapi: {{listen: '127.0.0.1:{api}', connect_address: '127.0.0.1:{api}'}}\n\
etcd3: {{hosts: ['{etcd}']}}\n\
bootstrap:\n  dcs: {{ttl: {ttl}, loop_wait: {loop_wait}, retry_timeout: {retry}, postgresql: {{use_pg_rewind: true}}}}\n  initdb: [{{encoding: UTF8}}, data-checksums]\n\
postgresql:\n  listen: '127.0.0.1:{pg}'\n  connect_address: '127.0.0.1:{pg}'\n  data_dir: {data}\n  \
bin_dir: /usr/lib/postgresql/15/bin\n  pgpass: {dir}/pgpass\n  \
authentication:\n    superuser: {{username: postgres, password: {su}}}\n    \
replication: {{username: replicator, password: e2e-replication-secret}}\n    \
rewind: {{username: postgres, password: {su}}}\n  \
parameters: {{unix_socket_directories: '{dir}', shared_buffers: 16MB, max_connections: 40}}\n  \
pg_hba: ['local all all trust', 'host all all 127.0.0.1/32 scram-sha-256', 'host replication replicator 127.0.0.1/32 scram-sha-256']\n",
        name = m.name,
        api = m.api_port,
        etcd = etcd.client_addr,
        pg = m.pg_port,
        data = m.data_dir().display(),
        dir = m.dir.display(),
        su = SUPERUSER_PASSWORD,
        ttl = timing.ttl,
        loop_wait = timing.loop_wait,
        retry = timing.retry_timeout,
    )
}
