//! The etcd server the keeper runs: its command line (client and peer TLS, both requiring a
//! certificate from the cluster CA), the child process, and the etcd client the keeper uses
//! for membership calls.

use super::decide::{ClusterState, Member};
use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use spilo_model::governor::EtcdMemberConfig;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long one etcd call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The member's own files and addresses.
#[derive(Debug, Clone)]
pub struct Me {
    /// The instance id: the member's name.
    pub name: String,
    /// The instance's private address.
    pub ip: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// CA certificate, member certificate, member key.
    pub tls: (PathBuf, PathBuf, PathBuf),
    /// Client and peer ports.
    pub ports: (u16, u16),
    /// The cluster token.
    pub token: String,
}

impl Me {
    /// From the configuration and the instance's identity.
    pub fn new(config: &EtcdMemberConfig, name: &str, ip: &str) -> Self {
        let dir = config.tls_dir();
        Self {
            name: name.to_string(),
            ip: ip.to_string(),
            data_dir: config.data_dir.clone(),
            tls: (
                config.tls.ca_file.clone(),
                dir.join("member.crt"),
                dir.join("member.key"),
            ),
            ports: (config.client_port, config.peer_port),
            token: config.cluster.clone(),
        }
    }

    /// `https://<ip>:<peer port>`.
    pub fn peer_url(&self) -> String {
        url(&self.ip, self.ports.1)
    }

    /// `https://<ip>:<client port>`.
    pub fn client_url(&self) -> String {
        url(&self.ip, self.ports.0)
    }

    /// Whether the data directory holds a member (etcd's `member/` with its WAL).
    pub fn has_data(&self) -> bool {
        self.data_dir.join("member/wal").is_dir()
    }

    /// etcd's arguments for a start.
    pub fn args(&self, state: &ClusterState, initial: &[(String, String)]) -> Vec<String> {
        let (ca, cert, key) = (
            self.tls.0.display().to_string(),
            self.tls.1.display().to_string(),
            self.tls.2.display().to_string(),
        );
        let initial = initial
            .iter()
            .map(|(n, u)| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        let state = match state {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        };
        [
            ("--name", self.name.clone()),
            ("--data-dir", self.data_dir.display().to_string()),
            ("--listen-client-urls", self.client_url()),
            ("--advertise-client-urls", self.client_url()),
            ("--listen-peer-urls", self.peer_url()),
            ("--initial-advertise-peer-urls", self.peer_url()),
            ("--initial-cluster", initial),
            ("--initial-cluster-state", state.to_string()),
            ("--initial-cluster-token", self.token.clone()),
            ("--client-cert-auth", "true".into()),
            ("--trusted-ca-file", ca.clone()),
            ("--cert-file", cert.clone()),
            ("--key-file", key.clone()),
            ("--peer-client-cert-auth", "true".into()),
            ("--peer-trusted-ca-file", ca),
            ("--peer-cert-file", cert),
            ("--peer-key-file", key),
            ("--strict-reconfig-check", "true".into()),
            // etcd keeps every revision unless told: without compaction the governors' writes
            // fill the backend quota and etcd goes read-only.
            ("--auto-compaction-mode", "periodic".into()),
            ("--auto-compaction-retention", "1h".into()),
            ("--logger", "zap".into()),
        ]
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
    }

    /// The client the keeper uses: this member's certificate, the CA, `endpoints`.
    pub async fn client(&self, endpoints: &[String]) -> Result<Client, String> {
        let tls = spilo_discovery::EtcdTls::read(&self.tls.0, &self.tls.1, &self.tls.2)
            .map_err(|e| e.to_string())?;
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_tls(tls.options());
        tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| format!("no answer from {} in time", endpoints.join(", ")))?
            .map_err(|e| format!("{}: {e}", endpoints.join(", ")))
    }
}

/// `https://host:port`.
pub fn url(host: &str, port: u16) -> String {
    format!("https://{host}:{port}")
}

/// The membership as `member list` reports it.
pub async fn members(client: &mut Client) -> Result<Vec<Member>, String> {
    let list = bounded(client.member_list()).await?;
    Ok(list
        .members()
        .iter()
        .map(|m| Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        })
        .collect())
}

/// Adds `peer_url` as a learner.
pub async fn add_learner(client: &mut Client, peer_url: &str) -> Result<u64, String> {
    let r = bounded(client.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner())))
        .await?;
    r.member()
        .map(|m| m.id())
        .ok_or_else(|| "etcd added no member".to_string())
}

/// Removes member `id`.
pub async fn remove(client: &mut Client, id: u64) -> Result<(), String> {
    bounded(client.member_remove(id)).await.map(|_| ())
}

/// Promotes learner `id` (etcd refuses while it lags behind the leader).
pub async fn promote(client: &mut Client, id: u64) -> Result<(), String> {
    bounded(client.member_promote(id)).await.map(|_| ())
}

/// Whether the member the client is connected to is the leader: (is leader, its id).
pub async fn leads(client: &mut Client) -> Result<bool, String> {
    let s = bounded(client.status()).await?;
    let me = s.header().map(|h| h.member_id()).unwrap_or_default();
    Ok(me != 0 && s.leader() == me)
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| "etcd did not answer in time".to_string())?
        .map_err(|e| e.to_string())
}

/// Starts etcd as a child in its own process group, output appended to `log`; it dies with
/// the keeper (PDEATHSIG), whose supervisor starts both again.
pub fn spawn(bin: &Path, args: &[String], log: &Path) -> std::io::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(true);
    crate::postgres::process::die_with_parent(&mut cmd, nix::sys::signal::Signal::SIGTERM);
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_requires_certificates_of_the_ca_both_ways_and_compacts() {
        let config = EtcdMemberConfig::parse(
            "cluster: etcd-main\ndomain: etcd-main.db.example.com\nhosted_zone_id: Z1\n\
             region: eu-west-1\ndata_dir: /var/lib/spilo-etcd/data\n\
             tls: {ca_file: /var/lib/spilo-etcd/ca.crt, ca_key: {ssm: /ca}}\n",
        )
        .expect("valid");
        let me = Me::new(&config, "i-0abc", "10.0.0.5");
        let args = me.args(&ClusterState::Existing, &[("i-0abc".into(), me.peer_url())]);
        for want in [
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
            "--trusted-ca-file=/var/lib/spilo-etcd/ca.crt",
            "--peer-trusted-ca-file=/var/lib/spilo-etcd/ca.crt",
            "--listen-client-urls=https://10.0.0.5:2379",
            "--listen-peer-urls=https://10.0.0.5:2380",
            "--initial-cluster=i-0abc=https://10.0.0.5:2380",
            "--initial-cluster-state=existing",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert!(
            !args.iter().any(|a| a.contains("http://")),
            "no plaintext listener: {args:?}"
        );
    }
}
