//! `GET /metrics`: this member in Prometheus' text format, as Patroni's `/metrics` offers it.
//! Everything comes from what the REST API already holds (the last loop pass's status, the
//! lease, the last etcd view) plus the HA loop's own counters ([`LoopStats`]); rendering is a
//! pure function of a [`Sample`].
//!
//! | metric | meaning |
//! |---|---|
//! | `spilo_member_info{scope,member,role,state}` | always 1: who this is and what it does |
//! | `spilo_primary` | 1 when this member leads and runs a writable primary (what `/primary` says) |
//! | `spilo_replica_streaming` | 1 when it is a replica streaming from the leader |
//! | `spilo_dcs_reachable` | 1 when the last etcd read succeeded |
//! | `spilo_timeline` | the timeline of its data |
//! | `spilo_replication_lag_bytes` | a replica's replay position behind the leader's |
//! | `spilo_lease_seconds_left` | until its etcd lease may end (0 without one) |
//! | `spilo_failsafe_seconds_left` | as primary in failsafe mode: until every member's confirmation ends |
//! | `spilo_loop_duration_seconds` | the last HA loop pass (gather, decide, act) |
//! | `spilo_decisions_total{kind}` | HA loop passes by decision |
//! | `spilo_archive_backlog_files` | WAL files waiting to be archived |
//! | `spilo_archive_failed_total` | failed archive attempts (PostgreSQL's counter) |
//! | `spilo_archive_lag_bytes` | WAL written but not archived yet |
//! | `spilo_last_backup_timestamp_seconds` | when the last base backup of this member finished |

use spilo_model::{MemberRole, MemberState, NodeStatus};
use std::fmt::Write;
use std::time::Duration;

pub use crate::shared::LoopStats;

/// Everything `/metrics` renders, read at request time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// This member's status.
    pub node: NodeStatus,
    /// Whether it leads with a valid lease (or failsafe confirmation).
    pub leads: bool,
    /// A replica's lag behind the leader, when known.
    pub lag_bytes: Option<u64>,
    /// Until the lease may end.
    pub lease_left: Option<Duration>,
    /// Until the failsafe confirmation ends.
    pub failsafe_left: Option<Duration>,
    /// The loop's counters.
    pub stats: LoopStats,
    /// When the last base backup finished (Unix seconds).
    pub last_backup: Option<f64>,
}

fn role(r: MemberRole) -> &'static str {
    match r {
        MemberRole::Primary => "primary",
        MemberRole::Replica => "replica",
        MemberRole::Uninitialized => "uninitialized",
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text format of `s`.
pub fn render(s: &Sample) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    let n = &s.node;
    let state = serde_json::to_value(n.member.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let running = n.member.state == MemberState::Running;
    let bool_value = |b: bool| if b { "1" } else { "0" }.to_string();
    gauge(
        "spilo_primary",
        "1 when this member leads and runs a writable primary.",
        bool_value(s.leads && running && n.member.role == MemberRole::Primary),
    );
    gauge(
        "spilo_replica_streaming",
        "1 when this member is a replica streaming from the leader.",
        bool_value(running && n.member.role == MemberRole::Replica && n.streaming),
    );
    gauge(
        "spilo_dcs_reachable",
        "1 when the last etcd read succeeded.",
        bool_value(n.dcs_reachable),
    );
    if let Some(t) = n.member.timeline {
        gauge(
            "spilo_timeline",
            "The timeline of this member's data.",
            t.0.to_string(),
        );
    }
    if let Some(lag) = s.lag_bytes {
        gauge(
            "spilo_replication_lag_bytes",
            "Bytes this replica's replay position is behind the leader's.",
            lag.to_string(),
        );
    }
    gauge(
        "spilo_lease_seconds_left",
        "Seconds until this member's etcd lease may end (0 without one).",
        format!("{:.3}", s.lease_left.unwrap_or_default().as_secs_f64()),
    );
    gauge(
        "spilo_failsafe_seconds_left",
        "As primary in failsafe mode: seconds until the members' confirmation ends.",
        format!("{:.3}", s.failsafe_left.unwrap_or_default().as_secs_f64()),
    );
    gauge(
        "spilo_loop_duration_seconds",
        "How long the last HA loop pass took.",
        format!("{:.6}", s.stats.last_pass.as_secs_f64()),
    );
    if let Some(a) = &n.archive {
        gauge(
            "spilo_archive_backlog_files",
            "WAL files waiting to be archived.",
            a.backlog.to_string(),
        );
        if let Some(lag) = a.lag_bytes {
            gauge(
                "spilo_archive_lag_bytes",
                "WAL written but not archived yet.",
                lag.to_string(),
            );
        }
        let _ = writeln!(
            out,
            "# HELP spilo_archive_failed_total Failed archive attempts.\n# TYPE spilo_archive_failed_total counter\nspilo_archive_failed_total {}",
            a.failed
        );
    }
    if let Some(t) = s.last_backup {
        let _ = writeln!(
            out,
            "# HELP spilo_last_backup_timestamp_seconds When the last base backup finished.\n# TYPE spilo_last_backup_timestamp_seconds gauge\nspilo_last_backup_timestamp_seconds {t:.3}"
        );
    }
    out.push_str(
        "# HELP spilo_decisions_total HA loop passes by decision.\n# TYPE spilo_decisions_total counter\n",
    );
    for (kind, count) in &s.stats.decisions {
        let _ = writeln!(out, "spilo_decisions_total{{kind=\"{kind}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP spilo_member_info Who this member is and what it does.\n# TYPE spilo_member_info gauge\nspilo_member_info{{scope=\"{}\",member=\"{}\",role=\"{}\",state=\"{}\"}} 1",
        label(n.scope.as_str()),
        label(n.name.as_str()),
        role(n.member.role),
        label(&state)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spilo_model::{ArchiveStatus, ClusterName, MemberName, MemberStatus, TimelineId};

    fn node(role: MemberRole, streaming: bool) -> NodeStatus {
        NodeStatus {
            name: MemberName::new("demo-0").expect("name"),
            scope: ClusterName::new("demo").expect("scope"),
            member: MemberStatus {
                conn_url: "postgres://127.0.0.1:5432/postgres".into(),
                api_url: "http://127.0.0.1:8008".into(),
                role,
                state: MemberState::Running,
                timeline: Some(TimelineId(3)),
                wal: Default::default(),
                tags: Default::default(),
                pending_restart: false,
                error: None,
                postgres_version: None,
            },
            leader: None,
            is_leader: role == MemberRole::Primary,
            streaming,
            upstream: None,
            dcs_reachable: true,
            governor_pid: 1,
            postmaster_pid: Some(2),
            last_decision: String::new(),
            archive: None,
            catalog_error: None,
        }
    }

    fn line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| l[name.len()..].trim())
    }

    #[test]
    fn a_primary_says_so_with_its_lease_loop_and_archive() {
        let mut n = node(MemberRole::Primary, false);
        n.archive = Some(ArchiveStatus {
            backlog: 4,
            failed: 1,
            lag_bytes: Some(16_777_216),
            ..Default::default()
        });
        let mut stats = LoopStats {
            last_pass: Duration::from_millis(12),
            ..Default::default()
        };
        stats.decisions.insert("lead", 7);
        let text = render(&Sample {
            node: n,
            leads: true,
            lag_bytes: None,
            lease_left: Some(Duration::from_millis(3500)),
            failsafe_left: None,
            stats,
            last_backup: Some(1_795_000_000.0),
        });
        assert_eq!(line(&text, "spilo_primary"), Some("1"));
        assert_eq!(line(&text, "spilo_replica_streaming"), Some("0"));
        assert_eq!(line(&text, "spilo_timeline"), Some("3"));
        assert_eq!(line(&text, "spilo_lease_seconds_left"), Some("3.500"));
        assert_eq!(line(&text, "spilo_loop_duration_seconds"), Some("0.012000"));
        assert_eq!(
            line(&text, "spilo_decisions_total{kind=\"lead\"}"),
            Some("7")
        );
        assert_eq!(line(&text, "spilo_archive_backlog_files"), Some("4"));
        assert_eq!(line(&text, "spilo_archive_lag_bytes"), Some("16777216"));
        assert_eq!(line(&text, "spilo_archive_failed_total"), Some("1"));
        assert_eq!(
            line(&text, "spilo_last_backup_timestamp_seconds"),
            Some("1795000000.000")
        );
        assert!(
            text.contains(
                "spilo_member_info{scope=\"demo\",member=\"demo-0\",role=\"primary\",state=\"running\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("spilo_replication_lag_bytes"), "{text}");
    }

    #[test]
    fn a_leader_without_a_valid_lease_is_not_primary_and_a_replica_reports_its_lag() {
        let text = render(&Sample {
            node: node(MemberRole::Primary, false),
            leads: false,
            lag_bytes: None,
            lease_left: None,
            failsafe_left: None,
            stats: LoopStats::default(),
            last_backup: None,
        });
        assert_eq!(line(&text, "spilo_primary"), Some("0"));
        assert_eq!(line(&text, "spilo_lease_seconds_left"), Some("0.000"));
        let text = render(&Sample {
            node: node(MemberRole::Replica, true),
            leads: false,
            lag_bytes: Some(128),
            lease_left: Some(Duration::from_secs(2)),
            failsafe_left: None,
            stats: LoopStats::default(),
            last_backup: None,
        });
        assert_eq!(line(&text, "spilo_replica_streaming"), Some("1"));
        assert_eq!(line(&text, "spilo_replication_lag_bytes"), Some("128"));
        assert!(!text.contains("spilo_last_backup"), "{text}");
    }
}
