//! The instance-loss benchmark: `kill -9` of the primary's manager and all its PostgreSQL
//! processes in a 3-member local cluster, while a prober writes every 50 ms through a
//! multi-host connection string with `target_session_attrs=read-write`. Measures the
//! unavailability (kill -> first acknowledged write on the new primary) and the acknowledged
//! writes that the new primary does not have, for spilo and, in the same run, Patroni.
//!
//! Run it with `bench/failover` (which installs Patroni into a virtualenv).

use clap::Parser;
use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::patroni::PatroniCluster;
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::sql;
use spilo_e2e::wait;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Runs per system.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The `patroni` program; without it only spilo is measured.
    #[arg(long)]
    patroni: Option<PathBuf>,
    /// Measure only Patroni (with --patroni).
    #[arg(long)]
    patroni_only: bool,
}

struct Sample {
    unavailable: Duration,
    lost: usize,
    acked: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut results: Vec<(String, Vec<Sample>)> = Vec::new();
    let mut failed: Vec<(String, Vec<String>)> = Vec::new();
    let mut systems: Vec<(&str, Option<&std::path::Path>)> = Vec::new();
    if !args.patroni_only {
        systems.push(("spilo (defaults: ttl 4s)", None));
    }
    if let Some(p) = &args.patroni {
        systems.push((
            "Patroni 4 (defaults: ttl 30s, loop_wait 10s)",
            Some(p.as_path()),
        ));
    }
    for (name, patroni) in systems {
        let mut samples = Vec::new();
        let mut fails = Vec::new();
        for run in 1..=args.runs {
            let r = match patroni {
                None => spilo_run().await,
                Some(p) => patroni_run(p).await,
            };
            match r {
                Ok(s) => {
                    eprintln!(
                        "{name} run {run}: {:.2}s unavailable, {} of {} acknowledged writes lost",
                        s.unavailable.as_secs_f64(),
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
        results.push((name.to_string(), samples));
        failed.push((name.to_string(), fails));
    }
    println!(
        "\nInstance loss (kill -9 of the primary's manager and PostgreSQL), 3 members, prober every 50 ms"
    );
    println!(
        "| system | runs measured | median unavailability | min | max | lost acknowledged writes | runs that failed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((name, samples), (_, fails)) in results
        .iter()
        .zip(&failed)
        .filter(|((_, s), _)| !s.is_empty())
    {
        let mut d: Vec<f64> = samples
            .iter()
            .map(|s| s.unavailable.as_secs_f64())
            .collect();
        d.sort_by(|a, b| a.total_cmp(b));
        let median = d[d.len() / 2];
        let lost: usize = samples.iter().map(|s| s.lost).sum();
        let acked: usize = samples.iter().map(|s| s.acked).sum();
        println!(
            "| {name} | {} | {median:.2} s | {:.2} s | {:.2} s | {lost} of {acked} | {} |",
            samples.len(),
            d[0],
            d[d.len() - 1],
            fails.len()
        );
    }
    for (name, fails) in &failed {
        for f in fails {
            println!("failed run of {name}: {f}");
        }
    }
    Ok(())
}

/// Probes until steady, kills the primary, waits for the first write after the kill, and
/// checks every acknowledged write on the final primary.
async fn measure<K, F>(
    dsn: String,
    replicas: Vec<u16>,
    kill: K,
    final_port: F,
) -> anyhow::Result<Sample>
where
    K: AsyncFnOnce() -> anyhow::Result<Instant>,
    F: AsyncFnOnce() -> anyhow::Result<u16>,
{
    // Both systems start measuring only once every replica has replicated the probe table.
    probe::wait_replicated(&replicas).await?;
    let prober = Prober::start(vec![("rw".into(), dsn)], Duration::from_millis(50));
    let steady = Instant::now();
    wait::until(
        "two seconds of acknowledged writes",
        Duration::from_secs(30),
        || async {
            (prober.acks().iter().filter(|a| a.acked > steady).count() >= 40).then_some(())
        },
    )
    .await?;
    let killed = kill().await?;
    let first = wait::until(
        "a write acknowledged after the kill",
        Duration::from_secs(180),
        || async { prober.first_ack_after(killed) },
    )
    .await?;
    let after = Instant::now();
    wait::until(
        "a second of writes on the new primary",
        Duration::from_secs(10),
        || async { (prober.acks().iter().filter(|a| a.acked > after).count() >= 10).then_some(()) },
    )
    .await?;
    let (acks, _) = prober.stop().await;
    let port = final_port().await?;
    let client = sql::connect(port).await?;
    let present = probe::ids_on(&client).await?;
    Ok(Sample {
        unavailable: first.saturating_duration_since(killed),
        lost: probe::lost(&acks, &present).len(),
        acked: acks.len(),
    })
}

async fn spilo_run() -> anyhow::Result<Sample> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "bench".into(),
        ..Default::default()
    })
    .await?;
    c.start_all()?;
    let primary = c.wait_primary(Duration::from_secs(60)).await?;
    for m in c.members.iter().filter(|m| m.name != primary) {
        c.wait_streaming(&m.name, Duration::from_secs(60)).await?;
    }
    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let dsn = c.read_write_dsn();
    let replicas: Vec<u16> = c
        .members
        .iter()
        .filter(|m| m.name != primary)
        .map(|m| m.pg_port)
        .collect();
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let k = c.clone();
    let f = c.clone();
    let p = primary.clone();
    measure(
        dsn,
        replicas,
        async move || k.lock().await.kill9(&p).await,
        async move || {
            let c = f.lock().await;
            let new = c.wait_primary(Duration::from_secs(30)).await?;
            Ok(c.member(&new).pg_port)
        },
    )
    .await
}

async fn patroni_run(patroni: &std::path::Path) -> anyhow::Result<Sample> {
    let c = PatroniCluster::start(patroni, 3).await?;
    let primary = c.wait_ready(Duration::from_secs(120)).await?;
    let port = c
        .pg_port(&primary)
        .ok_or_else(|| anyhow::anyhow!("no port"))?;
    sql::connect(port)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let dsn = c.read_write_dsn();
    let replicas: Vec<u16> = c
        .members
        .iter()
        .filter(|m| m.name != primary)
        .map(|m| m.pg_port)
        .collect();
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let k = c.clone();
    let f = c.clone();
    let r = measure(
        dsn,
        replicas,
        async move || k.lock().await.kill9(&primary),
        async move || {
            let c = f.lock().await;
            for m in &c.members {
                if let Ok(client) = sql::connect(m.pg_port).await
                    && let Ok(row) = client
                        .query_one("SELECT NOT pg_is_in_recovery()", &[])
                        .await
                    && row.get::<_, bool>(0)
                {
                    return Ok(m.pg_port);
                }
            }
            anyhow::bail!("no Patroni primary after the failover")
        },
    )
    .await;
    if r.is_err() {
        c.lock().await.print_logs();
    }
    r
}
