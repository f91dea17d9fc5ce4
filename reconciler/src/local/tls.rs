//! TLS of a local cluster that runs its own etcd: a CA generated once per cluster
//! (`<cluster>/tls/ca.crt`, its key beside it, readable only by the servers' user), etcd's
//! server certificate and `spilo`'s client certificate issued from it (renewed at each start
//! when due). The governors issue their own from the same CA (`tls:` in their configuration).

use super::user::RunAs;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The CA's lifetime.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// The lifetime of etcd's and spilo's certificates (renewed at a start when a third remains).
const LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// The files of a local cluster's TLS, as `state.json` records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalTls {
    /// The cluster CA's certificate: what clients check every server against.
    pub ca: PathBuf,
    /// The CA's key (the governors issue their certificates with it).
    pub ca_key: PathBuf,
    /// etcd's server certificate and key.
    pub etcd_cert: PathBuf,
    /// etcd's key.
    pub etcd_key: PathBuf,
    /// The client certificate `spilo` presents to etcd.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl LocalTls {
    /// The layout under a cluster's directory.
    pub fn under(cluster_dir: &Path) -> Self {
        let d = cluster_dir.join("tls");
        Self {
            ca: d.join("ca.crt"),
            ca_key: d.join("ca.key"),
            etcd_cert: d.join("etcd.crt"),
            etcd_key: d.join("etcd.key"),
            client_cert: d.join("spilo.crt"),
            client_key: d.join("spilo.key"),
        }
    }

    /// Creates the CA once and (re)issues etcd's and spilo's certificates when due.
    pub fn prepare(&self, cluster: &str, run_as: &RunAs) -> anyhow::Result<()> {
        if let Some(dir) = self.ca.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            run_as.own(dir)?;
        }
        let now = SystemTime::now();
        if !self.ca.exists() || !self.ca_key.exists() {
            let ca = spilo_pki::new_ca(&format!("spilo local CA of {cluster}"), CA_LIFETIME, now)?;
            write(&self.ca_key, &ca.key, 0o600, run_as)?;
            write(&self.ca, &ca.cert, 0o644, run_as)?;
        }
        let ca = spilo_pki::CertAndKey {
            cert: read(&self.ca)?,
            key: read(&self.ca_key)?,
        };
        let ca_facts =
            spilo_pki::facts(&ca.cert).with_context(|| format!("{}", self.ca.display()))?;
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        for (cert, key) in [
            (&self.etcd_cert, &self.etcd_key),
            (&self.client_cert, &self.client_key),
        ] {
            let due = match std::fs::read_to_string(cert)
                .ok()
                .and_then(|p| spilo_pki::facts(&p).ok())
            {
                Some(f) => spilo_pki::needs_renewal(&f, &ca_facts, &names, now).is_some(),
                None => true,
            };
            if due {
                let issued = spilo_pki::issue(&ca, &names, LIFETIME, now)?;
                write(key, &issued.key, 0o600, run_as)?;
                write(cert, &issued.cert, 0o644, run_as)?;
            }
        }
        Ok(())
    }

    /// What `spilo` presents to and checks etcd with.
    pub fn etcd_client(&self) -> anyhow::Result<spilo_discovery::EtcdTls> {
        spilo_discovery::EtcdTls::read(&self.ca, &self.client_cert, &self.client_key)
            .map_err(anyhow::Error::msg)
    }

    /// etcd's TLS arguments: client and peer traffic over TLS, clients need a certificate
    /// from the cluster CA.
    pub fn etcd_args(&self) -> Vec<String> {
        let (cert, key, ca) = (
            self.etcd_cert.display().to_string(),
            self.etcd_key.display().to_string(),
            self.ca.display().to_string(),
        );
        vec![
            "--cert-file".into(),
            cert.clone(),
            "--key-file".into(),
            key.clone(),
            "--trusted-ca-file".into(),
            ca.clone(),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            cert,
            "--peer-key-file".into(),
            key,
            "--peer-trusted-ca-file".into(),
            ca,
            "--peer-client-cert-auth".into(),
        ]
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32, run_as: &RunAs) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    run_as.own(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// An HTTP client for a local cluster's REST APIs and the scheme they speak: HTTPS checked
/// against the cluster CA when it has one.
pub fn api_client(
    tls: Option<&LocalTls>,
    timeout: Duration,
) -> anyhow::Result<(reqwest::Client, &'static str)> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    let scheme = match tls {
        Some(t) => {
            let ca = reqwest::Certificate::from_pem(read(&t.ca)?.as_bytes())
                .with_context(|| format!("{}", t.ca.display()))?;
            b = b.tls_certs_only([ca]);
            "https"
        }
        None => "http",
    };
    Ok((b.build().context("build an HTTP client")?, scheme))
}
