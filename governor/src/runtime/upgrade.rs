//! `POST /upgrade`: the major upgrade of this member's data in place
//! ([`crate::major_upgrade::in_place`]), carried out between two HA passes so no decision
//! races it. Given the member's configuration for the new version, it checks (as
//! `governor upgrade check`: `pg_upgrade --check` live, and the settings), and unless asked
//! for the check only: refuses unless this member leads alone (a replica's data cannot
//! follow; the orchestrator removes the other members first), stops PostgreSQL cleanly,
//! gives up the leader key and links. After a successful link the governor ends its run
//! and starts again on the new configuration, committing first; a failed link is rolled
//! back and PostgreSQL starts again on the old version at the next pass.

use super::Governor;
use crate::dcs::Coordination;
use crate::major_upgrade::in_place::{Files, advance, write_durably};
use crate::major_upgrade::{self, Paths, UpgradeError};
use crate::postgres::process::StopMode;
use crate::shared::CommandFailure as Failure;

fn refused(why: impl Into<String>) -> Failure {
    Failure {
        refused: true,
        why: why.into(),
    }
}

fn failed(why: impl Into<String>) -> Failure {
    Failure {
        refused: false,
        why: why.into(),
    }
}

/// A test-only switch: `SPILO_TEST_UPGRADE_EXIT=<step>` makes the governor exit (status 3)
/// as a crash would: `linking` before pg_upgrade, `linked` after the link's record.
fn crash_at(step: &str) {
    if std::env::var("SPILO_TEST_UPGRADE_EXIT").is_ok_and(|s| s == step) {
        tracing::warn!(step, "SPILO_TEST_UPGRADE_EXIT: exiting as a crash would");
        std::process::exit(3);
    }
}

impl Governor {
    /// The in-place upgrade to the configuration `config` (YAML text); with `check_only`,
    /// its check alone. Says what was done.
    pub(super) async fn upgrade_in_place(
        &mut self,
        config: &str,
        check_only: bool,
    ) -> Result<String, Failure> {
        let data = self.loaded.config.postgresql.data_dir.clone();
        let files = Files::of(&data);
        if files.linked.exists() {
            return Err(refused(format!(
                "{} records a link not yet committed: the governor commits it when it starts",
                files.linked.display()
            )));
        }
        if !check_only {
            self.alone_as_leader().await?;
        }
        write_durably(&files.intent, config).map_err(|e| failed(e.to_string()))?;
        let outcome = self.check_and_link(&files, check_only).await;
        // The record stays while there is a link to finish or to roll back.
        let left = data.join("global/pg_control.old").exists()
            || Paths::of(&self.loaded, &self.loaded.config.postgresql.bin_dir)
                .upgraded
                .exists();
        if check_only || (outcome.is_err() && !left) {
            let _ = std::fs::remove_file(&files.intent);
        }
        outcome
    }

    /// Refused unless this member holds the leader key and no other member is registered.
    async fn alone_as_leader(&self) -> Result<(), Failure> {
        if !self.is_leading() {
            return Err(refused(
                "this member does not hold the leader key: the upgrade starts on the leader",
            ));
        }
        let view = self.shared.view.read().await.clone();
        let others: Vec<String> = view
            .iter()
            .flat_map(|v| v.members.keys())
            .filter(|m| **m != self.loaded.name)
            .map(ToString::to_string)
            .collect();
        if !others.is_empty() {
            return Err(refused(format!(
                "other members are registered ({}): the upgrade in place starts from the \
                 leader alone, since their data cannot follow it; remove them first",
                others.join(", ")
            )));
        }
        Ok(())
    }

    async fn check_and_link(&mut self, files: &Files, check_only: bool) -> Result<String, Failure> {
        let new = crate::config::load(&files.intent, &self.loaded.identity)
            .await
            .map_err(|e| refused(format!("the new configuration: {e}")))?;
        let old = &self.loaded.config;
        if new.config.postgresql.data_dir != old.postgresql.data_dir
            || new.config.scope != old.scope
            || new.name != self.loaded.name
        {
            return Err(refused(format!(
                "the new configuration is for another member (scope {}, member {}, data {}) \
                 than this one (scope {}, member {}, data {})",
                new.config.scope,
                new.name,
                new.config.postgresql.data_dir.display(),
                old.scope,
                self.loaded.name,
                old.postgresql.data_dir.display()
            )));
        }
        let paths = Paths::of(&new, &old.postgresql.bin_dir);
        let to = major_upgrade::version_of(&paths.new_bin).await;
        let from = major_upgrade::data_version(&paths.data);
        if to.is_none() || to == from {
            return Err(refused(format!(
                "{} holds no PostgreSQL of another major version than the data's ({})",
                paths.new_bin.display(),
                from.map_or("unknown".into(), |v| v.to_string())
            )));
        }
        let turn = major_upgrade::take_turn(&paths).map_err(|e| failed(e.to_string()))?;
        match major_upgrade::check(&new, &paths).await {
            Ok(()) => {}
            Err(e @ UpgradeError::Blocked(_)) => return Err(refused(e.to_string())),
            Err(e) => return Err(failed(format!("the check failed: {e}"))),
        }
        let (from, to) = (
            from.map_or("?".into(), |v| v.to_string()),
            to.map_or("?".into(), |v| v.to_string()),
        );
        if check_only {
            return Ok(format!(
                "the upgrade from PostgreSQL {from} to {to} finds no blockers"
            ));
        }
        // Between the check and here nothing of the cluster may have changed.
        self.alone_as_leader().await?;
        tracing::warn!(from, to, "stopping PostgreSQL for the upgrade in place");
        let _ = self.fence.send(None);
        self.pg.stop(StopMode::Fast).await;
        self.data = None;
        let lease = self.lease.borrow().id;
        if let Some(id) = lease
            && let Err(e) = self.dcs.release_leader(id).await
        {
            // The lease's revocation when this run ends deletes it too.
            tracing::warn!(error = %e, "could not give up the leader key before the link");
        }
        crash_at("linking");
        match major_upgrade::link(&new, &paths, Some(&self.loaded)).await {
            Ok(linked) => {
                advance(&files.intent, &files.linked).map_err(|e| failed(e.to_string()))?;
                drop(turn);
                crash_at("linked");
                self.upgraded = true;
                self.wake.notify_one();
                Ok(format!(
                    "linked PostgreSQL {from}'s data into PostgreSQL {to} ({} WAL files the old \
                     archiver left archived first); the governor starts again on PostgreSQL \
                     {to}, committing first (system {})",
                    linked.archived.len(),
                    linked.system
                ))
            }
            Err(e) => {
                let undo = major_upgrade::roll_back(&paths);
                Err(failed(format!(
                    "pg_upgrade --link failed: {e}; {}; PostgreSQL {from} starts again at the \
                     next pass",
                    match undo {
                        Ok(_) => "rolled back".to_string(),
                        Err(u) => format!("the roll back failed too: {u}"),
                    }
                )))
            }
        }
    }
}
