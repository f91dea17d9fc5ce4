//! What the failover and switchover benchmarks share: the configurations they compare (each
//! system at its defaults and at the same timing, so a row compares designs, not settings),
//! the table's statistics, and the etcd-outage measurement.

use crate::probe::{self, Prober};
use crate::wait;
use std::time::{Duration, Instant};

/// HA timing in seconds, as both systems spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The leader key's lease.
    pub ttl: u64,
    /// The HA loop's period.
    pub loop_wait: u64,
    /// How long one etcd call may take.
    pub retry_timeout: u64,
}

impl Timing {
    /// spilo's defaults (`spec.ha`).
    pub const SPILO_DEFAULT: Timing = Timing {
        ttl: spilo_model::spec::DEFAULT_TTL,
        loop_wait: spilo_model::spec::DEFAULT_LOOP_WAIT,
        retry_timeout: spilo_model::spec::DEFAULT_RETRY_TIMEOUT,
    };
    /// Patroni's defaults.
    pub const PATRONI_DEFAULT: Timing = Timing {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
    };
    /// Patroni's floor: its smallest documented ttl (20) and loop_wait (1), with the
    /// largest retry_timeout its rule `loop_wait + 2 * retry_timeout <= ttl` allows.
    pub const PATRONI_FLOOR: Timing = Timing {
        ttl: 20,
        loop_wait: 1,
        retry_timeout: 9,
    };

    /// `ttl 20s, loop_wait 1s, retry_timeout 9s`.
    pub fn label(&self) -> String {
        format!(
            "ttl {}s, loop_wait {}s, retry_timeout {}s",
            self.ttl, self.loop_wait, self.retry_timeout
        )
    }

    /// The governor's `ha:` section.
    pub fn spilo_ha(&self) -> String {
        format!(
            "{{ttl: {}, loop_wait: {}, retry_timeout: {}}}",
            self.ttl, self.loop_wait, self.retry_timeout
        )
    }
}

/// One row of a benchmark: which system, at which timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// spilo's governor.
    Spilo(Timing),
    /// spilo's governor on ZooKeeper (a standalone server) instead of etcd.
    SpiloZooKeeper(Timing),
    /// Patroni 4.
    Patroni(Timing),
}

impl System {
    /// The four rows every failover and switchover table prints: each system at its defaults
    /// and both at Patroni's floor (design parity).
    pub fn rows(with_patroni: bool) -> Vec<System> {
        let mut v = vec![
            System::Spilo(Timing::SPILO_DEFAULT),
            System::Spilo(Timing::PATRONI_FLOOR),
        ];
        if with_patroni {
            v.push(System::Patroni(Timing::PATRONI_FLOOR));
            v.push(System::Patroni(Timing::PATRONI_DEFAULT));
        }
        v
    }

    /// `spilo (defaults: ttl 4s, ...)`.
    pub fn label(&self) -> String {
        match self {
            System::Spilo(t) if *t == Timing::SPILO_DEFAULT => {
                format!("spilo (defaults: {})", t.label())
            }
            System::Spilo(t) => format!("spilo at Patroni's floor ({})", t.label()),
            System::SpiloZooKeeper(t) if *t == Timing::SPILO_DEFAULT => {
                format!("spilo on ZooKeeper (defaults: {})", t.label())
            }
            System::SpiloZooKeeper(t) => format!("spilo on ZooKeeper ({})", t.label()),
            System::Patroni(t) if *t == Timing::PATRONI_DEFAULT => {
                format!("Patroni 4 (defaults: {})", t.label())
            }
            System::Patroni(t) => format!("Patroni 4 at its floor ({})", t.label()),
        }
    }
}

/// Median, min and max of `values` (seconds), or `None` when empty.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some((*v.get(v.len() / 2)?, *v.first()?, *v.last()?))
}

/// `median s (min-max)` of `values` with `decimals` digits, or `-` when empty.
pub fn spread_cell(values: &[f64], decimals: usize) -> String {
    match spread(values) {
        Some((median, min, max)) => {
            format!("{median:.decimals$} s ({min:.decimals$}-{max:.decimals$})")
        }
        None => "-".into(),
    }
}

/// An etcd outage a cluster rode out or not.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// How long etcd was frozen.
    pub frozen: Duration,
    /// The longest pause between acknowledged writes from the freeze to 3 s after it.
    pub longest_pause: Duration,
}

/// A pause longer than this counts as a write stop (the prober writes every 50 ms).
pub const WRITE_STOP: Duration = Duration::from_secs(1);

/// Freezes etcd (SIGSTOP) for each of `durations` in turn while a prober writes every 50 ms
/// through `dsn`, and records the longest pause; stops after the first outage that stopped
/// writes. Between outages it waits until `ready` says the cluster is whole again.
pub async fn outages<F, R>(
    dsn: &str,
    durations: &[u64],
    freeze: F,
    ready: R,
) -> anyhow::Result<Vec<Outage>>
where
    F: Fn(bool),
    R: AsyncFn() -> anyhow::Result<()>,
{
    let mut seen = Vec::new();
    for &secs in durations {
        ready().await?;
        let prober = Prober::start(
            vec![("rw".into(), dsn.to_string())],
            Duration::from_millis(50),
        );
        let steady = Instant::now();
        wait::until("steady writes", Duration::from_secs(60), || async {
            (prober.acks().iter().filter(|a| a.acked > steady).count() >= 20).then_some(())
        })
        .await?;
        let frozen = Duration::from_secs(secs);
        let start = Instant::now();
        freeze(true);
        wait::until(
            "the outage to last",
            frozen + Duration::from_secs(1),
            || async { (start.elapsed() >= frozen).then_some(()) },
        )
        .await?;
        freeze(false);
        let thawed = Instant::now();
        // Writes must come back (the cluster recovers) before the pause can be measured.
        wait::until(
            "writes after the outage",
            Duration::from_secs(180),
            || async {
                (prober
                    .acks()
                    .iter()
                    .any(|a| a.acked > thawed + Duration::from_secs(3)))
                .then_some(())
            },
        )
        .await?;
        let (acks, _) = prober.stop().await;
        let times = acks.iter().map(|a| a.acked).filter(|t| {
            *t + Duration::from_secs(1) >= start && *t <= thawed + Duration::from_secs(3)
        });
        let longest_pause = probe::longest_pause(times);
        eprintln!(
            "  store frozen {secs}s: longest write pause {:.2}s",
            longest_pause.as_secs_f64()
        );
        seen.push(Outage {
            frozen,
            longest_pause,
        });
        if longest_pause > WRITE_STOP {
            break;
        }
    }
    Ok(seen)
}

/// "rode out 8 s, writes stopped at 13 s" from what [`outages`] saw.
pub fn describe_outages(seen: &[Outage]) -> String {
    let tolerated = seen
        .iter()
        .filter(|o| o.longest_pause <= WRITE_STOP)
        .map(|o| o.frozen.as_secs())
        .max();
    let stopped = seen
        .iter()
        .find(|o| o.longest_pause > WRITE_STOP)
        .map(|o| o.frozen.as_secs());
    match (tolerated, stopped) {
        (Some(t), Some(s)) => format!("rides out {t} s; {s} s stops writes"),
        (None, Some(s)) => format!("{s} s stops writes"),
        (Some(t), None) => format!("rides out {t} s (longest tried)"),
        (None, None) => "not measured".into(),
    }
}

/// The outage durations tried, in seconds.
pub const OUTAGES: &[u64] = &[1, 2, 3, 5, 8, 13, 21, 34];

/// What a manager process (the governor, Patroni) and its helpers use, PostgreSQL excluded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident memory, KiB, summed over the process and its non-PostgreSQL descendants.
    pub rss_kib: u64,
    /// CPU time in clock ticks (user + system), summed the same way.
    pub cpu_ticks: u64,
    /// The most resident memory each process ever had (`VmHWM`), KiB, summed the same way.
    pub peak_rss_kib: u64,
}

fn proc_stat(pid: u32) -> Option<(u32, String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state, ppid, ... utime is field 14 and stime 15 of the whole line.
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, comm, ticks))
}

/// A `Vm...:` line of `/proc/PID/status`, KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The usage of `root` and every descendant that is not a PostgreSQL process.
pub fn usage(root: u32) -> Usage {
    let mut all = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((ppid, comm, ticks)) = proc_stat(pid)
            {
                all.push((pid, ppid, comm, ticks));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let mut u = Usage::default();
    for pid in tree {
        if let Some((_, comm, ticks)) = all.iter().find(|p| p.0 == pid).map(|p| (p.1, &p.2, p.3))
            && comm != "postgres"
        {
            u.rss_kib += status_kib(pid, "VmRSS:");
            u.peak_rss_kib += status_kib(pid, "VmHWM:");
            u.cpu_ticks += ticks;
        }
    }
    u
}

/// /proc counts CPU time in USER_HZ, 100 per second on Linux whatever the kernel's HZ.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// Mean resident memory (MiB) and CPU (% of one core) per manager over `window` while the
/// cluster is idle but for a prober's writes, for the managers `roots`.
pub async fn idle_usage(roots: &[u32], window: Duration) -> (f64, f64) {
    let before: Vec<Usage> = roots.iter().map(|p| usage(*p)).collect();
    // A measurement window, not a wait for a condition.
    tokio::time::sleep(window).await;
    let after: Vec<Usage> = roots.iter().map(|p| usage(*p)).collect();
    let ticks_per_s = TICKS_PER_SECOND;
    let n = roots.len().max(1) as f64;
    let rss = after.iter().map(|u| u.rss_kib as f64 / 1024.0).sum::<f64>() / n;
    let cpu = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64)
        .sum::<f64>()
        / ticks_per_s
        / window.as_secs_f64()
        / n
        * 100.0;
    (rss, cpu)
}
