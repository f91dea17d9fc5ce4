//! `spilo status [CLUSTER] [--format json]`: each local cluster's endpoints and, per member,
//! role, state, timeline, lag, address, REST URL and the pids of its governor and postmaster,
//! asked from the governors themselves.
//!
//! The JSON form is a contract for scripts (documented in README): add fields, never rename.

use super::state::{self, ClusterState, Layout};
use serde::Serialize;
use spilo_model::NodeStatus;
use std::time::Duration;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// One entry per cluster.
    pub clusters: Vec<ClusterReport>,
}

/// One cluster.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// Its name.
    pub name: String,
    /// Whether its `spilo up` supervisor is alive.
    pub supervised: bool,
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// The cluster file.
    pub file: String,
    /// `host:port` of the load-balanced endpoints.
    pub endpoints: Endpoints,
    /// The cluster CA's certificate, when the cluster speaks TLS: clients check the servers
    /// against it (`sslrootcert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A libpq connection string for the primary endpoint (`sslmode=verify-full` with TLS).
    pub dsn: String,
    /// etcd client endpoints.
    pub etcd: Vec<String>,
    /// The pid of the etcd `spilo up` runs for the cluster, if it runs one.
    pub etcd_pid: Option<u32>,
    /// The store is ZooKeeper: `etcd` and `etcd_pid` are its servers and its pid.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub zookeeper: bool,
    /// The member that holds the leader key, if any.
    pub leader: Option<String>,
    /// Members in order.
    pub members: Vec<MemberReport>,
    /// The last restore drill (etcd `drill`), when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<spilo_model::DrillRecord>,
    /// How the roles and databases stand against the file (etcd `catalog`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<spilo_model::catalog::CatalogStatus>,
    /// The roles the cluster file declares, and where each password is kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleReport>,
    /// The databases the cluster file declares, each with a connection string as its owner.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseReport>,
}

/// A declared role.
#[derive(Debug, Serialize)]
pub struct RoleReport {
    /// Its name.
    pub name: String,
    /// Where its password is kept (the governors read it there), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

/// A declared database.
#[derive(Debug, Serialize)]
pub struct DatabaseReport {
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// A libpq connection string as its owner through the primary endpoint.
    pub dsn: String,
}

/// Load-balanced endpoints.
#[derive(Debug, Serialize)]
pub struct Endpoints {
    /// The primary endpoint.
    pub primary: String,
    /// The replica endpoint, when enabled.
    pub replica: Option<String>,
}

/// One member.
#[derive(Debug, Serialize)]
pub struct MemberReport {
    /// Name.
    pub name: String,
    /// `primary`, `replica`, `uninitialized`, or `unknown` when the governor does not answer.
    pub role: String,
    /// The governor's state, or `unreachable`.
    pub state: String,
    /// Timeline.
    pub timeline: Option<u32>,
    /// Bytes behind the primary (replicas only).
    pub lag_bytes: Option<u64>,
    /// PostgreSQL host.
    pub host: String,
    /// PostgreSQL port.
    pub port: u16,
    /// REST API.
    pub api_url: String,
    /// Governor pid.
    pub governor_pid: Option<u32>,
    /// Postmaster pid.
    pub postmaster_pid: Option<u32>,
    /// What keeps the member from running (a failed bootstrap with PostgreSQL's error line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On the leader: why the declared roles and databases are not converged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog_error: Option<String>,
}

async fn ask(http: &reqwest::Client, scheme: &str, port: u16) -> Option<NodeStatus> {
    let resp = http
        .get(format!("{scheme}://127.0.0.1:{port}/status"))
        .send()
        .await
        .ok()?;
    resp.json().await.ok()
}

/// The libpq connection string of a local primary endpoint: with TLS, `verify-full` against
/// the cluster CA (the members' certificates name 127.0.0.1).
pub fn dsn(port: u16, tls: Option<&super::tls::LocalTls>) -> String {
    let mut s = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    if let Some(t) = tls {
        s.push_str(&format!(
            " sslmode=verify-full sslrootcert={}",
            t.ca.display()
        ));
    }
    s
}

/// Builds the report of one cluster.
pub async fn report(st: &ClusterState) -> ClusterReport {
    let (http, scheme) = super::tls::api_client(st.tls.as_ref(), Duration::from_secs(2))
        .unwrap_or_else(|_| (reqwest::Client::default(), "https"));
    let answers =
        futures::future::join_all(st.members.iter().map(|m| ask(&http, scheme, m.api_port))).await;
    let leader = answers.iter().flatten().find(|n| n.is_leader);
    let leader_lsn = leader.and_then(|l| l.member.wal.best());
    let members = st
        .members
        .iter()
        .zip(&answers)
        .map(|(m, a)| match a {
            Some(n) => MemberReport {
                name: m.name.clone(),
                // A standby cluster's leader runs as a replica of its source.
                role: if n.is_leader && n.member.role == spilo_model::MemberRole::Replica {
                    "standby_leader".into()
                } else if n.is_leader {
                    "primary".into()
                } else {
                    n.member.role.as_str().into()
                },
                state: n.member.state.as_str().into(),
                timeline: n.member.timeline.map(|t| t.0),
                lag_bytes: match (n.is_leader, leader_lsn, n.member.wal.best()) {
                    (false, Some(l), Some(mine)) => Some(l.bytes_ahead_of(mine)),
                    _ => None,
                },
                host: "127.0.0.1".into(),
                port: m.pg_port,
                api_url: format!("{scheme}://127.0.0.1:{}", m.api_port),
                governor_pid: Some(n.governor_pid),
                postmaster_pid: n.postmaster_pid,
                error: n.member.error.clone(),
                catalog_error: n.catalog_error.clone(),
            },
            None => MemberReport {
                name: m.name.clone(),
                role: "unknown".into(),
                state: "unreachable".into(),
                timeline: None,
                lag_bytes: None,
                host: "127.0.0.1".into(),
                port: m.pg_port,
                api_url: format!("{scheme}://127.0.0.1:{}", m.api_port),
                governor_pid: m.governor_pid.filter(|p| state::alive(*p)),
                postmaster_pid: None,
                error: None,
                catalog_error: None,
            },
        })
        .collect();
    ClusterReport {
        name: st.cluster.clone(),
        supervised: state::alive(st.supervisor_pid),
        supervisor_pid: st.supervisor_pid,
        file: st.file.clone(),
        endpoints: Endpoints {
            primary: format!("127.0.0.1:{}", st.ports.primary),
            replica: st.ports.replica.map(|p| format!("127.0.0.1:{p}")),
        },
        ca: st.tls.as_ref().map(|t| t.ca.display().to_string()),
        dsn: dsn(st.ports.primary, st.tls.as_ref()),
        etcd: st.etcd_endpoints.clone(),
        etcd_pid: st.etcd_pid,
        zookeeper: st.zookeeper,
        leader: leader.map(|l| l.name.to_string()),
        members,
        drill: read_key(st, |k| k.drill()).await,
        catalog: read_key(st, |k| k.catalog()).await,
        roles: Vec::new(),
        databases: Vec::new(),
    }
}

/// The roles and databases of the cluster's file (as it was when read now).
fn declared(layout: &Layout, st: &ClusterState, c: &mut ClusterReport) {
    let Some(file) = std::fs::read_to_string(&st.file)
        .ok()
        .and_then(|t| serde_yaml::from_str::<spilo_model::spec::ClusterFile>(&t).ok())
    else {
        return;
    };
    c.roles = file
        .spec
        .roles
        .iter()
        .filter(|(_, r)| r.state == spilo_model::catalog::Presence::Present)
        .map(|(name, r)| RoleReport {
            name: name.clone(),
            password_file: r.password.as_ref().map(|_| {
                let keeper = super::catalog::keeper(&st.cluster, &file);
                super::catalog::password_file(layout, &keeper, name)
                    .display()
                    .to_string()
            }),
        })
        .collect();
    c.databases = file
        .spec
        .databases
        .iter()
        .map(|(name, d)| DatabaseReport {
            name: name.clone(),
            owner: d.owner.clone(),
            dsn: dsn(st.ports.primary, st.tls.as_ref())
                .replace("user=postgres", &format!("user={}", d.owner))
                .replace("dbname=postgres", &format!("dbname={name}")),
        })
        .collect();
}

/// A key of the cluster (`key` builds its path), read from its store within 2 s.
async fn read_key<T: serde::de::DeserializeOwned>(
    st: &ClusterState,
    key: impl Fn(&spilo_model::Keyspace) -> String,
) -> Option<T> {
    let name = spilo_model::ClusterName::new(st.cluster.clone()).ok()?;
    if st.zookeeper {
        let read = async {
            let client = crate::zookeeper::connect(&st.etcd_endpoints).await.ok()?;
            let path = key(&spilo_model::Keyspace::new(&name));
            let (value, _) = crate::zookeeper::get(&client, &path).await.ok()??;
            serde_json::from_slice(&value).ok()
        };
        return tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .ok()
            .flatten();
    }
    let tls = st.tls.as_ref().and_then(|t| t.etcd_client().ok());
    let read = async {
        let mut client = crate::etcd::connect(&st.etcd_endpoints, tls.as_ref())
            .await
            .ok()?;
        let resp = client
            .get(key(&spilo_model::Keyspace::new(&name)), None)
            .await
            .ok()?;
        serde_json::from_slice(resp.kvs().first()?.value()).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

/// The report of `cluster`, or of every cluster in the state directory.
pub async fn collect(layout: &Layout, cluster: Option<&str>) -> anyhow::Result<Report> {
    let names = match cluster {
        Some(c) => vec![c.to_string()],
        None => layout.clusters(),
    };
    let mut clusters = Vec::new();
    for n in names {
        let st = layout.read(&n)?;
        let mut c = report(&st).await;
        declared(layout, &st, &mut c);
        clusters.push(c);
    }
    Ok(Report { clusters })
}

/// The report as text.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    if report.clusters.is_empty() {
        out.push_str("no local clusters\n");
    }
    for c in &report.clusters {
        out.push_str(&format!(
            "Cluster {} ({}, {})\n",
            c.name,
            if c.supervised {
                format!("supervised by spilo up pid {}", c.supervisor_pid)
            } else {
                "not supervised".into()
            },
            c.file
        ));
        out.push_str(&format!(
            "Endpoint: postgresql://postgres@{}/postgres (primary)",
            c.endpoints.primary
        ));
        if let Some(r) = &c.endpoints.replica {
            out.push_str(&format!(", postgresql://postgres@{r}/postgres (replicas)"));
        }
        out.push('\n');
        out.push_str(&format!("Connect:  {}\n", c.dsn));
        if let Some(ca) = &c.ca {
            out.push_str(&format!("CA:       {ca}\n"));
        }
        if let Some(d) = &c.drill {
            out.push_str(&format!("Drill:    {}\n", d.describe()));
        }
        for r in &c.roles {
            out.push_str(&format!(
                "Role:     {} (password: {})\n",
                r.name,
                r.password_file.as_deref().unwrap_or("none")
            ));
        }
        for d in &c.databases {
            out.push_str(&format!("Database: {} ({})\n", d.name, d.dsn));
        }
        if let Some(k) = c.catalog.as_ref().filter(|k| !k.drift.is_empty()) {
            out.push_str(&format!(
                "Catalog:  changed by hand (reported, not undone): {}\n",
                k.drift.join("; ")
            ));
        }
        for m in c.members.iter().filter(|m| m.catalog_error.is_some()) {
            out.push_str(&format!(
                "Catalog:  not converged on {}: {}\n",
                m.name,
                m.catalog_error.as_deref().unwrap_or_default()
            ));
        }
        let mut rows = vec![
            [
                "Member",
                "Role",
                "State",
                "TL",
                "Lag",
                "Host:Port",
                "REST",
                "Governor",
                "Postmaster",
            ]
            .map(String::from),
        ];
        for m in &c.members {
            rows.push([
                m.name.clone(),
                m.role.clone(),
                m.state.clone(),
                m.timeline.map(|t| t.to_string()).unwrap_or_default(),
                m.lag_bytes.map(|b| b.to_string()).unwrap_or_default(),
                format!("{}:{}", m.host, m.port),
                m.api_url.clone(),
                m.governor_pid.map(|p| p.to_string()).unwrap_or_default(),
                m.postmaster_pid.map(|p| p.to_string()).unwrap_or_default(),
            ]);
        }
        let widths: Vec<usize> = (0..9)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        for m in &c.members {
            if let Some(e) = &m.error {
                out.push_str(&format!("{}: {e}\n", m.name));
            }
        }
    }
    out
}
