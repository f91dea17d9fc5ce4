//! What the governor and the `spilo` CLI agree on, and nothing else: the names of clusters and
//! members, PostgreSQL positions (LSN, timeline), the etcd keyspace with its single writer per
//! key, the JSON values stored under those keys, the cluster file, and the governor's
//! configuration file (which `spilo` writes and the governor reads).
//!
//! This crate is synchronous and performs no I/O: no etcd client, no tokio, no PostgreSQL.
//! Both programs depend on it so that the layout of `/service/<scope>/` is defined exactly once.

pub mod catalog;
pub mod config_edit;
pub mod drill;
pub mod governor;
pub mod keys;
pub mod lsn;
pub mod member;
pub mod names;
pub mod spec;
pub mod summary;
pub mod switchover;
pub mod sync;
pub mod target_time;
pub mod upgrade;

pub use catalog::Catalog;
pub use drill::{DrillRecord, DrillRun, drill_member};
pub use keys::{KeyKind, Keyspace};
pub use lsn::{Lsn, TimelineId};
pub use member::{
    BootFailure, ClusterConfig, Downstream, HistoryEntry, MemberRole, MemberState, MemberStatus,
    MemberTags, StandbySource, WalPositions,
};
pub use names::{ClusterName, InvalidName, MemberName, NameError};
pub use summary::{ArchiveStatus, BackupRuns, ClusterSummary, MemberRow, NodeStatus, summarize};
pub use switchover::SwitchoverRequest;
pub use sync::SyncState;
pub use target_time::TargetTime;
pub use upgrade::UpgradeRecord;
