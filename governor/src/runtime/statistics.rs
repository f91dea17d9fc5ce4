//! The planner's statistics rebuilt on this member's PostgreSQL (`POST /analyze`): `vacuumdb
//! --all --analyze-in-stages`, which an orchestrator asks of the leader after a major
//! upgrade (pg_upgrade does not carry the statistics over before PostgreSQL 18, and from 18
//! on not the extended ones: there with `--missing-stats-only`, so what was carried over is
//! not computed again). One run at a time; it runs beside the HA loop, never in it.

use crate::postgres::tools;
use crate::shared::{Statistics, StatsError, StatsFuture};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a rebuild may take before it is given up.
pub const REBUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// vacuumdb against the local PostgreSQL, by its socket, as the superuser.
pub struct PgStatistics {
    bin_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    user: String,
    running: Mutex<()>,
}

impl PgStatistics {
    /// The rebuild for the server listening on `socket_dir` and `port`.
    pub fn new(bin_dir: PathBuf, socket_dir: PathBuf, port: u16, user: &str) -> Self {
        Self {
            bin_dir,
            socket_dir,
            port,
            user: user.to_string(),
            running: Mutex::new(()),
        }
    }
}

/// vacuumdb's arguments for a server of major version `version`.
pub fn arguments(version: Option<u32>, socket_dir: &str, port: u16, user: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--all", "--analyze-in-stages"].map(String::from).into();
    if version.is_some_and(|v| v >= 18) {
        args.push("--missing-stats-only".into());
    }
    args.extend(["-h", socket_dir, "-p", &port.to_string(), "-U", user, "-w"].map(String::from));
    args
}

impl Statistics for PgStatistics {
    fn rebuild(&self) -> StatsFuture<'_> {
        Box::pin(async move {
            let Ok(_turn) = self.running.try_lock() else {
                return Err(StatsError::Busy);
            };
            let version = crate::major_upgrade::version_of(&self.bin_dir).await;
            let args = arguments(
                version,
                &self.socket_dir.display().to_string(),
                self.port,
                &self.user,
            );
            tracing::info!(?args, "rebuilding the planner's statistics (vacuumdb)");
            tools::run(&self.bin_dir, "vacuumdb", &args, &[], REBUILD_TIMEOUT)
                .await
                .map(|_| {
                    let how: Vec<&str> = args
                        .iter()
                        .map(String::as_str)
                        .take_while(|a| *a != "-h")
                        .collect();
                    format!("statistics rebuilt (vacuumdb {})", how.join(" "))
                })
                .map_err(|e| StatsError::Failed(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::arguments;

    #[test]
    fn eighteen_computes_only_the_statistics_it_did_not_carry_over() {
        let fifteen = arguments(Some(15), "/run/pg", 5432, "postgres");
        assert_eq!(
            fifteen.join(" "),
            "--all --analyze-in-stages -h /run/pg -p 5432 -U postgres -w"
        );
        let eighteen = arguments(Some(18), "/run/pg", 5432, "postgres");
        assert_eq!(
            eighteen.join(" "),
            "--all --analyze-in-stages --missing-stats-only -h /run/pg -p 5432 -U postgres -w"
        );
    }
}
