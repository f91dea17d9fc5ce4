//! The watcher's metrics in Prometheus' text format: reconciles, errors, last success and
//! drift per cluster, apply duration.

use super::detect::Drift;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Counters and gauges, updated by the watch loop and read by `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Reconcile passes.
    pub reconciles: u64,
    /// Failed passes (the desired state could not be read).
    pub errors: u64,
    /// Per cluster: failed plans or applies.
    pub cluster_errors: BTreeMap<String, u64>,
    /// Per cluster: Unix time of the last pass that observed and, if needed, applied it.
    pub last_success: BTreeMap<String, f64>,
    /// Per cluster: seconds the last apply took.
    pub apply_seconds: BTreeMap<String, f64>,
    /// Raised drifts: (cluster, kind) -> count.
    pub drift: BTreeMap<(String, String), u64>,
    /// Raised drifts per cluster, 0 for a cluster without drift.
    pub cluster_drifts: BTreeMap<String, u64>,
    /// The last commit reconciled.
    pub commit: String,
    /// Alerts dropped because a webhook's queue was full.
    pub alerts_dropped: u64,
    /// Per cluster with `backup.verify`: its last restore drill as etcd records it.
    pub drills: BTreeMap<String, spilo_model::DrillRecord>,
}

impl Metrics {
    /// Sets the drift gauges from the raised alerts.
    pub fn set_drift(&mut self, clusters: &[String], active: &[&Drift]) {
        self.drift.clear();
        self.cluster_drifts = clusters.iter().map(|c| (c.clone(), 0)).collect();
        for d in active {
            *self
                .drift
                .entry((d.cluster.clone(), d.kind.as_str().to_string()))
                .or_insert(0) += 1;
            *self.cluster_drifts.entry(d.cluster.clone()).or_insert(0) += 1;
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP spilo_reconciles_total Reconcile passes.\n# TYPE spilo_reconciles_total counter\nspilo_reconciles_total {}",
            self.reconciles
        );
        let _ = writeln!(
            out,
            "# HELP spilo_reconcile_errors_total Passes whose desired state could not be read.\n# TYPE spilo_reconcile_errors_total counter\nspilo_reconcile_errors_total {}",
            self.errors
        );
        let _ = writeln!(
            out,
            "# HELP spilo_alerts_dropped_total Alerts dropped because a webhook's queue was full.\n# TYPE spilo_alerts_dropped_total counter\nspilo_alerts_dropped_total {}",
            self.alerts_dropped
        );
        out.push_str("# HELP spilo_cluster_errors_total Failed plans or applies of a cluster.\n# TYPE spilo_cluster_errors_total counter\n");
        for (c, n) in &self.cluster_errors {
            let _ = writeln!(
                out,
                "spilo_cluster_errors_total{{cluster=\"{}\"}} {n}",
                esc(c)
            );
        }
        out.push_str("# HELP spilo_last_success_timestamp_seconds When the cluster was last reconciled.\n# TYPE spilo_last_success_timestamp_seconds gauge\n");
        for (c, t) in &self.last_success {
            let _ = writeln!(
                out,
                "spilo_last_success_timestamp_seconds{{cluster=\"{}\"}} {t:.3}",
                esc(c)
            );
        }
        out.push_str("# HELP spilo_apply_duration_seconds How long the cluster's last apply took.\n# TYPE spilo_apply_duration_seconds gauge\n");
        for (c, t) in &self.apply_seconds {
            let _ = writeln!(
                out,
                "spilo_apply_duration_seconds{{cluster=\"{}\"}} {t:.3}",
                esc(c)
            );
        }
        out.push_str("# HELP spilo_cluster_drifts Raised drift alerts of a cluster.\n# TYPE spilo_cluster_drifts gauge\n");
        for (c, n) in &self.cluster_drifts {
            let _ = writeln!(out, "spilo_cluster_drifts{{cluster=\"{}\"}} {n}", esc(c));
        }
        out.push_str("# HELP spilo_drift Raised drift alerts by kind.\n# TYPE spilo_drift gauge\n");
        for ((c, kind), n) in &self.drift {
            let _ = writeln!(
                out,
                "spilo_drift{{cluster=\"{}\",kind=\"{kind}\"}} {n}",
                esc(c)
            );
        }
        self.render_drills(&mut out);
        out
    }

    /// The restore drill gauges.
    fn render_drills(&self, out: &mut String) {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str("# HELP spilo_backup_verified_timestamp When a restore drill of the cluster last passed (Unix seconds).\n# TYPE spilo_backup_verified_timestamp gauge\n");
        for (c, d) in &self.drills {
            if let Some(t) = d.last_success_unix {
                let _ = writeln!(
                    out,
                    "spilo_backup_verified_timestamp{{cluster=\"{}\"}} {t}",
                    esc(c)
                );
            }
        }
        out.push_str("# HELP spilo_backup_verify_ok Whether the last restore drill passed.\n# TYPE spilo_backup_verify_ok gauge\n");
        for (c, last) in self
            .drills
            .iter()
            .filter_map(|(c, d)| d.last.as_ref().map(|l| (c, l)))
        {
            let _ = writeln!(
                out,
                "spilo_backup_verify_ok{{cluster=\"{}\"}} {}",
                esc(c),
                u8::from(last.ok)
            );
        }
        for (name, help, pick) in [
            (
                "spilo_backup_verify_rpo_seconds",
                "The last drill's RPO: the newest restored commit's age when replay ended.",
                (|d: &spilo_model::DrillRecord| d.last.as_ref().and_then(|l| l.rpo_ms))
                    as fn(&spilo_model::DrillRecord) -> Option<u64>,
            ),
            (
                "spilo_backup_verify_rto_seconds",
                "The last drill's RTO: restore, replay and start.",
                |d: &spilo_model::DrillRecord| d.last.as_ref().and_then(|l| l.rto_ms),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (c, d) in &self.drills {
                if let Some(ms) = pick(d) {
                    let _ = writeln!(
                        out,
                        "{name}{{cluster=\"{}\"}} {:.3}",
                        esc(c),
                        ms as f64 / 1000.0
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::detect::DriftKind;

    #[test]
    fn drift_gauges_cover_every_cluster_and_raised_kind() {
        let mut m = Metrics {
            reconciles: 3,
            ..Default::default()
        };
        let d = Drift {
            cluster: "a".into(),
            kind: DriftKind::StackTags,
            subject: None,
            detail: String::new(),
        };
        m.set_drift(&["a".into(), "b".into()], &[&d]);
        let text = m.render();
        for line in [
            "spilo_reconciles_total 3",
            "spilo_cluster_drifts{cluster=\"a\"} 1",
            "spilo_cluster_drifts{cluster=\"b\"} 0",
            "spilo_drift{cluster=\"a\",kind=\"stack_tags\"} 1",
            "# TYPE spilo_drift gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
