//! The planning benchmark: 500 generated cluster files in a git repository.
//! - `spilo diff` between two commits (offline: no AWS, no etcd), 10% of the files changed;
//! - `spilo plan` against moto and a real etcd with no stacks yet (500 creates);
//! - `spilo apply --auto-approve` of those creates;
//! - `spilo plan` again once everything exists (500 no-ops: describe, template and resources
//!   of every stack, and every cluster's etcd keys).
//!
//! Each measured command runs under a small wrapper process (this binary with `--measure`)
//! that waits for it and reads its own children's resource usage, so the peak RSS printed is
//! exactly that command's. Run it with `bench/plan`.

use clap::Parser;
use spilo_e2e::Etcd;
use spilo_e2e::aws::{Moto, Repo};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// How many cluster files.
    #[arg(long, default_value_t = 500)]
    clusters: usize,
    /// Internal: run the rest of the arguments and print `wall_ms peak_rss_kb exit_code`.
    #[arg(long)]
    measure: bool,
    /// The command to measure (with --measure).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn measure_self(command: &[String]) -> anyhow::Result<()> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("--measure needs a command"))?;
    let start = Instant::now();
    let log = std::env::var_os("PLAN_BENCH_LOG")
        .ok_or_else(|| anyhow::anyhow!("PLAN_BENCH_LOG is not set"))?;
    let log = std::fs::File::create(log)?;
    let status = Command::new(program)
        .args(args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()?;
    let wall = start.elapsed();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    println!(
        "{} {} {}",
        wall.as_millis(),
        usage.max_rss(),
        status.code().unwrap_or(-1)
    );
    Ok(())
}

struct Measured {
    log: PathBuf,
    what: String,
    wall_ms: u128,
    peak_kb: i64,
    exit: i32,
}

fn measure(
    logs: &Path,
    what: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Measured> {
    let me = std::env::current_exe()?;
    let log = logs.join(format!(
        "{}.log",
        what.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join("-")
    ));
    let log = if log.exists() {
        logs.join(format!(
            "{}-again.log",
            what.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join("-")
        ))
    } else {
        log
    };
    let mut cmd = Command::new(me);
    cmd.env("PLAN_BENCH_LOG", &log);
    cmd.arg("--measure").arg("--").arg(program).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let text = String::from_utf8(out.stdout)?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [wall, peak, exit] = parts.as_slice() else {
        anyhow::bail!("the measuring wrapper printed {text:?}");
    };
    Ok(Measured {
        log,
        what: what.to_string(),
        wall_ms: wall.parse()?,
        peak_kb: peak.parse()?,
        exit: exit.parse()?,
    })
}

fn cluster_file(i: usize, etcd: &str, net: &spilo_e2e::aws::Network, bumped: bool) -> String {
    let instances = if bumped { 2 } else { 1 };
    let work_mem = if bumped { "64MB" } else { "16MB" };
    format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: db{i:04}, team: team{team}}}\nspec:\n  instances: {instances}\n  target: aws\n  postgresql: {{parameters: {{work_mem: {work_mem}, max_connections: {mc}}}}}\n  dcs: {{hosts: [\"{etcd}\"]}}\n  aws:\n    region: eu-central-1\n    instanceType: t3.medium\n    image: {image}\n    vpc: {vpc}\n    subnets: [{subnets}]\n    hostedZone: {zone}\n  backup: {{bucket: wal-archive}}\n  tags: {{cost-center: \"{cc}\"}}\n",
        team = i % 17,
        mc = 100 + i % 5 * 50,
        image = net.image,
        vpc = net.vpc,
        subnets = net.subnets.join(", "),
        zone = net.zone,
        cc = 1000 + i % 13,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.measure {
        return measure_self(&args.command);
    }
    let spilo = spilo_e2e::proc::target_dir()?.join("spilo");
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let etcd = Etcd::start(dir.path()).await?;
    let net = moto.network("eu-central-1", "db.example.com")?;
    let repo = Repo::init(&dir.path().join("repo"))?;
    let n = args.clusters;
    for i in 0..n {
        std::fs::write(
            repo.path.join(format!("clusters/db{i:04}.yaml")),
            cluster_file(i, &etcd.client_addr, &net, false),
        )?;
    }
    // One commit with every file; `commit` adds everything in the work tree.
    let base = repo.commit(
        "db0000",
        Some(&cluster_file(0, &etcd.client_addr, &net, false)),
    )?;
    for i in (0..n).step_by(10) {
        std::fs::write(
            repo.path.join(format!("clusters/db{i:04}.yaml")),
            cluster_file(i, &etcd.client_addr, &net, true),
        )?;
    }
    let head = repo.commit(
        "db0000",
        Some(&cluster_file(0, &etcd.client_addr, &net, true)),
    )?;
    let repo_arg = repo.path.display().to_string();
    let env = moto.env();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut rows = Vec::new();
    rows.push(measure(
        &logs,
        &format!(
            "spilo diff (offline, {n} files, {} changed)",
            n.div_ceil(10)
        ),
        &spilo,
        &s(&["diff", &base, &head, "--repo", &repo_arg]),
        &[],
    )?);
    rows.push(measure(
        &logs,
        &format!("spilo plan against moto + etcd ({n} creates)"),
        &spilo,
        &s(&["plan", "--repo", &repo_arg]),
        &env,
    )?);
    rows.push(measure(
        &logs,
        &format!("spilo apply --auto-approve ({n} stacks)"),
        &spilo,
        &s(&["apply", "--auto-approve", "--repo", &repo_arg]),
        &env,
    )?);
    rows.push(measure(
        &logs,
        &format!("spilo plan against moto + etcd ({n} no-ops)"),
        &spilo,
        &s(&["plan", "--repo", &repo_arg]),
        &env,
    )?);
    println!();
    println!("| run | wall time | peak RSS | exit code |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {:.1} MiB | {} |",
            r.what,
            r.wall_ms as f64 / 1000.0,
            r.peak_kb as f64 / 1024.0,
            r.exit
        );
    }
    // The expected exit codes: changes (2), changes, applied (0), no changes (0).
    let expected = [2, 2, 0, 0];
    let mut unexpected = false;
    for (r, want) in rows.iter().zip(expected) {
        if r.exit != want {
            unexpected = true;
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            println!(
                "\n{} exited {} (expected {want}); the end of its output:",
                r.what, r.exit
            );
            for l in tail.into_iter().rev() {
                println!("    {l}");
            }
        }
    }
    if unexpected {
        let keep = dir.keep();
        println!("\nlogs kept in {}", keep.join("logs").display());
    }
    Ok(())
}
