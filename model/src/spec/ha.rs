//! The `spec.ha` section: failover timing and rules, its defaults, and the one consistency
//! check of `ttl`, `loopWait` and `retryTimeout` that cluster files and governor
//! configurations share.

use super::SynchronousMode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Failover behaviour (the governors' `ha` settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HaSpec {
    /// Leader lease in seconds: a dead primary is replaced about this long after it died.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 2, max = 3600))]
    pub ttl: u64,
    /// Seconds between HA loop runs when no event wakes them sooner.
    #[serde(default = "default_loop_wait")]
    #[schemars(range(min = 1, max = 3600))]
    pub loop_wait: u64,
    /// Seconds one etcd or PostgreSQL operation may take.
    #[serde(default = "default_retry_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub retry_timeout: u64,
    /// A replica further than this many bytes behind the most advanced member is not promoted.
    #[serde(default = "default_maximum_lag_on_failover")]
    pub maximum_lag_on_failover: u64,
    /// Seconds a crashed primary may take to restart in place before a replica takes over.
    #[serde(default = "default_primary_start_timeout")]
    pub primary_start_timeout: u64,
    /// Commit only once synchronous standbys have the WAL (`true`: the standbys the primary
    /// names; `quorum`: any `synchronousNodeCount` of all eligible streaming standbys);
    /// failover only to a member that cannot miss an acknowledged commit.
    #[serde(default)]
    pub synchronous_mode: SynchronousMode,
    /// How many synchronous standbys (with `quorum`: how many of them each commit waits for).
    #[serde(default = "d_sync_count")]
    #[schemars(range(min = 1))]
    pub synchronous_node_count: u32,
    /// Block writes rather than run without a synchronous standby.
    #[serde(default)]
    pub synchronous_mode_strict: bool,
    /// Keep the primary while etcd is down as long as every member confirms it.
    #[serde(default)]
    pub failsafe_mode: bool,
}

/// Default leader lease, in seconds.
pub const DEFAULT_TTL: u64 = 4;
/// Default HA loop period, in seconds.
pub const DEFAULT_LOOP_WAIT: u64 = 1;
/// Default budget of one etcd or PostgreSQL operation, in seconds.
pub const DEFAULT_RETRY_TIMEOUT: u64 = 2;
/// Default lag limit for failover candidates, in bytes.
pub const DEFAULT_MAXIMUM_LAG_ON_FAILOVER: u64 = 1_048_576;
/// Default time a crashed primary may take to restart in place, in seconds.
pub const DEFAULT_PRIMARY_START_TIMEOUT: u64 = 30;

/// [`DEFAULT_TTL`], for `#[serde(default = ...)]`.
pub fn default_ttl() -> u64 {
    DEFAULT_TTL
}
/// [`DEFAULT_LOOP_WAIT`], for `#[serde(default = ...)]`.
pub fn default_loop_wait() -> u64 {
    DEFAULT_LOOP_WAIT
}
/// [`DEFAULT_RETRY_TIMEOUT`], for `#[serde(default = ...)]`.
pub fn default_retry_timeout() -> u64 {
    DEFAULT_RETRY_TIMEOUT
}
/// [`DEFAULT_MAXIMUM_LAG_ON_FAILOVER`], for `#[serde(default = ...)]`.
pub fn default_maximum_lag_on_failover() -> u64 {
    DEFAULT_MAXIMUM_LAG_ON_FAILOVER
}
/// [`DEFAULT_PRIMARY_START_TIMEOUT`], for `#[serde(default = ...)]`.
pub fn default_primary_start_timeout() -> u64 {
    DEFAULT_PRIMARY_START_TIMEOUT
}

/// Which HA timing setting a [`TimingProblem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingField {
    /// The lease length.
    Ttl,
    /// The loop period.
    LoopWait,
    /// The operation budget.
    RetryTimeout,
}

/// An inconsistent combination of HA timing settings: one rule for cluster files and governor
/// configurations alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingProblem {
    /// The offending setting.
    pub field: TimingField,
    /// What is wrong.
    pub message: String,
}

/// Checks `ttl`, `loop_wait` and `retry_timeout` (seconds) against each other: etcd's shortest
/// lease is 2 s, the loop must run at least once per lease, and a primary must learn that etcd
/// is gone (one operation budget) before its lease ends.
pub fn timing_problems(ttl: u64, loop_wait: u64, retry_timeout: u64) -> Vec<TimingProblem> {
    let mut out = Vec::new();
    if ttl < 2 {
        out.push(TimingProblem {
            field: TimingField::Ttl,
            message: format!("must be at least 2 seconds (etcd's shortest lease), got {ttl}"),
        });
        return out;
    }
    if loop_wait == 0 || loop_wait > ttl {
        out.push(TimingProblem {
            field: TimingField::LoopWait,
            message: format!("must be between 1 and the ttl ({ttl}s), got {loop_wait}"),
        });
    }
    if retry_timeout == 0 || retry_timeout >= ttl {
        out.push(TimingProblem {
            field: TimingField::RetryTimeout,
            message: format!(
                "must be at least 1 and below the ttl ({ttl}s), got {retry_timeout}: a primary must learn that etcd is gone before its lease ends"
            ),
        });
    }
    out
}
fn d_sync_count() -> u32 {
    1
}

impl Default for HaSpec {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            loop_wait: default_loop_wait(),
            retry_timeout: default_retry_timeout(),
            maximum_lag_on_failover: default_maximum_lag_on_failover(),
            primary_start_timeout: default_primary_start_timeout(),
            synchronous_mode: SynchronousMode::Off,
            synchronous_node_count: d_sync_count(),
            synchronous_mode_strict: false,
            failsafe_mode: false,
        }
    }
}
