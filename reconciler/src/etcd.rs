//! Talking to a cluster's etcd from `spilo`: connecting with timeouts, and resolving a
//! cluster file's `dcs` (hosts, or a discovery domain's SRV records) to client URLs.

use etcd_client::{Client, ConnectOptions};
use spilo_model::spec::DcsSpec;
use std::time::Duration;

/// How long one etcd call may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// `http://` (`https://` with `tls`) added to a bare `host:port`.
pub fn normalize(endpoints: &[String], tls: bool) -> Vec<String> {
    endpoints
        .iter()
        .map(|e| spilo_discovery::normalize(e, tls))
        .collect()
}

/// Client URLs of the etcd a cluster file names.
pub async fn endpoints(dcs: &DcsSpec) -> Result<Vec<String>, String> {
    let cfg = spilo_model::governor::EtcdConfig {
        hosts: dcs.hosts.clone(),
        discovery_domain: dcs.discovery_domain.clone(),
        discovery_nameserver: None,
        plaintext: false,
    };
    spilo_discovery::endpoints(&cfg, None, TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

/// A client for `endpoints`, or why not; over TLS with `tls` (etcd checked against its CA,
/// spilo's client certificate presented).
pub async fn connect(
    endpoints: &[String],
    tls: Option<&spilo_discovery::EtcdTls>,
) -> Result<Client, String> {
    let endpoints = normalize(endpoints, tls.is_some());
    let mut options = ConnectOptions::new()
        .with_connect_timeout(TIMEOUT)
        .with_timeout(TIMEOUT);
    if let Some(t) = tls {
        options = options.with_tls(t.options());
    }
    match tokio::time::timeout(TIMEOUT, Client::connect(&endpoints, Some(options))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!(
            "cannot reach etcd at {}: {e}",
            endpoints.join(", ")
        )),
        Err(_) => Err(format!(
            "cannot reach etcd at {}: timed out",
            endpoints.join(", ")
        )),
    }
}
