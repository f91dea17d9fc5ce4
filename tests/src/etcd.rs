//! A single-node etcd from Debian's `etcd-server`, on free loopback ports, with its data in the
//! test's work directory.

use crate::ports;
use crate::proc::{RunAs, Spawned};
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
    /// With TLS: the CA and the client certificate this harness presents.
    pub tls: Option<spilo_discovery::EtcdTls>,
    /// The client certificate and key files (with TLS), for the `spilo` CLI.
    pub client_files: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
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
        let mut one = Self::start_inner(dir, 1, Some(host), None).await?;
        Ok(one.remove(0))
    }

    /// Starts etcd with client and peer TLS and client-certificate authentication: a server
    /// certificate and the harness's client certificate from `ca`. Also on `host` when given.
    pub async fn start_tls(
        dir: &Path,
        host: Option<&str>,
        ca: &crate::tls::TestCa,
        run_as: RunAs,
    ) -> anyhow::Result<Self> {
        let mut one = Self::start_inner(dir, 1, host, Some((ca, run_as))).await?;
        Ok(one.remove(0))
    }

    /// Starts an `n`-member etcd cluster under `dir` and waits until every member answers.
    pub async fn start_cluster(dir: &Path, n: usize) -> anyhow::Result<Vec<Self>> {
        Self::start_inner(dir, n, None, None).await
    }

    /// [`Self::start_cluster`] with TLS from `ca` (see [`Self::start_tls`]).
    pub async fn start_cluster_tls(
        dir: &Path,
        n: usize,
        ca: &crate::tls::TestCa,
        run_as: RunAs,
    ) -> anyhow::Result<Vec<Self>> {
        Self::start_inner(dir, n, None, Some((ca, run_as))).await
    }

    async fn start_inner(
        dir: &Path,
        n: usize,
        host: Option<&str>,
        ca: Option<(&crate::tls::TestCa, RunAs)>,
    ) -> anyhow::Result<Vec<Self>> {
        let binary = which("etcd")?;
        let scheme = if ca.is_some() { "https" } else { "http" };
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend(host.map(str::to_string));
        let tls_files = match ca {
            Some((ca, run_as)) => {
                let server = ca.issue("etcd", &names, run_as)?;
                let client = ca.issue("etcd-client", &names, run_as)?;
                Some((ca.cert.clone(), server, client))
            }
            None => None,
        };
        let client_tls = match &tls_files {
            Some((ca, _, (cert, key))) => {
                Some(spilo_discovery::EtcdTls::read(ca, cert, key).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (ports::free(), ports::free())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}={scheme}://127.0.0.1:{peer}"))
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
                    Some(h) => format!("{scheme}://127.0.0.1:{client},{scheme}://{h}:{client}"),
                    None => format!("{scheme}://127.0.0.1:{client}"),
                })
                .arg("--advertise-client-urls")
                .arg(format!(
                    "{scheme}://{}:{client}",
                    host.unwrap_or("127.0.0.1")
                ))
                .arg("--listen-peer-urls")
                .arg(format!("{scheme}://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("{scheme}://127.0.0.1:{peer}"))
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
            if let Some((ca, (cert, key), _)) = &tls_files {
                for (flag, value) in [
                    ("--cert-file", cert),
                    ("--key-file", key),
                    ("--trusted-ca-file", ca),
                    ("--peer-cert-file", cert),
                    ("--peer-key-file", key),
                    ("--peer-trusted-ca-file", ca),
                ] {
                    cmd.arg(flag).arg(value);
                }
                cmd.arg("--client-cert-auth").arg("--peer-client-cert-auth");
            }
            members.push(Self {
                client_addr: format!("{}:{client}", host.unwrap_or("127.0.0.1")),
                peer_port: *peer,
                tls: client_tls.clone(),
                client_files: tls_files
                    .as_ref()
                    .map(|(ca, _, (c, k))| (ca.clone(), c.clone(), k.clone())),
                process: Spawned::start(cmd, &log)?,
            });
        }
        for etcd in &members {
            wait::until("etcd to answer", Duration::from_secs(20), || async {
                let mut c = etcd.client().await.ok()?;
                c.status().await.ok().map(|_| ())
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

    /// `http://127.0.0.1:<client port>` (`https` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    /// A client (with the harness's certificate when etcd speaks TLS).
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let options = self
            .tls
            .as_ref()
            .map(|t| etcd_client::ConnectOptions::new().with_tls(t.options()));
        Ok(etcd_client::Client::connect([self.url()], options).await?)
    }

    /// Arguments that make the `spilo` CLI speak to this etcd: `--etcd` and, with TLS, the
    /// CA and client certificate.
    pub fn spilo_args(&self) -> Vec<String> {
        let mut args = vec!["--etcd".to_string(), self.url()];
        if let Some((ca, cert, key)) = &self.client_files {
            for (flag, p) in [
                ("--etcd-cacert", ca),
                ("--etcd-cert", cert),
                ("--etcd-key", key),
            ] {
                args.push(flag.into());
                args.push(p.display().to_string());
            }
        }
        args
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

/// The names of an etcd cluster's voting members that started, sorted.
pub async fn voters(c: &mut etcd_client::Client) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = c
        .member_list()
        .await?
        .members()
        .iter()
        .filter(|m| !m.is_learner() && !m.client_urls().is_empty())
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// The name of the member that leads an etcd cluster.
pub async fn leader_name(c: &mut etcd_client::Client) -> anyhow::Result<String> {
    let leader = c.status().await?.leader();
    c.member_list()
        .await?
        .members()
        .iter()
        .find(|m| m.id() == leader)
        .map(|m| m.name().to_string())
        .ok_or_else(|| anyhow::anyhow!("no member leads the etcd cluster"))
}
