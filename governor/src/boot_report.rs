//! `governor boot-failed`: what the image's boot layer calls when an instance cannot bring
//! its member up. It sends the stack a FAILURE signal (a stack being created then fails at
//! once instead of waiting out its timeout) and writes the reason with the boot log's last
//! lines to etcd `boot/<member>`, which `spilo apply` prints. Each half is tried even when the
//! other fails.
//!
//! The configuration is read leniently ([`Target::read`]: only the scope, namespace, etcd
//! and `aws` sections), because the failure may be that this image is older than the CLI
//! that wrote the file: a strict parse would refuse fields it does not know and the failure
//! would go unreported.

use crate::config::{AwsSettings, EtcdConfig};
use crate::dcs::Dcs;
use crate::runtime::stack_signal::{self, Outcome};
use spilo_model::{BootFailure, Keyspace, MemberName};
use std::path::Path;
use std::time::Duration;

/// Lines of the boot log carried to etcd.
pub const LOG_LINES: usize = 40;

/// The last `n` lines of `log` (nothing when it cannot be read).
pub fn tail(log: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(500).collect())
        .collect()
}

/// Where a report goes: the parts of a configuration file it needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Target {
    /// The cluster.
    pub scope: spilo_model::ClusterName,
    /// The etcd key namespace.
    #[serde(default = "spilo_model::governor::default_namespace")]
    pub namespace: String,
    /// How to find etcd (absent with `zookeeper:`: no report is written then).
    #[serde(default)]
    pub etcd: EtcdConfig,
    /// The ZooKeeper servers, when the store is ZooKeeper (reports are etcd's only).
    #[serde(default)]
    pub zookeeper: Option<spilo_model::governor::ZooKeeperConfig>,
    /// The region and the stack to signal.
    #[serde(default)]
    pub aws: Option<AwsSettings>,
    /// With `tls:`, the CA and the member certificate it issued itself, when it got that far
    /// (read from a file this image can parse in full).
    #[serde(skip)]
    pub tls: Option<crate::dcs::discovery::EtcdTls>,
}

impl Target {
    /// Reads those parts of a configuration file, ignoring everything else.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut target: Self =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(full) = spilo_model::governor::GovernorConfig::parse(&text)
            && let (Some(tls), Some((cert, key))) = (&full.tls, full.member_cert())
            && full.etcd_over_tls()
        {
            target.tls = crate::dcs::discovery::EtcdTls::read(&tls.ca_file, &cert, &key).ok();
        }
        Ok(target)
    }
}

/// What a report reached.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// Channels tried (the stack signal, when configured, and etcd).
    pub attempted: usize,
    /// What could not be done.
    pub problems: Vec<String>,
}

/// What etcd keeps of a failure: the reason, when, and the boot log's last [`LOG_LINES`].
pub fn record(reason: &str, log: &Path, now: std::time::SystemTime) -> BootFailure {
    BootFailure {
        reason: reason.to_string(),
        at: humantime::format_rfc3339_seconds(now).to_string(),
        log: tail(log, LOG_LINES),
    }
}

/// Reports the failure on every channel it has.
pub async fn report(cfg: &Target, name: &MemberName, reason: &str, log: &Path) -> Reported {
    let mut problems = Vec::new();
    // The etcd report; on ZooKeeper there is none (the stack's signal only).
    let mut attempted = usize::from(cfg.zookeeper.is_none());
    if let Some(aws) = &cfg.aws
        && let Some(target) = &aws.signal
    {
        attempted += 1;
        let outcome = Outcome::Failure(reason.to_string());
        let cfn = stack_signal::client(&aws.region).await;
        if let Err(e) = stack_signal::send(&cfn, target, name.as_str(), &outcome).await {
            problems.push(format!("FAILURE signal to {}: {e}", target.stack));
        }
    }
    if cfg.zookeeper.is_some() {
        return Reported {
            attempted,
            problems,
        };
    }
    let timeout = Duration::from_secs(5);
    let failure = record(reason, log, std::time::SystemTime::now());
    let written = async {
        let endpoints = crate::dcs::discovery::endpoints(&cfg.etcd, cfg.tls.as_ref(), timeout)
            .await
            .map_err(|e| e.to_string())?;
        let keys = Keyspace::with_namespace(&cfg.namespace, &cfg.scope);
        let dcs = Dcs::connect(&endpoints, cfg.tls.as_ref(), keys, name.clone(), timeout)
            .await
            .map_err(|e| e.to_string())?;
        dcs.put_boot_failure(&failure)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = written {
        problems.push(format!("etcd boot/{name}: {e}"));
    }
    Reported {
        attempted,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_configuration_is_read_for_what_a_report_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("governor.yaml");
        std::fs::write(
            &f,
            "scope: orders\nsome_future_field: {x: 1}\netcd: {hosts: [\"10.0.0.1:2379\"]}\n\
             postgresql: {whatever: true}\naws: {region: eu-west-1, signal: {stack: spilo-orders, resource: AutoScalingGroup}}\n",
        )
        .expect("write");
        let t = Target::read(&f).expect("lenient");
        assert_eq!(t.scope.as_str(), "orders");
        assert_eq!(t.namespace, "/service");
        assert_eq!(t.etcd.hosts, ["10.0.0.1:2379"]);
        assert_eq!(
            t.aws.and_then(|a| a.signal).map(|s| s.stack),
            Some("spilo-orders".into())
        );
    }

    #[test]
    fn the_record_keeps_the_last_40_lines_of_the_boot_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("boot.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).expect("write");
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let r = record("no volume", &log, at);
        assert_eq!(r.reason, "no volume");
        assert_eq!(r.at, "2026-11-18T11:06:40Z");
        assert_eq!(r.log.len(), 40);
        assert_eq!(r.log.first().map(String::as_str), Some("line 60"));
        assert_eq!(r.log.last().map(String::as_str), Some("line 99"));
    }

    #[test]
    fn the_tail_is_the_last_lines_cut_to_a_readable_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("boot.log");
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, format!("{text}{}\n", "x".repeat(900))).expect("write");
        let t = tail(&log, 3);
        assert_eq!(t[0], "line 48");
        assert_eq!(t[1], "line 49");
        assert_eq!(t[2].len(), 500);
        assert!(tail(&dir.path().join("absent"), 3).is_empty());
    }
}
