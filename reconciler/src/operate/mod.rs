//! Operating running clusters: `spilo switchover`, `failover`, `restart`, `reload`,
//! `reinit` (through the governors' REST API, authenticated), and `history`, `show-config`,
//! `edit-config`, `pause`, `resume` (straight on etcd, `config` by compare-and-swap).
//!
//! A running cluster is found in etcd ([`Target`]); each member publishes its REST API's
//! address in its member key. Credentials ([`ApiAuth`]) come from the command line or the
//! environment, and for clusters `spilo up` runs, from the token it generated.

pub mod commands;
pub mod config;
pub mod promote_standby;
pub mod verify_backup;

use anyhow::Context;
use etcd_client::GetOptions;
use serde_json::Value;
use spilo_model::{
    ClusterConfig, ClusterName, HistoryEntry, KeyKind, Keyspace, MemberName, MemberStatus,
    SwitchoverRequest, SyncState,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A running cluster in etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The cluster (etcd scope).
    pub cluster: ClusterName,
    /// etcd client endpoints, comma separated. Default: the etcd of the cluster when `spilo
    /// up` runs it (found in its state directory, like `spilo status`), else 127.0.0.1:2379.
    #[arg(long, env = "SPILO_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// ZooKeeper servers (`host:port`, comma separated), for a cluster whose store is
    /// ZooKeeper (taken over `--etcd`). Default: the cluster's own when `spilo up` runs it on
    /// ZooKeeper, unless `--etcd` is given.
    #[arg(long, env = "SPILO_ZOOKEEPER", value_delimiter = ',')]
    pub zookeeper: Option<Vec<String>>,
    /// The etcd key namespace.
    #[arg(long, default_value = "/service")]
    pub namespace: String,
    /// The state directory of `spilo up` (default: the one `spilo up` picks for `clusters/`),
    /// where the cluster's etcd, its CA and generated REST API token are found.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The CA certificate (PEM) etcd's certificate is checked against; with `--etcd-cert`
    /// and `--etcd-key`, etcd is spoken to over TLS. Default: the local cluster's own.
    #[arg(long, env = "SPILO_ETCD_CACERT", requires_all = ["etcd_cert", "etcd_key"])]
    pub etcd_cacert: Option<PathBuf>,
    /// The client certificate (PEM) presented to etcd.
    #[arg(long, env = "SPILO_ETCD_CERT", requires_all = ["etcd_cacert", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SPILO_ETCD_KEY", requires_all = ["etcd_cacert", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
}

impl Target {
    /// A target for `cluster` in the etcd at `endpoints`, without TLS.
    pub fn at(cluster: ClusterName, endpoints: Vec<String>, namespace: &str) -> Self {
        Self {
            cluster,
            etcd: Some(endpoints),
            zookeeper: None,
            namespace: namespace.to_string(),
            state_dir: None,
            etcd_cacert: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }

    /// How etcd is spoken to: `--etcd-cacert/--etcd-cert/--etcd-key`, else the local
    /// cluster's TLS when its etcd is the one used, else plaintext.
    pub fn etcd_tls(&self) -> anyhow::Result<Option<spilo_discovery::EtcdTls>> {
        if let (Some(ca), Some(cert), Some(key)) =
            (&self.etcd_cacert, &self.etcd_cert, &self.etcd_key)
        {
            return spilo_discovery::EtcdTls::read(ca, cert, key)
                .map(Some)
                .map_err(anyhow::Error::msg);
        }
        if self.etcd.is_some() {
            return Ok(None);
        }
        match self.local().and_then(|st| st.tls) {
            Some(t) => t.etcd_client().map(Some),
            None => Ok(None),
        }
    }

    /// The ZooKeeper servers, when the cluster's store is ZooKeeper: `--zookeeper`, else the
    /// local cluster's own (unless `--etcd` names an etcd).
    pub fn zookeeper_hosts(&self) -> Option<Vec<String>> {
        if self.zookeeper.is_some() {
            return self.zookeeper.clone();
        }
        if self.etcd.is_some() {
            return None;
        }
        self.local()
            .filter(|st| st.zookeeper)
            .map(|st| st.etcd_endpoints)
    }

    /// A client of the cluster's etcd (see [`Self::zookeeper_hosts`] first).
    pub async fn connect(&self) -> anyhow::Result<etcd_client::Client> {
        if self.zookeeper_hosts().is_some() {
            anyhow::bail!(
                "cluster {} runs on ZooKeeper, and this command reads etcd only so far",
                self.cluster
            );
        }
        let tls = self.etcd_tls()?;
        crate::etcd::connect(&self.endpoints(), tls.as_ref())
            .await
            .map_err(anyhow::Error::msg)
    }

    /// etcd's endpoints: `--etcd`, else the local cluster's, else 127.0.0.1:2379.
    pub fn endpoints(&self) -> Vec<String> {
        if let Some(e) = &self.etcd {
            return e.clone();
        }
        self.local()
            .map(|st| st.etcd_endpoints)
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| vec!["127.0.0.1:2379".to_string()])
    }

    /// The state `spilo up` keeps for this cluster, when it runs (or ran) it here.
    pub fn local(&self) -> Option<crate::local::state::ClusterState> {
        self.layout()
            .and_then(|l| l.read(self.cluster.as_str()).ok())
    }

    pub(crate) fn layout(&self) -> Option<crate::local::state::Layout> {
        let run_as = crate::local::user::RunAs::detect().ok()?;
        let (root, _) = crate::local::state_dir(
            self.state_dir.as_deref(),
            &[PathBuf::from("clusters")],
            &run_as,
        )
        .ok()?;
        Some(crate::local::state::Layout { root })
    }
}

/// Credentials for the governors' mutating REST endpoints.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiAuth {
    /// A bearer token.
    #[arg(long, env = "SPILO_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Basic-auth user (with SPILO_API_PASSWORD).
    #[arg(long, env = "SPILO_API_USER")]
    pub username: Option<String>,
    /// Basic-auth password.
    #[arg(long, env = "SPILO_API_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// CA certificates (PEM) to check an HTTPS REST API against (`restapi.tls`).
    #[arg(long, env = "SPILO_API_CACERT")]
    pub cacert: Option<PathBuf>,
}

/// What etcd holds for a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// The `leader` key.
    pub leader: Option<MemberName>,
    /// `members/*`.
    pub members: BTreeMap<MemberName, MemberStatus>,
    /// `config` as JSON, and its revision (0 when absent).
    pub config: Option<Value>,
    /// The revision of `config`.
    pub config_revision: i64,
    /// `history`.
    pub history: Vec<HistoryEntry>,
    /// `switchover`.
    pub switchover: Option<SwitchoverRequest>,
    /// `sync`.
    pub sync: Option<SyncState>,
    /// `drill`: the last restore drill.
    pub drill: Option<spilo_model::DrillRecord>,
}

impl ClusterState {
    /// `config`, parsed (default when absent or unreadable).
    pub fn cluster_config(&self) -> ClusterConfig {
        self.config
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// A member's status, or an error naming the known members.
    pub fn member(&self, name: &MemberName) -> anyhow::Result<&MemberStatus> {
        self.members.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.members.keys().map(MemberName::as_str).collect();
            anyhow::anyhow!(
                "{name} is not a member (members: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

/// Reads every key of the cluster in one request. Fails when the cluster does not exist.
pub async fn read_state(t: &Target) -> anyhow::Result<ClusterState> {
    let keys = Keyspace::with_namespace(&t.namespace, &t.cluster);
    let (kvs, store) = match t.zookeeper_hosts() {
        Some(hosts) => {
            let client = crate::zookeeper::connect(&hosts).await?;
            let kvs = crate::zookeeper::read_cluster(&client, &keys)
                .await
                .with_context(|| format!("read {} from ZooKeeper", keys.prefix()))?;
            (kvs, "ZooKeeper")
        }
        None => {
            let mut client = t.connect().await?;
            let resp = tokio::time::timeout(
                crate::etcd::TIMEOUT,
                client.get(keys.prefix(), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("read {} from etcd", keys.prefix()))?;
            let kvs = resp
                .kvs()
                .iter()
                .filter_map(|kv| {
                    Some((
                        kv.key_str().ok()?.to_string(),
                        kv.value().to_vec(),
                        kv.mod_revision(),
                    ))
                })
                .collect();
            (kvs, "etcd")
        }
    };
    let mut state = ClusterState::default();
    for (key, value, revision) in &kvs {
        let (key, value) = (key.as_str(), value.as_slice());
        match keys.classify(key) {
            Some(KeyKind::Leader) => {
                state.leader = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| MemberName::new(s).ok());
            }
            Some(KeyKind::Member(name)) => {
                let status = serde_json::from_slice(value)
                    .with_context(|| format!("{key} does not hold a member status"))?;
                state.members.insert(name, status);
            }
            Some(KeyKind::Config) => {
                state.config = Some(
                    serde_json::from_slice(value)
                        .with_context(|| format!("{key} does not hold JSON"))?,
                );
                state.config_revision = *revision;
            }
            Some(KeyKind::History) => {
                state.history = serde_json::from_slice(value)
                    .with_context(|| format!("{key} does not hold the promotion history"))?;
            }
            Some(KeyKind::Switchover) => state.switchover = serde_json::from_slice(value).ok(),
            Some(KeyKind::Sync) => state.sync = serde_json::from_slice(value).ok(),
            Some(KeyKind::Drill) => state.drill = serde_json::from_slice(value).ok(),
            _ => {}
        }
    }
    if state.members.is_empty() && state.leader.is_none() && state.config.is_none() {
        anyhow::bail!(
            "no cluster named {} in {store} (nothing under {})",
            t.cluster,
            keys.prefix()
        );
    }
    Ok(state)
}

/// An authenticated client of the governors' REST API.
pub struct Api {
    http: reqwest::Client,
    auth: Option<Credential>,
}

enum Credential {
    Token(String),
    Basic(String, String),
}

/// What a governor answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Its `message`, or the body.
    pub message: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Answer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Api {
    /// Resolves credentials: `--token`/`SPILO_API_TOKEN`, `--token-file`, basic auth, then the
    /// token `spilo up` generated for the cluster; none is fine for reads.
    pub fn new(auth: &ApiAuth, target: &Target) -> anyhow::Result<Self> {
        Self::with_timeout(auth, target, Duration::from_secs(90))
    }

    /// [`Self::new`] with a longer wait for answers (a base backup answers when done).
    pub fn with_timeout(
        auth: &ApiAuth,
        target: &Target,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let credential = if let Some(t) = &auth.token {
            Some(Credential::Token(t.clone()))
        } else if let Some(f) = &auth.token_file {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("read the token file {}", f.display()))?;
            Some(Credential::Token(t.trim().to_string()))
        } else if let (Some(u), Some(p)) = (&auth.username, &auth.password) {
            Some(Credential::Basic(u.clone(), p.clone()))
        } else {
            local_token(target).map(Credential::Token)
        };
        let mut http = reqwest::Client::builder().timeout(timeout);
        let local_ca = target.local().and_then(|st| st.tls).map(|t| t.ca);
        if let Some(ca) = auth.cacert.as_ref().or(local_ca.as_ref()) {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
            http = http.tls_certs_only(certs);
        }
        let http = http.build().context("build an HTTP client")?;
        Ok(Self {
            http,
            auth: credential,
        })
    }

    /// `POST base_url + path` with a JSON body.
    pub async fn post(&self, base: &str, path: &str, body: &Value) -> anyhow::Result<Answer> {
        let req = self.http.post(format!("{base}{path}")).json(body);
        self.send(self.authorize(req), base, path).await
    }

    /// `GET base_url + path`, without credentials.
    pub async fn get(&self, base: &str, path: &str) -> anyhow::Result<Answer> {
        let req = self.http.get(format!("{base}{path}"));
        self.send(req, base, path).await
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(Credential::Token(t)) => req.bearer_auth(t),
            Some(Credential::Basic(u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        base: &str,
        path: &str,
    ) -> anyhow::Result<Answer> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("{base}{path} did not answer"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .map_or(text, String::from);
        Ok(Answer {
            status,
            message,
            body,
        })
    }
}

/// The token `spilo up` generated for the cluster, when this user can read it.
fn local_token(target: &Target) -> Option<String> {
    let layout = target.layout()?;
    let path = layout
        .cluster(target.cluster.as_str())
        .join("secrets/restapi-token");
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
}
