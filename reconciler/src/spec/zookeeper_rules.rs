//! Rules of `spec.dcs.zookeeper`: ZooKeeper is the local target's alternative store, and
//! what `spilo` itself writes into the cluster's store (the catalog of roles and databases,
//! a standby cluster's source list, the major upgrade's steps) is written to etcd only so
//! far, so those sections are refused with it rather than half applied.

use super::diagnostic::Severity;
use super::position::Path;
use super::validate::Reporter;
use spilo_model::spec::{ClusterSpec, Target, ZooKeeperSpec};

/// Refuses what a cluster on ZooKeeper cannot have yet, and hosts that are not `host:port`.
pub(super) fn check(s: &ClusterSpec, zk: &ZooKeeperSpec, r: &mut Reporter<'_>) {
    let p = Path::parse;
    if s.target != Target::Local {
        r.at(
            &p("spec.dcs.zookeeper"),
            Severity::Error,
            "ZooKeeper is for the local target so far; on AWS the governors use an etcd cluster",
        );
    }
    for (i, h) in zk.hosts.iter().enumerate() {
        let ok = h.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            r.at(
                &p(&format!("spec.dcs.zookeeper.hosts[{i}]")),
                Severity::Error,
                format!("must be host:port, got {h:?}"),
            );
        }
    }
    let etcd_only = [
        ("spec.roles", !s.roles.is_empty()),
        ("spec.databases", !s.databases.is_empty()),
        ("spec.standby", s.standby.is_some()),
    ];
    for (field, set) in etcd_only {
        if set {
            r.at_key(
                &p(field),
                Severity::Error,
                "not with spec.dcs.zookeeper yet: spilo writes it into the cluster's etcd; use etcd for this cluster, or leave it out",
            );
        }
    }
}
