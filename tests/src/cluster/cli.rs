//! Running the `spilo` CLI against a test cluster, with its etcd and TLS settings.

use super::{API_TOKEN, Cluster};
use std::path::PathBuf;

impl Cluster {
    /// Runs the `spilo` CLI with `args`; returns (exit code, stdout, stderr).
    /// With TLS the CLI is given the etcd client certificate and the CA through its
    /// environment (`SPILO_ETCD_CACERT`, `SPILO_ETCD_CERT`, `SPILO_ETCD_KEY`, `SPILO_API_CACERT`).
    pub fn spilo(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let mut cmd = std::process::Command::new(&self.spilo);
        cmd.args(args);
        for (k, v) in self.spilo_tls_env() {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub(super) fn spilo_tls_env(&self) -> Vec<(&'static str, PathBuf)> {
        match &self.etcd.client_files {
            Some((ca, cert, key)) => vec![
                ("SPILO_ETCD_CACERT", ca.clone()),
                ("SPILO_ETCD_CERT", cert.clone()),
                ("SPILO_ETCD_KEY", key.clone()),
            ],
            None => Vec::new(),
        }
    }

    /// Runs an operator command of the `spilo` CLI against this cluster without blocking the
    /// runtime: `spilo <command> <scope> <args> --etcd <etcd>`, plus `--token <API_TOKEN>` for
    /// the commands that go through the REST API.
    pub async fn operate(&self, command: &str, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let mut cmd = tokio::process::Command::new(&self.spilo);
        cmd.arg(command)
            .arg(&self.scope)
            .args(args)
            .args(["--etcd", &self.etcd.client_addr]);
        for (k, v) in self.spilo_tls_env() {
            cmd.env(k, v);
        }
        if ["switchover", "failover", "restart", "reload", "reinit"].contains(&command) {
            cmd.args(["--token", API_TOKEN]);
            if self.options.api_tls || self.options.tls {
                cmd.arg("--cacert").arg(self.api_cert());
            }
        }
        let out = cmd.output().await?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}
