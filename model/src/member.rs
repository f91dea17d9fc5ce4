//! The JSON values stored in etcd: a member's published status, the cluster-wide
//! configuration and the promotion history. Field names are part of the on-disk contract that
//! `spilo list`, the REST API and later versions read; add fields, never rename them.

use crate::lsn::{Lsn, TimelineId};
use crate::names::MemberName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a member's PostgreSQL currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Accepts writes; only the holder of the leader key may be in this role.
    Primary,
    /// In recovery: streaming from the primary or waiting for one.
    Replica,
    /// No data directory yet, or it is being created.
    Uninitialized,
}

/// What a member is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// PostgreSQL runs and answers queries.
    Running,
    /// PostgreSQL was started and does not answer yet.
    Starting,
    /// PostgreSQL is stopping.
    Stopping,
    /// PostgreSQL is not running.
    Stopped,
    /// PostgreSQL exited without being asked to.
    Crashed,
    /// This member runs initdb for a new cluster.
    Bootstrapping,
    /// This member copies the primary with pg_basebackup.
    CreatingReplica,
    /// This member runs pg_rewind to rejoin after a timeline change.
    Rewinding,
    /// This member's bootstrap of a new cluster (initdb or a clone) failed; `error` says why.
    BootstrapFailed,
}

impl MemberState {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Running => "running",
            MemberState::Starting => "starting",
            MemberState::Stopping => "stopping",
            MemberState::Stopped => "stopped",
            MemberState::Crashed => "crashed",
            MemberState::Bootstrapping => "bootstrapping",
            MemberState::CreatingReplica => "creating_replica",
            MemberState::Rewinding => "rewinding",
            MemberState::BootstrapFailed => "bootstrap_failed",
        }
    }
}

impl MemberRole {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Primary => "primary",
            MemberRole::Replica => "replica",
            MemberRole::Uninitialized => "uninitialized",
        }
    }
}

/// Per-member tags that change how the cluster treats it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberTags {
    /// Never promote this member automatically.
    #[serde(default)]
    pub nofailover: bool,
}

/// WAL positions of a member. A primary reports `write`; a replica `receive` and `replay`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPositions {
    /// The primary's current write position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Lsn>,
    /// The last position a replica received and flushed from the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Lsn>,
    /// The last position a replica replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Lsn>,
}

impl WalPositions {
    /// The position that decides who is most up to date: the primary's write position, or the
    /// further of a replica's receive and replay positions (promotion replays what was received).
    pub fn best(&self) -> Option<Lsn> {
        [self.write, self.receive, self.replay]
            .into_iter()
            .flatten()
            .max()
    }
}

/// The value of `members/<name>`: what one member publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// `postgres://host:port/postgres`: how to reach this member's PostgreSQL.
    pub conn_url: String,
    /// `http://host:port`: this member's REST API.
    pub api_url: String,
    /// Current role.
    pub role: MemberRole,
    /// Current state.
    pub state: MemberState,
    /// The timeline of the member's data, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineId>,
    /// WAL positions.
    #[serde(default)]
    pub wal: WalPositions,
    /// Tags.
    #[serde(default)]
    pub tags: MemberTags,
    /// A changed setting waits for a PostgreSQL restart (`pg_settings.pending_restart`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// The major version of its data directory (`PG_VERSION`), once it has one: what a
    /// plan compares with the file's `postgresql.version` (a change is a major upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<u32>,
    /// What keeps this member from doing its job, in one line (with
    /// [`MemberState::BootstrapFailed`]: the bootstrap's error, PostgreSQL's own line included,
    /// and whether and when it is retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MemberStatus {
    /// Whether it runs (PostgreSQL answers) in `role`.
    pub fn running_as(&self, role: MemberRole) -> bool {
        self.role == role && self.state == MemberState::Running
    }

    /// `(host, port)` parsed from `conn_url`, when it has that shape.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let rest = self.conn_url.strip_prefix("postgres://")?;
        let hostport = rest.split('/').next()?;
        let hostport = hostport.rsplit('@').next()?;
        let (host, port) = hostport.rsplit_once(':')?;
        Some((host.to_string(), port.parse().ok()?))
    }
}

/// The value of `boot/<member>`: why an instance's boot failed, as its boot layer reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFailure {
    /// What failed, in one line.
    pub reason: String,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// The last lines of the boot log.
    #[serde(default)]
    pub log: Vec<String>,
}

/// The value of `history`: one entry per promotion, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline the promotion started.
    pub timeline: TimelineId,
    /// Where the previous timeline ended (from the new timeline's `.history` file).
    pub switch_lsn: Lsn,
    /// Why the promotion happened.
    pub reason: String,
    /// When, as RFC 3339 UTC.
    pub promoted_at: String,
    /// Who was promoted.
    pub member: MemberName,
}

/// The value of `config`: cluster-wide settings every governor follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Leader lease length in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Seconds between HA loop runs when nothing wakes the loop earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_wait: Option<u64>,
    /// Seconds an etcd or PostgreSQL operation may take, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeout: Option<u64>,
    /// A replica further behind the most advanced member than this many bytes is not promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_lag_on_failover: Option<u64>,
    /// PostgreSQL parameters for every member.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub postgresql_parameters: BTreeMap<String, String>,
    /// Maintenance mode (`spilo pause`): no automatic failover, promotion, start or
    /// re-clone; the governors keep their keys and keep reporting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// Synchronous replication managed by the primary; failover only to a member named in
    /// the `sync` key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous_mode: bool,
    /// With `synchronous_mode`: quorum commit (`ANY k`): every eligible streaming standby is
    /// a voter, each commit waits for any `synchronous_node_count` of them, and the `sync` key
    /// records the voters and that quorum.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous_mode_quorum: bool,
    /// With `synchronous_mode`: block writes rather than run without a synchronous standby.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous_mode_strict: bool,
    /// With `synchronous_mode`: how many synchronous standbys (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous_node_count: Option<u32>,
    /// Failsafe mode: while etcd cannot be reached, the primary stays writable as long as
    /// every member listed in the `failsafe` key confirms it over the REST API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failsafe_mode: bool,
    /// A standby cluster: its leader replicates from this source instead of accepting
    /// writes, its other members from its leader. Removing it promotes the leader; adding it
    /// to a running cluster demotes its primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_cluster: Option<StandbySource>,
    /// The standby clusters of this one (written by the reconciler from the cluster files).
    /// A member asks their members before it runs as primary: when one of them runs as a
    /// primary, it was promoted over this cluster (`spilo promote-standby
    /// --source-unreachable`), and this cluster follows it instead ([`Downstream::follow`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downstream: Vec<Downstream>,
    /// Roles and databases the leader converges the catalog to (written by the target from
    /// the cluster file, each password as a reference the members can read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<crate::Catalog>,
}

/// A standby cluster of this cluster, as its members ask it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downstream {
    /// Its name.
    pub cluster: String,
    /// The base URL of each member's REST API (`https://host:port`), asked for `/status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api: Vec<String>,
    /// `host:port` endpoints that reach its primary only (on AWS its load balancer's DNS
    /// name): a read-write PostgreSQL session through one means it runs as primary. For a
    /// cluster whose members' addresses change (instances) or are not reachable from here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary: Vec<String>,
    /// How this cluster replicates from it once it was promoted over this one.
    pub follow: StandbySource,
}

/// Where a standby cluster's leader replicates from: an endpoint that reaches the source
/// cluster's primary (its load balancer or primary proxy, or a list of its members tried in
/// turn for the one that accepts writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbySource {
    /// The source cluster's name, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `host:port` of each endpoint, tried in order for one that runs as primary.
    pub hosts: Vec<String>,
    /// The source's WAL archive: the standby leader replays from it while it cannot stream
    /// (PostgreSQL alternates between the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::governor::ArchiveConfig>,
}

impl StandbySource {
    /// "cluster a (127.0.0.1:5432)", for messages.
    pub fn describe(&self) -> String {
        let hosts = self.hosts.join(", ");
        match &self.cluster {
            Some(c) => format!("cluster {c} ({hosts})"),
            None => hosts,
        }
    }

    /// The libpq `host` and `port` lists (comma separated, in the same order); an error
    /// names the entry that is not `host:port`.
    pub fn libpq_hosts(&self) -> Result<(String, String), String> {
        if self.hosts.is_empty() {
            return Err("no endpoint listed".into());
        }
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for h in &self.hosts {
            let (host, port) = h
                .rsplit_once(':')
                .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .ok_or_else(|| format!("{h:?} is not host:port"))?;
            hosts.push(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            );
            ports.push(port.to_string());
        }
        Ok((hosts.join(","), ports.join(",")))
    }
}

impl ClusterConfig {
    /// What synchronous replication promises with `replicas` replicas, in words (for plans).
    pub fn describe_synchronous(&self, replicas: u32) -> String {
        if !self.synchronous_mode {
            return "asynchronous: commits wait for no replica; a failover may lose the last \
                    commits (at most maximum_lag_on_failover bytes)"
                .into();
        }
        let k = self.synchronous_node_count.unwrap_or(1).max(1);
        let plural = |n: u32| if n == 1 { "" } else { "s" };
        let alone = if self.synchronous_mode_strict {
            "; with too few replicas streaming, writes wait (strict)"
        } else {
            "; with none streaming, the primary goes on alone"
        };
        if self.synchronous_mode_quorum {
            let k = k.min(replicas.max(1));
            format!(
                "commits wait for ANY {k} of {replicas} replica{}; a failover survives the loss of {k} member{} without data loss{alone}",
                plural(replicas),
                plural(k)
            )
        } else {
            format!(
                "commits wait for {k} replica{} the primary names; a failover goes only to one of them{alone}",
                plural(k)
            )
        }
    }

    /// Whether the synchronous replication settings of `self` and `other` differ.
    pub fn synchronous_differs(&self, other: &ClusterConfig) -> bool {
        let key = |c: &ClusterConfig| {
            (
                c.synchronous_mode,
                c.synchronous_mode_quorum,
                c.synchronous_mode_strict,
                c.synchronous_node_count,
            )
        };
        key(self) != key(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_position_prefers_the_furthest() {
        let w = WalPositions {
            write: None,
            receive: Some(Lsn(20)),
            replay: Some(Lsn(10)),
        };
        assert_eq!(w.best(), Some(Lsn(20)));
        assert_eq!(WalPositions::default().best(), None);
    }

    #[test]
    fn member_status_json_is_stable() {
        let s = MemberStatus {
            conn_url: "postgres://127.0.0.1:5432/postgres".into(),
            api_url: "http://127.0.0.1:8008".into(),
            role: MemberRole::Replica,
            state: MemberState::Running,
            timeline: Some(TimelineId(2)),
            wal: WalPositions {
                write: None,
                receive: Some(Lsn(0x3000060)),
                replay: Some(Lsn(0x3000060)),
            },
            tags: MemberTags { nofailover: true },
            pending_restart: false,
            error: None,
            postgres_version: None,
        };
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "conn_url": "postgres://127.0.0.1:5432/postgres",
                "api_url": "http://127.0.0.1:8008",
                "role": "replica",
                "state": "running",
                "timeline": 2,
                "wal": {"receive": "0/3000060", "replay": "0/3000060"},
                "tags": {"nofailover": true}
            })
        );
        assert_eq!(s.host_port(), Some(("127.0.0.1".to_string(), 5432)));
    }
}
