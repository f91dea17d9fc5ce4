//! The AWS world of the reconciler tests: a fresh `moto_server` with a network fixture and a
//! real etcd per test, a scratch repository of cluster files, helpers to run `spilo` against
//! them, and a running `spilo watch` with its webhook receiver.

use crate::Etcd;
use crate::aws::{Moto, Network, Repo};
use std::process::Command;
use std::time::Duration;

/// The region every test cluster lives in.
pub const REGION: &str = "eu-central-1";

/// One test's AWS world: moto with a VPC, subnets and a hosted zone, a real etcd, and a
/// scratch repository of cluster files.
pub struct World {
    /// The test's private directory (logs, caches, saved plans).
    pub dir: tempfile::TempDir,
    /// The AWS stand-in.
    pub moto: Moto,
    /// The etcd every cluster file names.
    pub etcd: Etcd,
    /// The repository `spilo` reads cluster files from.
    pub repo: Repo,
    /// The VPC, subnets, zone and image made in moto.
    pub net: Network,
}

/// What a `spilo` run printed and returned.
pub struct Run {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A cluster file's variable parts.
pub struct Shape<'a> {
    /// `spec.instances`.
    pub instances: u32,
    /// `spec.aws.instanceType`.
    pub instance_type: &'a str,
    /// `spec.endpoints.dns.name`.
    pub dns: &'a str,
    /// The `max_connections` parameter.
    pub max_connections: u32,
}

/// The `orders` cluster as the tests create it first.
pub const DEFAULT: Shape<'static> = Shape {
    instances: 3,
    instance_type: "t3.medium",
    dns: "orders",
    max_connections: 200,
};

/// A second cluster with its own DNS name.
pub const BILLING: Shape<'static> = Shape {
    dns: "billing",
    ..DEFAULT
};

impl World {
    /// Starts moto and etcd and makes the network and the repository.
    pub async fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let moto = Moto::start(dir.path()).await.expect("moto");
        let etcd = Etcd::start(dir.path()).await.expect("etcd");
        let repo = Repo::init(&dir.path().join("repo")).expect("repo");
        let net = moto.network(REGION, "db.example.com").expect("network");
        World {
            dir,
            moto,
            etcd,
            repo,
            net,
        }
    }

    /// Holds `cluster`'s apply lock as another apply would, for `ttl` seconds.
    pub async fn hold_apply_lock(&self, cluster: &str, ttl: i64) -> (etcd_client::Client, i64) {
        let mut etcd = etcd_client::Client::connect([self.etcd.url()], None)
            .await
            .expect("etcd");
        let lease = etcd.lease_grant(ttl, None).await.expect("lease").id();
        etcd.put(
            format!("/service/{cluster}/apply-lock"),
            "{\"pid\": 1}",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("hold the lock");
        (etcd, lease)
    }

    /// Commits `clusters/<name>.yaml` with shape `s`.
    pub fn commit_shape(&self, name: &str, s: &Shape<'_>) {
        self.repo
            .commit(name, Some(&self.cluster(name, s)))
            .expect("commit");
    }

    /// The cluster file `name` with shape `s`.
    pub fn cluster(&self, name: &str, s: &Shape<'_>) -> String {
        self.cluster_with_etcd(name, s, &self.etcd.client_addr)
    }

    /// The cluster file `name` with shape `s` and etcd at `etcd`.
    pub fn cluster_with_etcd(&self, name: &str, s: &Shape<'_>, etcd: &str) -> String {
        format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}, team: orders}}\nspec:\n  instances: {instances}\n  target: aws\n  postgresql: {{parameters: {{max_connections: {mc}}}}}\n  dcs: {{hosts: [\"{etcd}\"]}}\n  aws:\n    region: {REGION}\n    instanceType: {it}\n    image: {image}\n    vpc: {vpc}\n    subnets: [{subnets}]\n    hostedZone: {zone}\n  backup: {{bucket: {name}-wal, verify: {{schedule: \"0 3 * * 0\"}}}}\n  endpoints: {{dns: {{name: {dns}}}}}\n  secrets: {{superuser: {{ssm: /spilo/{name}/superuser}}, replication: {{ssm: /spilo/{name}/replication}}, restapi: {{ssm: /spilo/{name}/restapi}}}}\n",
            instances = s.instances,
            mc = s.max_connections,
            it = s.instance_type,
            image = self.net.image,
            vpc = self.net.vpc,
            subnets = self.net.subnets.join(", "),
            zone = self.net.zone,
            dns = s.dns,
        )
    }

    /// Runs `spilo ARGS --repo <repo>` against moto.
    pub fn spilo(&self, args: &[&str]) -> Run {
        self.spilo_env(args, &self.moto.env())
    }

    /// Runs `spilo ARGS --repo <repo>` with `env` (an empty value removes a variable).
    pub fn spilo_env(&self, args: &[&str], env: &[(&str, String)]) -> Run {
        run_spilo(&self.repo.path, args, env)
    }

    /// `spilo instances CLUSTER --format json`, which must succeed.
    pub fn instances(&self, cluster: &str) -> Vec<serde_json::Value> {
        let r = self.spilo(&["instances", cluster, "--format", "json"]);
        assert_eq!(r.code, 0, "{r}");
        serde_json::from_str(&r.stdout).expect("instances JSON")
    }

    /// `spilo resources CLUSTER --format json`.
    pub fn resources(&self, cluster: &str) -> Run {
        self.spilo(&["resources", cluster, "--format", "json", "--region", REGION])
    }

    /// The cluster's etcd `config` value, if any.
    pub async fn etcd_config(&self, cluster: &str) -> Option<serde_json::Value> {
        let mut c = etcd_client::Client::connect([self.etcd.url()], None)
            .await
            .expect("etcd");
        let r = c
            .get(format!("/service/{cluster}/config"), None)
            .await
            .expect("get");
        r.kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()).expect("config JSON"))
    }
}

/// A running `spilo watch` and what it reports to.
pub struct Watching {
    /// The watcher process (killed on drop).
    pub process: crate::proc::Spawned,
    /// The webhook receiver named in `alerts.yaml`.
    pub receiver: crate::webhook::Receiver,
    /// `http://127.0.0.1:<port>` of `/healthz` and `/metrics`.
    pub http: String,
}

impl World {
    /// Starts `spilo watch` on the repository with a webhook receiver that refuses the first `refuse_first` deliveries.
    pub async fn watch(&self, refuse_first: u32) -> Watching {
        self.watch_repo(refuse_first, &self.repo.path.display().to_string(), &[])
            .await
    }

    /// Starts `spilo watch` on `repo` with `extra` arguments (a 1 s resync unless `extra` sets one).
    pub async fn watch_repo(&self, refuse_first: u32, repo: &str, extra: &[&str]) -> Watching {
        let receiver = crate::webhook::Receiver::start(refuse_first)
            .await
            .expect("receiver");
        std::fs::write(
            self.repo.path.join("alerts.yaml"),
            format!("webhooks:\n  - url: {}\n", receiver.url),
        )
        .expect("alerts.yaml");
        let port = crate::ports::free();
        let mut cmd = Command::new(crate::proc::target_dir().expect("target").join("spilo"));
        let resync = if extra.contains(&"--resync") {
            &[][..]
        } else {
            &["--resync", "1s"][..]
        };
        cmd.args(["watch", "--branch", "main"])
            .args(resync)
            .args(["--no-leader-after", "1h", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--alerts"])
            .arg(self.repo.path.join("alerts.yaml"))
            .args(extra)
            .arg("--repo")
            .arg(repo);
        for (k, v) in self.moto.env() {
            cmd.env(k, v);
        }
        // Mirrors of remote repositories go to this test's directory.
        cmd.env("XDG_CACHE_HOME", self.dir.path().join("cache"));
        let process =
            crate::proc::Spawned::start(cmd, &self.dir.path().join("watch.log")).expect("watch");
        let http = format!("http://127.0.0.1:{port}");
        let url = format!("{http}/healthz");
        crate::wait::until(
            "spilo watch to serve /healthz",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let r = reqwest::get(url).await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await
        .expect("healthz");
        Watching {
            process,
            receiver,
            http,
        }
    }

    /// Waits until `cluster` has `n` instances.
    pub async fn until_instances(&self, cluster: &str, n: usize) {
        crate::wait::until(
            &format!("{cluster} to have {n} instances"),
            Duration::from_secs(60),
            || async {
                let r = self.spilo(&["instances", cluster, "--format", "json"]);
                let rows: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).ok()?;
                (r.code == 0 && rows.len() == n).then_some(())
            },
        )
        .await
        .expect("instances");
    }
}

impl Watching {
    /// The watcher's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// `spilo_reconciles_total` from `/metrics`.
    pub async fn reconciles(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("spilo_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `check` holds for the receiver; on timeout, panics with what it received and the log.
    pub async fn until(&self, what: &str, check: impl Fn(&crate::webhook::Receiver) -> bool) {
        let r = crate::wait::until(what, Duration::from_secs(60), || async {
            check(&self.receiver).then_some(())
        })
        .await;
        if let Err(e) = r {
            panic!(
                "{e}\nreceived: {:#?}\n--- watch log\n{}",
                self.receiver.bodies(),
                self.log()
            );
        }
    }
}

/// Runs `spilo ARGS --repo <repo>` with `env` (an empty value removes a variable); a spilo
/// that cannot start is a run with code -1 and the reason as stderr.
pub fn run_spilo(repo: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let bin = crate::proc::target_dir()
        .map(|d| d.join("spilo"))
        .unwrap_or_else(|_| std::path::PathBuf::from("spilo"));
    let mut cmd = Command::new(bin);
    cmd.args(args).arg("--repo").arg(repo);
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    match cmd.output() {
        Ok(out) => Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) => Run {
            code: -1,
            stdout: String::new(),
            stderr: e.to_string(),
        },
    }
}
