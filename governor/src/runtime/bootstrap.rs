//! Creating a new cluster: the race for `initialize`, initdb or a clone from another
//! cluster's archive, the leader key, the system identifier, the first `config`; and what
//! this member remembers of a bootstrap that failed, so that one failing the same way is not
//! retried blindly.
//!
//! A failed bootstrap empties its data directory only when nobody can depend on it
//! ([`after_failed_bootstrap`]): once `initialize` holds the new system identifier the data is
//! the cluster's only copy, so it stays, PostgreSQL keeps running, and the next pass finishes
//! (a leader without `config` writes it). A cluster never needs a hand-made etcd delete.
//!
//! A failure the configuration causes ([`ActError::Permanent`]: a target time before the
//! oldest backup, a setting PostgreSQL refuses) is not retried until the governor restarts
//! (with a changed configuration); any other is retried after a pause that
//! doubles with each attempt (10 s up to 5 min). Either way the member publishes
//! `bootstrap_failed` with the reason, which `spilo status` and `spilo up` print.

use super::{ActError, Governor};
use crate::config::Loaded;
use crate::dcs::{Coordination, Store};
use crate::ha::Snapshot;
use crate::postgres::process::StopMode;
use spilo_model::{ClusterConfig, MemberState};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The pause after the first failed attempt; it doubles with each further one.
const FIRST_PAUSE: Duration = Duration::from_secs(10);
/// The longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// A bootstrap that failed, as this member remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The error, in one line.
    pub why: String,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When it may be tried again; `None`: not until the governor restarts.
    pub retry_at: Option<Instant>,
}

impl Failure {
    /// The record after an attempt failed at `now` with `error`, following `previous`.
    pub fn after(previous: Option<&Failure>, error: &ActError, now: Instant) -> Self {
        let attempts = previous.map_or(0, |p| p.attempts) + 1;
        let retry_at = match error {
            ActError::Permanent(_) => None,
            _ => {
                let pause = FIRST_PAUSE
                    .saturating_mul(1 << (attempts - 1).min(16))
                    .min(MAX_PAUSE);
                Some(now + pause)
            }
        };
        Self {
            why: error.to_string(),
            attempts,
            retry_at,
        }
    }

    /// Why this member does not bootstrap at `now`, or `None` once it may try again.
    pub fn blocks(&self, now: Instant) -> Option<String> {
        match self.retry_at {
            None => Some(format!(
                "bootstrap failed and is not retried until the governor restarts with a changed configuration: {}",
                self.why
            )),
            Some(t) if now < t => Some(format!(
                "bootstrap failed ({} attempt{} in a row), next attempt in {}s: {}",
                self.attempts,
                if self.attempts == 1 { "" } else { "s" },
                t.saturating_duration_since(now).as_secs().max(1),
                self.why
            )),
            Some(_) => None,
        }
    }

    /// The member status's `error`: the reason, and whether it is retried.
    pub fn describe(&self) -> String {
        match self.retry_at {
            None => format!(
                "{} (not retried until the governor restarts with a changed configuration)",
                self.why
            ),
            Some(_) => format!(
                "{} ({} failed attempt{}, retried with a growing pause)",
                self.why,
                self.attempts,
                if self.attempts == 1 { "" } else { "s" }
            ),
        }
    }
}

impl Governor {
    pub(super) async fn bootstrap_cluster(
        &mut self,
        s: &Snapshot,
        params: &BTreeMap<String, String>,
    ) -> Result<(), ActError> {
        let lease = s
            .lease
            .id
            .ok_or_else(|| ActError::Other("no lease".into()))?;
        if !self.dcs.try_claim_initialize(lease).await? {
            tracing::info!("another member won the bootstrap race");
            return Ok(());
        }
        tracing::info!("won the bootstrap race; initializing a new cluster");
        self.initialize_attempted = false;
        self.announce_state(s, MemberState::Bootstrapping).await;
        let view = match &s.dcs {
            crate::ha::DcsView::Known(v) => Some(v),
            crate::ha::DcsView::Unreachable { .. } => None,
        };
        let standby = self.ha.merged_opt(view).standby;
        match self.bootstrap_inner(lease, params, standby).await {
            Ok(()) => {
                self.bootstrap_failure = None;
                Ok(())
            }
            Err(e) => {
                let (initialize, ours) = if self.initialize_attempted {
                    (
                        self.read_initialize().await,
                        self.local_system_identifier().await,
                    )
                } else {
                    (Ok(None), None)
                };
                let cleanup = after_failed_bootstrap(
                    self.initialize_attempted,
                    initialize.as_ref(),
                    ours.as_deref(),
                );
                self.initialize_attempted = false;
                match cleanup {
                    Cleanup::Keep { why } => {
                        tracing::error!(
                            error = %e,
                            "a bootstrap step failed; keeping this member's data and running PostgreSQL: {why}"
                        );
                        self.data = None;
                        Err(e)
                    }
                    Cleanup::Wipe => {
                        tracing::error!(error = %e, "bootstrap failed; cleaning up so another attempt can start");
                        let _ = self.dcs.abandon_initialize().await;
                        self.creation_failed(lease, e).await
                    }
                }
            }
        }
    }

    /// The `initialize` key as etcd has it now (`Ok(None)`: absent), read again for up to
    /// 10 s while it cannot be read; `Err` when it still cannot.
    async fn read_initialize(&self) -> Result<Option<String>, ()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.dcs.read_view().await {
                Ok(v) => return Ok(v.initialize),
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(error = %e, "cannot read the initialize key");
                    return Err(());
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// The system identifier of the local data, when it can be read.
    async fn local_system_identifier(&mut self) -> Option<String> {
        if let Ok(id) = self.pg.sql().system_identifier().await {
            return Some(id);
        }
        self.pg
            .controldata()
            .await
            .ok()?
            .sysid()
            .map(str::to_string)
    }

    /// After a failed creation of the cluster's first primary (a bootstrap, a recovery from
    /// the archive): stops PostgreSQL, hands the leader key back, empties the data directory,
    /// and records the failure, which decides when to try again.
    pub(super) async fn creation_failed(
        &mut self,
        lease: i64,
        e: ActError,
    ) -> Result<(), ActError> {
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Immediate).await;
        let _ = self.dcs.release_leader(lease).await;
        let _ = self.pg.wipe_data();
        let _ = self.pg.clear_unfinished_marker();
        self.data = None;
        let failure = Failure::after(self.bootstrap_failure.as_ref(), &e, Instant::now());
        tracing::warn!(
            attempts = failure.attempts,
            retried = failure.retry_at.is_some(),
            "{}",
            failure.describe()
        );
        self.bootstrap_failure = Some(failure);
        Err(e)
    }

    async fn bootstrap_inner(
        &mut self,
        lease: i64,
        params: &BTreeMap<String, String>,
        standby: Option<spilo_model::StandbySource>,
    ) -> Result<(), ActError> {
        match self.loaded.config.bootstrap.clone() {
            _ if standby.is_some() => {
                let source = standby
                    .as_ref()
                    .map(crate::postgres::Upstream::source)
                    .transpose()
                    .map_err(ActError::Other)?
                    .ok_or_else(|| ActError::Other("no source".into()))?;
                tracing::info!(source = %source.host, "copying the source of the standby cluster");
                self.pg.clone_from(&source).await?;
                self.pg.start(false, Some(source), params)?;
                self.pg.wait_ready(Duration::from_secs(120)).await?;
            }
            Some(b) => {
                let now = spilo_model::TargetTime::now();
                self.pg.restore_clone(&b.clone, params, now).await?;
                self.arm_fence_with(Some(lease));
            }
            None => {
                self.pg.initdb().await?;
                self.pg.start(true, None, params)?;
                self.arm_fence_with(Some(lease));
                self.pg.wait_ready(Duration::from_secs(120)).await?;
            }
        }
        if standby.is_none() {
            self.pg.create_replication_role().await?;
        }
        if self.dcs.try_acquire_leader(lease).await? {
            self.holds_leader_key(lease);
        } else {
            return Err(ActError::Other(
                "the leader key was taken during bootstrap".into(),
            ));
        }
        let sysid = self.pg.sql().system_identifier().await?;
        // From here on a failure may have committed: the cleanup reads the key first.
        self.initialize_attempted = true;
        if !self.dcs.set_initialize(&sysid).await? {
            return Err(ActError::Other(
                "the initialize key changed during bootstrap".into(),
            ));
        }
        tracing::info!(sysid, "bootstrapped a new cluster");
        self.data = None;
        self.wake.notify_one();
        if std::env::var_os(FAULT_AFTER_INITIALIZE).is_some() {
            return Err(ActError::Other(format!(
                "{FAULT_AFTER_INITIALIZE} is set: failing after the initialize key was written"
            )));
        }
        create_config_if_absent(&self.dcs, &self.loaded).await
    }
}

/// The cluster's first `config`, from this member's HA settings, unless one exists. The
/// bootstrap writes it; a leader that finds none (its bootstrap failed after `initialize`
/// held the system identifier) writes it on its next pass.
pub(super) async fn create_config_if_absent(dcs: &Store, loaded: &Loaded) -> Result<(), ActError> {
    let ha = &loaded.config.ha;
    let config = ClusterConfig {
        ttl: Some(ha.ttl),
        loop_wait: Some(ha.loop_wait),
        retry_timeout: Some(ha.retry_timeout),
        maximum_lag_on_failover: Some(ha.maximum_lag_on_failover),
        postgresql_parameters: BTreeMap::new(),
        pause: false,
        synchronous_mode: ha.synchronous_mode.is_on(),
        synchronous_mode_quorum: ha.synchronous_mode.is_quorum(),
        synchronous_mode_strict: ha.synchronous_mode.is_on() && ha.synchronous_mode_strict,
        synchronous_node_count: ha
            .synchronous_mode
            .is_on()
            .then_some(ha.synchronous_node_count),
        failsafe_mode: ha.failsafe_mode,
        standby_cluster: ha.standby_cluster.clone(),
        downstream: Vec::new(),
        catalog: None,
    };
    if dcs.create_config_if_absent(&config).await? {
        tracing::info!("wrote the cluster's first config");
    }
    Ok(())
}

/// A test-only fault: when set, a bootstrap fails right after `initialize` holds the new
/// system identifier (before the first `config`), as a timed-out etcd call there would.
pub const FAULT_AFTER_INITIALIZE: &str = "SPILO_FAULT_AFTER_INITIALIZE";

/// What a failed bootstrap leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Stop PostgreSQL, give the keys back, empty the data directory: nobody depends on it.
    Wipe,
    /// Keep everything: the cluster may exist with this data as its only copy. The next pass
    /// decides again (and, leading, finishes what the bootstrap left).
    Keep {
        /// Why.
        why: &'static str,
    },
}

/// Whether a failed bootstrap may wipe its data: before it tried to write the system
/// identifier into `initialize` (`attempted`), nobody can depend on the data; afterwards it
/// decides from the key read after the failure (`Err`: it could not be read) and the local
/// data's identifier. Once `initialize` holds this data's identifier the cluster exists and
/// this is its only copy; an unknown key or identifier is never a reason to destroy data.
pub fn after_failed_bootstrap(
    attempted: bool,
    initialize: Result<&Option<String>, &()>,
    local: Option<&str>,
) -> Cleanup {
    if !attempted {
        return Cleanup::Wipe;
    }
    match (initialize, local) {
        (Err(()), _) => Cleanup::Keep {
            why: "the initialize key cannot be read",
        },
        (Ok(Some(id)), Some(ours)) if id == ours => Cleanup::Keep {
            why: "the initialize key holds this data's system identifier: the cluster exists",
        },
        (Ok(Some(id)), None) if !id.is_empty() => Cleanup::Keep {
            why: "the initialize key holds a system identifier and this data's cannot be read",
        },
        _ => Cleanup::Wipe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bootstrap_wipes_only_data_no_cluster_depends_on() {
        let id = Some("7713".to_string());
        let keep = |c: Cleanup| matches!(c, Cleanup::Keep { .. });
        // The cluster exists with this data.
        assert!(keep(after_failed_bootstrap(true, Ok(&id), Some("7713"))));
        // Unknown: never destroy.
        assert!(keep(after_failed_bootstrap(true, Err(&()), Some("7713"))));
        assert!(keep(after_failed_bootstrap(true, Err(&()), None)));
        assert!(keep(after_failed_bootstrap(true, Ok(&id), None)));
        // Nobody depends on it: the claim is empty or gone, or another system won.
        assert_eq!(
            after_failed_bootstrap(true, Ok(&Some(String::new())), Some("7713")),
            Cleanup::Wipe
        );
        assert_eq!(
            after_failed_bootstrap(true, Ok(&None), Some("7713")),
            Cleanup::Wipe
        );
        assert_eq!(after_failed_bootstrap(true, Ok(&None), None), Cleanup::Wipe);
        assert_eq!(
            after_failed_bootstrap(true, Ok(&Some("9999".into())), Some("7713")),
            Cleanup::Wipe
        );
        // Failed before the identifier was written: the claim is empty, whatever is read.
        assert_eq!(
            after_failed_bootstrap(false, Err(&()), Some("7713")),
            Cleanup::Wipe
        );
    }

    #[test]
    fn a_passing_failure_is_retried_after_a_pause_that_doubles_up_to_five_minutes() {
        let t0 = Instant::now();
        let e = ActError::Other("the source's archive holds no finished backup".into());
        let first = Failure::after(None, &e, t0);
        assert_eq!(first.attempts, 1);
        assert_eq!(first.retry_at, Some(t0 + Duration::from_secs(10)));
        let why = first.blocks(t0 + Duration::from_secs(3)).expect("blocked");
        assert!(
            why.starts_with(
                "bootstrap failed (1 attempt in a row), next attempt in 7s: the source's"
            ),
            "{why}"
        );
        assert_eq!(first.blocks(t0 + Duration::from_secs(10)), None);
        let second = Failure::after(Some(&first), &e, t0);
        assert_eq!(second.retry_at, Some(t0 + Duration::from_secs(20)));
        let mut f = second;
        for _ in 0..40 {
            f = Failure::after(Some(&f), &e, t0);
        }
        assert_eq!(f.retry_at, Some(t0 + Duration::from_secs(300)));
        assert!(
            f.describe()
                .ends_with("(42 failed attempts, retried with a growing pause)")
        );
    }

    #[test]
    fn a_failure_the_configuration_causes_is_not_retried() {
        let t0 = Instant::now();
        let e = ActError::Permanent("clone: no backup finished before the target time".into());
        let f = Failure::after(None, &e, t0);
        assert_eq!(f.retry_at, None);
        let why = f
            .blocks(t0 + Duration::from_secs(86_400))
            .expect("still blocked");
        assert_eq!(
            why,
            "bootstrap failed and is not retried until the governor restarts with a changed configuration: \
             clone: no backup finished before the target time"
        );
        assert!(
            f.describe().ends_with(
                "(not retried until the governor restarts with a changed configuration)"
            )
        );
    }
}
