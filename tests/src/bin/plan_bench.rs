//! The planning benchmark: 500 generated cluster files in a git repository.
//! - `spilo diff` between two commits (offline: no AWS, no etcd), 10% of the files changed;
//! - `spilo plan` against moto and a real etcd with no stacks yet (500 creates);
//! - `spilo apply --auto-approve` of those creates;
//! - `spilo plan` again once everything exists (500 no-ops), with the stack records this
//!   machine kept (templates and resources of unchanged stacks not fetched again), and once
//!   more without any (`SPILO_STACK_CACHE=`: a fresh CI machine).
//!
//! Each row also counts the requests moto answered while the command ran (its access log)
//! and names the actions asked most (the fixture logs each one). `--clusters 50,500,2000`
//! runs the whole sequence for each size, each against a fresh moto and etcd.
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
    /// How many cluster files (a comma-separated list runs each size in turn).
    #[arg(long, value_delimiter = ',', default_value = "500")]
    clusters: Vec<usize>,
    /// The `spilo` binary to measure (default: the one beside this benchmark).
    #[arg(long)]
    spilo: Option<PathBuf>,
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
    /// Requests moto answered meanwhile, and the actions asked most.
    requests: Option<(usize, String)>,
}

/// The requests in `lines` (werkzeug's access log) and the three actions logged most.
fn count_requests(lines: &[String]) -> (usize, String) {
    let total = lines.iter().filter(|l| l.contains(" HTTP/1.")).count();
    let mut by_action: std::collections::BTreeMap<&str, usize> = Default::default();
    for l in lines {
        if let Some(a) = l.strip_prefix("moto-action ") {
            *by_action.entry(a).or_default() += 1;
        }
    }
    let mut top: Vec<(&str, usize)> = by_action.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top = top
        .iter()
        .take(3)
        .map(|(a, n)| format!("{n} {}", a.split_whitespace().last().unwrap_or(a)))
        .collect::<Vec<_>>()
        .join(", ");
    (total, top)
}

fn measure(
    moto: Option<&Moto>,
    logs: &Path,
    what: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Measured> {
    let me = std::env::current_exe()?;
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let log = logs.join(format!("{name}.log"));
    let mut cmd = Command::new(me);
    cmd.env("PLAN_BENCH_LOG", &log);
    cmd.arg("--measure").arg("--").arg(program).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let before = match moto {
        Some(m) => m.log_lines()?.len(),
        None => 0,
    };
    let out = cmd.output()?;
    let requests = match moto {
        Some(m) => Some(count_requests(&m.log_lines()?[before..])),
        None => None,
    };
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
        requests,
    })
}

fn cluster_file(i: usize, etcd: &str, net: &spilo_e2e::aws::Network, bumped: bool) -> String {
    let instances = if bumped { 2 } else { 1 };
    let work_mem = if bumped { "64MB" } else { "16MB" };
    format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: db{i:04}, team: team{team}}}\nspec:\n  instances: {instances}\n  target: aws\n  postgresql: {{parameters: {{work_mem: {work_mem}, max_connections: {mc}}}}}\n  dcs: {{hosts: [\"{etcd}\"]}}\n  aws:\n    region: eu-central-1\n    instanceType: t3.medium\n    image: {image}\n    vpc: {vpc}\n    subnets: [{subnets}]\n    hostedZone: {zone}\n  backup: {{bucket: wal-archive}}\n  secrets: {{superuser: {{ssm: /spilo/db{i:04}/superuser}}, replication: {{ssm: /spilo/db{i:04}/replication}}, restapi: {{ssm: /spilo/db{i:04}/restapi}}}}\n  tags: {{cost-center: \"{cc}\"}}\n",
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
    let mut rows = Vec::new();
    let mut failed = false;
    let spilo = match &args.spilo {
        Some(p) => p.clone(),
        None => spilo_e2e::proc::target_dir()?.join("spilo"),
    };
    println!("measuring {}", spilo.display());
    for &n in &args.clusters {
        failed |= run_size(&spilo, n, &mut rows).await?;
    }
    println!();
    println!("| run | wall time | peak RSS | AWS requests | asked most | exit code |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let (requests, top) = match &r.requests {
            Some((n, top)) => (n.to_string(), top.clone()),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.2} s | {:.1} MiB | {requests} | {top} | {} |",
            r.what,
            r.wall_ms as f64 / 1000.0,
            r.peak_kb as f64 / 1024.0,
            r.exit
        );
    }
    if failed {
        anyhow::bail!("a command exited with an unexpected code (above)");
    }
    Ok(())
}

/// The whole sequence for `n` clusters against a fresh moto and etcd; whether a command
/// exited with an unexpected code.
async fn run_size(spilo: &Path, n: usize, rows: &mut Vec<Measured>) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let etcd = Etcd::start(dir.path()).await?;
    let net = moto.network("eu-central-1", "db.example.com")?;
    let repo = Repo::init(&dir.path().join("repo"))?;
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
    let mut no_records = env.clone();
    no_records.retain(|(k, _)| *k != "SPILO_STACK_CACHE");
    no_records.push(("SPILO_STACK_CACHE", String::new()));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut mine = Vec::new();
    mine.push(measure(
        None,
        &logs,
        &format!(
            "spilo diff (offline, {n} files, {} changed)",
            n.div_ceil(10)
        ),
        spilo,
        &s(&["diff", &base, &head, "--repo", &repo_arg]),
        &[],
    )?);
    mine.push(measure(
        Some(&moto),
        &logs,
        &format!("spilo plan against moto + etcd ({n} creates)"),
        spilo,
        &s(&["plan", "--repo", &repo_arg]),
        &env,
    )?);
    mine.push(measure(
        Some(&moto),
        &logs,
        &format!("spilo apply --auto-approve ({n} stacks)"),
        spilo,
        &s(&["apply", "--auto-approve", "--repo", &repo_arg]),
        &env,
    )?);
    mine.push(measure(
        Some(&moto),
        &logs,
        &format!("spilo plan against moto + etcd ({n} no-ops, stacks recorded)"),
        spilo,
        &s(&["plan", "--repo", &repo_arg]),
        &env,
    )?);
    mine.push(measure(
        Some(&moto),
        &logs,
        &format!("spilo plan against moto + etcd ({n} no-ops, no records: fresh machine)"),
        spilo,
        &s(&["plan", "--repo", &repo_arg]),
        &no_records,
    )?);
    // The expected exit codes: changes (2), changes, applied (0), no changes (0), again.
    let expected = [2, 2, 0, 0, 0];
    let mut unexpected = false;
    for (r, want) in mine.iter().zip(expected) {
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
    rows.extend(mine);
    Ok(unexpected)
}
