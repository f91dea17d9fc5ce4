//! End-to-end tests of the AWS reconciler: `spilo plan|apply|diff|resources|instances|events`
//! against `moto_server` (the SDK's endpoint overridden; the code paths are the production
//! ones) and a real etcd, reading cluster files from commits of a scratch git repository.

use spilo_e2e::aws::Repo;
use spilo_e2e::aws_world::{BILLING, DEFAULT, REGION, Shape, World};
use spilo_e2e::proc;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn create_then_a_new_plan_is_all_noop_and_the_etcd_config_is_written() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);

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
async fn an_update_changes_instances_and_type_in_place_and_leaves_the_rollout_to_a_running_cluster()
{
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
    let created = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(created.code, 0, "{created}");

    let bigger = Shape {
        instances: 5,
        instance_type: "m6i.large",
        max_connections: 300,
        ..DEFAULT
    };
    w.commit_shape("orders", &bigger);
    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    for line in [
        "~ cluster orders: update stack spilo-orders",
        "~ parameter Instances: \"3\" -> \"5\"",
        "~ parameter InstanceType: \"t3.medium\" -> \"m6i.large\"",
        "~ DesiredCapacity: \"3\" -> \"5\"",
        "~ LaunchTemplateData.InstanceType: \"t3.medium\" -> \"m6i.large\"",
        "~ postgresql_parameters.max_connections: \"200\" -> \"300\"",
        "~ restart: max_connections takes effect only after every member restarted (`spilo restart orders --pending`: the replicas in place, the primary by a switchover)",
    ] {
        assert!(plan.stdout.contains(line), "missing {line:?}: {plan}");
    }
    assert!(!plan.stdout.contains("must be replaced"), "{plan}");

    assert!(
        plan.stdout
            .contains("~ rollout: replaces 5 instances one at a time"),
        "a new instance type means new instances: {plan}"
    );

    // The stack and the config change; no member runs here (moto alone), so the rollout
    // refuses to start and says why.
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{apply}");
    assert!(
        apply
            .stdout
            .contains("orders: FAILED: rollout not started: the cluster has no leader"),
        "{apply}"
    );
    assert_eq!(w.instances("orders").len(), 5);
    let config = w.etcd_config("orders").await.expect("config");
    assert_eq!(config["postgresql_parameters"]["max_connections"], "300");

    // What is left: the three instances still on the first launch template version.
    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 2, "{again}");
    assert!(
        again
            .stdout
            .contains("~ cluster orders: replace the instances of stack spilo-orders")
            && again
                .stdout
                .contains("~ rollout: replaces 3 instances one at a time")
            && again.stdout.contains("still run an older launch template"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_file_is_not_deleted_without_prune() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
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
    // What is kept and what is lost.
    assert!(
        prune.stdout.contains(
            "kept: its WAL archive and base backups (the bucket is outside the stack) and its etcd keys (/service/orders/); lost: the data volumes of its 3 instances, deleted with them"
        ),
        "{prune}"
    );
    // Its file never set reconcile.prune: --auto-approve alone does not delete it.
    let refused = w.spilo(&["apply", "--auto-approve", "--prune"]);
    assert_eq!(refused.code, 1, "{refused}");
    assert!(
        refused.stdout.contains(
            "orders: skipped (not deleted: its file did not set reconcile.prune, and its name was not typed back (--confirm-delete orders))"
        ),
        "{refused}"
    );
    assert_eq!(w.resources("orders").code, 0, "the stack is still there");
    let deleted = w.spilo(&[
        "apply",
        "--auto-approve",
        "--prune",
        "--confirm-delete",
        "orders",
    ]);
    assert_eq!(deleted.code, 0, "{deleted}");
    let gone = w.resources("orders");
    assert_ne!(gone.code, 0, "the stack is gone: {gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_with_termination_protection_is_never_deleted() {
    let w = World::new().await;
    let file = w.cluster("billing", &BILLING).replace(
        "  aws:\n",
        "  reconcile: {prune: true, terminationProtection: true}\n  aws:\n",
    );
    assert!(file.contains("terminationProtection"), "{file}");
    w.repo.commit("billing", Some(&file)).expect("commit");
    let plan = w.spilo(&["plan"]);
    assert!(
        plan.stdout
            .contains("~ termination protection: on (reconcile.terminationProtection)"),
        "{plan}"
    );
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    assert!(
        apply.stdout.contains("billing: termination protection on"),
        "{apply}"
    );
    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 0, "protection observed, nothing to do: {again}");
    // The file goes (with reconcile.prune set when applied): still never deleted.
    w.repo.commit("billing", None).expect("remove");
    let prune = w.spilo(&[
        "apply",
        "--auto-approve",
        "--prune",
        "--confirm-delete",
        "billing",
    ]);
    assert_eq!(prune.code, 1, "{prune}");
    assert!(
        prune
            .stdout
            .contains("spilo-billing has termination protection"),
        "{prune}"
    );
    assert_eq!(w.resources("billing").code, 0, "the stack is still there");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_is_refused_without_allow_replace() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
    assert_eq!(w.spilo(&["apply", "--auto-approve"]).code, 0);
    let renamed = Shape {
        dns: "orders-v2",
        ..DEFAULT
    };
    w.commit_shape("orders", &renamed);

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
    w.commit_shape("orders", &DEFAULT);
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
    w.commit_shape("billing", &BILLING);

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
    w.commit_shape("orders", &DEFAULT);
    w.commit_shape("billing", &BILLING);
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
    w.commit_shape("billing", &BILLING);
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
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  instances: {instances}\n  target: aws\n  dcs: {{hosts: [\"10.0.0.1:2379\"]}}\n  aws: {{region: {REGION}, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d], image: ami-0a1b2c3d4e5f60718}}\n  secrets: {{superuser: {{ssm: /su}}, replication: {{ssm: /repl}}, restapi: {{ssm: /api}}}}\n"
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

/// `backup.createBucket`: a missing WAL bucket is planned as a creation outside the stack,
/// created encrypted and closed to public access, and kept when the stack is pruned.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_created_outside_the_stack_and_outlives_it() {
    let w = World::new().await;
    let file = w
        .cluster("orders", &DEFAULT)
        .replace(
            "backup: {bucket: orders-wal,",
            "backup: {bucket: orders-wal, createBucket: true,",
        )
        .replace("  endpoints:", "  reconcile: {prune: true}\n  endpoints:");
    w.repo.commit("orders", Some(&file)).expect("commit");

    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains("+ S3 bucket orders-wal (encrypted, no public access; outside the stack"),
        "{plan}"
    );
    assert!(!plan.stdout.contains("does not exist"), "{plan}");
    assert!(
        plan.stdout
            .contains("Plan: 13 to add, 1 to change, 0 to destroy."),
        "the bucket counts as one more: {plan}"
    );
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    assert!(
        apply
            .stdout
            .contains("orders: + S3 bucket orders-wal created"),
        "{apply}"
    );
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_s3.py");
    let described = w
        .moto
        .python(&fixture, &[REGION, "describe", "orders-wal"])
        .expect("the bucket exists");
    let d: serde_json::Value = serde_json::from_str(&described).expect("json");
    assert_eq!(d["location"], REGION, "{d}");
    assert_eq!(d["sse"], "AES256", "{d}");
    for k in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(d["public_access_block"][k], true, "{k}: {d}");
    }
    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 0, "the bucket exists now: {again}");

    // The file goes, the stack is pruned; the bucket and its backups stay.
    w.repo.commit("orders", None).expect("remove the file");
    let prune = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(prune.code, 0, "{prune}");
    assert_ne!(w.resources("orders").code, 0, "the stack is gone: {prune}");
    w.moto
        .python(&fixture, &[REGION, "describe", "orders-wal"])
        .expect("the bucket outlives the stack");
}

/// The etcd cluster file `etcd-main` of three members in the world's network.
fn etcd_main(w: &World) -> String {
    format!(
        "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {{name: etcd-main, team: platform}}\nspec:\n  \
         members: 3\n  aws:\n    region: {REGION}\n    instanceType: t3.small\n    image: {image}\n    \
         vpc: {vpc}\n    subnets: [{subnets}]\n    hostedZone: {zone}\n  \
         secrets: {{ca: {{ssm: /spilo/etcd-main/ca}}}}\n",
        image = w.net.image,
        vpc = w.net.vpc,
        subnets = w.net.subnets.join(", "),
        zone = w.net.zone,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_cluster_file_becomes_its_stack_beside_a_postgres_cluster() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
    let etcd = etcd_main(&w);
    w.repo.commit("etcd-main", Some(&etcd)).expect("commit");

    let plan = w.spilo(&["plan"]);
    assert_eq!(plan.code, 2, "changes exit 2: {plan}");
    assert!(
        plan.stdout.contains(
            "+ cluster etcd-main: create stack spilo-etcd-main in eu-central-1 (clusters/etcd-main.yaml)"
        ),
        "{plan}"
    );
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    assert!(apply.stdout.contains("etcd-main: applied"), "{apply}");
    assert!(apply.stdout.contains("orders: applied"), "{apply}");
    let instances = w.instances("etcd-main");
    assert_eq!(instances.len(), 3, "three members: {instances:?}");
    let resources = w.resources("etcd-main");
    for id in [
        "AutoScalingGroup",
        "ClientSecurityGroup",
        "MemberSecurityGroup",
        "Role",
    ] {
        assert!(resources.stdout.contains(id), "{id} in {resources}");
    }
    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 0, "no changes exit 0: {again}");
    assert!(
        again.stdout.contains("= cluster etcd-main: no changes"),
        "{again}"
    );

    // Five members instead of three: an update in place.
    w.repo
        .commit("etcd-main", Some(&etcd.replace("members: 3", "members: 5")))
        .expect("commit");
    let grow = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(grow.code, 0, "{grow}");
    w.until_instances("etcd-main", 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_on_an_etcd_cluster_of_another_repository_finds_it_in_the_account() {
    let w = World::new().await;
    w.repo
        .commit("etcd-main", Some(&etcd_main(&w)))
        .expect("commit");
    let apply = w.spilo(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 0, "{apply}");
    // The etcd cluster's file moves to another repository (its stack stays: no prune), and
    // clusters here use it, one of them by a name no account holds, one with another CA.
    w.repo.commit("etcd-main", None).expect("remove");
    let on = |name: &str, etcd: &str, ca: &str| {
        w.cluster(name, &DEFAULT)
            .replace(
                &format!("dcs: {{hosts: [\"{}\"]}}", w.etcd.client_addr),
                &format!("dcs: {{etcdCluster: {etcd}}}"),
            )
            .replace("secrets: {", &format!("secrets: {{ca: {{ssm: {ca}}}, "))
            .replace("name: orders}", &format!("name: {name}}}"))
    };
    let ledger = on("ledger", "etcd-main", "/spilo/etcd-main/ca");
    assert!(ledger.contains("etcdCluster: etcd-main"), "{ledger}");
    w.repo.commit("ledger", Some(&ledger)).expect("commit");
    w.repo
        .commit(
            "audit",
            Some(&on("audit", "etcd-nope", "/spilo/etcd-main/ca")),
        )
        .expect("commit");
    w.repo
        .commit("stray", Some(&on("stray", "etcd-main", "/spilo/other/ca")))
        .expect("commit");

    // spilo's client certificate of etcd-main's CA, for when it looks etcd up.
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86400);
    let ca = spilo_pki::new_ca("etcd-main CA", day, now).expect("CA");
    let client = spilo_pki::issue(&ca, &["spilo".to_string()], day, now).expect("issue");
    let tls = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let p = tls.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let mut env = w.moto.env();
    env.extend([
        ("SPILO_ETCD_CACERT", file("ca.crt", &ca.cert)),
        ("SPILO_ETCD_CERT", file("c.crt", &client.cert)),
        ("SPILO_ETCD_KEY", file("c.key", &client.key)),
    ]);
    let plan = w.spilo_env(&["plan", "--format", "json"], &env);
    assert_eq!(plan.code, 1, "blocked clusters exit 1: {plan}");
    let p: serde_json::Value = serde_json::from_str(&plan.stdout).expect("plan JSON");
    let reason = |name: &str| -> String {
        let c = p["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {plan}"));
        assert_eq!(c["action"], "blocked", "{name}: {c}");
        c["reason"].as_str().expect("a reason").to_string()
    };
    // ledger found etcd-main's stack: its members look etcd-main up under its domain (which
    // nothing serves here, so its etcd is unknown and nothing of it is planned).
    let ledger_why = reason("ledger");
    assert!(
        ledger_why.contains("etcd-main.db.example.com"),
        "ledger looks etcd up under the stack's domain: {ledger_why}"
    );
    assert_eq!(
        reason("audit"),
        "cannot plan audit: etcd: etcd cluster etcd-nope is neither in this commit nor in the account (no stack spilo-etcd-nope in eu-central-1)"
    );
    assert_eq!(
        reason("stray"),
        "cannot plan stray: etcd: etcd cluster etcd-main admits certificates of its CA {ssm: /spilo/etcd-main/ca}, this cluster's spec.secrets.ca is {ssm: /spilo/other/ca} (they must be the same)"
    );
    // The stack of the file that moved away is kept.
    let etcd_main = p["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == "etcd-main")
        .expect("etcd-main is listed");
    assert_ne!(etcd_main["action"], "delete", "{etcd_main}");
}
