//! The AWS renderings, without AWS: every stack template spilo renders passes `cfn-lint`
//! (all of `clusters/` and `tests/corpus/valid/`), and the three views of a plan match their
//! golden files in `tests/golden/` (`SPILO_BLESS=1 cargo test --test aws_rendering` rewrites
//! them after a reviewed change).

use spilo::aws::observed::Observation;
use spilo::aws::plan::PlanOptions;
use spilo::aws::{observed_from, plan_between, show, template};
use spilo::desired::Desired;
use spilo_model::spec::ClusterFile;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn valid_files(dir: &Path) -> spilo::spec::Validated {
    let files = spilo::spec::read_files(&[dir.to_path_buf()]).expect("read");
    let checked = spilo::spec::validate_files(&files);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked
}

#[test]
fn every_rendered_template_passes_cfn_lint() {
    let venv = spilo_e2e::aws::venv().expect("the AWS virtualenv");
    let out = tempfile::tempdir().expect("tempdir");
    let mut written = Vec::new();
    for dir in [root().join("clusters"), root().join("tests/corpus/valid")] {
        let mut checked = valid_files(&dir);
        spilo::desired::resolve_standby_sources(&mut checked.files);
        let etcd = checked
            .etcd_clusters
            .iter()
            .map(|(name, f)| (name.clone(), Some(spilo::aws::etcd_stack::render(f))));
        let postgres = checked
            .files
            .iter()
            .map(|(name, f)| (name.clone(), template::render(f)));
        for (name, stack) in postgres.chain(etcd) {
            let Some(stack) = stack else {
                continue;
            };
            let path = out.path().join(format!("{}.json", stack.stack_name));
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&stack.template).expect("json"),
            )
            .expect("write");
            written.push((name, path));
        }
    }
    assert!(
        written.len() >= 5,
        "clusters/ and the valid corpus hold AWS clusters and an etcd cluster: {written:?}"
    );
    let result = std::process::Command::new(venv.join("bin/cfn-lint"))
        .args(["--format", "parseable"])
        .args(written.iter().map(|(_, p)| p))
        .output()
        .expect("run cfn-lint");
    let report = String::from_utf8_lossy(&result.stdout);
    let code = result.status.code().expect("exit code");
    // The exit code is a bit mask: 2 errors, 4 warnings, 8 informational.
    assert_eq!(
        code & 2,
        0,
        "cfn-lint found errors (exit {code}):\n{report}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        code & !(2 | 4 | 8) == 0,
        "cfn-lint failed to run (exit {code}): {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

fn file(name: &str, body: &str) -> (String, ClusterFile) {
    let text = format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}, team: shop}}\nspec:\n  target: aws\n  dcs: {{hosts: [\"10.0.0.10:2379\"]}}\n{body}"
    );
    (
        format!("clusters/{name}.yaml"),
        serde_yaml::from_str(&text).expect("valid"),
    )
}

const AWS: &str = "  aws: {region: eu-central-1, vpc: vpc-1, subnets: [subnet-a, subnet-b], hostedZone: db.example.com, image: ami-1}\n";

fn desired(commit: &str, clusters: Vec<(String, ClusterFile)>) -> Desired {
    Desired {
        repo: "git@example.com:platform/databases.git".into(),
        reference: "main".into(),
        commit: commit.into(),
        clusters,
        etcd_clusters: Vec::new(),
        warnings: Vec::new(),
    }
}

const ROLES_BEFORE: &str = "  roles:\n    orders_app: {password: {generated: true}}\n    reporting: {flags: [createrole]}\n  databases:\n    orders: {owner: orders_app}\n";

const ROLES_AFTER: &str = "  roles:\n    orders_app: {password: {generated: true}}\n    reporting: {flags: [createdb], memberOf: [readers]}\n    readers: {login: false}\n    audit: {connectionLimit: 5}\n  databases:\n    orders: {owner: orders_app, extensions: [pgcrypto]}\n    analytics: {owner: reporting}\n";

/// A plan with every kind of cluster change, made without AWS.
fn sample_plan() -> spilo::aws::plan::Plan {
    let base = desired(
        "1111111111111111111111111111111111111111",
        vec![
            file("orders", &format!("  instances: 3\n{AWS}")),
            file("legacy", &format!("{AWS}  reconcile: {{prune: true}}\n")),
            file("steady", AWS),
            file("frozen", AWS),
            file(
                "tuning",
                &format!("{AWS}  postgresql: {{parameters: {{work_mem: 16MB}}}}\n{ROLES_BEFORE}"),
            ),
        ],
    );
    let head = desired(
        "2222222222222222222222222222222222222222",
        vec![
            file(
                "orders",
                &format!(
                    "  instances: 5\n{}  endpoints: {{dns: {{name: orders-v2}}}}\n",
                    AWS.replace("image: ami-1", "image: ami-2")
                ),
            ),
            file("steady", AWS),
            file("frozen", AWS),
            file(
                "tuning",
                &format!("{AWS}  postgresql: {{parameters: {{work_mem: 64MB}}}}\n{ROLES_AFTER}"),
            ),
            file("fresh", &format!("  instances: 2\n{AWS}{ROLES_BEFORE}")),
        ],
    );
    let mut observed = observed_from(&base, &head);
    if let Some(c) = observed.clusters.get_mut("frozen") {
        c.stack = Observation::Unknown("describe-stacks: Rate exceeded".into());
    }
    let clusters = spilo::aws::aws_clusters(&head);
    spilo::aws::plan::plan(
        &spilo::aws::plan::DesiredInput {
            based_on: (&head.repo, &head.reference, &head.commit),
            clusters,
            etcd_clusters: Vec::new(),
        },
        &observed,
        PlanOptions::default(),
    )
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("SPILO_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, actual).expect("bless");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SPILO_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let diff = similar_lines(&expected, actual);
        panic!(
            "{} differs from the rendering (SPILO_BLESS=1 rewrites it after review):\n{diff}",
            path.display()
        );
    }
}

fn similar_lines(expected: &str, actual: &str) -> String {
    expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .find(|(_, (e, a))| e != a)
        .map(|(i, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", i + 1))
        .unwrap_or_else(|| "the lengths differ".into())
}

#[test]
fn the_text_view_matches_its_golden_file() {
    let plan = sample_plan();
    golden("plan.txt", &show::text(&plan, show::Style::new(false)));
}

#[test]
fn the_json_view_matches_its_golden_file_and_reads_back() {
    let plan = sample_plan();
    let json = show::json(&plan);
    let back: spilo::aws::plan::Plan = serde_json::from_str(&json).expect("reads back");
    assert_eq!(back, plan);
    golden("plan.json", &(json + "\n"));
}

#[test]
fn the_markdown_view_matches_its_golden_file() {
    let plan = sample_plan();
    golden(
        "plan.md",
        &show::markdown(&plan, show::GITHUB_COMMENT_LIMIT),
    );
}

#[test]
fn the_sample_covers_every_action() {
    use spilo::aws::plan::Action;
    let plan = sample_plan();
    let action = |n: &str| {
        plan.clusters
            .iter()
            .find(|c| c.name == n)
            .map(|c| (c.action, c.refused))
    };
    assert_eq!(action("fresh"), Some((Action::Create, false)));
    assert_eq!(action("orders"), Some((Action::Replace, true)));
    assert_eq!(action("legacy"), Some((Action::Delete, false)));
    assert_eq!(action("steady"), Some((Action::Noop, false)));
    assert_eq!(action("frozen"), Some((Action::Blocked, false)));
    assert_eq!(action("tuning"), Some((Action::Update, false)));
    let tuning = plan
        .clusters
        .iter()
        .find(|c| c.name == "tuning")
        .expect("tuning");
    assert!(
        !tuning.changes_stack(),
        "a parameter is etcd config, not stack"
    );
    let catalog = tuning.config.as_ref().map(|c| c.catalog.clone());
    assert_eq!(
        catalog.unwrap_or_default(),
        [
            "+ role audit (login, at most 5 connections)",
            "+ role readers (no login)",
            "~ role reporting: +createdb, -createrole, +member of readers",
            "+ database analytics owned by reporting",
            "~ database orders: +extension pgcrypto",
        ],
        "role and database changes in words"
    );
    let fresh = plan.clusters.iter().find(|c| c.name == "fresh");
    let created = fresh
        .and_then(|c| c.config.as_ref())
        .map(|c| c.catalog.clone());
    assert_eq!(
        created.unwrap_or_default(),
        [
            "+ role orders_app (login, password generated into SSM parameter /spilo/fresh/roles/orders_app)",
            "+ role reporting (login, createrole)",
            "+ database orders owned by orders_app",
        ]
    );
}

#[test]
fn a_huge_markdown_plan_is_cut_to_githubs_limit_with_a_note() {
    let many: Vec<(String, ClusterFile)> =
        (0..400).map(|i| file(&format!("db{i:03}"), AWS)).collect();
    let base = desired("1111111111111111111111111111111111111111", Vec::new());
    let head = desired("2222222222222222222222222222222222222222", many);
    let plan = plan_between(&base, &head, PlanOptions::default());
    assert_eq!(plan.clusters.len(), 400);
    let md = show::markdown(&plan, show::GITHUB_COMMENT_LIMIT);
    assert!(
        md.chars().count() <= show::GITHUB_COMMENT_LIMIT,
        "{} characters",
        md.chars().count()
    );
    assert!(
        md.contains("were cut to fit the forge's comment limit"),
        "the note is there"
    );
    assert!(
        md.contains("| `db399` |"),
        "the summary table lists every cluster"
    );
    let small = show::markdown(&plan, 2_000);
    assert!(small.chars().count() <= 2_000);
}

#[test]
fn a_pull_request_moving_a_cluster_to_a_newer_major_version_shows_the_upgrade() {
    // Without the base's version, the diff would show only a rolling update of the launch
    // template; the apply upgrades the leader's data first.
    let base = desired(
        "1111111111111111111111111111111111111111",
        vec![file("orders", AWS)],
    );
    let on_18 = format!("{AWS}  postgresql: {{version: 18}}\n");
    let head = desired(
        "2222222222222222222222222222222222222222",
        vec![file("orders", &on_18)],
    );
    let plan = plan_between(&base, &head, PlanOptions::default());
    let c = &plan.clusters[0];
    assert_eq!(c.action, spilo::aws::plan::Action::Update, "{c:?}");
    assert!(c.rollout.is_some(), "{c:?}");
    let text = show::text(&plan, show::Style::new(false));
    assert!(
        text.contains(
            "~ major upgrade PostgreSQL 15 -> 18: pg_upgrade --check on the leader first"
        ),
        "{text}"
    );
    // Back to an older version: blocked.
    let back = plan_between(&head, &base, PlanOptions::default());
    assert!(back.has_blocked(), "{back:?}");
    assert!(
        back.clusters[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("no way back to an older major version")),
        "{back:?}"
    );
    // The same version on both sides: planned as before.
    let same = plan_between(&base, &base, PlanOptions::default());
    assert!(!same.has_blocked() && !same.has_changes(), "{same:?}");
}
