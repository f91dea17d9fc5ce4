//! Operator commands from the REST API that act on the local PostgreSQL: restart, reload and
//! reinitialize. They reach the HA loop through a channel and run between two passes, so they
//! never race a decision; each answers with what it did or why it refused.

use super::Governor;
use super::act::upstream;
use crate::postgres::process::StopMode;
use crate::shared::{CommandFailure as Failure, Op};
use std::time::Duration;

fn refused(why: impl Into<String>) -> Failure {
    Failure {
        refused: true,
        why: why.into(),
    }
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure {
        refused: false,
        why: e.to_string(),
    }
}

/// How long a restarted PostgreSQL may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Governor {
    /// Runs the commands that arrived since the last pass.
    pub(super) async fn run_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            let name = cmd.op.name();
            tracing::info!(op = name, "running an operator command");
            let r = self.run_command(cmd.op).await;
            match &r {
                Ok(what) => tracing::info!(op = name, "{what}"),
                Err(f) => tracing::warn!(op = name, refused = f.refused, "{}", f.why),
            }
            let _ = cmd.reply.send(r);
            if self.upgraded {
                // This run ends; the commands queued behind are answered "the HA loop
                // stopped" (the next run has a queue of its own).
                return;
            }
        }
    }

    async fn run_command(&mut self, op: Op) -> Result<String, Failure> {
        if self.pg.postmaster_pid().is_none() && op != Op::Reinitialize {
            return Err(refused("PostgreSQL is not running"));
        }
        match op {
            Op::Reload => {
                self.pg.reload().await.map_err(failed)?;
                Ok("reloaded the configuration".into())
            }
            Op::Restart { pending_only } => self.restart(pending_only).await,
            Op::Reinitialize => self.reinitialize().await,
            Op::Upgrade {
                config,
                check,
                parameters,
            } => {
                self.upgrade_in_place(&config, check, parameters.as_ref())
                    .await
            }
        }
    }

    async fn restart(&mut self, pending_only: bool) -> Result<String, Failure> {
        let status = self
            .pg
            .sql()
            .status()
            .await
            .map_err(|e| refused(format!("PostgreSQL does not answer: {e}")))?;
        if pending_only && !status.pending_restart {
            return Ok("no restart pending; nothing done".into());
        }
        let primary = !status.in_recovery;
        if primary && !self.is_leading() {
            return Err(refused(
                "PostgreSQL runs as primary but this member does not hold the leader key",
            ));
        }
        let up = self.pg.upstream().cloned();
        let params = self.pg.cluster_params();
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Fast).await;
        self.pg.start(primary, up, &params).map_err(failed)?;
        if primary {
            self.arm_fence_on_key();
        }
        self.pg.wait_ready(READY_TIMEOUT).await.map_err(failed)?;
        self.wake.notify_one();
        Ok(format!(
            "restarted PostgreSQL as {}",
            if primary { "primary" } else { "replica" }
        ))
    }

    async fn reinitialize(&mut self) -> Result<String, Failure> {
        if self.is_leading() {
            return Err(refused(
                "the leader cannot be reinitialized; switch over first",
            ));
        }
        let view = self.shared.view.read().await.clone();
        let leader = view
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .map(|l| l.name.clone())
            .ok_or_else(|| refused("the cluster has no leader to copy"))?;
        let up = upstream(view.as_ref(), &leader).map_err(|e| refused(e.to_string()))?;
        let params = self.pg.cluster_params();
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Fast).await;
        self.pg.wipe_data().map_err(failed)?;
        self.data = None;
        self.pg.clone_from(&up).await.map_err(failed)?;
        self.pg.start(false, Some(up), &params).map_err(failed)?;
        self.wake.notify_one();
        Ok(format!("reinitialized from {leader}"))
    }
}
