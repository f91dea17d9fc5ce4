//! End-to-end tests of drift and the continuous reconcile: `spilo drift` and `spilo watch`
//! against `moto_server` and a real etcd, with a webhook receiver counting alerts.

use spilo_e2e::aws_world::{BILLING, DEFAULT, REGION, Shape, World};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn watch_alerts_once_per_drift_and_reverts_where_asked() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
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
    w.commit_shape("orders", &DEFAULT);
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
    // With a declared role (whose state the leader reports in `catalog`).
    let file = w.cluster("orders", &DEFAULT) + "  roles:\n    reporting: {login: true}\n";
    w.repo.commit("orders", Some(&file)).expect("commit");
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
    // The leader found a role changed by hand (`drift: warn`) and said so in `catalog`.
    etcd.put(
        "/service/orders/catalog",
        serde_json::json!({"member": "m0", "unix": 1_700_000_000u64,
                           "drift": ["role reporting: +createdb"]})
        .to_string(),
        None,
    )
    .await
    .expect("the leader reports a role changed by hand");
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
            "catalog",
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
            "orders: catalog: roles and databases changed by hand: role reporting: +createdb"
        ),
        "{text}"
    );
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
    w.commit_shape("orders", &DEFAULT);
    let url = format!("file://{}", w.repo.path.display());
    // No resync during the test: only a fetch tick can bring the new commit.
    let watching = w
        .watch_repo(0, &url, &["--fetch-interval", "1s", "--resync", "1h"])
        .await;
    w.until_instances("orders", 3).await;
    w.commit_shape(
        "orders",
        &Shape {
            instances: 2,
            ..DEFAULT
        },
    );
    w.until_instances("orders", 2).await;
    assert!(
        watching.log().contains("\"trigger\":\"commit\""),
        "a fetch tick triggered the pass: {}",
        watching.log()
    );
}

/// A forge's push webhook (`POST /hooks/git`) starts the pass at once: with the fetch period
/// at an hour, only a verified hook can bring the new commit; an unsigned one is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_hook_fetches_the_branch_at_once_and_an_unsigned_one_is_refused() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
    let url = format!("file://{}", w.repo.path.display());
    let watching = w
        .watch_repo(
            0,
            &url,
            &[
                "--fetch-interval",
                "1h",
                "--resync",
                "1h",
                "--hook-secret",
                "s3cret",
            ],
        )
        .await;
    w.until_instances("orders", 3).await;
    w.commit_shape(
        "orders",
        &Shape {
            instances: 2,
            ..DEFAULT
        },
    );
    let http = reqwest::Client::new();
    let hook = format!("{}/hooks/git", watching.http);
    let refused = http
        .post(&hook)
        .header("X-Gitlab-Token", "guess")
        .body("{}")
        .send()
        .await
        .expect("hook");
    assert_eq!(refused.status(), 401);
    let unsigned = http.post(&hook).body("{}").send().await.expect("hook");
    assert_eq!(unsigned.status(), 401);
    // GitHub's signature: HMAC-SHA256 of the body with the secret, computed here by openssl.
    let body = r#"{"ref":"refs/heads/main"}"#;
    let mac = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", "s3cret", "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl");
    let digest = String::from_utf8_lossy(&mac.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(digest.len(), 64, "{mac:?}");
    let accepted = http
        .post(&hook)
        .header("X-Hub-Signature-256", format!("sha256={digest}"))
        .body(body)
        .send()
        .await
        .expect("hook");
    assert_eq!(accepted.status(), 202);
    w.until_instances("orders", 2).await;
    assert_eq!(
        watching.log().matches("push hook: fetching now").count(),
        1,
        "only the signed hook started a pass: {}",
        watching.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_backs_off_a_failing_cluster_and_applies_the_others() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
    w.commit_shape("billing", &BILLING);
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

/// A plan keeps each settled stack's template and resources (on this machine, under the
/// stack's id, status and last change) and reads them again only when the stack changed: a
/// template edited by hand after a plan, and edited back, must be seen by the next plan each
/// time.
#[tokio::test(flavor = "multi_thread")]
async fn a_template_edited_by_hand_after_a_plan_is_seen_by_the_next_one() {
    let w = World::new().await;
    w.commit_shape("orders", &DEFAULT);
    assert_eq!(w.spilo(&["apply", "--auto-approve"]).code, 0);
    // No governors run here: the etcd side drifts (no leader); the stack must not.
    let stack_drift = |args: &[&str]| -> Vec<String> {
        let run = w.spilo(args);
        let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        report["drift"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|d| d["kind"].as_str())
            .filter(|k| k.starts_with("stack_"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        stack_drift(&["drift", "--format", "json"]),
        Vec::<String>::new()
    );
    let records: Vec<_> = std::fs::read_dir(&w.moto.stack_records)
        .expect("the plan recorded the stack")
        .collect();
    assert_eq!(records.len(), 1, "one record for one stack");
    // A second plan reads the record: neither the template nor the resources are asked for.
    let before = w.moto.log_lines().expect("moto's log").len();
    let again = w.spilo(&["plan"]);
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains("no changes"), "{again}");
    let asked: Vec<String> = w.moto.log_lines().expect("moto's log")[before..]
        .iter()
        .filter_map(|l| l.strip_prefix("moto-action cloudformation "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        asked,
        ["DescribeStacks"],
        "what the second plan asked CloudFormation"
    );

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_edit_template.py");
    let edit = |action: &str| {
        let status = w
            .moto
            .python(&script, &[REGION, "spilo-orders", action])
            .expect("edit the template behind spilo's back");
        assert_eq!(status.trim(), "UPDATE_COMPLETE");
    };
    edit("add");
    assert_eq!(
        stack_drift(&["drift", "--format", "json"]),
        ["stack_template"]
    );
    // Undone by hand: the status stays UPDATE_COMPLETE, only the time of the change tells.
    edit("remove");
    assert_eq!(
        stack_drift(&["drift", "--format", "json"]),
        Vec::<String>::new()
    );
}
