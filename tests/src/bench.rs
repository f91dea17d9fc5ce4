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
            "  etcd frozen {secs}s: longest write pause {:.2}s",
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
