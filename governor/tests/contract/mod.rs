//! What the contract tests share: the script of [`Coordination`] operations, how a step is
//! played against any implementation and what it answered, and the real stores the tests
//! start (etcd here, ZooKeeper in [`zookeeper`]).

pub mod zookeeper;

use governor::dcs::{Coordination, Dcs, DcsError};
use governor::ha::ClusterView;
use spilo_model::{Keyspace, MemberName, SyncState};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TTL: Duration = Duration::from_secs(60);

/// One operation, by member (`m1`, `m2`) and lease label.
#[derive(Debug, Clone)]
pub enum Step {
    Grant(&'static str, &'static str),
    Renew(&'static str, &'static str),
    Revoke(&'static str, &'static str),
    Claim(&'static str, &'static str),
    SetInitialize(&'static str, &'static str),
    Acquire(&'static str, &'static str),
    Release(&'static str, &'static str),
    HandOver(&'static str, &'static str, &'static str, &'static str),
    /// Writes `sync` naming these standbys (`None` deletes) at the key's current revision,
    /// or (`stale`) at revision 0 as if it were absent.
    WriteSync(&'static str, Option<&'static [&'static str]>, bool),
    WriteFailsafe(&'static str, Option<&'static [&'static str]>, &'static str),
    PutMember(&'static str, &'static str),
    View,
}

/// What a step answered, with lease ids replaced by their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(bool),
    Unit,
    LeaseGone,
    Failed(String),
    Keys(Keys),
}

/// The cluster's keys, comparable across backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    initialize: Option<String>,
    leader: Option<(String, String)>,
    members: BTreeMap<String, String>,
    sync: Option<SyncState>,
    failsafe: Option<BTreeMap<MemberName, String>>,
}

pub fn name(s: &str) -> MemberName {
    MemberName::new(s).expect("valid name")
}

pub fn classify<T>(r: Result<T, DcsError>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match r {
        Ok(v) => ok(v),
        Err(e) if e.to_string().contains("lease not found") => Outcome::LeaseGone,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

pub fn keys(view: &ClusterView, leases: &BTreeMap<&'static str, i64>) -> Keys {
    let label = |id: i64| {
        leases
            .iter()
            .find(|(_, l)| **l == id)
            .map_or_else(|| format!("unknown lease {id}"), |(k, _)| k.to_string())
    };
    Keys {
        initialize: view.initialize.clone(),
        leader: view
            .leader
            .as_ref()
            .map(|l| (l.name.to_string(), label(l.lease))),
        members: view
            .member_leases
            .iter()
            .map(|(n, l)| (n.to_string(), label(*l)))
            .collect(),
        sync: view.sync.clone(),
        failsafe: view.failsafe.clone(),
    }
}

pub fn status(who: &str) -> spilo_model::MemberStatus {
    spilo_model::MemberStatus {
        conn_url: format!("postgres://{who}:5432/postgres"),
        api_url: format!("http://{who}:8008"),
        role: spilo_model::MemberRole::Replica,
        state: spilo_model::MemberState::Running,
        timeline: None,
        wal: Default::default(),
        tags: Default::default(),
        pending_restart: false,
        error: None,
        postgres_version: None,
    }
}

/// Plays `step` as `c` (the connection of the member the step names).
pub async fn apply(
    c: &impl Coordination,
    step: &Step,
    leases: &mut BTreeMap<&'static str, i64>,
) -> Outcome {
    let id = |label: &str| leases.get(label).copied().unwrap_or(-1);
    match step {
        Step::Grant(_, label) => match c.grant_lease(TTL).await {
            Ok(lease) => {
                leases.insert(label, lease);
                Outcome::Unit
            }
            Err(e) => Outcome::Failed(e.to_string()),
        },
        Step::Renew(_, l) => classify(c.renew_lease(id(l)).await, Outcome::Done),
        Step::Revoke(_, l) => classify(c.revoke_lease(id(l)).await, |()| Outcome::Unit),
        Step::Claim(_, l) => classify(c.try_claim_initialize(id(l)).await, Outcome::Done),
        Step::SetInitialize(_, sysid) => classify(c.set_initialize(sysid).await, Outcome::Done),
        Step::Acquire(_, l) => classify(c.try_acquire_leader(id(l)).await, Outcome::Done),
        Step::Release(_, l) => classify(c.release_leader(id(l)).await, Outcome::Done),
        Step::HandOver(_, l, to, to_l) => classify(
            c.hand_over_leader(id(l), &name(to), id(to_l)).await,
            Outcome::Done,
        ),
        Step::WriteSync(who, standbys, stale) => {
            let revision = if *stale {
                0
            } else {
                match c.read_view().await {
                    Ok(v) => v.sync_revision,
                    Err(e) => return Outcome::Failed(e.to_string()),
                }
            };
            let value = standbys.map(|s| SyncState {
                leader: Some(name(who)),
                members: s.iter().map(|m| name(m)).collect(),
                quorum: None,
            });
            classify(c.write_sync(value.as_ref(), revision).await, Outcome::Done)
        }
        Step::WriteFailsafe(_, members, l) => {
            let value: Option<BTreeMap<MemberName, String>> = members.map(|m| {
                m.iter()
                    .map(|n| (name(n), format!("http://{n}:8008")))
                    .collect()
            });
            classify(c.write_failsafe(value.as_ref(), id(l)).await, Outcome::Done)
        }
        Step::PutMember(who, l) => {
            classify(c.put_member(&status(who), id(l)).await, |()| Outcome::Unit)
        }
        Step::View => classify(c.read_view().await, |v| Outcome::Keys(keys(&v, leases))),
    }
}

pub fn member_of(step: &Step) -> &'static str {
    match step {
        Step::Grant(w, _)
        | Step::Renew(w, _)
        | Step::Revoke(w, _)
        | Step::Claim(w, _)
        | Step::SetInitialize(w, _)
        | Step::Acquire(w, _)
        | Step::Release(w, _)
        | Step::HandOver(w, ..)
        | Step::WriteSync(w, ..)
        | Step::WriteFailsafe(w, ..)
        | Step::PutMember(w, _) => w,
        Step::View => "m1",
    }
}

pub fn script() -> Vec<Step> {
    use Step::*;
    vec![
        Grant("m1", "A"),
        Grant("m2", "B"),
        Grant("m1", "C"),
        Revoke("m1", "C"),
        // A dead lease cannot win anything; a key that exists refuses before the lease matters.
        Claim("m2", "C"),
        Claim("m1", "A"),
        Claim("m2", "B"),
        View,
        SetInitialize("m1", "7000"),
        SetInitialize("m1", "7001"),
        Acquire("m2", "C"),
        Acquire("m1", "A"),
        Acquire("m2", "B"),
        Acquire("m2", "C"),
        PutMember("m1", "A"),
        PutMember("m2", "B"),
        PutMember("m2", "C"),
        View,
        Release("m2", "B"),
        Release("m1", "B"),
        WriteSync("m1", Some(&["m2"]), false),
        WriteSync("m1", Some(&["m3"]), true),
        WriteSync("m1", Some(&["m3"]), false),
        View,
        WriteFailsafe("m2", Some(&["m1", "m2"]), "B"),
        WriteFailsafe("m1", Some(&["m1", "m2"]), "B"),
        WriteFailsafe("m1", Some(&["m1", "m2"]), "A"),
        View,
        HandOver("m1", "A", "m2", "A"),
        HandOver("m2", "B", "m1", "A"),
        HandOver("m1", "A", "m2", "B"),
        View,
        HandOver("m1", "A", "m2", "B"),
        WriteFailsafe("m1", None, "A"),
        Renew("m2", "B"),
        Renew("m1", "C"),
        Revoke("m2", "B"),
        View,
        Acquire("m1", "A"),
        WriteFailsafe("m1", None, "A"),
        WriteSync("m1", None, false),
        View,
        Release("m1", "A"),
        View,
    ]
}

/// A real etcd on free loopback ports, killed on drop.
pub struct RealEtcd {
    child: Child,
    /// Its client URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn start_etcd() -> RealEtcd {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .arg("--initial-cluster")
        .arg(format!("default={peer_url}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server; ./scripts/install-deps installs it) starts");
    RealEtcd {
        child,
        url,
        _dir: dir,
    }
}

pub async fn connect(url: &str, keys: &Keyspace, me: &str) -> Dcs {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Dcs::connect(
            &[url.to_string()],
            None,
            keys.clone(),
            name(me),
            Duration::from_secs(2),
        )
        .await
        {
            Ok(d) => return d,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("etcd at {url} did not answer within 20 s: {e}"),
        }
    }
}
