//! `governor boot-failed`: what the image's boot layer calls when an instance cannot bring
//! its member up. It sends the stack a FAILURE signal (a stack being created then fails at
//! once instead of waiting out its timeout) and writes the reason with the boot log's last
//! lines to etcd `boot/<member>`, which `spilo apply` prints. Each half is tried even when the
//! other fails.

use crate::config::GovernorConfig;
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

/// Reports the failure; returns what could not be done (empty when both halves worked).
pub async fn report(
    cfg: &GovernorConfig,
    name: &MemberName,
    reason: &str,
    log: &Path,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(aws) = &cfg.aws
        && let Some(target) = &aws.signal
    {
        let outcome = Outcome::Failure(reason.to_string());
        if let Err(e) = stack_signal::send(&aws.region, target, name.as_str(), &outcome).await {
            problems.push(format!("FAILURE signal to {}: {e}", target.stack));
        }
    }
    let timeout = Duration::from_secs(5);
    let failure = BootFailure {
        reason: reason.to_string(),
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        log: tail(log, LOG_LINES),
    };
    let written = async {
        let endpoints = crate::dcs::discovery::endpoints(&cfg.etcd, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let keys = Keyspace::with_namespace(&cfg.namespace, &cfg.scope);
        let dcs = Dcs::connect(&endpoints, keys, name.clone(), timeout)
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
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

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
