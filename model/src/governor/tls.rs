//! `tls:` in the governor configuration: every connection of a member over TLS (etcd,
//! PostgreSQL's clients and replication, the REST API) with one certificate the member issues
//! itself from the cluster's CA and renews before it expires.

use super::{ApiTlsConfig, GovernorConfig, SecretRef};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `tls:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA's certificate (PEM): what etcd, the other members and clients are
    /// checked against, and what they check this member against.
    pub ca_file: PathBuf,
    /// The CA's private key (PEM), read where the member may read it (a file, SSM
    /// SecureString, Secrets Manager): the member signs its own certificate with it.
    pub ca_key: SecretRef,
    /// Where the member writes `member.crt` and `member.key` (default `<run_dir>/tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Names in the certificate besides the member's connect hosts (always included): the
    /// cluster's DNS name, the load balancer's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A member certificate's lifetime in seconds (default 30 days); it is renewed when a
    /// third of it remains.
    #[serde(default = "default_lifetime")]
    pub lifetime: u64,
}

/// The shortest certificate lifetime a configuration may ask for (renewal needs room).
pub const MIN_LIFETIME: u64 = 15;

fn default_lifetime() -> u64 {
    30 * 86_400
}

impl TlsConfig {
    /// A member configuration for a CA whose key is a file.
    pub fn new(ca_file: PathBuf, ca_key: SecretRef) -> Self {
        Self {
            ca_file,
            ca_key,
            dir: None,
            names: Vec::new(),
            lifetime: default_lifetime(),
        }
    }
}

impl GovernorConfig {
    /// The directory of the member's certificate and key.
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.tls
            .as_ref()
            .map(|t| t.dir.clone().unwrap_or_else(|| self.run_dir().join("tls")))
    }

    /// The member's certificate file and key file.
    pub fn member_cert(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_dir()
            .map(|d| (d.join("member.crt"), d.join("member.key")))
    }

    /// The REST API's certificate: `restapi.tls` as written, else the member's own
    /// certificate with `tls:`, else none (plain HTTP).
    pub fn api_tls(&self) -> Option<ApiTlsConfig> {
        if let Some(t) = &self.restapi.tls {
            return Some(t.clone());
        }
        let (certfile, keyfile) = self.member_cert()?;
        Some(ApiTlsConfig {
            certfile,
            keyfile,
            cafile: self.tls.as_ref().map(|t| t.ca_file.clone()),
        })
    }

    /// The names a member certificate must carry: the hosts of PostgreSQL's and the REST
    /// API's connect addresses, then `tls.names`.
    pub fn cert_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for addr in [self.pg_connect_address(), self.api_connect_address()] {
            let host = host_of(&addr);
            if !names.contains(&host) {
                names.push(host);
            }
        }
        if let Some(t) = &self.tls {
            for n in &t.names {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
    }
}

/// The host of `host:port` (IPv6 in brackets loses them).
fn host_of(addr: &str) -> String {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("10.0.0.1:5432"), "10.0.0.1");
        assert_eq!(host_of("[::1]:5432"), "::1");
        assert_eq!(host_of("db.example.org:8008"), "db.example.org");
        assert_eq!(host_of("db.example.org"), "db.example.org");
    }
}
