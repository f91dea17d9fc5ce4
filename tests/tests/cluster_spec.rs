//! The cluster file: its schema is current, the examples in `clusters/` are valid, and every
//! broken file in `tests/corpus/invalid/` produces exactly the diagnostics in its `.expected`
//! file (`SPILO_BLESS=1 cargo test --test cluster_spec` rewrites them after a reviewed change).

use spilo::spec::{Severity, render_text, validate_files};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read_case(dir: &Path, entry: &Path) -> Vec<(String, String)> {
    let files: Vec<PathBuf> = if entry.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(entry)
            .expect("case dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        f.sort();
        f
    } else {
        vec![entry.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| {
            let name = f
                .strip_prefix(dir)
                .expect("inside corpus")
                .display()
                .to_string();
            (name, std::fs::read_to_string(&f).expect("read case"))
        })
        .collect()
}

#[test]
fn every_broken_file_gets_exactly_its_expected_messages() {
    let dir = root().join("tests/corpus/invalid");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 25,
        "the corpus has {} cases",
        entries.len()
    );
    let bless = std::env::var_os("SPILO_BLESS").is_some();
    let mut messages = BTreeSet::new();
    let mut mismatches = Vec::new();
    for entry in &entries {
        let checked = validate_files(&read_case(&dir, entry));
        assert!(checked.has_errors(), "{} must be rejected", entry.display());
        for d in &checked.diagnostics {
            messages.insert(d.message.clone());
        }
        let got = render_text(&checked.diagnostics);
        let expected_path = if entry.is_dir() {
            entry.join("expected")
        } else {
            entry.with_extension("expected")
        };
        if bless {
            std::fs::write(&expected_path, &got).expect("write expected");
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            mismatches.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                entry.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(
        messages.len() >= 25,
        "only {} distinct messages",
        messages.len()
    );
}

#[test]
fn the_example_clusters_and_the_minimal_file_are_valid() {
    for dir in [root().join("clusters"), root().join("tests/corpus/valid")] {
        let files = spilo::spec::read_files(std::slice::from_ref(&dir)).expect("read");
        assert!(!files.is_empty(), "{} has cluster files", dir.display());
        let checked = validate_files(&files);
        assert_eq!(render_text(&checked.diagnostics), "", "{}", dir.display());
        assert_eq!(
            checked.files.len() + checked.etcd_clusters.len(),
            files.len()
        );
    }
}

#[test]
fn the_committed_schema_is_generated_from_the_types() {
    let committed =
        std::fs::read_to_string(root().join("schemas/cluster.schema.json")).unwrap_or_default();
    assert!(
        committed == spilo::spec::schema_json(),
        "schemas/cluster.schema.json is stale: run `cargo run -p spilo -- schema > schemas/cluster.schema.json`"
    );
    let committed = std::fs::read_to_string(root().join("schemas/etcd-cluster.schema.json"))
        .unwrap_or_default();
    assert!(
        committed == spilo::spec::etcd_schema_json(),
        "schemas/etcd-cluster.schema.json is stale: run `cargo run -p spilo -- schema --kind EtcdCluster > schemas/etcd-cluster.schema.json`"
    );
}

#[test]
fn a_file_with_few_instances_is_accepted_with_a_warning() {
    let text = "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: solo\nspec:\n  instances: 1\n";
    let checked = validate_files(&[("solo.yaml".into(), text.into())]);
    assert!(!checked.has_errors());
    assert_eq!(
        render_text(&checked.diagnostics),
        "solo.yaml:6:14: spec.instances: warning: a single instance cannot fail over; use 3 for high availability\n"
    );
    assert_eq!(checked.diagnostics[0].severity, Severity::Warning);
}

#[test]
fn a_setting_the_installed_postgresql_does_not_list_is_a_warning() {
    // PostgreSQL 15 is installed here (scripts/install-deps); `old_snapshot_threshold` is one
    // of its settings, `trace_recovery_messages` a developer one it does not list.
    let text = "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: typo\nspec:\n  \
                instances: 3\n  postgresql:\n    version: 15\n    parameters:\n      \
                shared_bufers: 64MB\n      old_snapshot_threshold: -1\n      \
                pg_stat_statements.track: all\n";
    let checked = validate_files(&[("typo.yaml".into(), text.into())]);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    assert_eq!(
        render_text(&checked.diagnostics),
        "typo.yaml:10:22: spec.postgresql.parameters.shared_bufers: warning: PostgreSQL 15 does \
         not list a setting shared_bufers (postgres --describe-config in \
         /usr/lib/postgresql/15/bin, which leaves out developer settings): a typo, or a setting \
         this version removed? PostgreSQL does not start with a setting it does not have\n"
    );
}

#[test]
fn routing_defaults_to_the_proxy_locally_and_to_the_health_check_on_aws() {
    let file = |spec: &str| -> spilo_model::spec::ClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: here\nspec:\n{spec}"
        ))
        .expect("valid")
    };
    use spilo_model::spec::Routing;
    assert_eq!(file("  instances: 3\n").spec.routing(), Routing::Proxy);
    assert_eq!(
        file("  endpoints: {routing: healthCheck}\n").spec.routing(),
        Routing::HealthCheck
    );
    let aws = "  target: aws\n  aws: {region: eu-west-1, vpc: vpc-1, subnets: [subnet-1]}\n";
    assert_eq!(file(aws).spec.routing(), Routing::HealthCheck);
    let text = "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: here\nspec:\n  endpoints:\n    routing: healthCheck\n";
    let checked = validate_files(&[("here.yaml".into(), text.into())]);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
}

#[test]
fn spilo_validate_prints_every_problem_and_exits_1() {
    let spilo = spilo_e2e::proc::target_dir().expect("target").join("spilo");
    let bad = root().join("tests/corpus/invalid/19-retry-timeout-not-below-ttl.yaml");
    let out = std::process::Command::new(&spilo)
        .arg("validate")
        .arg(&bad)
        .output()
        .expect("run spilo");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{}:8:19: spec.ha.retryTimeout: must be at least 1 and below the ttl",
            bad.display()
        )),
        "{stdout}"
    );
    let json = std::process::Command::new(&spilo)
        .args(["validate", "--format", "json"])
        .arg(&bad)
        .output()
        .expect("run spilo");
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(parsed[0]["path"], "spec.ha.retryTimeout");
    assert_eq!(parsed[0]["line"], 8);
    assert_eq!(parsed[0]["severity"], "error");
    let good = std::process::Command::new(&spilo)
        .arg("validate")
        .arg(root().join("clusters"))
        .output()
        .expect("run spilo");
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
}

#[test]
fn spilo_init_takes_answers_from_a_pipe_and_writes_a_valid_file() {
    use std::io::Write;
    let spilo = spilo_e2e::proc::target_dir().expect("target").join("spilo");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("clusters/payments.yaml");
    let mut child = std::process::Command::new(&spilo)
        .arg("init")
        .arg("--output")
        .arg(&out)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run spilo init");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"payments\n1\nlocal\n\n")
        .expect("answer");
    let result = child.wait_with_output().expect("wait");
    let shown = String::from_utf8_lossy(&result.stdout);
    assert_eq!(result.status.code(), Some(0), "{shown}");
    for prompt in [
        "Cluster name: ",
        "Number of instances [3]: ",
        "Target (aws or local) [aws]: ",
    ] {
        assert!(
            shown.contains(prompt),
            "missing prompt {prompt:?} in {shown}"
        );
    }
    assert!(
        shown.contains("spec.instances: warning: a single instance cannot fail over"),
        "init shows the warnings of its file: {shown}"
    );
    let check = std::process::Command::new(&spilo)
        .arg("validate")
        .arg(&out)
        .output()
        .expect("validate");
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let text = std::fs::read_to_string(&out).expect("written");
    assert!(text.contains("instances: 1\n  target: local\n"), "{text}");
}
