//! The etcd v3 keyspace of a cluster, defined here and nowhere else.
//!
//! Every key lives under `<namespace>/<scope>/` (default namespace `/service`, as in the 2015
//! Spilo talk). Each key has exactly one writer while the cluster runs; concurrent writers are
//! made safe by compare-and-swap transactions or by binding the key to the writer's lease. The
//! one exception is a major upgrade: while no governor of the cluster runs, `governor upgrade
//! commit` rewrites `initialize` and `history` in one transaction that holds only while no
//! member holds `leader`.
//!
//! | key | writer | value | lifetime |
//! |---|---|---|---|
//! | `initialize` | the governor that wins the bootstrap race (create-if-absent); after a major upgrade, `governor upgrade commit` on the upgraded member (compare-and-swap from the old identifier while no member holds `leader`) | PostgreSQL system identifier; empty while bootstrap runs | bound to the winner's lease while empty, permanent once it holds the identifier |
//! | `leader` | the governor that holds leadership (create-if-absent, delete-if-ours) | member name | bound to the holder's lease |
//! | `members/<name>` | the governor named `<name>` | [`crate::MemberStatus`] JSON | bound to that governor's lease |
//! | `config` | created once by the bootstrap leader if absent (or, when that failed after `initialize` was written, by the leader that finds none); afterwards only by `spilo` | [`crate::ClusterConfig`] JSON | permanent |
//! | `apply-lock` | `spilo apply` (create-if-absent) | who holds it and since when | bound to the applier's lease |
//! | `history` | the primary, after each promotion (compare-and-swap on mod revision); emptied by `governor upgrade commit` in the same transaction as `initialize` (the new system's timelines start at 1) | JSON list of [`crate::HistoryEntry`] | permanent |
//! | `sync` | the primary in synchronous mode (compare-and-swap on mod revision; rewritten with an empty list, in quorum mode a quorum of 0, before a promoted member accepts writes) | [`crate::SyncState`] | permanent |
//! | `failsafe` | the leader in failsafe mode (rewritten when the member set changes; deleted when failsafe mode is off) | JSON map of member name to REST API URL: the members the primary must hear from to stay writable while etcd is down, and the only ones that may take over afterwards | permanent |
//! | `boot/<member>` | that member's instance: written by its boot layer (`governor boot-failed`) when its boot fails, deleted by its governor once the member runs | [`crate::BootFailure`] JSON: why, and the boot log's last lines | bound to a lease of one day (a later failure of the same instance replaces it) |
//! | `drill` | created if absent (with the time drills began) by any member whose drill schedule starts; then rewritten after each drill by the member that ran it (the first running replica by name, else the leader) | [`crate::DrillRecord`] JSON: the last drill and the last one that passed | permanent |
//! | `catalog` | the leader, after each convergence of `config.catalog` and each check for hand-made changes (every 10 s) | [`crate::catalog::CatalogStatus`] JSON: the last error, and what differs from the file (drift) | permanent |
//! | `upgrade` | `spilo apply` on AWS, under its apply lock: written before the leader's in-place major upgrade, deleted when the link was refused or rolled back, once the upgrade's last step (the base backup and the statistics on the new version, each best effort) is done, or with the cluster's stack | [`crate::UpgradeRecord`] JSON | until the upgrade is finished: a plan that finds it with the members on its `to` version finishes the upgrade |
//! | `leases/<id>` | ZooKeeper only: the session that is lease `<id>` (an ephemeral znode, created when the lease is granted) | empty | the session's |
//! | `switchover` | a governor's REST API on an authenticated request (create-if-absent); removed by the leader that carries it out or refuses it, or by `DELETE /switchover` | [`crate::SwitchoverRequest`] | until done |

use crate::names::{ClusterName, MemberName};

/// The default namespace, as used by the original Spilo and by Patroni.
pub const DEFAULT_NAMESPACE: &str = "/service";

/// The value of the `leader` znode on ZooKeeper, which is persistent and never deleted: the
/// member and the lease (session) it holds the key with. It counts only while that session's
/// marker (`leases/<id>`, [`Keyspace::lease_marker`]) exists; released, it is empty.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ZooKeeperLeader {
    /// The member.
    pub name: String,
    /// Its session id.
    pub lease: i64,
}

/// Paths of one cluster's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

/// What a key under a cluster's prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `initialize`: the system identifier of the cluster.
    Initialize,
    /// `leader`: the name of the member holding leadership.
    Leader,
    /// `members/<name>`: one member's published status.
    Member(MemberName),
    /// `config`: cluster-wide settings.
    Config,
    /// `history`: one entry per promotion.
    History,
    /// `apply-lock`: held by the `spilo apply` changing this cluster.
    ApplyLock,
    /// `switchover`: a requested switchover or manual failover.
    Switchover,
    /// `sync`: the synchronous standbys.
    Sync,
    /// `failsafe`: the members a failsafe-mode primary must hear from.
    Failsafe,
    /// `boot/<name>`: why the boot of member `<name>`'s instance failed.
    Boot(MemberName),
    /// `drill`: the last restore drill.
    Drill,
    /// `catalog`: how the roles and databases stand against the file.
    Catalog,
    /// `upgrade`: a major upgrade `spilo apply` has not finished.
    Upgrade,
}

impl Keyspace {
    /// The keyspace of `scope` under the default namespace.
    pub fn new(scope: &ClusterName) -> Self {
        Self::with_namespace(DEFAULT_NAMESPACE, scope)
    }

    /// The keyspace of `scope` under `namespace` (leading `/` added, trailing `/` removed).
    pub fn with_namespace(namespace: &str, scope: &ClusterName) -> Self {
        let ns = namespace.trim_end_matches('/');
        let ns = if ns.starts_with('/') {
            ns.to_string()
        } else {
            format!("/{ns}")
        };
        Self {
            prefix: format!("{ns}/{scope}/"),
        }
    }

    /// The prefix every key of the cluster starts with, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `initialize`.
    pub fn initialize(&self) -> String {
        format!("{}initialize", self.prefix)
    }

    /// `leader`.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// `config`.
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }

    /// `apply-lock`.
    pub fn apply_lock(&self) -> String {
        format!("{}apply-lock", self.prefix)
    }

    /// `sync`.
    pub fn sync(&self) -> String {
        format!("{}sync", self.prefix)
    }

    /// `failsafe`.
    pub fn failsafe(&self) -> String {
        format!("{}failsafe", self.prefix)
    }

    /// `drill`.
    pub fn drill(&self) -> String {
        format!("{}drill", self.prefix)
    }

    /// `members`: the directory of the member keys (a ZooKeeper znode; etcd has no
    /// directories).
    pub fn members_dir(&self) -> String {
        format!("{}members", self.prefix)
    }

    /// `leases`: the directory of the lease markers (ZooKeeper only).
    pub fn lease_marker_dir(&self) -> String {
        format!("{}leases", self.prefix)
    }

    /// `leases/<id>`: on ZooKeeper, the ephemeral znode of the session that is lease `id`,
    /// alive exactly while the session is (`governor::dcs::zookeeper`).
    pub fn lease_marker(&self, id: i64) -> String {
        format!("{}leases/{id:x}", self.prefix)
    }

    /// `upgrade`.
    pub fn upgrade(&self) -> String {
        format!("{}upgrade", self.prefix)
    }

    /// `catalog`.
    pub fn catalog(&self) -> String {
        format!("{}catalog", self.prefix)
    }

    /// `switchover`.
    pub fn switchover(&self) -> String {
        format!("{}switchover", self.prefix)
    }

    /// `history`.
    pub fn history(&self) -> String {
        format!("{}history", self.prefix)
    }

    /// `members/`, the prefix of all member keys.
    pub fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix)
    }

    /// `members/<name>`.
    pub fn member(&self, name: &MemberName) -> String {
        format!("{}members/{name}", self.prefix)
    }

    /// `boot/<name>`.
    pub fn boot(&self, name: &MemberName) -> String {
        format!("{}boot/{name}", self.prefix)
    }

    /// Classifies a full key; `None` for keys outside this cluster or unknown to this version.
    pub fn classify(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.prefix)?;
        match rest {
            "initialize" => Some(KeyKind::Initialize),
            "leader" => Some(KeyKind::Leader),
            "config" => Some(KeyKind::Config),
            "history" => Some(KeyKind::History),
            "apply-lock" => Some(KeyKind::ApplyLock),
            "switchover" => Some(KeyKind::Switchover),
            "sync" => Some(KeyKind::Sync),
            "failsafe" => Some(KeyKind::Failsafe),
            "drill" => Some(KeyKind::Drill),
            "catalog" => Some(KeyKind::Catalog),
            "upgrade" => Some(KeyKind::Upgrade),
            _ => {
                if let Some(n) = rest.strip_prefix("boot/") {
                    return MemberName::new(n).ok().map(KeyKind::Boot);
                }
                rest.strip_prefix("members/")
                    .and_then(|n| MemberName::new(n).ok())
                    .map(KeyKind::Member)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks() -> Keyspace {
        Keyspace::new(&ClusterName::new("demo").expect("valid"))
    }

    #[test]
    fn keys_follow_the_seed_layout() {
        let k = ks();
        assert_eq!(k.leader(), "/service/demo/leader");
        assert_eq!(k.initialize(), "/service/demo/initialize");
        assert_eq!(
            k.member(&MemberName::new("demo-0").expect("valid")),
            "/service/demo/members/demo-0"
        );
        assert_eq!(k.prefix(), "/service/demo/");
    }

    #[test]
    fn classify_is_the_inverse_of_the_paths() {
        let k = ks();
        let m = MemberName::new("m1").expect("valid");
        assert_eq!(k.classify(&k.leader()), Some(KeyKind::Leader));
        assert_eq!(k.classify(&k.config()), Some(KeyKind::Config));
        assert_eq!(k.classify(&k.history()), Some(KeyKind::History));
        assert_eq!(k.classify(&k.apply_lock()), Some(KeyKind::ApplyLock));
        assert_eq!(k.classify(&k.upgrade()), Some(KeyKind::Upgrade));
        assert_eq!(k.classify(&k.switchover()), Some(KeyKind::Switchover));
        assert_eq!(k.classify(&k.sync()), Some(KeyKind::Sync));
        assert_eq!(k.classify(&k.failsafe()), Some(KeyKind::Failsafe));
        assert_eq!(k.classify(&k.drill()), Some(KeyKind::Drill));
        assert_eq!(k.classify(&k.catalog()), Some(KeyKind::Catalog));
        assert_eq!(k.classify(&k.initialize()), Some(KeyKind::Initialize));
        assert_eq!(k.classify(&k.boot(&m)), Some(KeyKind::Boot(m.clone())));
        assert_eq!(k.classify(&k.member(&m)), Some(KeyKind::Member(m)));
        assert_eq!(k.classify("/service/other/leader"), None);
        assert_eq!(k.classify("/service/demo/unknown"), None);
    }

    #[test]
    fn namespace_is_normalised() {
        let c = ClusterName::new("x").expect("valid");
        assert_eq!(
            Keyspace::with_namespace("svc/", &c).leader(),
            "/svc/x/leader"
        );
    }
}
