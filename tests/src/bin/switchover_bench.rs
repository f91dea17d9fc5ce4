//! The switchover benchmark: a planned switchover in a 3-member local cluster while a prober
//! writes every 10 ms through a multi-host connection string with
//! `target_session_attrs=read-write`. Measures the client-visible write gap (the last write
//! acknowledged by the old primary -> the first acknowledged by the new one), the time the
//! command took, and acknowledged writes missing on the new primary, for `spilo switchover`
//! and, in the same run with the same prober, Patroni's `patronictl switchover`.
//!
//! Run it with `bench/switchover` (which installs Patroni into a virtualenv).

use clap::Parser;
use spilo_e2e::bench::{self, System, Timing};
use spilo_e2e::cluster::{Cluster, ClusterOptions};
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
    gap: Duration,
    command: Duration,
    lost: usize,
    acked: usize,
}

const PROBE_EVERY: Duration = Duration::from_millis(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for system in System::rows(args.patroni.is_some()) {
        let name = match system {
            System::Spilo(_) => format!("`spilo switchover`, {}", system.label()),
            System::Patroni(_) => format!("`patronictl switchover`, {}", system.label()),
        };
        let mut samples = Vec::new();
        let mut fails = Vec::new();
        for run in 1..=args.runs {
            let r = match (system, &args.patroni) {
                (System::Spilo(t), _) => spilo_run(t).await,
                (System::Patroni(t), Some(p)) => patroni_run(p, t).await,
                (System::Patroni(_), None) => continue,
            };
            match r {
                Ok(s) => {
                    eprintln!(
                        "{name} run {run}: write gap {:.3}s, command {:.2}s, {} of {} acknowledged writes lost",
                        s.gap.as_secs_f64(),
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
        "\nPlanned switchover, 3 members, prober every {} ms through a read-write multi-host DSN",
        PROBE_EVERY.as_millis()
    );
    println!(
        "| system | runs measured | median write gap | min | max | median command time | lost acknowledged writes | runs that failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, samples, fails) in &rows {
        if samples.is_empty() {
            println!("| {name} | 0 | - | - | - | - | - | {} |", fails.len());
            continue;
        }
        let gaps: Vec<f64> = samples.iter().map(|s| s.gap.as_secs_f64()).collect();
        let cmds: Vec<f64> = samples.iter().map(|s| s.command.as_secs_f64()).collect();
        let lost: usize = samples.iter().map(|s| s.lost).sum();
        let acked: usize = samples.iter().map(|s| s.acked).sum();
        let (Some((gap, min, max)), Some((cmd, _, _))) =
            (bench::spread(&gaps), bench::spread(&cmds))
        else {
            continue;
        };
        println!(
            "| {name} | {} | {gap:.3} s | {min:.3} s | {max:.3} s | {cmd:.2} s | {lost} of {acked} | {} |",
            samples.len(),
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

/// The longest pause between two consecutive acknowledgements after `from`: the moment no
/// primary accepted writes.
fn write_gap(acks: &[Ack], from: Instant) -> Duration {
    let mut times: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
    times.sort();
    let start = times.partition_point(|t| *t < from).saturating_sub(1);
    times[start..]
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// Probes until steady, runs `switch` (which returns once the new primary is known), waits
/// for writes on it, and checks every acknowledged write on `final_port`.
async fn measure<S, F>(
    dsn: String,
    replicas: Vec<u16>,
    switch: S,
    final_port: F,
) -> anyhow::Result<Sample>
where
    S: AsyncFnOnce() -> anyhow::Result<()>,
    F: AsyncFnOnce() -> anyhow::Result<u16>,
{
    probe::wait_replicated(&replicas).await?;
    let prober = Prober::start(vec![("rw".into(), dsn)], PROBE_EVERY);
    let steady = Instant::now();
    wait::until(
        "a second of acknowledged writes",
        Duration::from_secs(30),
        || async {
            (prober.acks().iter().filter(|a| a.acked > steady).count() >= 50).then_some(())
        },
    )
    .await?;
    let started = Instant::now();
    switch().await?;
    let command = started.elapsed();
    let after = Instant::now();
    wait::until(
        "writes on the new primary",
        Duration::from_secs(30),
        || async { (prober.acks().iter().filter(|a| a.acked > after).count() >= 50).then_some(()) },
    )
    .await?;
    let (acks, _) = prober.stop().await;
    let client = sql::connect(final_port().await?).await?;
    let present = probe::ids_on(&client).await?;
    Ok(Sample {
        gap: write_gap(&acks, started),
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
    let c: &Cluster = c;
    measure(
        c.read_write_dsn(),
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
    measure(
        c.read_write_dsn(),
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
