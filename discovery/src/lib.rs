//! Finding etcd: a configured list of endpoints, or DNS SRV records as in the 2015 Spilo talk.
//! Both programs use it (the governor to connect, `spilo` to reach a cluster's etcd from its
//! file), so it lives below both.
//!
//! For a discovery domain, `_etcd-client._tcp.<domain>` records name client endpoints directly.
//! Without them, `_etcd-server._tcp.<domain>` records name the members' peer endpoints, and
//! each peer's `/members` answer lists the cluster's client URLs (what etcd's own discovery
//! and Patroni do). With TLS the `-ssl` variants of both records are asked for
//! (`_etcd-client-ssl._tcp`, `_etcd-server-ssl._tcp`), URLs are `https`, and [`EtcdTls`] is
//! what a client checks etcd against and presents to it.

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use serde::Deserialize;
use spilo_model::governor::EtcdConfig;
use std::path::Path;
use std::time::Duration;

/// Why etcd could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("etcd discovery: {0}")]
pub struct DiscoveryError(pub String);

/// The TLS side of an etcd client: the CA etcd's certificate must chain to, and the client
/// certificate etcd authenticates the client by (`--client-cert-auth`).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA certificate (PEM).
    pub ca: String,
    /// The client certificate (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdTls { .. }")
    }
}

impl EtcdTls {
    /// Reads the three PEM files.
    pub fn read(ca: &Path, cert: &Path, key: &Path) -> Result<Self, DiscoveryError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| DiscoveryError(format!("cannot read {}: {e}", p.display())))
        };
        Ok(Self {
            ca: read(ca)?,
            cert: read(cert)?,
            key: read(key)?,
        })
    }

    /// etcd-client's options: only servers whose certificate chains to the CA and names the
    /// host they were reached at are spoken to.
    pub fn options(&self) -> etcd_client::TlsOptions {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca))
            .identity(etcd_client::Identity::from_pem(&self.cert, &self.key))
    }

    fn http(&self, timeout: Duration) -> Result<reqwest::Client, DiscoveryError> {
        let ca = reqwest::Certificate::from_pem(self.ca.as_bytes())
            .map_err(|e| DiscoveryError(format!("the CA certificate: {e}")))?;
        let identity =
            reqwest::Identity::from_pem(format!("{}\n{}", self.cert, self.key).as_bytes())
                .map_err(|e| DiscoveryError(format!("the client certificate: {e}")))?;
        reqwest::Client::builder()
            .timeout(timeout)
            .tls_certs_only([ca])
            .identity(identity)
            .build()
            .map_err(|e| DiscoveryError(format!("cannot build an HTTP client: {e}")))
    }
}

/// Client URLs (`http://host:port`, `https://` with `tls`) for the configured etcd.
pub async fn endpoints(
    cfg: &EtcdConfig,
    tls: Option<&EtcdTls>,
    timeout: Duration,
) -> Result<Vec<String>, DiscoveryError> {
    match &cfg.discovery_domain {
        None => Ok(cfg
            .hosts
            .iter()
            .map(|h| normalize(h, tls.is_some()))
            .collect()),
        Some(domain) => discover(domain, cfg.discovery_nameserver, tls, timeout).await,
    }
}

/// Adds `http://` (`https://` with `tls`) to a bare `host:port`.
pub fn normalize(host: &str, tls: bool) -> String {
    if host.contains("://") {
        host.to_string()
    } else {
        format!("{}://{host}", scheme(tls))
    }
}

fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

async fn discover(
    domain: &str,
    nameserver: Option<std::net::SocketAddr>,
    tls: Option<&EtcdTls>,
    timeout: Duration,
) -> Result<Vec<String>, DiscoveryError> {
    let (ssl, scheme) = match tls {
        Some(_) => ("-ssl", "https"),
        None => ("", "http"),
    };
    let provider = TokioRuntimeProvider::default();
    let builder = match nameserver {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), provider)
        }
        None => Resolver::builder(provider).map_err(|e| {
            DiscoveryError(format!("cannot read the system DNS configuration: {e}"))
        })?,
    };
    let resolver = builder
        .build()
        .map_err(|e| DiscoveryError(format!("cannot build a DNS resolver: {e}")))?;

    let client_name = format!("_etcd-client{ssl}._tcp.{domain}.");
    if let Ok(Ok(found)) =
        tokio::time::timeout(timeout, resolver.srv_lookup(client_name.as_str())).await
    {
        let mut urls: Vec<String> = Vec::new();
        for (host, port) in srv_targets(found.answers()) {
            // With a DNS server of its own, the targets are that server's names, which the
            // system resolver the client connects with may not know: they are contacted at
            // the addresses it gives (etcd clusters of spilo name them in their certificates).
            let host = match nameserver {
                Some(_) => {
                    match tokio::time::timeout(timeout, resolver.lookup_ip(format!("{host}.")))
                        .await
                    {
                        Ok(Ok(ips)) => match ips.iter().next() {
                            Some(ip) => ip.to_string(),
                            None => continue,
                        },
                        _ => continue,
                    }
                }
                None => host,
            };
            urls.push(format!("{scheme}://{host}:{port}"));
        }
        if !urls.is_empty() {
            return Ok(urls);
        }
    }

    let server_name = format!("_etcd-server{ssl}._tcp.{domain}.");
    let found = tokio::time::timeout(timeout, resolver.srv_lookup(server_name.as_str()))
        .await
        .map_err(|_| DiscoveryError(format!("DNS lookup of {server_name} timed out")))?
        .map_err(|e| {
            DiscoveryError(format!(
                "no SRV records for {client_name} or {server_name}: {e}"
            ))
        })?;
    let peers = srv_targets(found.answers());
    if peers.is_empty() {
        return Err(DiscoveryError(format!("no SRV records for {server_name}")));
    }
    let http = match tls {
        Some(t) => t.http(timeout)?,
        None => reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| DiscoveryError(format!("cannot build an HTTP client: {e}")))?,
    };
    let mut errors = Vec::new();
    for (host, port) in &peers {
        let url = format!("{scheme}://{host}:{port}/members");
        match fetch_members(&http, &url).await {
            Ok(urls) if !urls.is_empty() => return Ok(urls),
            Ok(_) => errors.push(format!("{url}: no client URLs")),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(DiscoveryError(format!(
        "SRV records for {server_name} name peers, but none listed client URLs: {}",
        errors.join("; ")
    )))
}

fn srv_targets(records: &[hickory_resolver::proto::rr::Record]) -> Vec<(String, u16)> {
    let mut out: Vec<(u16, String, u16)> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((
                srv.priority,
                srv.target.to_utf8().trim_end_matches('.').to_string(),
                srv.port,
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, h, p)| (h, p)).collect()
}

#[derive(Deserialize)]
struct PeerMember {
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
}

async fn fetch_members(http: &reqwest::Client, url: &str) -> Result<Vec<String>, reqwest::Error> {
    let members: Vec<PeerMember> = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut urls: Vec<String> = members.into_iter().flat_map(|m| m.client_urls).collect();
    urls.sort();
    urls.dedup();
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn bare_hosts_get_a_scheme() {
        assert_eq!(normalize("127.0.0.1:2379", false), "http://127.0.0.1:2379");
        assert_eq!(normalize("127.0.0.1:2379", true), "https://127.0.0.1:2379");
        assert_eq!(normalize("https://e:2379", false), "https://e:2379");
    }
}
