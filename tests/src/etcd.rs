//! A single-node etcd from Debian's `etcd-server`, on free loopback ports, with its data in the
//! test's work directory.

use crate::ports;
use crate::proc::Spawned;
use crate::wait;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A running etcd.
pub struct Etcd {
    /// `127.0.0.1:<client port>`.
    pub client_addr: String,
    /// The peer port (what `_etcd-server._tcp` SRV records point at).
    pub peer_port: u16,
    process: Spawned,
}

impl Etcd {
    /// Starts etcd under `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut one = Self::start_cluster(dir, 1).await?;
        Ok(one.remove(0))
    }

    /// Starts etcd under `dir` listening on `host` as well as on loopback; `client_addr` is
    /// the `host` one.
    pub async fn start_on(dir: &Path, host: &str) -> anyhow::Result<Self> {
        let mut one = Self::start_inner(dir, 1, Some(host)).await?;
        Ok(one.remove(0))
    }

    /// Starts an `n`-member etcd cluster under `dir` and waits until every member answers.
    pub async fn start_cluster(dir: &Path, n: usize) -> anyhow::Result<Vec<Self>> {
        Self::start_inner(dir, n, None).await
    }

    async fn start_inner(dir: &Path, n: usize, host: Option<&str>) -> anyhow::Result<Vec<Self>> {
        let binary = which("etcd")?;
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (ports::free(), ports::free())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data = dir.join(if n == 1 {
                "etcd".to_string()
            } else {
                format!("etcd{i}")
            });
            std::fs::create_dir_all(&data)?;
            let mut cmd = Command::new(&binary);
            cmd.arg("--name")
                .arg(format!("e{i}"))
                .arg("--data-dir")
                .arg(&data)
                .arg("--listen-client-urls")
                .arg(match host {
                    Some(h) => format!("http://127.0.0.1:{client},http://{h}:{client}"),
                    None => format!("http://127.0.0.1:{client}"),
                })
                .arg("--advertise-client-urls")
                .arg(format!("http://{}:{client}", host.unwrap_or("127.0.0.1")))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--logger")
                .arg("zap");
            let log = if n == 1 {
                dir.join("etcd.log")
            } else {
                dir.join(format!("etcd{i}.log"))
            };
            members.push(Self {
                client_addr: format!("{}:{client}", host.unwrap_or("127.0.0.1")),
                peer_port: *peer,
                process: Spawned::start(cmd, &log)?,
            });
        }
        for etcd in &members {
            let url = etcd.url();
            wait::until("etcd to answer", Duration::from_secs(20), || {
                let url = url.clone();
                async move {
                    let mut c = etcd_client::Client::connect([url], None).await.ok()?;
                    c.status().await.ok().map(|_| ())
                }
            })
            .await?;
        }
        Ok(members)
    }

    /// Whether this member is the etcd cluster's leader.
    pub async fn is_leader(&self) -> anyhow::Result<bool> {
        let s = self.client().await?.status().await?;
        Ok(s.leader() == s.header().map_or(0, |h| h.member_id()))
    }

    /// `kill -9` of this member.
    pub fn kill(&mut self) {
        self.process.kill_group();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the etcd process: an etcd that stops answering.
    pub fn freeze(&self, frozen: bool) {
        self.process.signal(if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        });
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// A client.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.url()], None).await?)
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<(String, i64)>> {
        let resp = self.client().await?.get(key, None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())))
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.process.log
    }
}

/// Finds a program on PATH or in the usual sbin directories.
pub fn which(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} is not installed (run ./scripts/install-deps)"))
}
