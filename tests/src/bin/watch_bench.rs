//! The watch latency benchmark: how long from a commit to `spilo watch` starting its plan, in
//! its three modes: a local checkout (inotify on its git directory), a repository URL fetched
//! every `--fetch-interval` (the default 30 s; here a `file://` URL, so the fetch itself costs
//! what a local clone does), and a URL with a push webhook (`POST /hooks/git`, sent right after
//! the commit as a forge does after a push; the fetch period an hour). One cluster against moto
//! and etcd; each commit changes a PostgreSQL parameter. The time runs from just before `git
//! commit` starts to the watcher's `plan started` line for that commit; the next commit waits
//! for the pass to end. Run it with `bench/watch`.

use clap::Parser;
use spilo_e2e::Etcd;
use spilo_e2e::aws::{Moto, Repo};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// How many commits in the local and hook modes.
    #[arg(long, default_value_t = 20)]
    commits: usize,
    /// How many commits in the polling mode (each waits for the next fetch: 15 s on average).
    #[arg(long, default_value_t = 6)]
    poll_commits: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Checkout,
    Poll,
    Hook,
}

fn file(etcd: &str, net: &spilo_e2e::aws::Network, work_mem: usize) -> String {
    format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  instances: 1\n  target: aws\n  postgresql: {{parameters: {{work_mem: {work_mem}MB}}}}\n  dcs: {{hosts: [\"{etcd}\"]}}\n  aws: {{region: eu-central-1, image: {}, vpc: {}, subnets: [{}], hostedZone: {}}}\n  secrets: {{superuser: {{ssm: /spilo/orders/superuser}}, replication: {{ssm: /spilo/orders/replication}}, restapi: {{ssm: /spilo/orders/restapi}}}}\n",
        net.image,
        net.vpc,
        net.subnets.join(", "),
        net.zone
    )
}

/// Waits for a JSON log line with `msg` (and `commit`, when given).
fn wait_for(
    rx: &mpsc::Receiver<(Instant, String)>,
    msg: &str,
    commit: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = rx
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("no {msg:?} line within {timeout:?}"))?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["msg"] == msg && commit.is_none_or(|c| v["commit"] == c) {
            return Ok(at);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for (mode, commits, trigger) in [
        (
            Mode::Checkout,
            args.commits,
            "local checkout: inotify on its git directory",
        ),
        (
            Mode::Poll,
            args.poll_commits,
            "repository URL: fetched every 30 s (the default `--fetch-interval`)",
        ),
        (
            Mode::Hook,
            args.commits,
            "repository URL + push webhook (`POST /hooks/git`, GitLab token), fetch period 1 h",
        ),
    ] {
        let mut samples = run(mode, commits).await?;
        samples.sort();
        rows.push((trigger, samples));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| system | commits | median commit -> plan start | min | max | trigger |");
    println!("|---|---|---|---|---|---|");
    for (trigger, samples) in &rows {
        if samples.is_empty() {
            continue;
        }
        println!(
            "| spilo watch | {} | {:.0} ms | {:.0} ms | {:.0} ms | {trigger} |",
            samples.len(),
            ms(samples[samples.len() / 2]),
            ms(samples[0]),
            ms(samples[samples.len() - 1])
        );
    }
    println!(
        "| Argo CD (documented default, not run here) | - | up to 180 s | - | - | polls the repository every 3 minutes; a webhook from the forge refreshes at once |"
    );
    Ok(())
}

/// `commits` commits watched in `mode`: the delay of each.
async fn run(mode: Mode, commits: usize) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let etcd = Etcd::start(dir.path()).await?;
    let net = moto.network("eu-central-1", "db.example.com")?;
    let repo = Repo::init(&dir.path().join("repo"))?;
    let mut head = repo.commit("orders", Some(&file(&etcd.client_addr, &net, 4)))?;
    let port = spilo_e2e::ports::free();
    let mut cmd = Command::new(spilo_e2e::proc::target_dir()?.join("spilo"));
    cmd.args(["watch", "--branch", "main", "--resync", "1h", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--repo");
    match mode {
        Mode::Checkout => cmd.arg(&repo.path),
        Mode::Poll => cmd.arg(format!("file://{}", repo.path.display())),
        Mode::Hook => cmd.arg(format!("file://{}", repo.path.display())).args([
            "--fetch-interval",
            "1h",
            "--hook-secret",
            "bench",
        ]),
    };
    cmd.env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let http = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{port}/hooks/git");
    wait_for(&rx, "pass done", Some(&head), Duration::from_secs(60))?;
    let mut samples = Vec::new();
    for i in 0..commits {
        if mode == Mode::Poll {
            // Commits land at any moment of the fetch period, not right after a fetch (the
            // previous pass ends just after one): a uniform random point of the 30 s.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..30_000))).await;
        }
        let t0 = Instant::now();
        head = repo.commit("orders", Some(&file(&etcd.client_addr, &net, 8 + i)))?;
        if mode == Mode::Hook {
            let r = http
                .post(&hook)
                .header("X-Gitlab-Token", "bench")
                .body("{}")
                .send()
                .await?;
            anyhow::ensure!(r.status() == 202, "the hook answered {}", r.status());
        }
        let started = wait_for(&rx, "plan started", Some(&head), Duration::from_secs(90))?;
        samples.push(started.duration_since(t0));
        wait_for(&rx, "pass done", Some(&head), Duration::from_secs(60))?;
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(samples)
}
