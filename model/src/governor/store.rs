//! Where the coordination store is: `etcd:` (endpoints or DNS discovery) or `zookeeper:`
//! (an ensemble's servers), exactly one of them, and the checks on them.

use super::{GovernorConfig, Invalid, invalid};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where etcd is: a list of endpoints, or a DNS domain with SRV records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client endpoints such as `127.0.0.1:2379` or `http://10.0.0.1:2379`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A domain whose `_etcd-client._tcp` or `_etcd-server._tcp` SRV records name the etcd members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_domain: Option<String>,
    /// The DNS server to ask for SRV records (`host:port`); the system resolver when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_nameserver: Option<SocketAddr>,
    /// Speak plaintext to etcd even with `tls:` (an etcd that has no TLS yet); by default
    /// `tls:` means etcd over TLS with the member's certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
}

/// `zookeeper:`: the ensemble's servers. Spoken to in plaintext (TLS to ZooKeeper is not
/// there yet); each member's lease is a session whose timeout is `ha.ttl`, so the servers'
/// `maxSessionTimeout` must allow it, and their `tickTime` must be at most 1000 ms: the
/// ensemble's leader hears of a session's pings up to half a tick late, which the fence
/// margin must cover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooKeeperConfig {
    /// The servers, `host:port` each.
    pub hosts: Vec<String>,
}

impl GovernorConfig {
    /// Whether etcd is spoken to over TLS (with `tls:`, unless `etcd.plaintext`; never when
    /// the store is ZooKeeper).
    pub fn etcd_over_tls(&self) -> bool {
        self.tls.is_some() && !self.etcd.plaintext && self.zookeeper.is_none()
    }
}

impl GovernorConfig {
    /// One store, well formed.
    pub(super) fn check_store(&self) -> Result<(), Invalid> {
        match &self.zookeeper {
            Some(_) if self.etcd != EtcdConfig::default() => {
                return Err(invalid(
                    "zookeeper",
                    "give either etcd or zookeeper, not both",
                ));
            }
            Some(z) => {
                if z.hosts.is_empty() {
                    return Err(invalid("zookeeper.hosts", "name at least one server"));
                }
                if let Some(h) = z.hosts.iter().find(|h| !is_host_port(h)) {
                    return Err(invalid("zookeeper.hosts", format!("{h} is not host:port")));
                }
            }
            None => match (self.etcd.hosts.is_empty(), &self.etcd.discovery_domain) {
                (true, None) => {
                    return Err(invalid("etcd", "set either hosts or discovery_domain"));
                }
                (false, Some(_)) => {
                    return Err(invalid("etcd", "set hosts or discovery_domain, not both"));
                }
                _ => {}
            },
        }
        Ok(())
    }
}

/// `host:port` with a port number (a ZooKeeper server's address).
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
