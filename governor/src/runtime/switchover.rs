//! Carrying out a switchover on the leader: CHECKPOINT while still writable, a fast stop (the
//! walsenders send every record, the shutdown checkpoint included, before PostgreSQL exits),
//! a check with live positions that the candidate received that checkpoint, then the leader
//! key moved to the candidate in one compare-and-swap. A failure before the hand-over drops
//! the request; the next pass restarts this primary in place, since it still holds the key.

use super::act::upstream;
use super::{ActError, Governor};
use crate::dcs::Coordination;
use crate::ha::{ClusterView, Snapshot};
use crate::postgres::process::StopMode;
use spilo_model::MemberName;
use std::time::{Duration, Instant};

/// How long the candidate may take to confirm it received the shutdown checkpoint.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(10);

use crate::shared::SwitchoverOutcome as Outcome;

impl Governor {
    pub(super) async fn switchover(
        &mut self,
        s: &Snapshot,
        view: Option<&ClusterView>,
        to: &MemberName,
        to_lease: i64,
    ) -> Result<(), ActError> {
        let request = view.and_then(|v| v.switchover.clone());
        let started = Instant::now();
        let result = self.hand_over(s, view, to, to_lease).await;
        let outcome = match &result {
            Ok(()) => {
                tracing::info!(
                    to = %to,
                    took_ms = started.elapsed().as_millis() as u64,
                    "switchover: handed the leader key over; this member follows once {to} leads"
                );
                Ok(to.clone())
            }
            Err(e) => {
                tracing::error!(to = %to, error = %e, "switchover failed; staying the leader");
                if let Some(req) = &request
                    && let Err(e) = self.dcs.clear_switchover(req).await
                {
                    tracing::warn!(error = %e, "cannot remove the failed switchover request");
                }
                Err(e.to_string())
            }
        };
        if let Some(request) = request {
            *self.shared.switchover_outcome.write().await = Some(Outcome {
                request,
                result: outcome,
            });
        }
        self.data = None;
        self.wake.notify_one();
        result
    }

    async fn hand_over(
        &mut self,
        s: &Snapshot,
        view: Option<&ClusterView>,
        to: &MemberName,
        to_lease: i64,
    ) -> Result<(), ActError> {
        let lease = s
            .lease
            .id
            .ok_or_else(|| ActError::Other("no lease".into()))?;
        let up = upstream(view, to)?;
        if !self.pg.sql().streams_to(to.as_str()).await? {
            return Err(ActError::Other(format!(
                "{to} is not streaming from this primary"
            )));
        }
        // Flush dirty buffers while still accepting writes, so the shutdown checkpoint is short.
        self.pg.sql().checkpoint().await?;
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Fast).await;
        let checkpoint = self
            .pg
            .controldata()
            .await?
            .clean_primary_checkpoint()
            .ok_or_else(|| ActError::Other("PostgreSQL did not shut down cleanly".into()))?;
        let mut remote = self.pg.remote_session(&up);
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        loop {
            match remote.received_lsn().await {
                Ok(Some(lsn)) if lsn > checkpoint => break,
                Ok(got) if Instant::now() > deadline => {
                    return Err(ActError::Other(format!(
                        "{to} did not receive the shutdown checkpoint at {checkpoint} within {}s (it has {})",
                        CATCH_UP_DEADLINE.as_secs(),
                        got.map_or("nothing".to_string(), |l| l.to_string())
                    )));
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        if !self.dcs.hand_over_leader(lease, to, to_lease).await? {
            return Err(ActError::Other(format!(
                "the leader key or {to}'s member key changed; not handing over"
            )));
        }
        self.crashes.clear();
        self.primary_down_since = None;
        Ok(())
    }
}
