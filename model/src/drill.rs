//! Restore drills as the cluster records them: the `drill` key, written by the member that
//! ran the last drill, read by `spilo` for status, drift and metrics.

use crate::{MemberName, MemberRole, MemberStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The member that runs a cluster's drills: the first running replica by name (a drill reads
/// the archive and uses disk and CPU, better not on the primary), else the leader (a cluster
/// of one). The governors' schedule and `spilo verify-backup` pick the same one.
pub fn drill_member<'a>(
    members: &'a BTreeMap<MemberName, MemberStatus>,
    leader: Option<&'a MemberName>,
) -> Option<&'a MemberName> {
    members
        .iter()
        .find(|(name, m)| Some(*name) != leader && m.running_as(MemberRole::Replica))
        .map(|(name, _)| name)
        .or(leader)
}

/// The value of `drill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// When drills were first scheduled (Unix seconds): written, if the key is absent, by
    /// the members when their drill schedule starts, so "none passed within `maxAge`" has a
    /// beginning for a new cluster.
    #[serde(default)]
    pub since_unix: u64,
    /// The last drill, once one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<DrillRun>,
    /// When the last drill that passed finished (Unix seconds), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_unix: Option<u64>,
}

/// One drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRun {
    /// When it finished (Unix seconds).
    pub unix: u64,
    /// The member that ran it.
    pub member: String,
    /// The backup restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Every check passed.
    pub ok: bool,
    /// The failed checks, `name: detail`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Measured RPO in milliseconds (the newest restored commit's age at the end of replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_ms: Option<u64>,
    /// Measured RTO in milliseconds (restore, replay and start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<u64>,
}

impl DrillRecord {
    /// The record of drills scheduled from `now_unix` on, none run yet.
    pub fn scheduled(now_unix: u64) -> DrillRecord {
        DrillRecord {
            since_unix: now_unix,
            last: None,
            last_success_unix: None,
        }
    }

    /// The record after `run`, given the one before.
    pub fn after(previous: Option<&DrillRecord>, run: DrillRun) -> DrillRecord {
        let last_success_unix = if run.ok {
            Some(run.unix)
        } else {
            previous.and_then(|p| p.last_success_unix)
        };
        DrillRecord {
            since_unix: previous.map_or(run.unix, |p| p.since_unix),
            last: Some(run),
            last_success_unix,
        }
    }

    /// Why the backups are not known to restore at `now_unix`: the last drill failed, or
    /// none passed within `max_age_secs` (of the last that did, or of the drills' start).
    /// `None` when all is well.
    pub fn problem(&self, max_age_secs: u64, now_unix: u64) -> Option<String> {
        if let Some(last) = self.last.as_ref().filter(|l| !l.ok) {
            return Some(format!(
                "the last restore drill (by {}, of {}) failed: {}",
                last.member,
                last.backup.as_deref().unwrap_or("no backup"),
                last.failed.join("; ")
            ));
        }
        let (since, what) = match self.last_success_unix {
            Some(t) => (t, "the last one that passed finished"),
            None => (self.since_unix, "none has passed since drills began"),
        };
        let age = now_unix.saturating_sub(since);
        (age > max_age_secs)
            .then(|| format!("no restore drill passed within {max_age_secs}s ({what} {age}s ago)"))
    }

    /// One line for `spilo list`.
    pub fn describe(&self) -> String {
        let Some(last) = &self.last else {
            return "scheduled, none ran yet".into();
        };
        let ms =
            |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{:.1}s", v as f64 / 1000.0));
        let at = i64::try_from(last.unix)
            .ok()
            .and_then(|s| crate::TargetTime::from_unix_micros(s.saturating_mul(1_000_000)))
            .map_or_else(|| last.unix.to_string(), |t| t.to_string());
        format!(
            "{} at {at} (backup {}, by {}): RPO {}, RTO {}{}",
            if last.ok { "verified" } else { "FAILED" },
            last.backup.as_deref().unwrap_or("none"),
            last.member,
            ms(last.rpo_ms),
            ms(last.rto_ms),
            if last.failed.is_empty() {
                String::new()
            } else {
                format!("; {}", last.failed.join("; "))
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemberState;

    fn member(role: MemberRole, state: MemberState) -> MemberStatus {
        MemberStatus {
            conn_url: "postgres://x".into(),
            api_url: "http://x".into(),
            role,
            state,
            timeline: None,
            wal: Default::default(),
            tags: Default::default(),
            pending_restart: false,
            error: None,
            postgres_version: None,
        }
    }

    fn name(n: &str) -> MemberName {
        MemberName::new(n).expect("name")
    }

    #[test]
    fn the_first_running_replica_drills_else_the_leader() {
        let mut members = BTreeMap::new();
        members.insert(
            name("a-0"),
            member(MemberRole::Primary, MemberState::Running),
        );
        let leader = name("a-0");
        assert_eq!(drill_member(&members, Some(&leader)), Some(&leader));
        members.insert(
            name("a-2"),
            member(MemberRole::Replica, MemberState::Running),
        );
        members.insert(
            name("a-1"),
            member(MemberRole::Replica, MemberState::Stopped),
        );
        assert_eq!(drill_member(&members, Some(&leader)), Some(&name("a-2")));
        members.insert(
            name("a-1"),
            member(MemberRole::Replica, MemberState::Running),
        );
        assert_eq!(drill_member(&members, Some(&leader)), Some(&name("a-1")));
        assert_eq!(drill_member(&BTreeMap::new(), None), None);
    }

    fn run(unix: u64, ok: bool) -> DrillRun {
        DrillRun {
            unix,
            member: "a-1".into(),
            backup: Some("base_1".into()),
            ok,
            failed: if ok {
                vec![]
            } else {
                vec!["wal: segment X missing".into()]
            },
            rpo_ms: Some(1500),
            rto_ms: Some(2000),
        }
    }

    #[test]
    fn a_failure_keeps_the_last_success_and_is_a_problem_until_the_next_pass() {
        let ok = DrillRecord::after(None, run(100, true));
        assert_eq!(ok.last_success_unix, Some(100));
        assert_eq!(ok.problem(50, 120), None);
        let why = ok.problem(50, 151).expect("too old");
        assert!(why.contains("within 50s"), "{why}");
        let failed = DrillRecord::after(Some(&ok), run(130, false));
        assert_eq!(failed.last_success_unix, Some(100));
        let why = failed.problem(50, 131).expect("failed");
        assert!(why.contains("segment X missing"), "{why}");
        let again = DrillRecord::after(Some(&failed), run(160, true));
        assert_eq!(again.problem(50, 161), None);
        let never = DrillRecord::after(None, run(10, false));
        assert_eq!(never.last_success_unix, None);
        // Scheduled, none run: fine until maxAge after the drills began.
        let new = DrillRecord::scheduled(1000);
        assert_eq!(new.problem(50, 1050), None);
        let why = new.problem(50, 1051).expect("none passed");
        assert!(
            why.contains("none has passed since drills began 51s ago"),
            "{why}"
        );
        assert_eq!(
            DrillRecord::after(Some(&new), run(1010, true)).since_unix,
            1000
        );
    }
}
