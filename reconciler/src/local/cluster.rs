//! One local cluster under supervision: etcd or ZooKeeper (unless the cluster names the
//! store's hosts), one
//! governor per instance, HAProxy. Starts them, starts again whatever dies (like the
//! auto-scaling group replaces dead instances), resizes, and stops them in order: replicas,
//! then the primary (which releases the leader key), then HAProxy, then etcd.

use super::governor_config;
use super::haproxy;
use super::ports::Ports;
use super::state::{ClusterState, Layout, MemberState};
use super::user::RunAs;
use anyhow::{Context, bail};
use spilo_model::spec::{ClusterFile, DriftPolicy};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

mod members;
mod process;
mod upgrade;
mod zookeeper;
pub use process::postgres_answers;
use process::{Proc, signal, spawn, stop_proc};
pub use upgrade::{
    MAX_LAG, Record, SETTLE, Step, Stranded, Upgraded, data_version, preconditions, read_record,
};

/// One cluster as `spilo up` runs it.
pub struct LocalCluster {
    /// The cluster name.
    pub name: String,
    /// The cluster file it runs.
    pub file: ClusterFile,
    source: String,
    dir: PathBuf,
    layout: Layout,
    ports: Ports,
    run_as: RunAs,
    governor_bin: PathBuf,
    etcd_endpoints: Vec<String>,
    tls: Option<super::tls::LocalTls>,
    /// `spec.standby`, resolved to the source's members.
    standby: Option<spilo_model::StandbySource>,
    /// A `spec.standby` edit `spilo up` refused: not tried again until the file changes.
    pub refused_standby: Option<Option<spilo_model::spec::StandbySpec>>,
    /// The file whose major upgrade was refused or failed: not tried again until the file
    /// changes.
    pub refused_upgrade: Option<ClusterFile>,
    /// A `spec.dcs` edit `spilo up` holds back (said once until the file changes again).
    pub refused_dcs: Option<Option<spilo_model::spec::DcsSpec>>,
    /// The store's process: etcd, or ZooKeeper ([`Ports::zookeeper`]).
    etcd: Option<Proc>,
    haproxy: Option<Proc>,
    members: Vec<Option<Proc>>,
    restart_after: Vec<Option<Instant>>,
    failures: Vec<u32>,
}

/// A random password, hex encoded.
pub(super) fn random_password() -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 18];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) fn write_private(path: &Path, text: &str, run_as: &RunAs) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    run_as.own(path)?;
    Ok(())
}

pub(super) fn mkdir(path: &Path, mode: u32, run_as: &RunAs) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    run_as.own(path)?;
    Ok(())
}

impl LocalCluster {
    /// Prepares a cluster's directory: secrets (generated once), the governor binary, etcd and
    /// member directories, the WAL bucket directory. Starts nothing.
    ///
    /// A standby cluster (`standby`, resolved from `spec.standby`) is a copy of its source, so
    /// it takes the source's passwords (its roles are the source's) and the source's CA (its
    /// members and the source's check each other's certificates): the source is prepared first.
    pub fn prepare(
        file: ClusterFile,
        source: String,
        layout: &Layout,
        ports: Ports,
        run_as: &RunAs,
        governor_bin: &Path,
        standby: Option<spilo_model::StandbySource>,
    ) -> anyhow::Result<Self> {
        let name = file.metadata.name.to_string();
        let dir = layout.cluster(&name);
        mkdir(&dir, 0o755, run_as)?;
        let secrets = dir.join("secrets");
        mkdir(&secrets, 0o700, run_as)?;
        let from = file
            .spec
            .standby
            .as_ref()
            .and_then(|s| s.from.as_ref())
            .map(|f| layout.cluster(f.as_str()));
        if let Some(from) = &from {
            for s in ["superuser", "replication"] {
                let theirs = from.join("secrets").join(s);
                let text = std::fs::read_to_string(&theirs).with_context(|| {
                    format!(
                        "cluster {name} is a standby of {}: read {}",
                        from.display(),
                        theirs.display()
                    )
                })?;
                write_private(&secrets.join(s), &text, run_as)?;
            }
            let (ours, theirs) = (
                super::tls::LocalTls::under(&dir),
                super::tls::LocalTls::under(from),
            );
            if theirs.ca.exists() {
                if let Some(d) = ours.ca.parent() {
                    mkdir(d, 0o700, run_as)?;
                }
                for (src, dst, mode) in [
                    (&theirs.ca, &ours.ca, 0o644),
                    (&theirs.ca_key, &ours.ca_key, 0o600),
                ] {
                    std::fs::copy(src, dst).with_context(|| format!("copy {}", src.display()))?;
                    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
                    run_as.own(dst)?;
                }
            }
        }
        for s in ["superuser", "replication", "restapi-token"] {
            let p = secrets.join(s);
            if !p.exists() {
                write_private(&p, &random_password()?, run_as)?;
            }
        }
        let su = std::fs::read_to_string(secrets.join("superuser"))?;
        write_private(
            &dir.join("pgpass"),
            &format!("*:*:*:postgres:{}\n", su.trim()),
            run_as,
        )?;
        mkdir(&dir.join("bin"), 0o755, run_as)?;
        let bin = dir.join("bin/governor");
        std::fs::copy(governor_bin, &bin)
            .with_context(|| format!("copy {}", governor_bin.display()))?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        mkdir(&dir.join("members"), 0o755, run_as)?;
        mkdir(&dir.join("bucket"), 0o700, run_as)?;
        // TLS everywhere when the cluster runs its own etcd; someone else's etcd named in
        // spec.dcs.hosts is spoken to as written (its CA is not ours to make).
        let tls = match (&file.spec.dcs, ports.etcd.or(ports.zookeeper)) {
            (Some(dcs), _) if !dcs.hosts.is_empty() => None,
            (_, Some(_)) => {
                let t = super::tls::LocalTls::under(&dir);
                t.prepare(&name, run_as)?;
                Some(t)
            }
            _ => None,
        };
        let zookeeper = file
            .spec
            .dcs
            .as_ref()
            .and_then(|d| d.zookeeper.as_ref())
            .map(|z| match ports.zookeeper {
                Some(port) => vec![format!("127.0.0.1:{port}")],
                None => z.hosts.clone(),
            });
        let etcd_endpoints = match (&file.spec.dcs, ports.etcd) {
            _ if zookeeper.is_some() => zookeeper.unwrap_or_default(),
            (Some(dcs), _) if !dcs.hosts.is_empty() => dcs.hosts.clone(),
            (_, Some(port)) => vec![format!("https://127.0.0.1:{port}")],
            _ => bail!(
                "cluster {name}: the local target needs etcd hosts in spec.dcs.hosts or runs its own etcd"
            ),
        };
        let n = usize::from(ports.instances);
        Ok(Self {
            name,
            file,
            source,
            dir,
            layout: layout.clone(),
            ports,
            run_as: run_as.clone(),
            governor_bin: bin,
            etcd_endpoints,
            tls,
            standby,
            refused_standby: None,
            refused_upgrade: None,
            refused_dcs: None,
            etcd: None,
            haproxy: None,
            members: (0..n).map(|_| None).collect(),
            restart_after: vec![None; n],
            failures: vec![0; n],
        })
    }

    /// A handle on a cluster another process (`spilo up`) supervises, from its `state.json`,
    /// for asking its members and running the governor's read-only steps (`spilo plan
    /// --local`): it has no processes, and must not be used to start or stop any. `file` is
    /// the cluster file as it runs.
    pub fn attach(
        state: &ClusterState,
        file: ClusterFile,
        layout: &Layout,
        run_as: &RunAs,
    ) -> Self {
        let dir = layout.cluster(&state.cluster);
        let n = state.members.len();
        Self {
            name: state.cluster.clone(),
            file,
            source: state.file.clone(),
            governor_bin: dir.join("bin/governor"),
            dir,
            layout: layout.clone(),
            ports: state.ports.clone(),
            run_as: run_as.clone(),
            etcd_endpoints: state.etcd_endpoints.clone(),
            tls: state.tls.clone(),
            standby: None,
            refused_standby: None,
            refused_upgrade: None,
            refused_dcs: None,
            etcd: None,
            haproxy: None,
            members: (0..n).map(|_| None).collect(),
            restart_after: vec![None; n],
            failures: vec![0; n],
        }
    }

    /// Takes `file` with its changed `spec.standby` (resolved as `standby`): the members
    /// rendered from now on carry it.
    pub fn set_standby(&mut self, file: ClusterFile, standby: Option<spilo_model::StandbySource>) {
        self.file.spec.standby = file.spec.standby;
        self.standby = standby;
        self.refused_standby = None;
    }

    /// The file it was started from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The cluster's ports.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Whether the cluster's store is ZooKeeper (`spec.dcs.zookeeper`).
    pub fn on_zookeeper(&self) -> bool {
        self.file
            .spec
            .dcs
            .as_ref()
            .is_some_and(|d| d.zookeeper.is_some())
    }

    /// What the store's process is, for messages.
    fn store_name(&self) -> &'static str {
        if self.ports.zookeeper.is_some() {
            "ZooKeeper"
        } else {
            "etcd"
        }
    }

    fn member_name(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.join("members").join(self.member_name(i))
    }

    /// Starts the store (etcd, or ZooKeeper with `spec.dcs.zookeeper`, when this cluster runs
    /// its own) and waits until it answers.
    pub async fn start_etcd(&mut self) -> anyhow::Result<()> {
        if let Some(port) = self.ports.zookeeper {
            return self.start_zookeeper(port).await;
        }
        let Some(port) = self.ports.etcd else {
            return Ok(());
        };
        let data = self.dir.join("etcd");
        mkdir(&data, 0o700, &self.run_as)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://127.0.0.1:{port}"))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://127.0.0.1:{port}"))
            .arg("--listen-peer-urls")
            .arg(format!("{scheme}://127.0.0.1:{}", port + 1))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("{scheme}://127.0.0.1:{}", port + 1))
            .arg("--initial-cluster")
            .arg(format!("{}={scheme}://127.0.0.1:{}", self.name, port + 1))
            .arg("--logger")
            .arg("zap");
        let client_tls = match &self.tls {
            Some(t) => {
                cmd.args(t.etcd_args());
                Some(t.etcd_client()?)
            }
            None => None,
        };
        self.etcd = Some(spawn(cmd, &self.dir.join("etcd.log"), &self.run_as)?);
        let url = format!("{scheme}://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = async {
                let mut c = crate::etcd::connect(std::slice::from_ref(&url), client_tls.as_ref())
                    .await
                    .ok()?;
                c.status().await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), ok)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return Ok(());
            }
            if let Some(p) = self.etcd.as_mut()
                && let Ok(Some(status)) = p.child.try_wait()
            {
                bail!(
                    "etcd exited ({status}); see {}",
                    self.dir.join("etcd.log").display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not answer within 30s; see {}",
                    self.dir.join("etcd.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Member `i`'s governor configuration for `file`.
    fn render_member(&self, i: usize, file: &ClusterFile) -> anyhow::Result<String> {
        let mdir = self.member_dir(i);
        mkdir(&mdir, 0o755, &self.run_as)?;
        governor_config::render(
            file,
            u16::try_from(i).unwrap_or(u16::MAX),
            &self.ports,
            &self.etcd_endpoints,
            &mdir,
            &self.dir.join("secrets"),
            self.tls.as_ref(),
            self.standby.as_ref(),
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", self.source))
    }

    /// Writes member `i`'s configuration and starts its governor.
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let mdir = self.member_dir(i);
        let cfg = self.render_member(i, &self.file)?;
        let path = mdir.join("governor.yaml");
        std::fs::write(&path, cfg)?;
        self.run_as.own(&path)?;
        let mut cmd = Command::new(&self.governor_bin);
        cmd.arg("run").arg("--config").arg(&path).env(
            "SPILO_LOG",
            std::env::var("SPILO_LOG").unwrap_or_else(|_| "info".into()),
        );
        let p = spawn(cmd, &mdir.join("governor.log"), &self.run_as)?;
        if let Some(slot) = self.members.get_mut(i) {
            *slot = Some(p);
        }
        Ok(())
    }

    /// Writes haproxy.cfg and starts HAProxy, or makes a running one reload it.
    pub fn start_or_reload_haproxy(&mut self) -> anyhow::Result<()> {
        let hc = &self.file.spec.endpoints.health_check;
        let cfg = haproxy::config(
            &self.name,
            &self.ports,
            &hc.primary_path,
            &hc.replica_path,
            hc.interval,
            self.tls.as_ref().map(|t| t.ca.as_path()),
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        if let Some(p) = &self.haproxy {
            // HAProxy in master-worker mode re-reads its configuration on SIGUSR2.
            signal(p.pid, nix::sys::signal::Signal::SIGUSR2);
            return Ok(());
        }
        let mut cmd = Command::new("haproxy");
        cmd.arg("-W").arg("-db").arg("-f").arg(&path);
        self.haproxy = Some(spawn(cmd, &self.dir.join("haproxy.log"), &self.run_as)?);
        Ok(())
    }

    /// Starts everything that is not running yet, in order.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.etcd.is_none() {
            self.start_etcd().await?;
        }
        for i in 0..self.members.len() {
            if self.members[i].is_none() {
                self.start_member(i)?;
            }
        }
        self.start_or_reload_haproxy()?;
        self.write_state()
    }

    /// Starts again whatever exited, with a growing delay for things that keep dying.
    pub async fn keep_alive(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if let Some(p) = self.etcd.as_mut()
            && let Ok(Some(status)) = p.child.try_wait()
        {
            eprintln!(
                "{}: {} exited ({status}); starting it again",
                self.name,
                self.store_name()
            );
            self.etcd = None;
            self.start_etcd().await?;
        }
        if let Some(p) = self.haproxy.as_mut()
            && let Ok(Some(status)) = p.child.try_wait()
        {
            eprintln!(
                "{}: HAProxy exited ({status}); starting it again",
                self.name
            );
            self.haproxy = None;
            self.start_or_reload_haproxy()?;
        }
        for i in 0..self.members.len() {
            let exited = match self.members[i].as_mut() {
                Some(p) => match p.child.try_wait() {
                    Ok(Some(status)) => Some((status, p.started.elapsed())),
                    _ => None,
                },
                None => None,
            };
            if let Some((status, _)) = exited
                && self.file.spec.drift_policy() == DriftPolicy::Warn
            {
                eprintln!(
                    "{}: the governor of {} exited ({status}); reconcile.drift is warn, so it is not replaced (spilo watch --target local reports it; set drift: revert to replace dead members) (log: {})",
                    self.name,
                    self.member_name(i),
                    self.member_dir(i).join("governor.log").display()
                );
                self.members[i] = None;
                self.restart_after[i] = None;
                continue;
            }
            if let Some((status, ran)) = exited {
                // The first death is replaced at once; a member that keeps dying waits longer
                // each time (1 s, 2 s, ... up to a minute) so it does not spin.
                self.failures[i] = if ran > Duration::from_secs(60) {
                    1
                } else {
                    self.failures[i] + 1
                };
                let delay = match self.failures[i] {
                    0 | 1 => Duration::ZERO,
                    n => Duration::from_secs(1u64 << (n - 2).min(6)).min(Duration::from_secs(60)),
                };
                eprintln!(
                    "{}: the governor of {} exited ({status}); starting it again{} (log: {})",
                    self.name,
                    self.member_name(i),
                    if delay.is_zero() {
                        String::new()
                    } else {
                        format!(" in {}s", delay.as_secs())
                    },
                    self.member_dir(i).join("governor.log").display()
                );
                self.members[i] = None;
                self.restart_after[i] = Some(now + delay);
            }
            if self.members[i].is_none() && self.restart_after[i].is_some_and(|t| now >= t) {
                self.restart_after[i] = None;
                self.start_member(i)?;
            }
        }
        self.write_state()
    }

    /// Changes the number of members: new ones start and join; removed ones (the highest
    /// numbers) stop gracefully, so a primary among them hands over first.
    pub async fn resize(&mut self, file: ClusterFile, ports: Ports) -> anyhow::Result<()> {
        let want = usize::from(ports.instances);
        let have = self.members.len();
        self.file = file;
        if want < have {
            for i in (want..have).rev() {
                if let Some(mut p) = self.members[i].take() {
                    eprintln!("{}: stopping {}", self.name, self.member_name(i));
                    stop_proc(&mut p, &self.member_name(i), Duration::from_secs(90)).await;
                }
            }
            self.members.truncate(want);
            self.restart_after.truncate(want);
            self.failures.truncate(want);
        }
        for i in have..want {
            let i = u16::try_from(i).unwrap_or(u16::MAX);
            for (port, what) in [
                (ports.postgres + i, "PostgreSQL"),
                (ports.api + i, "REST API"),
            ] {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    bail!(
                        "port {port} for the {what} of {}-{i} is already in use; the new member was not started",
                        self.name
                    );
                }
            }
        }
        self.ports = ports;
        while self.members.len() < want {
            self.members.push(None);
            self.restart_after.push(None);
            self.failures.push(0);
        }
        for i in have..want {
            self.start_member(i)?;
        }
        self.start_or_reload_haproxy()?;
        self.write_state()
    }

    /// Stops everything in order: replicas, the primary, HAProxy, etcd.
    pub async fn stop(&mut self) {
        self.stop_governors().await;
        if let Some(mut p) = self.haproxy.take() {
            eprintln!("{}: stopping HAProxy", self.name);
            stop_proc(&mut p, "HAProxy", Duration::from_secs(10)).await;
        }
        if let Some(mut p) = self.etcd.take() {
            let store = self.store_name();
            eprintln!("{}: stopping {store}", self.name);
            stop_proc(&mut p, store, Duration::from_secs(30)).await;
        }
        let _ = self.write_state();
    }

    /// Stops the governors: replicas, then the primary (it releases the leader key). Returns
    /// when the primary's stop began, and which member it was.
    async fn stop_governors(&mut self) -> (Instant, Option<usize>) {
        let leader = self.leader().await;
        let mut replicas = Vec::new();
        for i in 0..self.members.len() {
            if Some(i) != leader
                && let Some(p) = self.members[i].take()
            {
                replicas.push((self.member_name(i), p));
            }
        }
        if !replicas.is_empty() {
            let names: Vec<&str> = replicas.iter().map(|(n, _)| n.as_str()).collect();
            eprintln!("{}: stopping replicas {}", self.name, names.join(", "));
            futures::future::join_all(
                replicas
                    .iter_mut()
                    .map(|(n, p)| stop_proc(p, n, Duration::from_secs(90))),
            )
            .await;
        }
        let primary_stop = Instant::now();
        if let Some(i) = leader
            && let Some(mut p) = self.members[i].take()
        {
            eprintln!(
                "{}: stopping the primary {} (it releases the leader key)",
                self.name,
                self.member_name(i)
            );
            stop_proc(&mut p, &self.member_name(i), Duration::from_secs(90)).await;
        }
        (primary_stop, leader)
    }

    /// Records the processes in `state.json`.
    pub fn write_state(&self) -> anyhow::Result<()> {
        let members = (0..self.members.len())
            .map(|i| MemberState {
                name: self.member_name(i),
                governor_pid: self.members[i].as_ref().map(|p| p.pid),
                pg_port: self.ports.postgres + u16::try_from(i).unwrap_or(0),
                api_port: self.ports.api + u16::try_from(i).unwrap_or(0),
            })
            .collect();
        self.layout.write(&ClusterState {
            cluster: self.name.clone(),
            file: self.source.clone(),
            supervisor_pid: std::process::id(),
            ports: self.ports.clone(),
            etcd_endpoints: self.etcd_endpoints.clone(),
            etcd_pid: self.etcd.as_ref().map(|p| p.pid),
            zookeeper: self.on_zookeeper(),
            haproxy_pid: self.haproxy.as_ref().map(|p| p.pid),
            members,
            tls: self.tls.clone(),
            running: Some(self.file.clone()),
        })
    }

    /// Waits until a member is the primary and PostgreSQL answers through the primary endpoint.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // A standby cluster has no primary: its leader answering is ready.
            let port = match self.leader().await {
                Some(i) if self.standby.is_some() => {
                    Some(self.ports.postgres + u16::try_from(i).unwrap_or(0))
                }
                Some(_) => Some(self.ports.primary),
                None => None,
            };
            if let Some(port) = port
                && postgres_answers(port).await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "cluster {} has no {} after {}s; see {}",
                    self.name,
                    if self.standby.is_some() {
                        "standby leader"
                    } else {
                        "primary"
                    },
                    timeout.as_secs(),
                    self.dir.join("members").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The connection strings printed when the cluster is ready.
    pub fn connection_info(&self) -> String {
        let hosts: Vec<&str> = (0..self.ports.instances).map(|_| "127.0.0.1").collect();
        let ports: Vec<String> = (0..self.ports.instances)
            .map(|i| (self.ports.postgres + i).to_string())
            .collect();
        let mut s = format!(
            "cluster {} is ready\n  primary (through HAProxy):  {}\n",
            self.name,
            super::status::dsn(self.ports.primary, self.tls.as_ref())
        );
        if let Some(r) = self.ports.replica {
            s.push_str(&format!(
                "  replicas (through HAProxy): {}\n",
                super::status::dsn(r, self.tls.as_ref())
            ));
        }
        s.push_str(&format!(
            "  any member, read-write:     host={} port={} user=postgres dbname=postgres target_session_attrs=read-write{}\n  \
             password:                   PGPASSFILE={}\n",
            hosts.join(","),
            ports.join(","),
            self.tls
                .as_ref()
                .map(|t| format!(" sslmode=verify-full sslrootcert={}", t.ca.display()))
                .unwrap_or_default(),
            self.dir.join("pgpass").display()
        ));
        s
    }
}
