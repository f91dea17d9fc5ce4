//! Views derived from the keys: one member's full status as its REST API reports it
//! ([`NodeStatus`]), and the member table that `spilo list` and `GET /cluster` print
//! ([`ClusterSummary`]). Both are JSON contracts for scripts; add fields, never rename them.

use crate::lsn::{Lsn, TimelineId};
use crate::member::{MemberRole, MemberStatus, MemberTags};
use crate::names::{ClusterName, MemberName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One member's own account of itself (`GET /status` on its REST API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The member.
    pub name: MemberName,
    /// The cluster.
    pub scope: ClusterName,
    /// What it publishes in etcd.
    #[serde(flatten)]
    pub member: MemberStatus,
    /// Who held the leader key at the member's last etcd read.
    #[serde(default)]
    pub leader: Option<MemberName>,
    /// Whether this member holds the leader key with a valid lease right now.
    #[serde(default)]
    pub is_leader: bool,
    /// Whether a replica's WAL receiver is streaming.
    #[serde(default)]
    pub streaming: bool,
    /// The member a replica streams from.
    #[serde(default)]
    pub upstream: Option<MemberName>,
    /// Whether the last etcd read succeeded.
    #[serde(default)]
    pub dcs_reachable: bool,
    /// The governor's process id.
    pub governor_pid: u32,
    /// The postmaster's process id, while it runs.
    #[serde(default)]
    pub postmaster_pid: Option<u32>,
    /// The last decision of the HA loop, with its reason.
    #[serde(default)]
    pub last_decision: String,
    /// WAL archiving on a primary that archives: backlog and lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,
    /// On the leader: why the roles and databases of `config` could not be converged, until
    /// the next attempt succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_error: Option<String>,
}

/// WAL archiving as the primary sees it (`pg_stat_archiver` and `archive_status/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStatus {
    /// Files waiting to be archived (`.ready`).
    pub backlog: u64,
    /// Files archived since statistics were reset.
    pub archived: u64,
    /// Failed attempts since statistics were reset.
    pub failed: u64,
    /// The last file archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived: Option<String>,
    /// Bytes of WAL written after the end of the last archived segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Scheduled base backups, when `archive.backups` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupRuns>,
}

/// What the leader's backup schedule did last and does next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRuns {
    /// When the next scheduled backup starts (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The last scheduled backup that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finished: Option<String>,
    /// Why the last attempt failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Backups deleted by retention since the governor started.
    #[serde(default)]
    pub deleted: u64,
}

/// A row of the member table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRow {
    /// The member.
    pub name: MemberName,
    /// PostgreSQL host.
    pub host: String,
    /// PostgreSQL port.
    pub port: u16,
    /// `primary` for the leader key holder, otherwise the published role.
    pub role: String,
    /// The published state.
    pub state: String,
    /// The timeline.
    pub timeline: Option<TimelineId>,
    /// Bytes behind the leader's write position; `None` for the leader or when unknown.
    pub lag_bytes: Option<u64>,
    /// The best WAL position.
    pub lsn: Option<Lsn>,
    /// The REST API.
    pub api_url: String,
    /// Tags.
    pub tags: MemberTags,
    /// A changed setting waits for a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
}

/// The member table of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// The cluster.
    pub scope: ClusterName,
    /// The leader key holder.
    pub leader: Option<MemberName>,
    /// Members sorted by name.
    pub members: Vec<MemberRow>,
    /// Maintenance mode: no automatic failover.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// In synchronous mode, what the `sync` key promises, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<String>,
    /// A standby cluster: its source, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_of: Option<String>,
    /// The last restore drill (the `drill` key), when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<crate::DrillRecord>,
    /// The declared roles, each with where its password is kept (from `config`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleRow>,
    /// The declared databases with their owners (from `config`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseRow>,
}

/// A declared role in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRow {
    /// The role.
    pub name: String,
    /// Where its password is kept, in words (none: it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `state: absent`: dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
}

/// A declared database in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRow {
    /// The database.
    pub name: String,
    /// Its owner.
    pub owner: String,
}

/// Builds the member table from the `leader` and `members/*` keys.
pub fn summarize(
    scope: &ClusterName,
    leader: Option<&MemberName>,
    members: &BTreeMap<MemberName, MemberStatus>,
) -> ClusterSummary {
    let leader_lsn = leader
        .and_then(|l| members.get(l))
        .and_then(|m| m.wal.best());
    let rows = members
        .iter()
        .map(|(name, m)| {
            let (host, port) = m.host_port().unwrap_or_default();
            let is_leader = leader == Some(name);
            let role = if is_leader {
                "primary".to_string()
            } else if m.role == MemberRole::Primary {
                "primary (no leader key)".to_string()
            } else {
                m.role.as_str().to_string()
            };
            let lsn = m.wal.best();
            let lag_bytes = match (is_leader, leader_lsn, lsn) {
                (false, Some(l), Some(mine)) if m.role == MemberRole::Replica => {
                    Some(l.bytes_ahead_of(mine))
                }
                _ => None,
            };
            MemberRow {
                name: name.clone(),
                host,
                port,
                role,
                state: m.state.as_str().to_string(),
                timeline: m.timeline,
                lag_bytes,
                lsn,
                api_url: m.api_url.clone(),
                tags: m.tags.clone(),
                pending_restart: m.pending_restart,
            }
        })
        .collect();
    ClusterSummary {
        scope: scope.clone(),
        leader: leader.cloned(),
        members: rows,
        paused: false,
        synchronous: None,
        standby_of: None,
        drill: None,
        roles: Vec::new(),
        databases: Vec::new(),
    }
}

impl ClusterSummary {
    /// In synchronous mode: marks the `sync` key's members (`sync_standby`, or in quorum mode
    /// `quorum_standby`) and says what the key promises.
    pub fn mark_synchronous(
        &mut self,
        config: Option<&crate::member::ClusterConfig>,
        sync: Option<&crate::sync::SyncState>,
    ) {
        if !config.is_some_and(|c| c.synchronous_mode) {
            return;
        }
        let Some(sync) = sync else {
            self.synchronous =
                Some("synchronous mode: no sync key yet; no failover without data loss".into());
            return;
        };
        let role = if sync.quorum.is_some() {
            "quorum_standby"
        } else {
            "sync_standby"
        };
        for row in self
            .members
            .iter_mut()
            .filter(|r| sync.contains(&r.name) && r.role == "replica")
        {
            row.role = role.into();
        }
        self.synchronous = Some(sync.describe());
    }

    /// In a standby cluster: the leader's role is `standby_leader` (it accepts no writes) and
    /// the summary names the source.
    pub fn mark_standby(&mut self, config: Option<&crate::member::ClusterConfig>) {
        let Some(source) = config.and_then(|c| c.standby_cluster.as_ref()) else {
            return;
        };
        let leader = self.leader.clone();
        for row in self
            .members
            .iter_mut()
            .filter(|r| Some(&r.name) == leader.as_ref())
        {
            row.role = "standby_leader".into();
        }
        self.standby_of = Some(source.describe());
    }

    /// The roles and databases `config` declares, with where each password is kept.
    pub fn mark_catalog(&mut self, config: Option<&crate::member::ClusterConfig>) {
        let Some(c) = config.and_then(|c| c.catalog.as_ref()) else {
            return;
        };
        self.roles = c
            .roles
            .iter()
            .map(|(name, r)| RoleRow {
                name: name.clone(),
                password: r.password.as_ref().map(crate::catalog::password_source),
                absent: r.state == crate::catalog::Presence::Absent,
            })
            .collect();
        self.databases = c
            .databases
            .iter()
            .map(|(name, d)| DatabaseRow {
                name: name.clone(),
                owner: d.owner.clone(),
            })
            .collect();
    }

    /// The table as text: member, host:port, role, state, timeline, lag in MB.
    pub fn to_table(&self) -> String {
        let mut rows = vec![[
            "Member".to_string(),
            "Host".to_string(),
            "Role".to_string(),
            "State".to_string(),
            "TL".to_string(),
            "Lag in MB".to_string(),
        ]];
        for m in &self.members {
            rows.push([
                m.name.to_string(),
                format!("{}:{}", m.host, m.port),
                m.role.clone(),
                if m.pending_restart {
                    format!("{} (pending restart)", m.state)
                } else {
                    m.state.clone()
                },
                m.timeline.map(|t| t.to_string()).unwrap_or_default(),
                m.lag_bytes
                    .map(|b| format!("{:.1}", b as f64 / 1_048_576.0))
                    .unwrap_or_default(),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = format!("Cluster: {}\n", self.scope);
        if self.paused {
            out.push_str("Maintenance mode: on (no automatic failover; `spilo resume` ends it)\n");
        }
        if let Some(s) = &self.synchronous {
            out.push_str(&format!("Synchronous: {s}\n"));
        }
        if let Some(s) = &self.standby_of {
            out.push_str(&format!(
                "Standby cluster of {s}: no writes; the standby leader replicates from it\n"
            ));
        }
        if let Some(d) = &self.drill {
            out.push_str(&format!("Last restore drill: {}\n", d.describe()));
        }
        for r in &self.roles {
            let password = match (&r.password, r.absent) {
                (_, true) => "state: absent: dropped".to_string(),
                (Some(p), _) => format!("password {p}"),
                (None, _) => "no password".to_string(),
            };
            out.push_str(&format!("Role: {} ({password})\n", r.name));
        }
        for d in &self.databases {
            out.push_str(&format!(
                "Database: {} (owner {}; connect with dbname={} user={})\n",
                d.name, d.owner, d.name, d.owner
            ));
        }
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{MemberState, WalPositions};

    fn st(port: u16, role: MemberRole, lsn: u64) -> MemberStatus {
        MemberStatus {
            conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
            api_url: format!("http://127.0.0.1:{}", port + 1000),
            role,
            state: MemberState::Running,
            timeline: Some(TimelineId(1)),
            wal: if role == MemberRole::Primary {
                WalPositions {
                    write: Some(Lsn(lsn)),
                    ..Default::default()
                }
            } else {
                WalPositions {
                    replay: Some(Lsn(lsn)),
                    receive: Some(Lsn(lsn)),
                    write: None,
                }
            },
            tags: MemberTags::default(),
            pending_restart: false,
            postgres_version: None,
            error: None,
        }
    }

    #[test]
    fn lag_is_measured_against_the_leader() {
        let scope = ClusterName::new("demo").expect("valid");
        let a = MemberName::new("a").expect("valid");
        let b = MemberName::new("b").expect("valid");
        let members: BTreeMap<_, _> = [
            (a.clone(), st(5432, MemberRole::Primary, 3 * 1_048_576)),
            (b.clone(), st(5433, MemberRole::Replica, 1_048_576)),
        ]
        .into_iter()
        .collect();
        let s = summarize(&scope, Some(&a), &members);
        assert_eq!(s.members[0].role, "primary");
        assert_eq!(s.members[0].lag_bytes, None);
        assert_eq!(s.members[1].lag_bytes, Some(2 * 1_048_576));
        assert_eq!(
            s.to_table(),
            "Cluster: demo\n\
             Member  Host            Role     State    TL  Lag in MB\n\
             a       127.0.0.1:5432  primary  running  1\n\
             b       127.0.0.1:5433  replica  running  1   2.0\n"
        );
    }

    #[test]
    fn the_table_says_where_each_password_is_kept() {
        let catalog: crate::Catalog = serde_json::from_value(serde_json::json!({
            "roles": {
                "app": {"password": {"generated": true, "ssm": "/spilo/orders/roles/app"}},
                "old": {"state": "absent"},
                "readers": {"login": false}
            },
            "databases": {"orders": {"owner": "app"}}
        }))
        .expect("catalog");
        let config = crate::member::ClusterConfig {
            catalog: Some(catalog),
            ..Default::default()
        };
        let mut s = summarize(
            &ClusterName::new("orders").expect("name"),
            None,
            &BTreeMap::new(),
        );
        s.mark_catalog(Some(&config));
        let table = s.to_table();
        for line in [
            "Role: app (password generated into SSM parameter /spilo/orders/roles/app)\n",
            "Role: old (state: absent: dropped)\n",
            "Role: readers (no password)\n",
            "Database: orders (owner app; connect with dbname=orders user=app)\n",
        ] {
            assert!(table.contains(line), "{line} not in:\n{table}");
        }
    }
}
