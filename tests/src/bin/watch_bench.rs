//! The watch latency benchmark: how long from a commit landing in a local checkout to
//! `spilo watch` starting its plan. One cluster against moto and etcd; each of N commits
//! changes a PostgreSQL parameter. The time runs from just before `git commit` starts (so it
//! includes git's own few milliseconds) to the watcher's `plan started` line for that commit;
//! the next commit waits for the pass to end. Run it with `bench/watch`.

use clap::Parser;
use spilo_e2e::Etcd;
use spilo_e2e::aws::{Moto, Repo};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// How many commits.
    #[arg(long, default_value_t = 20)]
    commits: usize,
}

fn file(etcd: &str, net: &spilo_e2e::aws::Network, work_mem: usize) -> String {
    format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  instances: 1\n  target: aws\n  postgresql: {{parameters: {{work_mem: {work_mem}MB}}}}\n  dcs: {{hosts: [\"{etcd}\"]}}\n  aws: {{region: eu-central-1, image: {}, vpc: {}, subnets: [{}], hostedZone: {}}}\n",
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
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let etcd = Etcd::start(dir.path()).await?;
    let net = moto.network("eu-central-1", "db.example.com")?;
    let repo = Repo::init(&dir.path().join("repo"))?;
    let mut head = repo.commit("orders", Some(&file(&etcd.client_addr, &net, 4)))?;
    let mut cmd = Command::new(spilo_e2e::proc::target_dir()?.join("spilo"));
    cmd.args(["watch", "--branch", "main", "--resync", "1h", "--listen"])
        .arg(format!("127.0.0.1:{}", spilo_e2e::ports::free()))
        .arg("--repo")
        .arg(&repo.path)
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
    wait_for(&rx, "pass done", Some(&head), Duration::from_secs(60))?;
    let mut samples = Vec::new();
    for i in 0..args.commits {
        let t0 = Instant::now();
        head = repo.commit("orders", Some(&file(&etcd.client_addr, &net, 8 + i)))?;
        let started = wait_for(&rx, "plan started", Some(&head), Duration::from_secs(30))?;
        samples.push(started.duration_since(t0));
        wait_for(&rx, "pass done", Some(&head), Duration::from_secs(60))?;
    }
    let _ = child.kill();
    let _ = child.wait();
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    println!();
    println!("| system | commits | median commit -> plan start | min | max | trigger |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| spilo watch | {} | {:.0} ms | {:.0} ms | {:.0} ms | inotify on the checkout's git directory |",
        samples.len(),
        ms(median),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
    println!(
        "| Argo CD (documented default, not run here) | - | up to 180 s | - | - | polls the repository every 3 minutes |"
    );
    Ok(())
}
