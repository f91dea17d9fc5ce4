//! A cluster of governors on one machine, each with its own data directory, PostgreSQL port
//! and REST port, all in one temporary work directory that the unprivileged user owns.

use crate::etcd::Etcd;
use crate::ports;
use crate::proc::{self, RunAs, Spawned};
use crate::wait;
use nix::sys::signal::Signal;
use spilo_model::NodeStatus;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cli;
mod config;
mod logs;
mod store;

/// The superuser password every test cluster uses.
pub const SUPERUSER_PASSWORD: &str = "e2e-superuser-secret";

/// The REST API token every test cluster's governors require for mutating endpoints.
pub const API_TOKEN: &str = "e2e-api-token";

/// How a test cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The etcd scope.
    pub scope: String,
    /// How many members.
    pub members: usize,
    /// The `ha:` section of every member's configuration, as YAML flow text.
    pub ha: String,
    /// Serve the REST APIs over HTTPS with a self-signed certificate made by `openssl`.
    pub api_tls: bool,
    /// Archive WAL into `<work dir>/bucket` (the filesystem store).
    pub archive: bool,
    /// With `archive`: the store as a YAML mapping entry instead of the directory (e.g.
    /// `s3: {...}`).
    pub archive_store: Option<String>,
    /// With `archive`: more entries of the `archive:` mapping, each starting with `, ` (e.g.
    /// `, backups: {...}`).
    pub archive_extra: String,
    /// Extra environment for the governors (and so for PostgreSQL's archive commands).
    pub env: Vec<(String, String)>,
    /// Each member in its own network namespace ([`crate::netns::NetLab`]); needs root.
    pub netns: bool,
    /// TLS everywhere (the default, as `spilo up` runs): a cluster CA, etcd with client
    /// certificates, members that issue their own certificates (`tls:`).
    pub tls: bool,
    /// With `tls`: the members' certificate lifetime in seconds (`tls.lifetime`).
    pub tls_lifetime: Option<u64>,
    /// The PostgreSQL major version the members run (15, or 18 from `scripts/install-deps`).
    pub version: u32,
    /// The coordination store is ZooKeeper (`zookeeper:` in each member's configuration)
    /// with this many servers (1, or 3 for an ensemble); 0: etcd. The cluster's etcd is
    /// started either way, and no member is told of it with ZooKeeper.
    pub zookeeper: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            scope: "e2e".into(),
            members: 3,
            ha: "{}".into(),
            api_tls: false,
            archive: false,
            archive_store: None,
            archive_extra: String::new(),
            env: Vec::new(),
            netns: false,
            tls: true,
            tls_lifetime: None,
            version: 15,
            zookeeper: 0,
        }
    }
}

/// Where PostgreSQL `version`'s programs are here: Debian's directory, or
/// `/usr/local/lib/postgresql/<version>/bin` (where `scripts/install-deps` puts 18).
pub fn pg_bin(version: u32) -> std::path::PathBuf {
    let debian = std::path::PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
    if debian.join("postgres").is_file() {
        debian
    } else {
        std::path::PathBuf::from(format!("/usr/local/lib/postgresql/{version}/bin"))
    }
}

/// One member.
pub struct Member {
    /// Its name (`m1`, `m2`, ...).
    pub name: String,
    /// Its PostgreSQL port.
    pub pg_port: u16,
    /// Its REST port.
    pub api_port: u16,
    /// The address its PostgreSQL and REST API listen on.
    pub host: String,
    /// Its directory (data, run dir, config, log).
    pub dir: PathBuf,
    /// The coordination store's endpoints it uses (etcd's, or the ZooKeeper servers with
    /// [`ClusterOptions::zookeeper`]; a proxy in partition tests).
    pub store_hosts: Vec<String>,
    /// Extra YAML appended to its configuration.
    pub extra_yaml: String,
    /// Environment for this member's governor only (beside the cluster's `env`).
    pub extra_env: Vec<(String, String)>,
    process: Option<Spawned>,
}

impl Member {
    /// Its governor configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("governor.yaml")
    }

    /// Its governor log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("governor.log")
    }

    /// Its PostgreSQL server log.
    pub fn pg_log_path(&self) -> PathBuf {
        self.dir.join("data.run/postgresql.log")
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The governor's pid while it runs.
    pub fn governor_pid(&mut self) -> Option<u32> {
        let p = self.process.as_mut()?;
        if p.exited() { None } else { Some(p.pid()) }
    }
}

/// A test cluster with its own etcd.
pub struct Cluster {
    /// The etcd scope.
    pub scope: String,
    /// The members.
    pub members: Vec<Member>,
    /// The etcd all members use (unless a member's `store_hosts` says otherwise).
    pub etcd: Etcd,
    /// The ZooKeeper servers, with [`ClusterOptions::zookeeper`].
    pub zookeeper: Vec<crate::zookeeper::RealZooKeeper>,
    run_as: RunAs,
    governor: PathBuf,
    spilo: PathBuf,
    secrets: PathBuf,
    options: ClusterOptions,
    http: reqwest::Client,
    ca: Option<crate::tls::TestCa>,
    /// Filesystems mounted for members, unmounted on drop.
    mounts: Vec<PathBuf>,
    /// The members' network namespaces, with `netns`.
    pub lab: Option<crate::netns::NetLab>,
    /// ERROR lines the test causes on purpose (see [`Cluster::expect_errors`]).
    expected_errors: Vec<String>,
    // Dropped last: removes the work directory.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Creates the work directory, starts etcd and writes every member's configuration.
    /// Governors are not started yet.
    pub async fn new(options: ClusterOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("spilo-e2e-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let run_as = RunAs::detect()?;
        let governor = proc::installed("governor")?;
        let spilo = proc::installed("spilo")?;
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets)?;
        for (file, value) in [
            ("superuser", SUPERUSER_PASSWORD),
            ("replication", "e2e-replication-secret"),
            ("restapi-token", API_TOKEN),
        ] {
            let p = secrets.join(file);
            std::fs::write(&p, value)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            run_as.own(&p)?;
        }
        let ca = if options.tls {
            Some(crate::tls::TestCa::create(dir.path(), run_as)?)
        } else {
            None
        };
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(2));
        let mut trusted = Vec::new();
        if options.api_tls {
            trusted.extend(crate::tls::api_certificate(&secrets, run_as)?);
        }
        if let Some(ca) = &ca {
            trusted.extend(reqwest::Certificate::from_pem_bundle(&std::fs::read(
                &ca.cert,
            )?)?);
        }
        if !trusted.is_empty() {
            http = http.tls_certs_only(trusted);
        }
        let http = http.build()?;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))?;
        run_as.own(&secrets)?;
        if options.archive {
            let bucket = dir.path().join("bucket");
            std::fs::create_dir(&bucket)?;
            run_as.own(&bucket)?;
        }
        let lab = if options.netns {
            Some(crate::netns::NetLab::new(options.members)?)
        } else {
            None
        };
        let etcd = match (&lab, &ca) {
            (Some(lab), Some(ca)) => {
                Etcd::start_tls(dir.path(), Some(&lab.etcd_ip()), ca, run_as).await?
            }
            (None, Some(ca)) => Etcd::start_tls(dir.path(), None, ca, run_as).await?,
            (Some(lab), None) => Etcd::start_on(dir.path(), &lab.etcd_ip()).await?,
            (None, None) => Etcd::start(dir.path()).await?,
        };
        let zookeeper = match options.zookeeper {
            0 => Vec::new(),
            1 => vec![crate::zookeeper::start().await],
            3 => crate::zookeeper::start_ensemble().await,
            n => anyhow::bail!("a ZooKeeper of 1 or 3 servers, not {n}"),
        };
        let store_hosts = if zookeeper.is_empty() {
            vec![etcd.client_addr.clone()]
        } else {
            zookeeper.iter().map(|z| z.host.clone()).collect()
        };
        let mut members = Vec::new();
        for i in 1..=options.members {
            let name = format!("m{i}");
            let mdir = dir.path().join(&name);
            std::fs::create_dir(&mdir)?;
            run_as.own(&mdir)?;
            members.push(Member {
                name,
                pg_port: ports::free(),
                api_port: ports::free(),
                host: lab
                    .as_ref()
                    .map_or_else(|| "127.0.0.1".to_string(), |l| l.member_ip(i)),
                dir: mdir,
                store_hosts: store_hosts.clone(),
                extra_yaml: String::new(),
                extra_env: Vec::new(),
                process: None,
            });
        }
        Ok(Self {
            scope: options.scope.clone(),
            members,
            etcd,
            zookeeper,
            run_as,
            governor,
            spilo,
            secrets,
            options,
            http,
            ca,
            mounts: Vec::new(),
            lab,
            expected_errors: Vec::new(),
            dir,
        })
    }

    /// Gives every member's data directory its own `mb` MiB filesystem (tmpfs), so a test can
    /// fill one up. Call before the governors start; needs root (or passwordless sudo).
    pub fn small_data_disks(&mut self, mb: u64) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            let data = self.members[i].data_dir();
            std::fs::create_dir_all(&data)?;
            let options = format!(
                "size={mb}m,mode=0700,uid={},gid={}",
                self.run_as.uid, self.run_as.gid
            );
            let path = data.to_string_lossy().into_owned();
            crate::privileged::run("mount", &["-t", "tmpfs", "-o", &options, "tmpfs", &path])?;
            self.mounts.push(data);
        }
        Ok(())
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster CA's certificate, when the cluster has one (`tls`).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca.as_ref().map(|c| c.cert.as_path())
    }

    /// The user servers run as.
    pub fn run_as(&self) -> RunAs {
        self.run_as
    }

    /// Runs `governor <args> --config <config>` as the servers' user with the governors'
    /// environment (e.g. moto's credentials); returns stdout, or an error with stderr.
    pub fn governor_command(&self, args: &[&str], config: &Path) -> anyhow::Result<String> {
        let out = self.governor_output(args, config)?;
        anyhow::ensure!(
            out.status.success(),
            "governor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `governor <args> --config <config>` as the members run, whatever its exit status.
    pub fn governor_output(
        &self,
        args: &[&str],
        config: &Path,
    ) -> anyhow::Result<std::process::Output> {
        Ok(self
            .run_as
            .command(self.governor_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .envs(
                self.options
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .output()?)
    }

    /// The installed governor binary.
    pub fn governor_bin(&self) -> &Path {
        &self.governor
    }

    /// The installed spilo binary.
    pub fn spilo_bin(&self) -> &Path {
        &self.spilo
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Writes a member's configuration and starts its governor.
    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let text = self.config_text(self.member(name));
        let run_as = self.run_as;
        let index = self
            .members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or(0)
            + 1;
        let mut cmd = match &self.lab {
            Some(lab) => lab.command(
                index,
                run_as.uid.as_raw(),
                run_as.gid.as_raw(),
                &self.governor,
            ),
            None => run_as.command(&self.governor),
        };
        cmd.envs(self.options.env.clone());
        let m = self.member_mut(name);
        cmd.envs(m.extra_env.clone());
        let path = m.config_path();
        std::fs::write(&path, text)?;
        run_as.own(&path)?;
        cmd.arg("run").arg("--config").arg(&path).env(
            "SPILO_LOG",
            std::env::var("SPILO_E2E_LOG").unwrap_or_else(|_| "info".into()),
        );
        m.process = Some(Spawned::start(cmd, &m.log_path())?);
        Ok(())
    }

    /// Starts every member.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for n in names {
            self.start(&n)?;
        }
        Ok(())
    }

    /// SIGTERM to a governor; waits for it to exit (it stops PostgreSQL and releases its keys).
    pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let m = self.member_mut(name);
        let Some(p) = m.process.as_mut() else {
            return Ok(());
        };
        p.signal(Signal::SIGTERM);
        if p.wait_exit(Duration::from_secs(60)).is_none() {
            anyhow::bail!("governor {name} did not exit within 60s of SIGTERM");
        }
        m.process = None;
        Ok(())
    }

    /// `kill -9` of a member's governor and of every process of its PostgreSQL at once.
    /// Returns when the signals were sent (the processes are gone when it returns).
    pub async fn kill9(&mut self, name: &str) -> anyhow::Result<std::time::Instant> {
        let postmaster = self.status(name).await.and_then(|s| s.postmaster_pid);
        let m = self.member_mut(name);
        let Some(p) = m.process.as_mut() else {
            anyhow::bail!("{name} is not running")
        };
        let governor = p.pid();
        proc::kill_group(governor);
        if let Some(pm) = postmaster {
            proc::kill_postgres(pm);
        }
        let at = std::time::Instant::now();
        p.wait_exit(Duration::from_secs(10));
        m.process = None;
        if let Some(pm) = postmaster {
            wait::until(
                "the killed postmaster to be gone",
                Duration::from_secs(10),
                || async move { (!proc::alive(pm)).then_some(()) },
            )
            .await?;
        }
        Ok(at)
    }

    /// A member's REST API base URL (`https` with `api_tls` or `tls`).
    pub fn api_url(&self, name: &str) -> String {
        let scheme = if self.options.api_tls || self.options.tls {
            "https"
        } else {
            "http"
        };
        let m = self.member(name);
        format!("{scheme}://{}:{}", m.host, m.api_port)
    }

    /// An HTTP client that trusts the cluster's REST API certificate.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The cluster's etcd keys.
    pub fn keys(&self) -> spilo_model::Keyspace {
        let scope = spilo_model::ClusterName::new(self.scope.as_str())
            .unwrap_or_else(|e| panic!("scope {:?}: {e}", self.scope));
        spilo_model::Keyspace::new(&scope)
    }

    /// The `sync` key, parsed (`None` when absent or unreadable).
    pub async fn sync_state(&self) -> Option<spilo_model::SyncState> {
        let (value, _) = self.etcd.get(&self.keys().sync()).await.ok()??;
        serde_json::from_str(&value).ok()
    }

    /// The WAL archive directory (with `archive`).
    pub fn bucket(&self) -> PathBuf {
        self.dir.path().join("bucket")
    }

    /// Where archived WAL files of this cluster land (with `archive`).
    pub fn archived_wal(&self) -> PathBuf {
        self.bucket().join(format!(
            "spilo/{}/wal/{}/wal_005",
            self.scope, self.options.version
        ))
    }

    /// The CA that signed the REST APIs' certificate (with `api_tls`, else the cluster CA).
    pub fn api_cert(&self) -> PathBuf {
        match (&self.ca, self.options.api_tls) {
            (Some(ca), false) => ca.cert.clone(),
            _ => self.secrets.join("ca.crt"),
        }
    }

    /// The cluster CA (with `tls`).
    pub fn ca(&self) -> Option<&crate::tls::TestCa> {
        self.ca.as_ref()
    }

    /// `GET /status` of a member.
    pub async fn status(&self, name: &str) -> Option<NodeStatus> {
        let url = format!("{}/status", self.api_url(name));
        let resp = self.http.get(url).send().await.ok()?;
        resp.json().await.ok()
    }

    /// The HTTP status code of `path` on a member's REST API (`None` when it does not answer).
    pub async fn http_code(&self, name: &str, path: &str) -> Option<u16> {
        let url = format!("{}{path}", self.api_url(name));
        self.http
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// The members whose `/primary` answers 200.
    pub async fn primaries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.members {
            if self.http_code(&m.name, "/primary").await == Some(200) {
                out.push(m.name.clone());
            }
        }
        out
    }

    /// Starts every member and waits for a primary and every replica streaming; returns the
    /// primary and the replicas.
    pub async fn start_streaming(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(String, Vec<String>)> {
        self.start_all()?;
        let primary = self.wait_primary(timeout).await?;
        let replicas: Vec<String> = self
            .members
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| *n != primary)
            .collect();
        for r in &replicas {
            self.wait_streaming(r, timeout).await?;
        }
        Ok((primary, replicas))
    }

    /// Waits until exactly one member reports itself primary and returns it.
    pub async fn wait_primary(&self, timeout: Duration) -> anyhow::Result<String> {
        wait::until("exactly one primary", timeout, || async {
            let p = self.primaries().await;
            (p.len() == 1).then(|| p[0].clone())
        })
        .await
    }

    /// Waits until `name` is a replica that streams from the leader (`/replica` answers 200).
    pub async fn wait_streaming(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        wait::until(
            &format!("{name} to stream as a replica"),
            timeout,
            || async { (self.http_code(name, "/replica").await == Some(200)).then_some(()) },
        )
        .await
    }

    /// One prober per member, each writing straight to that member every `interval`
    /// (labelled with the member's name), to check that no two members accept writes at once.
    pub fn per_member_prober(&self, interval: Duration) -> crate::probe::Prober {
        let targets = self
            .members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    format!(
                        "host={} port={} user=postgres password={SUPERUSER_PASSWORD} \
                         dbname=postgres connect_timeout=1",
                        m.host, m.pg_port
                    ),
                )
            })
            .collect();
        crate::probe::Prober::start(targets, interval)
    }

    /// The PostgreSQL major version the members run (`ClusterOptions::version`).
    pub fn version(&self) -> u32 {
        self.options.version
    }

    /// Members started from now on run PostgreSQL `major` (an upgrade's test).
    pub fn set_version(&mut self, major: u32) {
        self.options.version = major;
    }

    /// Whether the members speak TLS (`ClusterOptions::tls`).
    pub fn tls(&self) -> bool {
        self.options.tls
    }

    /// Fails unless the primary runs PostgreSQL `major` (`server_version_num`).
    pub async fn runs_version(&self, major: u32) -> anyhow::Result<()> {
        let primary = self
            .primaries()
            .await
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no primary to ask its version"))?;
        let num: String = self
            .sql(&primary)
            .await?
            .query_one("SHOW server_version_num", &[])
            .await?
            .get(0);
        let runs = num.parse::<u32>()? / 10_000;
        anyhow::ensure!(
            runs == major,
            "{primary} runs PostgreSQL {runs}, not {major}"
        );
        Ok(())
    }

    /// A SQL connection to a member as the superuser, over TCP with its password.
    pub async fn sql(&self, name: &str) -> anyhow::Result<tokio_postgres::Client> {
        let m = self.member(name);
        crate::sql::connect_dsn(&format!(
            "host={} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2",
            m.host, m.pg_port
        ))
        .await
    }

    /// The multi-host libpq string over every member that picks the writable one.
    pub fn read_write_dsn(&self) -> String {
        crate::sql::read_write_dsn(&self.members.iter().map(|m| m.pg_port).collect::<Vec<_>>())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for m in &mut self.members {
            if let Some(p) = m.process.as_mut() {
                p.signal(Signal::SIGTERM);
            }
        }
        for m in &mut self.members {
            if let Some(p) = m.process.as_mut()
                && p.wait_exit(Duration::from_secs(20)).is_none()
            {
                p.kill_group();
            }
        }
        for mount in &self.mounts {
            let path = mount.to_string_lossy();
            if let Err(e) = crate::privileged::run("umount", &["-l", &path]) {
                eprintln!("cannot unmount {path}: {e}");
            }
        }
        if !std::thread::panicking() {
            let unexpected = self.unexpected_errors_of_all();
            if !unexpected.is_empty() {
                self.print_logs();
                panic!(
                    "{} ERROR line(s) this test did not expect (Cluster::expect_errors):\n{}",
                    unexpected.len(),
                    unexpected.join("\n")
                );
            }
        }
    }
}
