//! End-to-end tests of the AWS reconciler: `spilo plan|apply|resources|instances` against
//! `moto_server` (the SDK's endpoint overridden; the code paths are the production ones) and a
//! real etcd, reading cluster files from commits of a scratch git repository.

use spilo_e2e::aws::{Moto, Network, Repo};
use spilo_e2e::{Etcd, proc};
use std::process::Command;

const REGION: &str = "eu-central-1";

struct World {
    dir: tempfile::TempDir,
    moto: Moto,
    etcd: Etcd,
    repo: Repo,
    net: Network,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
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
struct Shape<'a> {
    instances: u32,
    instance_type: &'a str,
    dns: &'a str,
    max_connections: u32,
}

const DEFAULT: Shape<'static> = Shape {
    instances: 3,
    instance_type: "t3.medium",
    dns: "orders",
    max_connections: 200,
};

const BILLING: Shape<'static> = Shape {
    dns: "billing",
    ..DEFAULT
};

impl World {
    async fn new() -> World {
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
    async fn hold_apply_lock(&self, cluster: &str, ttl: i64) -> (etcd_client::Client, i64) {
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

    fn commit_shape(&self, name: &str, s: &Shape<'_>) {
        self.repo
            .commit(name, Some(&self.cluster(name, s)))
            .expect("commit");
    }

    fn cluster(&self, name: &str, s: &Shape<'_>) -> String {
        self.cluster_with_etcd(name, s, &self.etcd.client_addr)
    }

    fn cluster_with_etcd(&self, name: &str, s: &Shape<'_>, etcd: &str) -> String {
        format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}, team: orders}}\nspec:\n  instances: {instances}\n  target: aws\n  postgresql: {{parameters: {{max_connections: {mc}}}}}\n  dcs: {{hosts: [\"{etcd}\"]}}\n  aws:\n    region: {REGION}\n    instanceType: {it}\n    image: {image}\n    vpc: {vpc}\n    subnets: [{subnets}]\n    hostedZone: {zone}\n  backup: {{bucket: {name}-wal}}\n  endpoints: {{dns: {{name: {dns}}}}}\n",
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

    fn spilo(&self, args: &[&str]) -> Run {
        self.spilo_env(args, &self.moto.env())
    }

    fn spilo_env(&self, args: &[&str], env: &[(&str, String)]) -> Run {
        let bin = proc::target_dir().expect("target dir").join("spilo");
        let mut cmd = Command::new(bin);
        cmd.args(args).arg("--repo").arg(&self.repo.path);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().expect("run spilo");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn instances(&self, cluster: &str) -> Vec<serde_json::Value> {
        let r = self.spilo(&["instances", cluster, "--format", "json"]);
        assert_eq!(r.code, 0, "{r}");
        serde_json::from_str(&r.stdout).expect("instances JSON")
    }

    fn resources(&self, cluster: &str) -> Run {
        self.spilo(&["resources", cluster, "--format", "json", "--region", REGION])
    }

    async fn etcd_config(&self, cluster: &str) -> Option<serde_json::Value> {
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

#[tokio::test(flavor = "multi_thread")]
async fn create_then_a_new_plan_is_all_noop_and_the_etcd_config_is_written() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");

    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 2, "changes exit 2: {plan}");
    assert!(
        plan.stdout.contains(
            "+ cluster orders: create stack spilo-orders in eu-central-1 (clusters/orders.yaml)"
        ),
        "{plan}"
    );
    assert!(
        plan.stdout
            .contains("Plan: 12 to add, 1 to change, 0 to destroy."),
        "{plan}"
    );
    assert!(
        plan.stdout.contains("WAL bucket orders-wal does not exist"),
        "{plan}"
    );
    assert!(
        w.etcd_config("orders").await.is_none(),
        "a plan changes nothing"
    );

    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    assert!(apply.stdout.contains("orders: applied"), "{apply}");
    assert!(
        apply.stdout.contains("CREATE_COMPLETE"),
        "events are streamed: {apply}"
    );

    let config = w.etcd_config("orders").await.expect("config written");
    assert_eq!(config["ttl"], 4);
    assert_eq!(config["postgresql_parameters"]["max_connections"], "200");
    let instances = w.instances("orders");
    assert_eq!(instances.len(), 3, "{instances:?}");
    let resources = w.resources("orders");
    assert_eq!(resources.code, 0, "{resources}");
    for id in [
        "AutoScalingGroup",
        "PrimaryLoadBalancer",
        "DnsRecord",
        "Role",
    ] {
        assert!(resources.stdout.contains(id), "{id} in {resources}");
    }

    let events = w.spilo(&["events", "orders"]);
    assert_eq!(events.code, 0, "{events}");
    let last = events.stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("AWS::CloudFormation::Stack") && last.contains("CREATE_COMPLETE"),
        "oldest first, the stack's completion last: {events}"
    );

    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 0, "no changes exit 0: {again}");
    assert!(
        again.stdout.contains("= cluster orders: no changes"),
        "{again}"
    );
    assert!(
        again
            .stdout
            .contains("Plan: 0 to add, 0 to change, 0 to destroy."),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_changes_instances_and_type_in_place_and_then_plans_noop() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    let created = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(created.code, 0, "{created}");

    let bigger = Shape {
        instances: 5,
        instance_type: "m6i.large",
        max_connections: 300,
        ..DEFAULT
    };
    w.repo
        .commit("orders", Some(&w.cluster("orders", &bigger)))
        .expect("commit");
    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    for line in [
        "~ cluster orders: update stack spilo-orders",
        "~ parameter Instances: \"3\" -> \"5\"",
        "~ parameter InstanceType: \"t3.medium\" -> \"m6i.large\"",
        "~ DesiredCapacity: \"3\" -> \"5\"",
        "~ LaunchTemplateData.InstanceType: \"t3.medium\" -> \"m6i.large\"",
        "~ postgresql_parameters.max_connections: \"200\" -> \"300\"",
    ] {
        assert!(plan.stdout.contains(line), "missing {line:?}: {plan}");
    }
    assert!(!plan.stdout.contains("must be replaced"), "{plan}");

    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    assert_eq!(w.instances("orders").len(), 5);
    let config = w.etcd_config("orders").await.expect("config");
    assert_eq!(config["postgresql_parameters"]["max_connections"], "300");

    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 0, "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_file_is_not_deleted_without_prune() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    assert_eq!(w.spilo(&["apply", "--auto-approve"]).code, 0);
    w.repo.commit("orders", None).expect("remove the file");

    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 0, "an orphan is not a change: {plan}");
    assert!(
        plan.stdout.contains("reconcile.prune was off") && plan.stdout.contains("pass --prune"),
        "{plan}"
    );
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    assert_eq!(w.resources("orders").code, 0, "the stack is still there");

    let prune = w.spilo(&["plan", "--prune"]);
    assert_eq!(prune.code, 2, "{prune}");
    assert!(
        prune
            .stdout
            .contains("- cluster orders: delete stack spilo-orders"),
        "{prune}"
    );
    assert!(
        prune
            .stdout
            .contains("0 to add, 0 to change, 12 to destroy."),
        "{prune}"
    );
    let deleted = w.spilo(&["apply", "--auto-approve", "--prune"]);
    assert_eq!(deleted.code, 0, "{deleted}");
    let gone = w.resources("orders");
    assert_ne!(gone.code, 0, "the stack is gone: {gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_is_refused_without_allow_replace() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    assert_eq!(w.spilo(&["apply", "--auto-approve"]).code, 0);
    let renamed = Shape {
        dns: "orders-v2",
        ..DEFAULT
    };
    w.repo
        .commit("orders", Some(&w.cluster("orders", &renamed)))
        .expect("commit");

    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 1, "a refused replacement is an error: {plan}");
    assert!(
        plan.stdout
            .contains("-/+ DnsRecord (AWS::Route53::RecordSet) must be replaced"),
        "{plan}"
    );
    assert!(
        plan.stdout
            .contains("replaces DnsRecord: refused without --allow-replace"),
        "{plan}"
    );
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{apply}");
    let before = w.resources("orders");
    assert!(
        before.stdout.contains("\"orders.db.example.com.\""),
        "the record is untouched: {before}"
    );

    let allowed = w.spilo(&["apply", "--auto-approve", "--allow-replace"]);
    assert_eq!(allowed.code, 0, "{allowed}");
    let after = w.resources("orders");
    assert!(
        after.stdout.contains("\"orders-v2.db.example.com.\""),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_saved_plan_is_refused() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    let saved = w.dir.path().join("plan.json");
    let saved_str = saved.to_str().expect("utf-8");
    let plan = w.spilo(&["plan", "-o", saved_str, "--format", "json"]);
    assert_eq!(plan.code, 2, "{plan}");
    let parsed: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan JSON");
    assert_eq!(parsed["format_version"], 1);
    assert_eq!(parsed["clusters"][0]["action"], "create");

    // Someone applies first.
    assert_eq!(w.spilo(&["apply", "--auto-approve"]).code, 0);
    let stale = w.spilo(&["apply", saved_str, "--auto-approve"]);
    assert_eq!(stale.code, 1, "{stale}");
    assert!(
        stale.stderr.contains("the saved plan is stale")
            && stale
                .stderr
                .contains("orders: the stack changed since the plan"),
        "{stale}"
    );

    // A new commit makes a saved plan stale too.
    let fresh = w.spilo(&["plan", "-o", saved_str]);
    assert_eq!(fresh.code, 0, "{fresh}");
    w.commit_shape(
        "orders",
        &Shape {
            instances: 4,
            ..DEFAULT
        },
    );
    let moved = w.spilo(&["apply", saved_str, "--auto-approve"]);
    assert_eq!(moved.code, 1, "{moved}");
    assert!(moved.stderr.contains("now resolves to"), "{moved}");
    assert_eq!(w.instances("orders").len(), 3, "nothing was applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_state_blocks_the_cluster_and_touches_nothing() {
    let w = World::new().await;
    let dead_etcd = format!("127.0.0.1:{}", spilo_e2e::ports::free());
    w.repo
        .commit(
            "orders",
            Some(&w.cluster_with_etcd("orders", &DEFAULT, &dead_etcd)),
        )
        .expect("commit");
    w.repo
        .commit("billing", Some(&w.cluster("billing", &BILLING)))
        .expect("commit");

    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 1, "{plan}");
    assert!(
        plan.stdout.contains("! cluster orders: blocked")
            && plan.stdout.contains("cannot plan orders: etcd: "),
        "{plan}"
    );
    assert!(
        plan.stdout
            .contains("+ cluster billing: create stack spilo-billing"),
        "the other cluster is still planned: {plan}"
    );
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{apply}");
    assert!(apply.stdout.contains("billing: applied"), "{apply}");
    let orders = w.resources("orders");
    assert_ne!(orders.code, 0, "no stack for the blocked cluster: {orders}");

    // AWS itself unreachable: every cluster is unknown, nothing is planned as absent.
    let mut env = w.moto.env();
    env[0].1 = format!("http://127.0.0.1:{}", spilo_e2e::ports::free());
    let offline = w.spilo_env(&["plan"], &env);
    assert_eq!(offline.code, 1, "{offline}");
    assert!(
        offline
            .stdout
            .contains("cannot plan billing: stack spilo-billing:"),
        "{offline}"
    );
    assert!(!offline.stdout.contains("+ cluster"), "{offline}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_apply_at_a_time_per_cluster_and_a_failure_leaves_the_others_alone() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    w.repo
        .commit("billing", Some(&w.cluster("billing", &BILLING)))
        .expect("commit");
    // Another apply of orders holds its lock.
    let (mut etcd, lease) = w.hold_apply_lock("orders", 60).await;

    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{apply}");
    assert!(
        apply
            .stdout
            .contains("orders: FAILED: another apply of orders is running"),
        "{apply}"
    );
    assert!(apply.stdout.contains("billing: applied"), "{apply}");
    assert_ne!(w.resources("orders").code, 0, "orders was not touched");
    assert!(
        w.etcd_config("orders").await.is_none(),
        "nor its etcd config"
    );

    etcd.lease_revoke(lease).await.expect("release");
    let retry = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(retry.code, 0, "{retry}");
    assert!(retry.stdout.contains("orders: applied"), "{retry}");
    let lock = etcd
        .get("/service/orders/apply-lock", None)
        .await
        .expect("get");
    assert!(lock.kvs().is_empty(), "apply releases its lock");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_stack_is_reported_and_the_other_clusters_are_applied() {
    let w = World::new().await;
    // A subnet that does not exist in this account.
    let broken = w
        .cluster("orders", &DEFAULT)
        .replace(&w.net.subnets[0], "subnet-0123456789abcdef0");
    w.repo.commit("orders", Some(&broken)).expect("commit");
    w.repo
        .commit("billing", Some(&w.cluster("billing", &BILLING)))
        .expect("commit");
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{apply}");
    // moto refuses the change set outright; CloudFormation would roll back, and apply then
    // names the rollback status and the first failed event instead.
    assert!(
        apply
            .stdout
            .contains("orders: FAILED: execute-change-set: InvalidSubnetID.NotFound: "),
        "{apply}"
    );
    assert!(apply.stdout.contains("billing: applied"), "{apply}");
    assert_eq!(w.instances("billing").len(), 3);
}

#[test]
fn diff_between_two_refs_needs_no_aws() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(&dir.path().join("repo")).expect("repo");
    let file = |instances: u32| {
        format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  instances: {instances}\n  target: aws\n  dcs: {{hosts: [\"10.0.0.1:2379\"]}}\n  aws: {{region: {REGION}, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d]}}\n"
        )
    };
    let base = repo.commit("orders", Some(&file(3))).expect("commit");
    repo.commit("orders", Some(&file(5))).expect("commit");
    let bin = proc::target_dir().expect("target").join("spilo");
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(args)
            .arg("--repo")
            .arg(&repo.path)
            // No credentials and no reachable AWS: a diff never calls it.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("SPILO_AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["diff", &base, "HEAD"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("~ parameter Instances: \"3\" -> \"5\""),
        "{out}"
    );
    assert!(
        out.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{out}"
    );
    let (code, md, _) = run(&["diff", &base, "HEAD", "--format", "markdown"]);
    assert_eq!(code, 2);
    assert!(md.starts_with("### spilo plan for `"), "{md}");
    let (code, same, _) = run(&["diff", "HEAD", "HEAD"]);
    assert_eq!(code, 0, "{same}");
    // An invalid head is reported with its file and field, and is an error.
    repo.commit("orders", Some(&file(0))).expect("commit");
    let (code, out, err) = run(&["diff", &base, "HEAD"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("clusters/orders.yaml:5:14: spec.instances:"),
        "{err}"
    );
}

/// A running `spilo watch` and what it reports to.
struct Watching {
    process: spilo_e2e::proc::Spawned,
    receiver: spilo_e2e::webhook::Receiver,
    http: String,
}

impl World {
    async fn watch(&self, refuse_first: u32) -> Watching {
        self.watch_repo(refuse_first, &self.repo.path.display().to_string(), &[])
            .await
    }

    async fn watch_repo(&self, refuse_first: u32, repo: &str, extra: &[&str]) -> Watching {
        let receiver = spilo_e2e::webhook::Receiver::start(refuse_first)
            .await
            .expect("receiver");
        std::fs::write(
            self.repo.path.join("alerts.yaml"),
            format!("webhooks:\n  - url: {}\n", receiver.url),
        )
        .expect("alerts.yaml");
        let port = spilo_e2e::ports::free();
        let mut cmd = Command::new(proc::target_dir().expect("target").join("spilo"));
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
        let process = spilo_e2e::proc::Spawned::start(cmd, &self.dir.path().join("watch.log"))
            .expect("watch");
        let http = format!("http://127.0.0.1:{port}");
        let url = format!("{http}/healthz");
        spilo_e2e::wait::until(
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

    async fn until_instances(&self, cluster: &str, n: usize) {
        spilo_e2e::wait::until(
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
    fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    async fn reconciles(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("spilo_reconciles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn until(&self, what: &str, check: impl Fn(&spilo_e2e::webhook::Receiver) -> bool) {
        let r = spilo_e2e::wait::until(what, Duration::from_secs(60), || async {
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

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn watch_alerts_once_per_drift_and_reverts_where_asked() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    let reverting = w
        .cluster("billing", &BILLING)
        .replace("spec:\n", "spec:\n  reconcile: {drift: revert}\n");
    w.repo.commit("billing", Some(&reverting)).expect("commit");
    // The receiver is down for the first two deliveries: alerts are retried, not lost.
    let watching = w.watch(2).await;
    w.until_instances("orders", 3).await;
    w.until_instances("billing", 3).await;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_set_parameter.py");
    for stack in ["spilo-orders", "spilo-billing"] {
        w.moto
            .python(&script, &[REGION, stack, "Instances", "5"])
            .expect("change a parameter behind spilo's back");
    }
    watching
        .until("a drift alert for orders and a resolve for billing", |r| {
            r.count("drift", "orders", "stack_parameters") == 1
                && r.count("drift", "billing", "stack_parameters") == 1
                && r.count("resolved", "billing", "stack_parameters") == 1
        })
        .await;
    assert_eq!(
        watching.receiver.refusals_left(),
        0,
        "the refused deliveries were retried"
    );
    // billing is back to its file; orders (warn) keeps the hand-made change.
    w.until_instances("billing", 3).await;
    assert_eq!(w.instances("orders").len(), 5);
    let drifted = watching
        .receiver
        .bodies()
        .into_iter()
        .find(|b| b["cluster"] == "orders" && b["kind"] == "stack_parameters")
        .expect("the alert");
    assert!(
        drifted["detail"]
            .as_str()
            .unwrap_or("")
            .contains("Instances is 5 in AWS, 3 in git"),
        "{drifted}"
    );

    // No repeats while the drift persists.
    let seen = watching.reconciles().await;
    spilo_e2e::wait::until("three more passes", Duration::from_secs(30), || async {
        (watching.reconciles().await >= seen + 3).then_some(())
    })
    .await
    .expect("passes");
    assert_eq!(
        watching
            .receiver
            .count("drift", "orders", "stack_parameters"),
        1
    );
    assert_eq!(
        watching
            .receiver
            .count("resolved", "orders", "stack_parameters"),
        0
    );
    let metrics = watching.metrics().await;
    assert!(
        metrics.contains("spilo_drift{cluster=\"orders\",kind=\"stack_parameters\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spilo_last_success_timestamp_seconds{cluster=\"billing\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_skips_an_invalid_commit_and_applies_the_next_valid_one() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    let watching = w.watch(0).await;
    w.until_instances("orders", 3).await;

    let broken = w.cluster(
        "orders",
        &Shape {
            instances: 0,
            ..DEFAULT
        },
    );
    w.repo.commit("orders", Some(&broken)).expect("commit");
    watching
        .until("an invalid_commit alert", |r| {
            r.count("drift", "*", "invalid_commit") == 1
        })
        .await;
    assert_eq!(
        w.instances("orders").len(),
        3,
        "nothing of the invalid commit was applied"
    );
    assert!(
        watching.log().contains("spec.instances"),
        "the error names the field: {}",
        watching.log()
    );

    w.commit_shape(
        "orders",
        &Shape {
            instances: 4,
            ..DEFAULT
        },
    );
    w.until_instances("orders", 4).await;
    watching
        .until("the invalid_commit alert resolved", |r| {
            r.count("resolved", "*", "invalid_commit") == 1
        })
        .await;
    assert_eq!(watching.receiver.count("drift", "*", "invalid_commit"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_reports_aws_and_runtime_drift_with_exit_codes() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    assert_eq!(w.spilo(&["apply", "--auto-approve"]).code, 0);
    // The three governors of the cluster, as they publish themselves in etcd.
    let mut etcd = etcd_client::Client::connect([w.etcd.url()], None)
        .await
        .expect("etcd");
    let member = |i: usize, lsn: &str| {
        let (role, wal) = if i == 0 {
            ("primary", serde_json::json!({"write": lsn}))
        } else {
            (
                "replica",
                serde_json::json!({"receive": lsn, "replay": lsn}),
            )
        };
        serde_json::json!({
            "conn_url": format!("postgres://10.42.0.{i}:5432/postgres"),
            "api_url": format!("http://10.42.0.{i}:8008"),
            "role": role, "state": "running", "timeline": 1, "wal": wal, "tags": {}
        })
        .to_string()
    };
    for i in 0..3 {
        etcd.put(
            format!("/service/orders/members/m{i}"),
            member(i, "0/9000000"),
            None,
        )
        .await
        .expect("member");
    }
    etcd.put("/service/orders/leader", "m0", None)
        .await
        .expect("leader");

    let clean = w.spilo(&["drift"]);
    assert_eq!(clean.code, 0, "{clean}");
    assert!(
        clean.stdout.contains("0 drift(s), 0 cluster(s) unknown"),
        "{clean}"
    );

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_set_parameter.py");
    w.moto
        .python(
            &script,
            &[REGION, "spilo-orders", "InstanceType", "m5.large"],
        )
        .expect("change a parameter behind spilo's back");
    etcd.delete("/service/orders/members/m2", None)
        .await
        .expect("a member dies");
    etcd.put("/service/orders/members/m1", member(1, "0/1000000"), None)
        .await
        .expect("a replica falls 128 MiB behind");
    let mut waiting: serde_json::Value =
        serde_json::from_str(&member(0, "0/9000000")).expect("json");
    waiting["pending_restart"] = serde_json::json!(true);
    etcd.put("/service/orders/members/m0", waiting.to_string(), None)
        .await
        .expect("the primary waits for a restart");
    etcd.put(
        "/service/orders/config",
        serde_json::json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
                           "postgresql_parameters": {"max_connections": "200"}}).to_string(),
        None,
    )
    .await
    .expect("someone edits the config by hand");
    let resources: Vec<serde_json::Value> =
        serde_json::from_str(&w.resources("orders").stdout).expect("resources");
    let group = resources
        .iter()
        .find(|r| r["logical_id"] == "AutoScalingGroup")
        .and_then(|r| r["physical_id"].as_str())
        .expect("the group's name")
        .to_string();
    let delete = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_delete.py");
    w.moto
        .python(&delete, &[REGION, "asg", &group])
        .expect("delete the group by hand");
    w.moto
        .python(
            &delete,
            &[
                REGION,
                "record",
                "db.example.com.",
                "orders.db.example.com.",
            ],
        )
        .expect("delete the record by hand");
    let drifted = w.spilo(&["drift", "--format", "json"]);
    assert_eq!(drifted.code, 2, "{drifted}");
    let report: serde_json::Value = serde_json::from_str(&drifted.stdout).expect("json");
    let kinds: Vec<&str> = report["drift"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "resource_deleted",
            "resource_deleted",
            "stack_parameters",
            "config_differs",
            "missing_members",
            "pending_restart",
            "replica_lag"
        ],
        "{report:#}"
    );
    let text = w.spilo(&["drift"]);
    assert!(
        text.stdout.contains(
            "orders: stack_parameters: InstanceType is m5.large in AWS, t3.medium in git"
        ),
        "{text}"
    );
    assert!(
        text.stdout
            .contains("orders: missing_members: 2 of 3 members running"),
        "{text}"
    );
    assert!(text.stdout.contains("~ ttl: 30 -> 4"), "{text}");
    assert!(
        text.stdout.contains(
            "orders: pending_restart: m0 runs with a changed setting that waits for a restart"
        ),
        "{text}"
    );
    assert!(
        text.stdout.contains(&format!(
            "orders: resource_deleted: AutoScalingGroup ({group}) was deleted outside CloudFormation"
        )),
        "{text}"
    );
    assert!(
        text.stdout
            .contains("orders: resource_deleted: DnsRecord (orders.db.example.com.) was deleted"),
        "{text}"
    );
    assert!(
        text.stdout.contains(
            "orders: replica_lag: m1 is 134217728 bytes behind the leader (limit 1048576)"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_fetches_a_remote_repository_periodically() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    let url = format!("file://{}", w.repo.path.display());
    // No resync during the test: only a fetch tick can bring the new commit.
    let watching = w
        .watch_repo(0, &url, &["--fetch-interval", "1s", "--resync", "1h"])
        .await;
    w.until_instances("orders", 3).await;
    w.repo
        .commit(
            "orders",
            Some(&w.cluster(
                "orders",
                &Shape {
                    instances: 2,
                    ..DEFAULT
                },
            )),
        )
        .expect("commit");
    w.until_instances("orders", 2).await;
    assert!(
        watching.log().contains("\"trigger\":\"commit\""),
        "a fetch tick triggered the pass: {}",
        watching.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_backs_off_a_failing_cluster_and_applies_the_others() {
    let w = World::new().await;
    w.repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("commit");
    w.repo
        .commit("billing", Some(&w.cluster("billing", &BILLING)))
        .expect("commit");
    // Someone else's apply holds orders' lock: every apply of orders fails until it is gone.
    let (mut etcd, lease) = w.hold_apply_lock("orders", 300).await;
    let watching = w.watch(0).await;
    w.until_instances("billing", 3).await;
    let waits = || -> Vec<u64> {
        watching
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == "apply failed; backing off" && v["cluster"] == "orders")
            .filter_map(|v| v["retry_in_s"].as_u64())
            .collect()
    };
    spilo_e2e::wait::until(
        "three failed applies of orders",
        Duration::from_secs(60),
        || async { (waits().len() >= 3).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", watching.log()));
    assert_eq!(
        &waits()[..3],
        [2, 4, 8],
        "exponential backoff: {}",
        watching.log()
    );
    let metrics = watching.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("spilo_cluster_errors_total{cluster=\"orders\"} ")),
        "{metrics}"
    );
    // Once the lock is gone, the next attempt applies it.
    etcd.lease_revoke(lease).await.expect("release");
    w.until_instances("orders", 3).await;
    // Passes come from resyncs and commits only, not from the watcher reading the repository.
    let passes = watching
        .log()
        .lines()
        .filter(|l| l.contains("\"msg\":\"plan started\"") && l.contains("\"trigger\":\"commit\""))
        .count();
    assert_eq!(
        passes,
        0,
        "no commit was made while watching: {}",
        watching.log()
    );
}
