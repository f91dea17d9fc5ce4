//! The `spec.endpoints` section: the load-balanced primary and replica endpoints, the DNS
//! record, and the health checks against the governors' REST API.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Load balancers, DNS and health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointsSpec {
    /// The endpoint that reaches the primary.
    #[serde(default = "d_primary_endpoint")]
    pub primary: Endpoint,
    /// An endpoint that reaches the replicas (off by default).
    #[serde(default = "d_replica_endpoint")]
    pub replica: Endpoint,
    /// The DNS record (AWS).
    #[serde(default)]
    pub dns: DnsSpec,
    /// The health check the load balancer uses.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// How the primary endpoint's load balancer reaches the primary. Default: `proxy` on the
    /// local target (HAProxy forwards to the governors' primary proxies, on the same machine),
    /// `healthCheck` on AWS (see [`super::ClusterSpec::routing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// Seconds a client connection through the load balancer may stay idle before it is cut
    /// (AWS; the ELB's own default of 60 s cuts pooled connections, senza used 3600).
    #[serde(default = "d_idle_timeout")]
    #[schemars(range(min = 1, max = 4000))]
    pub idle_timeout: u32,
}

fn d_idle_timeout() -> u32 {
    3600
}

impl Default for EndpointsSpec {
    fn default() -> Self {
        Self {
            primary: d_primary_endpoint(),
            replica: d_replica_endpoint(),
            dns: DnsSpec::default(),
            health_check: HealthCheck::default(),
            routing: None,
            idle_timeout: d_idle_timeout(),
        }
    }
}

/// How the primary endpoint's load balancer reaches the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Routing {
    /// The load balancer's health check (`healthCheck.primaryPath`) finds the primary: only
    /// its instance is in service. After a switchover or failover clients wait for the
    /// check to take the old primary out and put the new one in (an ELB: at least 2
    /// intervals of at least 5 s each).
    HealthCheck,
    /// Every instance is in service and forwards to the primary through its governor's
    /// primary proxy, which follows the leader from etcd: clients reach a new primary as soon
    /// as it runs, whatever the load balancer's check interval. One hop more; an instance
    /// that cannot read etcd for a TTL stops forwarding and fails the `/proxy` check.
    Proxy,
}

fn d_primary_endpoint() -> Endpoint {
    Endpoint {
        enabled: true,
        port: 5432,
    }
}
fn d_replica_endpoint() -> Endpoint {
    Endpoint {
        enabled: false,
        port: 5433,
    }
}

/// One load-balanced endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// Whether it exists.
    pub enabled: bool,
    /// The port clients connect to (AWS; the local target derives its own).
    pub port: u16,
}

/// The DNS record (AWS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSpec {
    /// The record's name in the hosted zone; the cluster name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TTL in seconds.
    #[serde(default = "d_dns_ttl")]
    pub ttl: u32,
}

fn d_dns_ttl() -> u32 {
    20
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            name: None,
            ttl: d_dns_ttl(),
        }
    }
}

/// Health check of the load balancer against each governor's REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path that answers 200 only on the primary.
    #[serde(default = "d_primary_path")]
    pub primary_path: String,
    /// Path that answers 200 only on streaming replicas.
    #[serde(default = "d_replica_path")]
    pub replica_path: String,
    /// Seconds between checks.
    #[serde(default = "d_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub interval: u32,
}

fn d_primary_path() -> String {
    "/primary".into()
}
fn d_replica_path() -> String {
    "/replica".into()
}
fn d_interval() -> u32 {
    2
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            primary_path: d_primary_path(),
            replica_path: d_replica_path(),
            interval: d_interval(),
        }
    }
}
