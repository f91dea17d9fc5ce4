//! Finding etcd: a configured list of endpoints, or DNS SRV records as in the 2015 Spilo talk.
//! Both programs use it (the governor to connect, `spilo` to reach a cluster's etcd from its
//! file), so it lives below both.
//!
//! For a discovery domain, `_etcd-client._tcp.<domain>` records name client endpoints directly.
//! Without them, `_etcd-server._tcp.<domain>` records name the members' peer endpoints, and
//! each peer's `/members` answer lists the cluster's client URLs (what etcd's own discovery
//! and Patroni do).

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use serde::Deserialize;
use spilo_model::governor::EtcdConfig;
use std::time::Duration;

/// Why etcd could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("etcd discovery: {0}")]
pub struct DiscoveryError(pub String);

/// Client URLs (`http://host:port`) for the configured etcd.
pub async fn endpoints(cfg: &EtcdConfig, timeout: Duration) -> Result<Vec<String>, DiscoveryError> {
    match &cfg.discovery_domain {
        None => Ok(cfg.hosts.iter().map(|h| normalize(h)).collect()),
        Some(domain) => discover(domain, cfg.discovery_nameserver, timeout).await,
    }
}

/// Adds `http://` to a bare `host:port`.
pub fn normalize(host: &str) -> String {
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

async fn discover(
    domain: &str,
    nameserver: Option<std::net::SocketAddr>,
    timeout: Duration,
) -> Result<Vec<String>, DiscoveryError> {
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

    let client_name = format!("_etcd-client._tcp.{domain}.");
    if let Ok(Ok(found)) =
        tokio::time::timeout(timeout, resolver.srv_lookup(client_name.as_str())).await
    {
        let urls: Vec<String> = srv_targets(found.answers())
            .into_iter()
            .map(|(host, port)| format!("http://{host}:{port}"))
            .collect();
        if !urls.is_empty() {
            return Ok(urls);
        }
    }

    let server_name = format!("_etcd-server._tcp.{domain}.");
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
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| DiscoveryError(format!("cannot build an HTTP client: {e}")))?;
    let mut errors = Vec::new();
    for (host, port) in &peers {
        let url = format!("http://{host}:{port}/members");
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
        assert_eq!(normalize("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(normalize("https://e:2379"), "https://e:2379");
    }
}
