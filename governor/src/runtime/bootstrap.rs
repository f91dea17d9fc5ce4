//! Creating a new cluster: the race for `initialize`, initdb or a clone from another
//! cluster's archive, the leader key, the system identifier, the first `config`; and what
//! this member remembers of a bootstrap that failed, so that one failing the same way is not
//! retried blindly.
//!
//! A failure the configuration causes ([`ActError::Permanent`]: a target time before the
//! oldest backup, a setting PostgreSQL refuses) is not retried until the governor restarts
//! (with a changed configuration); any other is retried after a pause that
//! doubles with each attempt (10 s up to 5 min). Either way the member publishes
//! `bootstrap_failed` with the reason, which `spilo status` and `spilo up` print.

use super::{ActError, Governor};
use crate::dcs::Coordination;
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
    pub(super) async fn bootstrap(
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
        self.announce(s, MemberState::Bootstrapping).await;
        match self.bootstrap_inner(lease, params).await {
            Ok(()) => {
                self.bootstrap_failure = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "bootstrap failed; cleaning up so another attempt can start");
                let _ = self.dcs.abandon_initialize().await;
                self.creation_failed(lease, e).await
            }
        }
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
    ) -> Result<(), ActError> {
        match self.loaded.config.bootstrap.clone() {
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
        self.pg.create_replication_role().await?;
        if self.dcs.try_acquire_leader(lease).await? {
            self.holds_leader_key(lease);
        } else {
            return Err(ActError::Other(
                "the leader key was taken during bootstrap".into(),
            ));
        }
        let sysid = self.pg.sql().system_identifier().await?;
        if !self.dcs.set_initialize(&sysid).await? {
            return Err(ActError::Other(
                "the initialize key changed during bootstrap".into(),
            ));
        }
        let ha = &self.loaded.config.ha;
        let config = ClusterConfig {
            ttl: Some(ha.ttl),
            loop_wait: Some(ha.loop_wait),
            retry_timeout: Some(ha.retry_timeout),
            maximum_lag_on_failover: Some(ha.maximum_lag_on_failover),
            postgresql_parameters: BTreeMap::new(),
            pause: false,
            synchronous_mode: ha.synchronous_mode,
            synchronous_mode_strict: ha.synchronous_mode && ha.synchronous_mode_strict,
            synchronous_node_count: ha.synchronous_mode.then_some(ha.synchronous_node_count),
            failsafe_mode: ha.failsafe_mode,
        };
        self.dcs.create_config_if_absent(&config).await?;
        self.data = None;
        tracing::info!(sysid, "bootstrapped a new cluster");
        self.wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
