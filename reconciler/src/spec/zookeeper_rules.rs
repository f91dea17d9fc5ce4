//! Rules of `spec.dcs.zookeeper`: ZooKeeper is the local target's alternative store, and a
//! standby cluster (whose hand-over between clusters runs on etcd) is refused with it rather
//! than half applied.

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
    if s.standby.is_some() {
        r.at_key(
            &p("spec.standby"),
            Severity::Error,
            "not with spec.dcs.zookeeper yet: the hand-over between clusters runs on etcd; use etcd for this cluster, or leave it out",
        );
    }
}
