//! The member's own certificate (`tls:` in the configuration): issued at start from the
//! cluster's CA when the one on disk is missing, expiring, lacks this member's addresses or
//! comes from another CA; renewed by [`run`] when a third of its lifetime remains, after which
//! PostgreSQL is reloaded (SIGHUP re-reads `ssl_cert_file`) and the REST API's TLS
//! configuration is replaced in place. Neither restarts, so a renewal never costs a failover.
//!
//! The etcd connection is made again with the renewed certificate ([`crate::dcs::Dcs::reconnect`]):
//! established connections are not re-authenticated, but a connection made after the old
//! certificate expired (etcd restarted, the network cut) must present a valid one.

use spilo_model::governor::GovernorConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why the member's certificate could not be issued or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA certificate or key is not usable, or a name cannot go into a certificate.
    #[error("{what}: {source}")]
    Pki {
        /// Which file or step.
        what: String,
        /// What is wrong.
        source: spilo_pki::PkiError,
    },
}

/// Where the member's certificate lives and what it is made from.
#[derive(Clone)]
pub struct MemberCert {
    ca_file: PathBuf,
    /// The CA certificate when the key's secret carries it too (a PEM bundle, as on AWS):
    /// written to `ca_file` before anything reads it.
    ca_cert: Option<String>,
    ca_key: String,
    cert: PathBuf,
    key: PathBuf,
    names: Vec<String>,
    lifetime: Duration,
}

impl std::fmt::Debug for MemberCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberCert")
            .field("cert", &self.cert)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl MemberCert {
    /// From a configuration with `tls:` and the CA key it references; `None` without `tls:`.
    pub fn new(config: &GovernorConfig, ca_key: Option<&str>) -> Option<Self> {
        let tls = config.tls.as_ref()?;
        let (cert, key) = config.member_cert()?;
        let (ca_cert, ca_key) = split_bundle(ca_key?);
        Some(Self {
            ca_file: tls.ca_file.clone(),
            ca_cert,
            ca_key,
            cert,
            key,
            names: config.cert_names(),
            lifetime: Duration::from_secs(tls.lifetime),
        })
    }

    /// From its parts: the CA certificate file, the CA key's secret (a key, or a PEM bundle of
    /// certificate and key), the directory of `member.crt`/`member.key`, the names it carries.
    pub fn from_parts(
        ca_file: &Path,
        ca_key: &str,
        dir: &Path,
        names: Vec<String>,
        lifetime: Duration,
    ) -> Self {
        let (ca_cert, ca_key) = split_bundle(ca_key);
        Self {
            ca_file: ca_file.to_path_buf(),
            ca_cert,
            ca_key,
            cert: dir.join("member.crt"),
            key: dir.join("member.key"),
            names,
            lifetime,
        }
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The certificate and key files.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// Issues a certificate unless the one on disk is still good at `now`; returns why a new
    /// one was written, or `None`, and when the next renewal is due.
    pub fn ensure(
        &self,
        now: SystemTime,
    ) -> Result<(Option<spilo_pki::Renewal>, SystemTime), CertError> {
        if let Some(pem) = &self.ca_cert
            && std::fs::read_to_string(&self.ca_file).ok().as_deref() != Some(pem.as_str())
        {
            write_file(&self.ca_file, pem, 0o644)?;
        }
        let ca_cert = read(&self.ca_file)?;
        let ca_facts = spilo_pki::facts(&ca_cert).map_err(|source| CertError::Pki {
            what: format!("the CA certificate {}", self.ca_file.display()),
            source,
        })?;
        let current = std::fs::read_to_string(&self.cert)
            .ok()
            .and_then(|pem| spilo_pki::facts(&pem).ok());
        let why = match &current {
            None => Some(spilo_pki::Renewal::Expiring),
            Some(f) => spilo_pki::needs_renewal(f, &ca_facts, &self.names, now),
        };
        let Some(why) = why else {
            let due = current.as_ref().map(spilo_pki::renew_at).unwrap_or(now);
            return Ok((None, due));
        };
        let ca = spilo_pki::CertAndKey {
            cert: ca_cert,
            key: self.ca_key.clone(),
        };
        let issued = spilo_pki::issue(&ca, &self.names, self.lifetime, now).map_err(|source| {
            CertError::Pki {
                what: "issuing the member certificate".into(),
                source,
            }
        })?;
        // The key first: a reader that sees the new certificate finds its key in place.
        write_private(&self.key, &issued.key)?;
        write_private(&self.cert, &issued.cert)?;
        let facts = spilo_pki::facts(&issued.cert).map_err(|source| CertError::Pki {
            what: "the issued certificate".into(),
            source,
        })?;
        Ok((Some(why), spilo_pki::renew_at(&facts)))
    }

    /// What the etcd client presents and checks (the files as they are now).
    pub fn etcd_tls(&self) -> Result<spilo_discovery::EtcdTls, CertError> {
        Ok(spilo_discovery::EtcdTls {
            ca: read(&self.ca_file)?,
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

/// What is reloaded after a renewal.
pub struct Reload {
    /// The REST API's live TLS configuration.
    pub api: Option<axum_server::tls_rustls::RustlsConfig>,
    /// PGDATA, whose `postmaster.pid` names the postmaster to send SIGHUP.
    pub data_dir: PathBuf,
    /// The etcd connection, when it speaks TLS with this certificate.
    pub etcd: Option<crate::dcs::Dcs>,
}

/// Renews the certificate when it is due (checked at least every `check`, so a clock jump or
/// a failed renewal is retried) and reloads what uses it.
pub async fn run(cert: MemberCert, reload: Reload, check: Duration, cancel: CancellationToken) {
    // Whether the etcd connection still presents an older certificate.
    let mut etcd_stale = false;
    loop {
        let due = match cert.ensure(SystemTime::now()) {
            Ok((why, due)) => {
                if let Some(why) = why {
                    tracing::info!(reason = ?why, cert = %cert.cert.display(), "renewed the member certificate");
                    if let Some(api) = &reload.api
                        && let Err(e) = api.reload_from_pem_file(&cert.cert, &cert.key).await
                    {
                        tracing::warn!(error = %e, "the REST API keeps its old certificate");
                    }
                    sighup_postmaster(&reload.data_dir);
                    etcd_stale = reload.etcd.is_some();
                }
                Some(due)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the member certificate");
                None
            }
        };
        if etcd_stale && let Some(dcs) = &reload.etcd {
            let reconnected = match cert.etcd_tls() {
                Ok(tls) => dcs.reconnect(Some(&tls)).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match reconnected {
                Ok(()) => {
                    etcd_stale = false;
                    tracing::info!("etcd connection made again with the renewed certificate");
                }
                // Tried again shortly: the old certificate is still valid for a while.
                Err(e) => tracing::warn!(error = %e, "etcd keeps the old certificate for now"),
            }
        }
        let retry = if etcd_stale {
            Duration::from_secs(5).min(check)
        } else {
            check
        };
        let wait = due
            .and_then(|d| d.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
            .clamp(Duration::from_millis(200), retry);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Asks the running postmaster to re-read its configuration, as `pg_ctl reload` does.
fn sighup_postmaster(data_dir: &Path) {
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        );
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A CA secret's value: the certificate blocks (when the secret carries them) and the rest
/// (the private key).
fn split_bundle(pem: &str) -> (Option<String>, String) {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = String::new();
    let mut rest = String::new();
    let mut text = pem;
    while let Some(start) = text.find(BEGIN) {
        rest.push_str(&text[..start]);
        let Some(end) = text[start..].find(END).map(|e| start + e + END.len()) else {
            break;
        };
        certs.push_str(&text[start..end]);
        certs.push('\n');
        text = &text[end..];
    }
    rest.push_str(text);
    let rest = rest.trim().to_string() + "\n";
    ((!certs.is_empty()).then_some(certs), rest)
}

/// Writes `text` to `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    write_file(path, text, 0o600)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path, lifetime: Duration) -> MemberCert {
        let ca =
            spilo_pki::new_ca("test", Duration::from_secs(86_400), SystemTime::now()).expect("CA");
        std::fs::write(dir.join("ca.crt"), &ca.cert).expect("write");
        MemberCert {
            ca_file: dir.join("ca.crt"),
            ca_cert: None,
            ca_key: ca.key,
            cert: dir.join("tls/member.crt"),
            key: dir.join("tls/member.key"),
            names: vec!["127.0.0.1".into()],
            lifetime,
        }
    }

    #[test]
    fn issued_once_then_kept_until_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = setup(dir.path(), Duration::from_secs(3000));
        let now = SystemTime::now();
        let (first, due) = c.ensure(now).expect("issue");
        assert_eq!(first, Some(spilo_pki::Renewal::Expiring));
        let mode = std::fs::metadata(&c.key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let serial = std::fs::read_to_string(&c.cert).expect("cert");
        assert_eq!(c.ensure(now).expect("keep").0, None);
        assert_eq!(std::fs::read_to_string(&c.cert).expect("cert"), serial);
        let (again, _) = c.ensure(due + Duration::from_secs(1)).expect("renew");
        assert_eq!(again, Some(spilo_pki::Renewal::Expiring));
        assert_ne!(std::fs::read_to_string(&c.cert).expect("cert"), serial);
    }

    #[test]
    fn a_bundle_secret_gives_the_ca_certificate_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = spilo_pki::new_ca("bundle", Duration::from_secs(86_400), SystemTime::now())
            .expect("CA");
        let (cert, key) = split_bundle(&format!("{}{}", ca.cert, ca.key));
        assert_eq!(cert.as_deref().map(str::trim), Some(ca.cert.trim()));
        assert_eq!(key.trim(), ca.key.trim());
        assert_eq!(
            split_bundle(&ca.key),
            (None, ca.key.trim().to_string() + "\n")
        );
        let c = MemberCert {
            ca_file: dir.path().join("tls/ca.crt"),
            ca_cert: cert,
            ca_key: key,
            cert: dir.path().join("tls/member.crt"),
            key: dir.path().join("tls/member.key"),
            names: vec!["10.0.0.7".into()],
            lifetime: Duration::from_secs(3000),
        };
        let (why, _) = c.ensure(SystemTime::now()).expect("issue");
        assert_eq!(why, Some(spilo_pki::Renewal::Expiring));
        let written = std::fs::read_to_string(&c.ca_file).expect("ca.crt");
        assert_eq!(written.trim(), ca.cert.trim());
    }

    #[test]
    fn a_replaced_ca_means_a_new_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = setup(dir.path(), Duration::from_secs(3000));
        c.ensure(SystemTime::now()).expect("issue");
        let c2 = setup(dir.path(), Duration::from_secs(3000));
        let (why, _) = c2.ensure(SystemTime::now()).expect("reissue");
        assert_eq!(why, Some(spilo_pki::Renewal::OtherIssuer));
    }
}
