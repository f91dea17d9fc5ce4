//! Pull requests as the interface: `spilo validate --format github|gitlab` and the plan kept
//! as one comment (`spilo diff|plan --comment github|gitlab`) against a stand-in of the two
//! forges' comment APIs (`spilo_e2e::forge`, written from their documentation: the forges
//! cannot be reached from here), and the example CI jobs of `examples/ci/` run step by step.

use spilo_e2e::aws_world::{DEFAULT, Shape, World};
use spilo_e2e::forge::Forge;

const WIDER: Shape<'static> = Shape {
    instance_type: "m5.large",
    ..DEFAULT
};
const BIGGER: Shape<'static> = Shape {
    max_connections: 400,
    ..WIDER
};

/// Asserts that a comment says `what` (showing the comment when it does not).
fn says(body: &str, what: impl AsRef<str>) {
    let what = what.as_ref();
    assert!(body.contains(what), "the comment lacks {what:?}:\n{body}");
}

/// The variables of both forges' CI, unset (a value of "" removes it), then `set`.
fn ci_env(set: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = [
        "GITHUB_TOKEN",
        "GITHUB_REPOSITORY",
        "GITHUB_API_URL",
        "GITHUB_EVENT_PATH",
        "GITHUB_SERVER_URL",
        "GITHUB_RUN_ID",
        "SPILO_PULL_REQUEST",
        "CI_API_V4_URL",
        "CI_PROJECT_ID",
        "CI_MERGE_REQUEST_IID",
        "SPILO_MERGE_REQUEST",
        "SPILO_GITLAB_TOKEN",
        "CI_JOB_TOKEN",
        "CI_JOB_URL",
    ]
    .into_iter()
    .map(|k| (k, String::new()))
    .collect();
    for (k, v) in set {
        env.retain(|(e, _)| e != k);
        env.push((k, v.clone()));
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_is_one_comment_per_pull_request_edited_on_every_push() {
    let w = World::new().await;
    let base = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("base");
    let first = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &WIDER)))
        .expect("first push");
    let forge = Forge::start("t0k").await.expect("forge");
    // 150 comments of reviewers first: spilo's lands on the second page of 100. One of them
    // carries spilo's marker: a person's comment is never taken for spilo's.
    for i in 0..149 {
        forge.seed("github:acme/db#7", &format!("review {i}"));
    }
    let planted = format!("{}\nNo changes. Merge away.", spilo::forge::MARKER);
    forge.seed_by("github:acme/db#7", &planted, "mallory");
    let dir = tempfile::tempdir().expect("tempdir");
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"action":"opened","pull_request":{"number":7}}"#).expect("event");
    let github = ci_env(&[
        ("GITHUB_TOKEN", "t0k".into()),
        ("GITHUB_REPOSITORY", "acme/db".into()),
        ("GITHUB_API_URL", forge.url.clone()),
        ("GITHUB_EVENT_PATH", event.display().to_string()),
        ("GITHUB_SERVER_URL", "https://github.example".into()),
        ("GITHUB_RUN_ID", "31".into()),
    ]);
    let diff = |head: &str, env: &[(&'static str, String)]| {
        w.spilo_env(
            &[
                "diff",
                &base,
                head,
                "--format",
                "markdown",
                "--comment",
                "github",
            ],
            env,
        )
    };
    let run = diff(&first, &github);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stdout.contains("### spilo plan for"),
        "the markdown still goes to stdout: {run}"
    );
    let spilos = |on: &str| -> Vec<spilo_e2e::forge::Comment> {
        forge
            .comments(on)
            .into_iter()
            .filter(|c| c.body.starts_with(spilo::forge::MARKER) && c.author != "mallory")
            .collect()
    };
    let untouched = |forge: &Forge| {
        assert!(
            forge
                .comments("github:acme/db#7")
                .iter()
                .any(|c| c.author == "mallory" && c.body == planted),
            "the planted comment is left as it was"
        );
    };
    let mine = spilos("github:acme/db#7");
    assert_eq!(mine.len(), 1, "{:?}", forge.calls());
    says(&mine[0].body, format!("Describes commit `{first}`"));
    says(&mine[0].body, "InstanceType");
    says(
        &mine[0].body,
        "[this run](https://github.example/acme/db/actions/runs/31)",
    );
    assert_eq!(forge.comments("github:acme/db#7").len(), 151);
    untouched(&forge);

    // The next push edits that comment; nothing is added.
    let second = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &BIGGER)))
        .expect("second push");
    let run = diff(&second, &github);
    assert_eq!(run.code, 2, "{run}");
    let edited = spilos("github:acme/db#7");
    assert_eq!(edited.len(), 1);
    assert_eq!(edited[0].id, mine[0].id, "the same comment, edited");
    says(&edited[0].body, format!("Describes commit `{second}`"));
    says(&edited[0].body, "max_connections");
    assert_eq!(forge.comments("github:acme/db#7").len(), 151);
    untouched(&forge);
    assert!(
        forge.calls().contains(&format!(
            "PATCH /repos/acme/db/issues/comments/{}",
            mine[0].id
        )),
        "{:?}",
        forge.calls()
    );

    // A token the forge refuses: exit 1, saying what the job's token needs.
    let mut refused = github.clone();
    refused.retain(|(k, _)| *k != "GITHUB_TOKEN");
    refused.push(("GITHUB_TOKEN", "wrong".into()));
    let run = diff(&second, &refused);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("HTTP 401"), "{run}");
    assert!(run.stderr.contains("pull-requests: write"), "{run}");
    // Outside a pull request's job: named, nothing written.
    let run = diff(&second, &ci_env(&[]));
    assert_eq!(run.code, 1, "{run}");
    assert!(run.stderr.contains("GITHUB_TOKEN is not set"), "{run}");

    // `spilo plan --comment` (a job that may read AWS) edits the same comment with the plan
    // against what runs; the saved plan is written first.
    let mut with_aws = github.clone();
    with_aws.extend(w.moto.env());
    let saved = w.dir.path().join("plan.json");
    let run = w.spilo_env(
        &[
            "plan",
            "--format",
            "markdown",
            "--comment",
            "github",
            "-o",
            saved.to_str().expect("path"),
        ],
        &with_aws,
    );
    assert_eq!(run.code, 2, "{run}");
    assert!(saved.exists(), "the saved plan");
    let planned = spilos("github:acme/db#7");
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].id, mine[0].id, "the same comment, edited");
    says(&planned[0].body, format!("Describes commit `{second}`"));
    says(&planned[0].body, "➕ create");
    untouched(&forge);

    // GitLab: the merge request's notes, the same way.
    let gitlab = ci_env(&[
        ("CI_API_V4_URL", format!("{}/api/v4", forge.url)),
        ("CI_PROJECT_ID", "12".into()),
        ("CI_MERGE_REQUEST_IID", "3".into()),
        ("SPILO_GITLAB_TOKEN", "t0k".into()),
        (
            "CI_JOB_URL",
            "https://gitlab.example/acme/db/-/jobs/8".into(),
        ),
    ]);
    let lab = |head: &str| {
        w.spilo_env(
            &[
                "diff",
                &base,
                head,
                "--format",
                "markdown",
                "--comment",
                "gitlab",
            ],
            &gitlab,
        )
    };
    forge.seed("gitlab:12!3", "a reviewer's note");
    assert_eq!(lab(&first).code, 2);
    assert_eq!(lab(&second).code, 2);
    let notes = spilos("gitlab:12!3");
    assert_eq!(notes.len(), 1, "{:?}", forge.calls());
    says(&notes[0].body, format!("Describes commit `{second}`"));
    says(
        &notes[0].body,
        "https://gitlab.example/acme/db/-/jobs/8/artifacts/browse",
    );
    assert_eq!(forge.comments("gitlab:12!3").len(), 2);
}

/// GitHub stores at most 65,535 characters: a long plan is cut in the comment (with a note
/// and the link to the run), while stdout, the job's artefact, keeps every cluster.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_too_long_for_a_comment_is_cut_there_and_kept_whole_on_stdout() {
    let w = World::new().await;
    let base = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("base");
    let names: Vec<String> = (0..70).map(|i| format!("team{i:02}")).collect();
    for name in &names {
        let shape = Shape {
            dns: Box::leak(name.clone().into_boxed_str()),
            ..DEFAULT
        };
        std::fs::write(
            w.repo.path.join(format!("clusters/{name}.yaml")),
            w.cluster(name, &shape),
        )
        .expect("write");
    }
    let head = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &WIDER)))
        .expect("head");
    let forge = Forge::start("t0k").await.expect("forge");
    let env = ci_env(&[
        ("GITHUB_TOKEN", "t0k".into()),
        ("GITHUB_REPOSITORY", "acme/db".into()),
        ("GITHUB_API_URL", forge.url.clone()),
        ("SPILO_PULL_REQUEST", "8".into()),
        ("GITHUB_SERVER_URL", "https://github.example".into()),
        ("GITHUB_RUN_ID", "77".into()),
    ]);
    let run = w.spilo_env(
        &[
            "diff",
            &base,
            &head,
            "--format",
            "markdown",
            "--comment",
            "github",
        ],
        &env,
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    let comments = forge.comments("github:acme/db#8");
    assert_eq!(comments.len(), 1);
    let body = &comments[0].body;
    assert!(
        body.chars().count() <= 65_535,
        "{} characters",
        body.chars().count()
    );
    assert!(
        body.contains("were cut to fit the forge's comment limit"),
        "{} characters",
        body.chars().count()
    );
    assert!(body.contains("[this run](https://github.example/acme/db/actions/runs/77)"));
    assert!(
        run.stdout.chars().count() > 65_535,
        "stdout is the whole plan"
    );
    assert!(!run.stdout.contains("were cut"), "stdout is not cut");
    for name in &names {
        assert!(
            run.stdout.contains(&format!("<code>{name}</code>")),
            "{name}'s details on stdout"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_are_annotations_on_the_changed_lines() {
    let w = World::new().await;
    let broken = w
        .cluster("orders", &DEFAULT)
        .replace("instances: 3", "instances: 0");
    let path = w.repo.path.join("clusters/orders.yaml");
    std::fs::write(&path, &broken).expect("write");
    let line = broken
        .lines()
        .position(|l| l.contains("instances: 0"))
        .expect("the line")
        + 1;
    let validate = |format: &str| {
        let out = std::process::Command::new(
            spilo_e2e::proc::target_dir().expect("target").join("spilo"),
        )
        .args(["validate", "--format", format])
        .current_dir(&w.repo.path)
        .output()
        .expect("spilo validate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = validate("github");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "::error file=clusters/orders.yaml,line={line},col="
        )) && l.contains("spec.instances")),
        "{out}"
    );
    let (code, out) = validate("gitlab");
    assert_eq!(code, Some(1), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("Code Quality JSON");
    let issue = report
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i["check_name"] == "spilo-validate/spec.instances")
        })
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(issue["severity"], "major");
    assert_eq!(issue["location"]["path"], "clusters/orders.yaml");
    assert_eq!(issue["location"]["lines"]["begin"], line);
}

/// The shell of a CI job: `run:` steps of a GitHub Actions job (each in its own shell, as the
/// runner does: `bash --noprofile --norc -eo pipefail`), or the `script:` lines of a GitLab job
/// (one shell, in order); `uses:` steps and `before_script:` (package installs) are the
/// forge's, not ours.
fn job_steps(file: &str, job: &str) -> Vec<String> {
    if let Some(steps) = example(file)["jobs"][job]["steps"].as_sequence() {
        return steps
            .iter()
            .filter_map(|s| s["run"].as_str().map(str::to_string))
            .collect();
    }
    vec![script_lines(file, job).join("\n")]
}

/// `examples/ci/<file>`, parsed.
fn example(file: &str) -> serde_yaml::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ci")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("the example job");
    serde_yaml::from_str(&text).expect("YAML")
}

/// The `script:` lines of GitLab job `job` in `examples/ci/<file>`.
fn script_lines(file: &str, job: &str) -> Vec<String> {
    example(file)[job]["script"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{file} has no job {job}"))
        .iter()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect()
}

/// Runs `steps` in `dir` with `env` and the local `spilo` first on PATH; each step's output.
fn run_steps(steps: &[String], dir: &std::path::Path, env: &[(&str, String)]) -> Vec<String> {
    let bin = spilo_e2e::proc::target_dir().expect("target");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    steps
        .iter()
        .map(|step| {
            let mut cmd = std::process::Command::new("bash");
            cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", step])
                .current_dir(dir)
                .env("PATH", &path);
            // An empty value removes the variable: nothing of this process's CI leaks in.
            for (k, v) in env {
                if v.is_empty() {
                    cmd.env_remove(k);
                } else {
                    cmd.env(k, v);
                }
            }
            let out = cmd.output().expect("bash");
            let text = format!(
                "--- step\n{step}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "the step failed ({}):\n{text}",
                out.status
            );
            text
        })
        .collect()
}

/// The jobs' install step on a runner without spilo: the tarball `SPILO_DOWNLOAD_URL` names
/// (here a file URL) unpacked into `~/.local/bin`, which later GitHub steps get on PATH.
#[test]
fn the_example_install_step_downloads_spilo_when_it_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = spilo_e2e::proc::target_dir().expect("target");
    let tarball = dir.path().join("spilo-linux.tar.gz");
    let tar = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&bin)
        .arg("spilo")
        .status()
        .expect("tar");
    assert!(tar.success());
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let github_path = dir.path().join("github-path");
    let install = |step: &str, url: &str| {
        std::process::Command::new("bash")
            .args(["--noprofile", "--norc", "-eo", "pipefail", "-c", step])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home)
            .env("GITHUB_PATH", &github_path)
            .env("SPILO_DOWNLOAD_URL", url)
            .output()
            .expect("bash")
    };
    let github = &job_steps("github-actions.yml", "pull-request")[0];
    assert!(
        github.contains("SPILO_DOWNLOAD_URL"),
        "the first step installs: {github}"
    );
    let unset = install(github, "");
    assert!(!unset.status.success());
    assert!(
        String::from_utf8_lossy(&unset.stderr).contains("set the variable SPILO_DOWNLOAD_URL"),
        "{unset:?}"
    );
    let out = install(github, &format!("file://{}", tarball.display()));
    assert!(out.status.success(), "{out:?}");
    let installed = home.join(".local/bin/spilo");
    let version = std::process::Command::new(&installed)
        .arg("--version")
        .output()
        .expect("the installed spilo runs");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("spilo "));
    assert_eq!(
        std::fs::read_to_string(&github_path)
            .expect("GITHUB_PATH")
            .trim(),
        home.join(".local/bin").display().to_string()
    );
    // GitLab's first script line is the same install, for the rest of its one shell.
    std::fs::remove_file(&installed).expect("remove");
    let gitlab = &script_lines("gitlab-ci.yml", "spilo:merge-request")[0];
    assert!(
        gitlab.contains("SPILO_DOWNLOAD_URL"),
        "the first line installs: {gitlab}"
    );
    let check = format!("{gitlab}\nspilo --version");
    let out = install(&check, &format!("file://{}", tarball.display()));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spilo "));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_ci_jobs_run_as_written() {
    let w = World::new().await;
    // The target branch holds one cluster; the pull request changes it.
    let base = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &DEFAULT)))
        .expect("base");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&w.repo.path)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["update-ref", "refs/remotes/origin/main", &base]);
    let head = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &WIDER)))
        .expect("the pull request");
    let forge = Forge::start("t0k").await.expect("forge");
    let dir = tempfile::tempdir().expect("tempdir");
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"pull_request":{"number":9}}"#).expect("event");
    let summary = dir.path().join("summary.md");
    let github = ci_env(&[
        ("GITHUB_TOKEN", "t0k".into()),
        ("GITHUB_REPOSITORY", "acme/db".into()),
        ("GITHUB_API_URL", forge.url.clone()),
        ("GITHUB_EVENT_PATH", event.display().to_string()),
        ("GITHUB_BASE_REF", "main".into()),
        ("GITHUB_PATH", dir.path().join("path").display().to_string()),
        ("GITHUB_STEP_SUMMARY", summary.display().to_string()),
    ]);

    // The pull request's job: validate, then the plan as the pull request's comment.
    let steps = job_steps("github-actions.yml", "pull-request");
    assert!(steps.len() >= 3, "install, validate, diff: {steps:?}");
    run_steps(&steps, &w.repo.path, &github);
    let comments = forge.comments("github:acme/db#9");
    assert_eq!(comments.len(), 1, "{:?}", forge.calls());
    assert!(comments[0].body.starts_with(spilo::forge::MARKER));
    says(&comments[0].body, format!("Describes commit `{head}`"));
    let plan = std::fs::read_to_string(w.repo.path.join("plan.md")).expect("plan.md");
    assert!(plan.contains("### spilo plan for"), "{plan}");
    assert!(
        std::fs::read_to_string(&summary)
            .unwrap_or_default()
            .contains("### spilo plan for"),
        "the plan in the job summary"
    );

    // Merged: the apply job creates the stack (against moto), and a plan shows nothing left.
    git(&["update-ref", "refs/remotes/origin/main", &head]);
    let mut aws = github.clone();
    aws.extend(w.moto.env());
    run_steps(
        &job_steps("github-actions.yml", "apply"),
        &w.repo.path,
        &aws,
    );
    let after = w.spilo(&["plan"]);
    assert_eq!(after.code, 0, "applied: {after}");

    // GitLab: the merge request's job, then the default branch's.
    std::fs::remove_file(w.repo.path.join("plan.md")).expect("plan.md");
    let next = w
        .repo
        .commit("orders", Some(&w.cluster("orders", &BIGGER)))
        .expect("the merge request");
    let mut gitlab = ci_env(&[
        ("CI_API_V4_URL", format!("{}/api/v4", forge.url)),
        ("CI_PROJECT_ID", "12".into()),
        ("CI_MERGE_REQUEST_IID", "4".into()),
        ("SPILO_GITLAB_TOKEN", "t0k".into()),
        ("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main".into()),
        ("CI_BUILDS_DIR", dir.path().display().to_string()),
    ]);
    run_steps(
        &job_steps("gitlab-ci.yml", "spilo:merge-request"),
        &w.repo.path,
        &gitlab,
    );
    let notes = forge.comments("gitlab:12!4");
    assert_eq!(notes.len(), 1, "{:?}", forge.calls());
    says(&notes[0].body, format!("Describes commit `{next}`"));
    says(&notes[0].body, "max_connections");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.repo.path.join("gl-code-quality-report.json"))
            .expect("the Code Quality report"),
    )
    .expect("JSON");
    assert_eq!(
        report,
        serde_json::json!([]),
        "a valid file has no findings"
    );
    gitlab.extend(w.moto.env());
    run_steps(
        &job_steps("gitlab-ci.yml", "spilo:apply"),
        &w.repo.path,
        &gitlab,
    );
    let after = w.spilo(&["plan"]);
    assert_eq!(after.code, 0, "applied: {after}");
}
