//! Alerting state, pure: one alert when a drift appears (after it has persisted for its hold
//! time), one "resolved" when it clears, nothing while it persists. A cluster that could not
//! be observed this pass keeps its alerts as they are: unknown is not resolved.

use super::detect::{Drift, DriftKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What to tell the sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum AlertEvent {
    /// A drift appeared.
    Drift(Drift),
    /// A drift cleared.
    Resolved(Drift),
}

impl AlertEvent {
    /// The drift it is about.
    pub fn drift(&self) -> &Drift {
        match self {
            AlertEvent::Drift(d) | AlertEvent::Resolved(d) => d,
        }
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    drift: Drift,
    since: Duration,
    raised: bool,
}

/// The drifts seen so far.
#[derive(Debug, Default)]
pub struct Alerts {
    tracked: BTreeMap<String, Tracked>,
}

impl Alerts {
    /// Takes this pass's drifts of the clusters in `observed` at time `now` (any monotonic
    /// origin) and returns the events to send. `hold` says how long a kind must persist
    /// before it is raised (a leaderless moment during a failover is not an alert).
    pub fn update(
        &mut self,
        now: Duration,
        observed: &BTreeSet<String>,
        current: &[Drift],
        hold: impl Fn(DriftKind) -> Duration,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let keys: BTreeSet<String> = current.iter().map(Drift::key).collect();
        // Cleared: observed this pass and no longer there.
        let cleared: Vec<String> = self
            .tracked
            .iter()
            .filter(|(k, t)| observed.contains(&t.drift.cluster) && !keys.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in cleared {
            if let Some(t) = self.tracked.remove(&k)
                && t.raised
            {
                events.push(AlertEvent::Resolved(t.drift));
            }
        }
        for d in current {
            let t = self.tracked.entry(d.key()).or_insert_with(|| Tracked {
                drift: d.clone(),
                since: now,
                raised: false,
            });
            if !t.raised {
                t.drift = d.clone();
                if now.saturating_sub(t.since) >= hold(d.kind) {
                    t.raised = true;
                    events.push(AlertEvent::Drift(d.clone()));
                }
            }
        }
        events
    }

    /// Raised drifts per cluster and kind, for metrics.
    pub fn active(&self) -> Vec<&Drift> {
        self.tracked
            .values()
            .filter(|t| t.raised)
            .map(|t| &t.drift)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(cluster: &str, kind: DriftKind) -> Drift {
        Drift {
            cluster: cluster.into(),
            kind,
            subject: None,
            detail: "x".into(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn all(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_alert_while_it_persists_and_one_resolve() {
        let mut a = Alerts::default();
        let drift = d("a", DriftKind::StackParameters);
        let none = |_| Duration::ZERO;
        assert_eq!(
            a.update(secs(0), &all(&["a"]), std::slice::from_ref(&drift), none),
            [AlertEvent::Drift(drift.clone())]
        );
        for t in 1..5 {
            assert!(
                a.update(secs(t), &all(&["a"]), std::slice::from_ref(&drift), none)
                    .is_empty()
            );
        }
        assert_eq!(a.active().len(), 1);
        assert_eq!(
            a.update(secs(6), &all(&["a"]), &[], none),
            [AlertEvent::Resolved(drift)]
        );
        assert!(a.update(secs(7), &all(&["a"]), &[], none).is_empty());
    }

    #[test]
    fn an_unobserved_cluster_keeps_its_alert() {
        let mut a = Alerts::default();
        let drift = d("a", DriftKind::StackTemplate);
        a.update(secs(0), &all(&["a"]), std::slice::from_ref(&drift), |_| {
            Duration::ZERO
        });
        assert!(
            a.update(secs(1), &all(&[]), &[], |_| Duration::ZERO)
                .is_empty()
        );
        assert_eq!(a.active().len(), 1);
    }

    #[test]
    fn a_short_blip_under_its_hold_time_never_alerts() {
        let mut a = Alerts::default();
        let hold = |k| {
            if k == DriftKind::NoLeader {
                secs(30)
            } else {
                Duration::ZERO
            }
        };
        let blip = d("a", DriftKind::NoLeader);
        assert!(
            a.update(secs(0), &all(&["a"]), std::slice::from_ref(&blip), hold)
                .is_empty()
        );
        assert!(
            a.update(secs(10), &all(&["a"]), std::slice::from_ref(&blip), hold)
                .is_empty()
        );
        assert!(
            a.update(secs(12), &all(&["a"]), &[], hold).is_empty(),
            "no resolve for an alert never raised"
        );
        assert!(
            a.update(secs(20), &all(&["a"]), std::slice::from_ref(&blip), hold)
                .is_empty()
        );
        assert_eq!(
            a.update(secs(50), &all(&["a"]), std::slice::from_ref(&blip), hold),
            [AlertEvent::Drift(blip)]
        );
    }
}
