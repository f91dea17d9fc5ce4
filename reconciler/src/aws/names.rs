//! The names and numbers a cluster's stack, its instances and `spilo` agree on: the stack's
//! name and tags, the ports and paths on an instance, the cluster's DNS name and the export an
//! etcd cluster's clients attach. A leaf: the template, the user data, the policies and the
//! etcd stack all read it, and it reads none of them.

use spilo_model::spec::ClusterFile;

/// The governors' REST API port on AWS instances.
pub const API_PORT: u16 = 8008;
/// PostgreSQL's port on AWS instances.
pub const POSTGRES_PORT: u16 = 5432;
/// The members' primary proxy port (`endpoints.routing: proxy`).
pub const PROXY_PORT: u16 = 5433;
/// The health check path of an instance whose primary proxy has a target.
pub const PROXY_PATH: &str = "/proxy";

/// The tag naming the cluster a stack belongs to: how `spilo` finds the stacks it manages.
pub const CLUSTER_TAG: &str = "spilo:cluster";
/// The tag recording the file's `reconcile.prune` at the last apply, so a plan can honour it
/// once the file is gone.
pub const PRUNE_TAG: &str = "spilo:prune";

/// The stack name of cluster `name`.
pub fn stack_name(name: &str) -> String {
    format!("spilo-{name}")
}

/// The record name inside the hosted zone ([`ClusterFile::dns_label`]).
pub fn dns_label(file: &ClusterFile) -> String {
    file.dns_label()
}

/// The fully qualified DNS name (with the trailing dot), when a hosted zone is set
/// ([`ClusterFile::dns_name`]).
pub fn dns_name(file: &ClusterFile) -> Option<String> {
    file.dns_name()
}

/// The export name of etcd cluster `name`'s clients' security group: PostgreSQL clusters
/// attach it to reach etcd.
pub fn etcd_clients_export(name: &str) -> String {
    format!("{}-clients", stack_name(name))
}
