//! Reading a stopped (or running) data directory's control file through `pg_controldata`:
//! its system identifier, whether it was last a primary, and its timeline.

use crate::ha::DataDir;
use spilo_model::{Lsn, TimelineId};
use std::collections::HashMap;
use std::path::Path;

/// What `pg_controldata` printed, as key/value pairs.
#[derive(Debug, Clone, Default)]
pub struct ControlData(HashMap<String, String>);

impl ControlData {
    /// Parses `pg_controldata` output.
    pub fn parse(text: &str) -> Self {
        ControlData(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    /// A raw field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The database system identifier.
    pub fn sysid(&self) -> Option<&str> {
        self.get("Database system identifier")
    }

    /// Whether the cluster state says it last ran as a primary (not in recovery).
    pub fn was_primary(&self) -> bool {
        matches!(
            self.get("Database cluster state"),
            Some("in production" | "shut down" | "shutting down" | "in crash recovery")
        )
    }

    /// Whether the last shutdown was clean.
    pub fn clean_shutdown(&self) -> bool {
        matches!(
            self.get("Database cluster state"),
            Some("shut down" | "shut down in recovery")
        )
    }

    /// The highest timeline the control file mentions (checkpoint or minimum recovery point).
    pub fn timeline(&self) -> TimelineId {
        let field = |k: &str| self.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        TimelineId(
            field("Latest checkpoint's TimeLineID")
                .max(field("Min recovery ending loc's timeline")),
        )
    }

    /// The shutdown checkpoint's location when a primary shut down cleanly (`shut down`, not
    /// `shut down in recovery`: a replica's last restartpoint is not the end of its WAL).
    pub fn clean_primary_checkpoint(&self) -> Option<Lsn> {
        (self.get("Database cluster state") == Some("shut down"))
            .then(|| self.get("Latest checkpoint location")?.parse().ok())
            .flatten()
    }

    /// The data directory as the HA core sees it.
    pub fn to_data_dir(&self) -> Option<DataDir> {
        Some(DataDir::Initialized {
            sysid: self.sysid()?.to_string(),
            was_primary: self.was_primary(),
            timeline: self.timeline(),
            clean_checkpoint: self.clean_primary_checkpoint(),
        })
    }
}

/// Runs `pg_controldata` on `data_dir`.
pub async fn read(bin_dir: &Path, data_dir: &Path) -> std::io::Result<ControlData> {
    let out = tokio::process::Command::new(bin_dir.join("pg_controldata"))
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "pg_controldata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(ControlData::parse(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7311111111111111111
Database cluster state:               in archive recovery
pg_control last modified:             Wed 25 Nov 2026 06:00:00 PM UTC
Latest checkpoint location:           0/3000060
Latest checkpoint's TimeLineID:       1
Min recovery ending location:         0/4000000
Min recovery ending loc's timeline:   2
";

    #[test]
    fn reads_identity_role_and_timeline() {
        let c = ControlData::parse(SAMPLE);
        assert_eq!(c.sysid(), Some("7311111111111111111"));
        assert!(!c.was_primary());
        assert!(!c.clean_shutdown());
        assert_eq!(c.timeline(), TimelineId(2));
        assert_eq!(
            c.to_data_dir(),
            Some(DataDir::Initialized {
                sysid: "7311111111111111111".into(),
                was_primary: false,
                timeline: TimelineId(2),
                clean_checkpoint: None,
            })
        );
    }

    #[test]
    fn a_cleanly_stopped_primary_reports_its_shutdown_checkpoint() {
        let c = ControlData::parse(&SAMPLE.replace("in archive recovery", "shut down"));
        assert_eq!(c.clean_primary_checkpoint(), Some(Lsn(0x3000060)));
        let replica =
            ControlData::parse(&SAMPLE.replace("in archive recovery", "shut down in recovery"));
        assert_eq!(replica.clean_primary_checkpoint(), None);
    }

    #[test]
    fn a_crashed_primary_counts_as_primary() {
        let c = ControlData::parse(&SAMPLE.replace("in archive recovery", "in production"));
        assert!(c.was_primary());
        assert!(!c.clean_shutdown());
    }
}
