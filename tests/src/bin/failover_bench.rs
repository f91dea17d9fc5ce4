//! The instance-loss benchmark: `kill -9` of the primary's manager and all its PostgreSQL
//! processes in a 3-member local cluster, while a prober writes every 50 ms through a
//! multi-host connection string with `target_session_attrs=read-write`. Measures the
//! unavailability (kill -> first acknowledged write on the new primary) and the acknowledged
//! writes that the new primary does not have, for spilo and, in the same run, Patroni.
//!
//! Run it with `bench/failover` (which installs Patroni into a virtualenv).

use clap::Parser;
use spilo_e2e::bench::{self, System, Timing};
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
    /// Skip the etcd-outage column (one more cluster per row, up to a few minutes each).
    #[arg(long)]
    no_outages: bool,
}

struct Sample {
    unavailable: Duration,
    lost: usize,
    acked: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for system in System::rows(args.patroni.is_some()) {
        let name = system.label();
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
        let (outage, idle) = if args.no_outages {
            ("not measured".to_string(), "not measured".to_string())
        } else {
            eprintln!("{name}: etcd outages");
            let seen = match (system, &args.patroni) {
                (System::Spilo(t), _) => spilo_outages(t).await,
                (System::Patroni(t), Some(p)) => patroni_outages(p, t).await,
                (System::Patroni(_), None) => Ok((Vec::new(), (0.0, 0.0))),
            };
            match seen {
                Ok((seen, (rss, cpu))) => (
                    bench::describe_outages(&seen),
                    format!("{rss:.1} MiB, {cpu:.2} % CPU"),
                ),
                Err(e) => {
                    fails.push(format!("outage measurement: {e:#}"));
                    ("failed".into(), "failed".into())
                }
            }
        };
        rows.push((name, samples, fails, outage, idle));
    }
    println!(
        "\nInstance loss (kill -9 of the primary's manager and PostgreSQL), 3 members, prober every 50 ms"
    );
    println!(
        "| system | runs measured | median unavailability | min | max | lost acknowledged writes | etcd outage (SIGSTOP) | idle manager, per member | runs that failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, samples, fails, outage, idle) in &rows {
        let d: Vec<f64> = samples
            .iter()
            .map(|s| s.unavailable.as_secs_f64())
            .collect();
        let lost: usize = samples.iter().map(|s| s.lost).sum();
        let acked: usize = samples.iter().map(|s| s.acked).sum();
        match bench::spread(&d) {
            Some((median, min, max)) => println!(
                "| {name} | {} | {median:.2} s | {min:.2} s | {max:.2} s | {lost} of {acked} | {outage} | {idle} | {} |",
                samples.len(),
                fails.len()
            ),
            None => println!(
                "| {name} | 0 | - | - | - | - | {outage} | {idle} | {} |",
                fails.len()
            ),
        }
    }
    for (name, _, fails, _, _) in &rows {
        for f in fails {
            println!("failed run of {name}: {f}");
        }
    }
    Ok(())
}

/// A spilo cluster at `timing`, every replica streaming, the probe table created.
async fn spilo_cluster(timing: Timing) -> anyhow::Result<(Cluster, String)> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "bench".into(),
        ha: timing.spilo_ha(),
        ..Default::default()
    })
    .await?;
    // The bench kills PostgreSQL and freezes etcd: the governors log both.
    c.expect_errors(&[
        "PostgreSQL exited unexpectedly",
        "fence: the leader lease is about to end without renewal",
    ]);
    let (primary, _) = c.start_streaming(Duration::from_secs(120)).await?;
    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    Ok((c, primary))
}

/// How long the idle managers' memory and CPU are measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

type OutagesAndIdle = (Vec<bench::Outage>, (f64, f64));

async fn spilo_outages(timing: Timing) -> anyhow::Result<OutagesAndIdle> {
    let (mut c, _) = spilo_cluster(timing).await?;
    let pids: Vec<u32> = c
        .members
        .iter_mut()
        .filter_map(|m| m.governor_pid())
        .collect();
    let idle = bench::idle_usage(&pids, IDLE_WINDOW).await;
    let dsn = c.read_write_dsn();
    let r = bench::outages(
        &dsn,
        bench::OUTAGES,
        |frozen| c.etcd.freeze(frozen),
        async || {
            let primary = c.wait_primary(Duration::from_secs(120)).await?;
            for m in c.members.iter().filter(|m| m.name != primary) {
                c.wait_streaming(&m.name, Duration::from_secs(120)).await?;
            }
            Ok(())
        },
    )
    .await;
    c.finish(r).map(|seen| (seen, idle))
}

async fn patroni_outages(
    patroni: &std::path::Path,
    timing: Timing,
) -> anyhow::Result<OutagesAndIdle> {
    let mut c = PatroniCluster::start_with(patroni, 3, timing).await?;
    c.ready_with_probe_table(Duration::from_secs(120)).await?;
    let idle = bench::idle_usage(&c.manager_pids(), IDLE_WINDOW).await;
    let dsn = c.read_write_dsn();
    let r = bench::outages(
        &dsn,
        bench::OUTAGES,
        |frozen| c.etcd.freeze(frozen),
        async || c.wait_ready(Duration::from_secs(180)).await.map(|_| ()),
    )
    .await;
    if r.is_err() {
        c.print_logs();
    }
    r.map(|seen| (seen, idle))
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

async fn spilo_run(timing: Timing) -> anyhow::Result<Sample> {
    let (c, primary) = spilo_cluster(timing).await?;
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

async fn patroni_run(patroni: &std::path::Path, timing: Timing) -> anyhow::Result<Sample> {
    let c = PatroniCluster::start_with(patroni, 3, timing).await?;
    let primary = c.ready_with_probe_table(Duration::from_secs(120)).await?;
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
