//! The instance's `postgresql.conf`: writing it from the layers (defaults, the cluster's
//! `config`, the member's own parameters) and the settings the governor owns (addresses,
//! upstream, synchronous standbys, archiving, a clone's recovery), and reloading it.

use super::PgError;
use super::{Instance, Upstream, conf, write_private};
use std::collections::BTreeMap;

impl Instance {
    /// Writes `postgresql.conf` for the given upstream (none for a primary or an idle replica).
    pub(super) fn write_conf(
        &mut self,
        upstream: Option<&Upstream>,
        cluster: &BTreeMap<String, String>,
    ) -> std::io::Result<()> {
        let up = upstream.map(|u| {
            let port = u.port.clone();
            let pgpass = self.pgpass().display().to_string();
            let ssl = self.ssl.as_ref().map(|s| {
                (
                    s.ca.display().to_string(),
                    s.cert.display().to_string(),
                    s.key.display().to_string(),
                )
            });
            // Toward a standby cluster's source, a name no member of the source can have (not
            // a DNS label): the source never counts this standby as one of its synchronous
            // standbys or quorum voters.
            let application_name = if u.source {
                format!("{}.standby", self.member)
            } else {
                self.member.to_string()
            };
            let mut pairs = vec![
                ("host", u.host.as_str()),
                ("port", &port),
                ("user", &self.replication.0),
                ("passfile", &pgpass),
                ("application_name", application_name.as_str()),
                ("connect_timeout", "2"),
            ];
            if let Some((ca, cert, key)) = &ssl {
                pairs.push(("sslmode", "verify-full"));
                pairs.push(("sslrootcert", ca));
                pairs.push(("sslcert", cert));
                pairs.push(("sslkey", key));
            }
            if u.source {
                // Several endpoints of the source: the one that accepts writes.
                pairs.push(("target_session_attrs", "primary"));
            }
            let slot = (!u.source).then(|| self.member.slot_name());
            (conf::conninfo(&pairs), slot)
        });
        let standby_restore = match upstream.and_then(|u| u.archive.as_ref()) {
            Some(archive) => {
                let json = serde_json::to_string(archive).map_err(std::io::Error::other)?;
                write_private(
                    &self.run_dir.join(super::archiving::STANDBY_SOURCE_ARCHIVE),
                    &json,
                )?;
                Some(super::archiving::standby_restore_command(&self.config_path))
            }
            None => None,
        };
        let forced = conf::Forced {
            listen: self.listen,
            run_dir: &self.run_dir,
            member: self.member.as_str(),
            upstream: up,
            synchronous_standby_names: &self.standby_names,
            archive: self
                .archive_commands
                .as_ref()
                .map(|(a, r)| (a.as_str(), r.as_str())),
            recovery: self
                .clone_recovery
                .as_ref()
                .map(|(r, t)| (r.as_str(), t.as_deref())),
            standby_restore: standby_restore.as_deref(),
            ssl: self.ssl.as_ref(),
        };
        let text =
            conf::postgresql_conf(&[&conf::defaults(), cluster, &self.local_params], &forced);
        write_private(&self.config_file(), &text)?;
        self.cluster_params = Some(cluster.clone());
        Ok(())
    }

    /// Applies changed cluster-wide parameters (etcd `config`) to the running instance:
    /// rewrites `postgresql.conf` for the same upstream and reloads. A setting that needs a
    /// restart then shows as `pending_restart`. Returns whether anything changed.
    pub async fn apply_cluster_params(
        &mut self,
        cluster: &BTreeMap<String, String>,
    ) -> Result<bool, PgError> {
        match &self.cluster_params {
            Some(current) if current != cluster && self.postmaster.is_some() => {}
            _ => return Ok(false),
        }
        let up = self.upstream.clone();
        self.write_conf(up.as_ref(), cluster)?;
        self.session.execute("SELECT pg_reload_conf()").await?;
        tracing::info!("the cluster's parameters changed; reloaded the configuration");
        Ok(true)
    }

    /// `synchronous_standby_names` as last written.
    pub fn standby_names(&self) -> &str {
        &self.standby_names
    }

    /// Sets `synchronous_standby_names` and reloads when it changed; returns whether it did.
    pub async fn set_standby_names(&mut self, value: &str) -> Result<bool, PgError> {
        if self.standby_names == value {
            return Ok(false);
        }
        let previous = std::mem::replace(&mut self.standby_names, value.to_string());
        if let Err(e) = self.reload().await {
            // Not in force: the next call must write and reload again, not skip it as done.
            self.standby_names = previous;
            return Err(e);
        }
        tracing::info!(
            synchronous_standby_names = value,
            "changed the synchronous standbys"
        );
        Ok(true)
    }

    /// After naming other synchronous standbys: once a walsender runs as synchronous, one WAL
    /// record of its own (a non-transactional message, which waits for no standby). Commits
    /// that waited for a standby that left are released by a synchronous standby's next reply,
    /// and a standby replies when it has flushed new WAL, else only every
    /// `wal_receiver_status_interval` (10 s): without new WAL they would wait that long.
    pub async fn nudge_sync_standbys(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            match self.session.has_sync_walsender().await {
                Ok(true) => break,
                Ok(false) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                _ => return,
            }
        }
        if let Err(e) = self
            .session
            .execute(
                "SELECT pg_logical_emit_message(false, 'spilo', 'synchronous standbys changed')",
            )
            .await
        {
            tracing::debug!(error = %e, "could not write the WAL record that wakes the standbys");
        }
    }

    /// Rewrites `postgresql.conf` from the current settings and reloads (`POST /reload`).
    pub async fn reload(&mut self) -> Result<(), PgError> {
        let up = self.upstream.clone();
        let cluster = self.cluster_params.clone().unwrap_or_default();
        self.write_conf(up.as_ref(), &cluster)?;
        self.session.execute("SELECT pg_reload_conf()").await?;
        Ok(())
    }

    /// The cluster parameters the running configuration was written with.
    pub fn cluster_params(&self) -> BTreeMap<String, String> {
        self.cluster_params.clone().unwrap_or_default()
    }
}
