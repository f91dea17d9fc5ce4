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
use crate::config::Loaded;
use crate::dcs::Coordination;
use crate::major_upgrade::in_place::{Files, advance, write_durably};
use crate::major_upgrade::{self, Paths, UpgradeError};
use crate::postgres::process::StopMode;
use crate::shared::CommandFailure as Failure;
use std::collections::BTreeMap;

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
/// as a crash would: `linking` before pg_upgrade, `linked-unrecorded` after it and before
/// its record, `linked` after the record.
fn crash_at(step: &str) {
    if std::env::var("SPILO_TEST_UPGRADE_EXIT").is_ok_and(|s| s == step) {
        tracing::warn!(step, "SPILO_TEST_UPGRADE_EXIT: exiting as a crash would");
        std::process::exit(3);
    }
}

impl Governor {
    /// The in-place upgrade to the configuration `config` (YAML text); with `check_only`,
    /// its check alone; `later`: the cluster's parameters once the orchestrator writes its
    /// new `config`, checked too. Says what was done.
    pub(super) async fn upgrade_in_place(
        &mut self,
        config: &str,
        check_only: bool,
        later: Option<&BTreeMap<String, String>>,
    ) -> Result<String, Failure> {
        let data = self.loaded.config.postgresql.data_dir.clone();
        let files = Files::of(&data);
        if files.linked.exists() || files.intent.exists() {
            return Err(refused(format!(
                "{} records an upgrade under way: the governor finishes or rolls it back \
                 when it starts",
                if files.linked.exists() {
                    &files.linked
                } else {
                    &files.intent
                }
                .display()
            )));
        }
        if !check_only {
            self.alone_as_leader().await?;
        }
        // A check's configuration is never a record.
        let path = if check_only {
            &files.check
        } else {
            &files.intent
        };
        write_durably(path, config).map_err(|e| failed(e.to_string()))?;
        let outcome = self.check_and_link(path, &files, check_only, later).await;
        // The intent stays for a link the next run rolls back (`self.upgraded`).
        if check_only || (outcome.is_err() && !self.upgraded) {
            let _ = std::fs::remove_file(path);
        }
        outcome
    }

    /// Refused unless this member holds the leader key, no other member is registered and
    /// the cluster is not in maintenance mode (which would keep the upgraded member from
    /// starting and taking the key), as etcd says now.
    async fn alone_as_leader(&self) -> Result<(), Failure> {
        if !self.is_leading() {
            return Err(refused(
                "this member does not hold the leader key: the upgrade starts on the leader",
            ));
        }
        let view = self
            .dcs
            .read_view()
            .await
            .map_err(|e| failed(format!("read the cluster from etcd: {e}")))?;
        if view.paused() {
            return Err(refused(
                "the cluster is paused (maintenance mode), which would keep the upgraded \
                 member from starting: `spilo resume` it first",
            ));
        }
        let others: Vec<String> = view
            .members
            .keys()
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

    /// The new configuration, as this governor loads it: refused unless it differs from
    /// the running one only in the new version's programs, the archive prefix and the
    /// parameters (what `PATCH /config` may change too); anything else (etcd, the REST
    /// API's credentials, the archive's store) stays as the instance was started with.
    async fn new_configuration(&self, path: &std::path::Path) -> Result<Loaded, Failure> {
        let new = crate::config::load(path, &self.loaded.identity)
            .await
            .map_err(|e| refused(format!("the new configuration: {e}")))?;
        let mut same = self.loaded.config.clone();
        same.postgresql.bin_dir = new.config.postgresql.bin_dir.clone();
        same.postgresql.parameters = new.config.postgresql.parameters.clone();
        if let (Some(a), Some(b)) = (same.archive.as_mut(), new.config.archive.as_ref()) {
            a.prefix = b.prefix.clone();
        }
        if same != new.config || new.name != self.loaded.name {
            return Err(refused(
                "the new configuration differs from this member's in more than \
                 postgresql.bin_dir, postgresql.parameters and archive.prefix",
            ));
        }
        Ok(new)
    }

    async fn check_and_link(
        &mut self,
        path: &std::path::Path,
        files: &Files,
        check_only: bool,
        later: Option<&BTreeMap<String, String>>,
    ) -> Result<String, Failure> {
        let new = self.new_configuration(path).await?;
        let old = &self.loaded.config;
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
        // The cluster's parameters, with which the new version starts too.
        let cluster = self.pg.cluster_params();
        let turn = major_upgrade::take_turn(&paths).map_err(|e| failed(e.to_string()))?;
        let sets: Vec<&BTreeMap<String, String>> = std::iter::once(&cluster).chain(later).collect();
        match major_upgrade::check(&new, &sets, &paths).await {
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
        let linked = major_upgrade::link(&new, &cluster, &paths, Some(&self.loaded)).await;
        crash_at("linked-unrecorded");
        match linked {
            Ok(linked) => {
                // From here on the run ends: the next one commits, or rolls back a link
                // whose record could not be written.
                self.upgraded = true;
                self.wake.notify_one();
                advance(&files.intent, &files.linked).map_err(|e| {
                    failed(format!(
                        "{e}: the link is not recorded; the governor rolls it back when it \
                         starts again"
                    ))
                })?;
                drop(turn);
                crash_at("linked");
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
                if undo.is_err() {
                    // The intent stays; the next run's start rolls back again.
                    self.upgraded = true;
                    self.wake.notify_one();
                }
                Err(failed(format!(
                    "pg_upgrade --link failed: {e}; {}",
                    match undo {
                        Ok(_) =>
                            format!("rolled back; PostgreSQL {from} starts again at the next pass"),
                        Err(u) => format!(
                            "the roll back failed too ({u}); the governor starts again and \
                             rolls back then"
                        ),
                    }
                )))
            }
        }
    }
}
