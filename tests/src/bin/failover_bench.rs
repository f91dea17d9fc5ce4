//! The instance-loss benchmark: `kill -9` of the primary's manager and all its PostgreSQL
//! processes in a 3-member local cluster, while probers write every 50 ms directly (a
//! multi-host connection string with `target_session_attrs=read-write`) and through each
//! HAProxy endpoint of [`spilo_e2e::endpoints`]. Measures the unavailability on each (kill ->
//! first acknowledged write sent after it), the acknowledged writes that the new primary does
//! not have, and what the surviving managers used during the failover, for spilo (on etcd,
//! and at its defaults on ZooKeeper too) and, in the same run, Patroni.
//!
//! Run it with `bench/failover` (which installs Patroni into a virtualenv).

use clap::Parser;
use spilo_e2e::bench::{self, System, Timing};
use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::endpoints::{self, DIRECT, Endpoints, Route};
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
    /// Skip the store-outage column (one more cluster per row, up to a few minutes each).
    #[arg(long)]
    no_outages: bool,
}

struct Sample {
    /// Per prober label (`direct`, then each route's key): kill -> first acknowledged write.
    unavailable: Vec<(String, Duration)>,
    lost: usize,
    acked: usize,
    /// CPU seconds per surviving manager from the kill until writes came back on every route.
    cpu_s: f64,
    /// Peak resident memory per surviving manager (`VmHWM`), MiB, at that moment.
    peak_mib: f64,
}

impl Sample {
    fn on(&self, label: &str) -> Option<f64> {
        self.unavailable
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, d)| d.as_secs_f64())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    let mut systems = System::rows(args.patroni.is_some());
    // The same governor on the other coordination store, beside it.
    systems.insert(1, System::SpiloZooKeeper(Timing::SPILO_DEFAULT));
    for system in systems {
        let name = system.label();
        let mut samples = Vec::new();
        let mut fails = Vec::new();
        for run in 1..=args.runs {
            let r = match (system, &args.patroni) {
                (System::Spilo(t), _) => spilo_run(t, 0).await,
                (System::SpiloZooKeeper(t), _) => spilo_run(t, 1).await,
                (System::Patroni(t), Some(p)) => patroni_run(p, t).await,
                (System::Patroni(_), None) => continue,
            };
            match r {
                Ok(s) => {
                    let each: Vec<String> = s
                        .unavailable
                        .iter()
                        .map(|(l, d)| format!("{l} {:.2}s", d.as_secs_f64()))
                        .collect();
                    eprintln!(
                        "{name} run {run}: unavailable {}; {} of {} acknowledged writes lost; survivors {:.2} CPU s, peak {:.1} MiB each",
                        each.join(", "),
                        s.lost,
                        s.acked,
                        s.cpu_s,
                        s.peak_mib
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
            eprintln!("{name}: coordination store outages");
            let seen = match (system, &args.patroni) {
                (System::Spilo(t), _) => spilo_outages(t, 0).await,
                (System::SpiloZooKeeper(t), _) => spilo_outages(t, 1).await,
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
        "\nInstance loss (kill -9 of the primary's manager and PostgreSQL), 3 members, probers every 50 ms; unavailability as median (min-max)"
    );
    println!(
        "| system | runs measured | directly (multi-host DSN) |{} lost acknowledged writes | surviving manager during the failover: CPU, peak RSS | store outage (SIGSTOP of etcd or ZooKeeper) | idle manager, per member | runs that failed |",
        Endpoints::headings()
    );
    println!(
        "|---|---|---|{}---|---|---|---|---|",
        "---|".repeat(Route::ALL.len())
    );
    for (name, samples, fails, outage, idle) in &rows {
        let cell = |label: &str| {
            let d: Vec<f64> = samples.iter().filter_map(|s| s.on(label)).collect();
            bench::spread_cell(&d, 2)
        };
        let lost: usize = samples.iter().map(|s| s.lost).sum();
        let acked: usize = samples.iter().map(|s| s.acked).sum();
        let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_s).collect();
        let peak: Vec<f64> = samples.iter().map(|s| s.peak_mib).collect();
        let during = match (bench::spread(&cpu), bench::spread(&peak)) {
            (Some((cpu, _, _)), Some((peak, _, _))) => format!("{cpu:.2} CPU s, {peak:.1} MiB"),
            _ => "-".into(),
        };
        println!(
            "| {name} | {} | {} |{} {lost} of {acked} | {during} | {outage} | {idle} | {} |",
            samples.len(),
            cell(DIRECT),
            Endpoints::cells(cell),
            fails.len()
        );
    }
    for (name, _, fails, _, _) in &rows {
        for f in fails {
            println!("failed run of {name}: {f}");
        }
    }
    Ok(())
}

/// A spilo cluster at `timing`, every member running its primary proxy, every replica
/// streaming, the probe table created.
async fn spilo_cluster(timing: Timing, zookeeper: usize) -> anyhow::Result<(Cluster, String)> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "bench".into(),
        ha: timing.spilo_ha(),
        zookeeper,
        ..Default::default()
    })
    .await?;
    endpoints::run_proxies(&mut c);
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

/// Stops (SIGSTOP) or resumes the cluster's store: etcd, or its ZooKeeper servers.
fn freeze_store(c: &Cluster, frozen: bool) {
    if c.zookeeper.is_empty() {
        return c.etcd.freeze(frozen);
    }
    let signal = if frozen {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    for z in &c.zookeeper {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(z.pid()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

async fn spilo_outages(timing: Timing, zookeeper: usize) -> anyhow::Result<OutagesAndIdle> {
    let (mut c, _) = spilo_cluster(timing, zookeeper).await?;
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
        |frozen| freeze_store(&c, frozen),
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

/// Probes until steady on every target, kills the primary, waits for a write sent after the
/// kill to be acknowledged on each target, and checks every acknowledged write on the final
/// primary. `survivors` are the manager processes that stay up.
async fn measure<K, F>(
    targets: Vec<(String, String)>,
    replicas: Vec<u16>,
    survivors: Vec<u32>,
    kill: K,
    final_port: F,
) -> anyhow::Result<Sample>
where
    K: AsyncFnOnce() -> anyhow::Result<Instant>,
    F: AsyncFnOnce() -> anyhow::Result<u16>,
{
    // Both systems start measuring only once every replica has replicated the probe table.
    probe::wait_replicated(&replicas).await?;
    let labels: Vec<String> = targets.iter().map(|(l, _)| l.clone()).collect();
    let prober = Prober::start(targets, Duration::from_millis(50));
    let steady = Instant::now();
    // The load balancers' checks start from "up": the ones that take a replica out slowly
    // (Patroni's: 3 failures 3 s apart) need a while before every write lands.
    wait::until(
        "two seconds of acknowledged writes on every target",
        Duration::from_secs(60),
        || async {
            let acks = prober.acks();
            labels
                .iter()
                .all(|l| {
                    acks.iter()
                        .filter(|a| a.member == *l && a.acked > steady)
                        .count()
                        >= 40
                })
                .then_some(())
        },
    )
    .await?;
    let before: Vec<bench::Usage> = survivors.iter().map(|p| bench::usage(*p)).collect();
    let killed = kill().await?;
    for l in &labels {
        prober
            .wait_write(l, Some(killed), Duration::from_secs(180))
            .await?;
    }
    let after: Vec<bench::Usage> = survivors.iter().map(|p| bench::usage(*p)).collect();
    let resumed = Instant::now();
    wait::until(
        "a second of writes on the new primary",
        Duration::from_secs(10),
        || async {
            (prober.acks().iter().filter(|a| a.acked > resumed).count() >= 10).then_some(())
        },
    )
    .await?;
    let (acks, _) = prober.stop().await;
    let port = final_port().await?;
    let client = sql::connect(port).await?;
    let present = probe::ids_on(&client).await?;
    let unavailable = labels
        .iter()
        .filter_map(|l| {
            let first = acks
                .iter()
                .filter(|a| a.member == *l && a.sent > killed)
                .map(|a| a.acked)
                .min()?;
            Some((l.clone(), first.saturating_duration_since(killed)))
        })
        .collect();
    let n = survivors.len().max(1) as f64;
    let cpu_ticks: u64 = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.cpu_ticks.saturating_sub(b.cpu_ticks))
        .sum();
    Ok(Sample {
        unavailable,
        lost: probe::lost(&acks, &present).len(),
        acked: acks.len(),
        cpu_s: cpu_ticks as f64 / bench::TICKS_PER_SECOND / n,
        peak_mib: after.iter().map(|u| u.peak_rss_kib as f64).sum::<f64>() / 1024.0 / n,
    })
}

async fn spilo_run(timing: Timing, zookeeper: usize) -> anyhow::Result<Sample> {
    let (mut c, primary) = spilo_cluster(timing, zookeeper).await?;
    let endpoints = Endpoints::of_spilo(&c)?;
    endpoints.settled(Duration::from_secs(120)).await?;
    let targets = endpoints.targets(c.read_write_dsn());
    let replicas: Vec<u16> = c
        .members
        .iter()
        .filter(|m| m.name != primary)
        .map(|m| m.pg_port)
        .collect();
    let survivors: Vec<u32> = c
        .members
        .iter_mut()
        .filter(|m| m.name != primary)
        .filter_map(|m| m.governor_pid())
        .collect();
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let k = c.clone();
    let f = c.clone();
    let p = primary.clone();
    let r = measure(
        targets,
        replicas,
        survivors,
        async move || k.lock().await.kill9(&p).await,
        async move || {
            let c = f.lock().await;
            let new = c.wait_primary(Duration::from_secs(30)).await?;
            Ok(c.member(&new).pg_port)
        },
    )
    .await;
    drop(endpoints);
    r
}

async fn patroni_run(patroni: &std::path::Path, timing: Timing) -> anyhow::Result<Sample> {
    let mut c = PatroniCluster::start_with(patroni, 3, timing).await?;
    let primary = c.ready_with_probe_table(Duration::from_secs(120)).await?;
    let endpoints = Endpoints::of_patroni(&c)?;
    endpoints.settled(Duration::from_secs(120)).await?;
    let targets = endpoints.targets(c.read_write_dsn());
    let replicas: Vec<u16> = c
        .members
        .iter()
        .filter(|m| m.name != primary)
        .map(|m| m.pg_port)
        .collect();
    let names: Vec<String> = c
        .members
        .iter()
        .filter(|m| m.name != primary)
        .map(|m| m.name.clone())
        .collect();
    let survivors: Vec<u32> = names.iter().filter_map(|n| c.manager_pid(n)).collect();
    let c = std::sync::Arc::new(tokio::sync::Mutex::new(c));
    let k = c.clone();
    let f = c.clone();
    let r = measure(
        targets,
        replicas,
        survivors,
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
    drop(endpoints);
    if r.is_err() {
        c.lock().await.print_logs();
    }
    r
}
