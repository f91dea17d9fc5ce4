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

/// Client URLs of the etcd a cluster file names (`https://` from the `-ssl` SRV records for
/// an etcd cluster of the repository). `SPILO_ETCD_NAMESERVER` (`address:port`) names the DNS
/// server asked for SRV records instead of the system's, for a private zone this machine's
/// resolver does not serve.
pub async fn endpoints(dcs: &DcsSpec) -> Result<Vec<String>, String> {
    let nameserver =
        match std::env::var("SPILO_ETCD_NAMESERVER") {
            Ok(v) => Some(v.parse().map_err(|e| {
                format!("SPILO_ETCD_NAMESERVER={v:?} is not an address and port: {e}")
            })?),
            Err(_) => None,
        };
    let cfg = spilo_model::governor::EtcdConfig {
        hosts: dcs.hosts.clone(),
        discovery_domain: dcs.discovery_domain.clone(),
        discovery_nameserver: nameserver,
        plaintext: false,
    };
    let tls = client_tls(dcs)?;
    spilo_discovery::endpoints(&cfg, tls.as_ref(), TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

/// The CA, client certificate and key `spilo` speaks TLS to an etcd cluster of the
/// repository with (`SPILO_ETCD_CACERT`, `SPILO_ETCD_CERT`, `SPILO_ETCD_KEY`, as for the
/// operating commands); `None` for other etcd.
pub fn client_tls(dcs: &DcsSpec) -> Result<Option<spilo_discovery::EtcdTls>, String> {
    let Some(cluster) = &dcs.etcd_cluster else {
        return Ok(None);
    };
    let var = |n: &str| std::env::var_os(n).map(std::path::PathBuf::from);
    match (
        var("SPILO_ETCD_CACERT"),
        var("SPILO_ETCD_CERT"),
        var("SPILO_ETCD_KEY"),
    ) {
        (Some(ca), Some(cert), Some(key)) => spilo_discovery::EtcdTls::read(&ca, &cert, &key)
            .map(Some)
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "etcd cluster {cluster} admits only certificates of its CA: set SPILO_ETCD_CACERT, \
             SPILO_ETCD_CERT and SPILO_ETCD_KEY to its CA certificate and a client certificate \
             and key it issued"
        )),
    }
}

/// A client of the etcd `dcs` names, over TLS for an etcd cluster of the repository.
pub async fn connect_dcs(dcs: &DcsSpec) -> Result<Client, String> {
    let endpoints = endpoints(dcs).await?;
    let tls = client_tls(dcs)?;
    connect(&endpoints, tls.as_ref()).await
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
