//! The switchover benchmark: a planned switchover in a 3-member local cluster while probers
//! write every 10 ms directly (a multi-host connection string with
//! `target_session_attrs=read-write`) and through each HAProxy endpoint of
//! [`spilo_e2e::endpoints`]. Measures the client-visible write gap on each (the longest pause
//! between two acknowledged writes from the command on), the time the command took, and
//! acknowledged writes missing on the new primary, for `spilo switchover` and, in the same run
//! with the same probers, Patroni's `patronictl switchover`.
//!
//! Run it with `bench/switchover` (which installs Patroni into a virtualenv).

use clap::Parser;
use spilo_e2e::bench::{self, System, Timing};
use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::endpoints::{self, DIRECT, Endpoints, Route};
use spilo_e2e::patroni::PatroniCluster;
use spilo_e2e::probe::{self, Ack, Prober};
use spilo_e2e::sql;
use spilo_e2e::wait;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Runs per system.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The `patroni` program (`patronictl` beside it); without it only spilo is measured.
    #[arg(long)]
    patroni: Option<PathBuf>,
}

struct Sample {
    /// Per prober label (`direct`, then each route's key): the longest pause in writes.
    gaps: Vec<(String, Duration)>,
    command: Duration,
    lost: usize,
    acked: usize,
}

impl Sample {
    fn on(&self, label: &str) -> Option<f64> {
        self.gaps
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, d)| d.as_secs_f64())
    }
}

const PROBE_EVERY: Duration = Duration::from_millis(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for system in System::rows(args.patroni.is_some()) {
        let name = match system {
            System::Spilo(_) => format!("`spilo switchover`, {}", system.label()),
            // `spilo switchover` reads etcd; the ZooKeeper row is the failover bench's.
            System::SpiloZooKeeper(_) => continue,
            System::Patroni(_) => format!("`patronictl switchover`, {}", system.label()),
        };
        let mut samples = Vec::new();
        let mut fails = Vec::new();
        for run in 1..=args.runs {
            let r = match (system, &args.patroni) {
                (System::Spilo(t), _) => spilo_run(t).await,
                (System::SpiloZooKeeper(_), _) => continue,
                (System::Patroni(t), Some(p)) => patroni_run(p, t).await,
                (System::Patroni(_), None) => continue,
            };
            match r {
                Ok(s) => {
                    let each: Vec<String> = s
                        .gaps
                        .iter()
                        .map(|(l, d)| format!("{l} {:.3}s", d.as_secs_f64()))
                        .collect();
                    eprintln!(
                        "{name} run {run}: write gap {}, command {:.2}s, {} of {} acknowledged writes lost",
                        each.join(", "),
                        s.command.as_secs_f64(),
                        s.lost,
                        s.acked
                    );
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("{name} run {run} failed: {e:#}");
                    fails.push(format!("{e:#}"));
                }
            }
        }
        rows.push((name, samples, fails));
    }
    println!(
        "\nPlanned switchover, 3 members, probers every {} ms; write gaps as median (min-max)",
        PROBE_EVERY.as_millis()
    );
    println!(
        "| system | runs measured | directly (multi-host DSN) |{} median command time | lost acknowledged writes | runs that failed |",
        Endpoints::headings()
    );
    println!(
        "|---|---|---|{}---|---|---|",
        "---|".repeat(Route::ALL.len())
    );
    for (name, samples, fails) in &rows {
        let cell = |label: &str| {
            let d: Vec<f64> = samples.iter().filter_map(|s| s.on(label)).collect();
            bench::spread_cell(&d, 3)
        };
        let cmds: Vec<f64> = samples.iter().map(|s| s.command.as_secs_f64()).collect();
        let lost: usize = samples.iter().map(|s| s.lost).sum();
        let acked: usize = samples.iter().map(|s| s.acked).sum();
        let cmd = bench::spread(&cmds).map_or("-".into(), |(m, _, _)| format!("{m:.2} s"));
        println!(
            "| {name} | {} | {} |{} {cmd} | {lost} of {acked} | {} |",
            samples.len(),
            cell(DIRECT),
            Endpoints::cells(cell),
            fails.len()
        );
    }
    for (name, _, fails) in &rows {
        for f in fails {
            println!("failed run of {name}: {f}");
        }
    }
    Ok(())
}

/// The longest pause between two consecutive acknowledgements of `label`'s writes after
/// `from`: the moment no primary accepted writes through that target.
fn write_gap(acks: &[Ack], label: &str, from: Instant) -> Duration {
    let mut times: Vec<Instant> = acks
        .iter()
        .filter(|a| a.member == label)
        .map(|a| a.acked)
        .collect();
    times.sort();
    let start = times.partition_point(|t| *t < from).saturating_sub(1);
    times[start..]
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// Probes until steady on every target, runs `switch` (which returns once the new primary is
/// known), waits for writes on it through every target, and checks every acknowledged write
/// on `final_port`.
async fn measure<S, F>(
    targets: Vec<(String, String)>,
    replicas: Vec<u16>,
    switch: S,
    final_port: F,
) -> anyhow::Result<Sample>
where
    S: AsyncFnOnce() -> anyhow::Result<()>,
    F: AsyncFnOnce() -> anyhow::Result<u16>,
{
    probe::wait_replicated(&replicas).await?;
    let labels: Vec<String> = targets.iter().map(|(l, _)| l.clone()).collect();
    let prober = Prober::start(targets, PROBE_EVERY);
    let steady_on_all = |since: Instant, what: &'static str, timeout: Duration| {
        let (prober, labels) = (&prober, &labels);
        wait::until(what, timeout, move || async move {
            let acks = prober.acks();
            labels
                .iter()
                .all(|l| {
                    acks.iter()
                        .filter(|a| a.member == *l && a.acked > since)
                        .count()
                        >= 50
                })
                .then_some(())
        })
    };
    // The load balancers' checks start from "up": the ones that take a replica out slowly
    // (Patroni's: 3 failures 3 s apart) need a while before every write lands.
    steady_on_all(
        Instant::now(),
        "acknowledged writes on every target",
        Duration::from_secs(60),
    )
    .await?;
    let started = Instant::now();
    switch().await?;
    let command = started.elapsed();
    steady_on_all(
        Instant::now(),
        "writes on the new primary through every target",
        Duration::from_secs(60),
    )
    .await?;
    let (acks, _) = prober.stop().await;
    let client = sql::connect(final_port().await?).await?;
    let present = probe::ids_on(&client).await?;
    Ok(Sample {
        gaps: labels
            .iter()
            .map(|l| (l.clone(), write_gap(&acks, l, started)))
            .collect(),
        command,
        lost: probe::lost(&acks, &present).len(),
        acked: acks.len(),
    })
}

async fn spilo_run(timing: Timing) -> anyhow::Result<Sample> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "bench".into(),
        ha: timing.spilo_ha(),
        ..Default::default()
    })
    .await?;
    endpoints::run_proxies(&mut c);
    let r = spilo_measure(&mut c).await;
    c.finish(r)
}

async fn spilo_measure(c: &mut Cluster) -> anyhow::Result<Sample> {
    let (primary, replicas) = c.start_streaming(Duration::from_secs(60)).await?;
    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let target = replicas[0].clone();
    let ports: Vec<u16> = replicas.iter().map(|r| c.member(r).pg_port).collect();
    let target_port = c.member(&target).pg_port;
    let endpoints = Endpoints::of_spilo(c)?;
    endpoints.settled(Duration::from_secs(120)).await?;
    let targets = endpoints.targets(c.read_write_dsn());
    let c: &Cluster = c;
    measure(
        targets,
        ports,
        async || {
            let (code, out) = c.operate("switchover", &["--to", &target]).await?;
            anyhow::ensure!(code == 0, "spilo switchover failed: {out}");
            Ok(())
        },
        async || Ok(target_port),
    )
    .await
}

async fn patroni_run(patroni: &Path, timing: Timing) -> anyhow::Result<Sample> {
    let c = PatroniCluster::start_with(patroni, 3, timing).await?;
    let r = patroni_measure(&c, patroni).await;
    if r.is_err() {
        c.print_logs();
    }
    r
}

async fn patroni_measure(c: &PatroniCluster, patroni: &Path) -> anyhow::Result<Sample> {
    let primary = c.ready_with_probe_table(Duration::from_secs(120)).await?;
    let target = c
        .members
        .iter()
        .find(|m| m.name != primary)
        .ok_or_else(|| anyhow::anyhow!("no replica"))?;
    let ports: Vec<u16> = c
        .members
        .iter()
        .filter(|m| m.name != primary)
        .map(|m| m.pg_port)
        .collect();
    let patronictl = patroni.with_file_name("patronictl");
    let config = c.config_path(&primary);
    let endpoints = Endpoints::of_patroni(c)?;
    endpoints.settled(Duration::from_secs(120)).await?;
    let targets = endpoints.targets(c.read_write_dsn());
    measure(
        targets,
        ports,
        async || {
            let out = tokio::process::Command::new(&patronictl)
                .arg("-c")
                .arg(&config)
                .args([
                    "switchover",
                    "--leader",
                    &primary,
                    "--candidate",
                    &target.name,
                    "--force",
                ])
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "patronictl switchover failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // patronictl returns once the old leader has handed over; the prober measures
            // when writes resume.
            Ok(())
        },
        async || Ok(target.pg_port),
    )
    .await
}
