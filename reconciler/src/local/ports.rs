//! Ports of local clusters: taken from `spec.local.ports` or derived from the cluster name,
//! and checked for clashes between clusters before anything starts.

use spilo_model::spec::ClusterFile;

/// Every port a local cluster uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    /// HAProxy's port for the primary.
    pub primary: u16,
    /// HAProxy's port for the replicas, when the replica endpoint is enabled.
    pub replica: Option<u16>,
    /// etcd's client port (peer port is the next), when `spilo up` runs etcd.
    pub etcd: Option<u16>,
    /// ZooKeeper's client port, when `spilo up` runs ZooKeeper instead (`spec.dcs.zookeeper`
    /// without hosts): the port etcd's client port would have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<u16>,
    /// Member `i`'s PostgreSQL port is `postgres + i`.
    pub postgres: u16,
    /// Member `i`'s REST port is `api + i`.
    pub api: u16,
    /// Member `i`'s primary proxy listens on `proxy + i` (`endpoints.routing: proxy`, the
    /// local default); HAProxy's primary port forwards to these.
    pub proxy: Option<u16>,
    /// How many members.
    pub instances: u16,
}

/// Derived ports live in blocks of 100 from 20000 to 32000, below the kernel's ephemeral range
/// (so an outgoing connection never holds one): primary, replica, etcd client and peer at the
/// start, PostgreSQL from +10, REST APIs from +50, primary proxies from +75.
const BLOCKS: u32 = 120;

impl Ports {
    /// The ports of `file`, with `runs_etcd` saying whether `spilo up` starts etcd for it.
    pub fn of(file: &ClusterFile, runs_etcd: bool) -> Ports {
        let spec = &file.spec;
        let instances = u16::try_from(spec.instances).unwrap_or(u16::MAX);
        let replica_on = spec.endpoints.replica.enabled;
        let proxied = spec.routing() == spilo_model::spec::Routing::Proxy;
        match &spec.local.ports {
            Some(p) => Ports {
                primary: p.primary,
                replica: if replica_on {
                    Some(p.replica.unwrap_or(p.primary.saturating_add(1)))
                } else {
                    None
                },
                zookeeper: None,
                etcd: if runs_etcd {
                    p.etcd.or(Some(p.api.saturating_add(instances)))
                } else {
                    None
                },
                postgres: p.postgres,
                api: p.api,
                proxy: proxied.then(|| {
                    // Past the most REST API ports a cluster can have, so a resize never
                    // moves a running member's proxy.
                    p.proxy.unwrap_or(p.api.saturating_add(64))
                }),
                instances,
            },
            None => {
                let base = 20_000 + (fnv1a(file.metadata.name.as_str()) % BLOCKS) * 100;
                let base = u16::try_from(base).unwrap_or(20_000);
                Ports {
                    primary: base,
                    replica: replica_on.then_some(base + 1),
                    etcd: runs_etcd.then_some(base + 2),
                    zookeeper: None,
                    postgres: base + 10,
                    api: base + 50,
                    proxy: proxied.then_some(base + 75),
                    instances,
                }
            }
        }
    }

    /// Every port with what it is for, e.g. `(15432, "member 0 PostgreSQL")`.
    pub fn all(&self) -> Vec<(u16, String)> {
        let mut v = vec![(self.primary, "the primary endpoint (HAProxy)".to_string())];
        if let Some(r) = self.replica {
            v.push((r, "the replica endpoint (HAProxy)".into()));
        }
        if let Some(e) = self.etcd {
            v.push((e, "etcd (client)".into()));
            v.push((e.saturating_add(1), "etcd (peer)".into()));
        }
        if let Some(z) = self.zookeeper {
            v.push((z, "ZooKeeper (client)".into()));
        }
        for i in 0..self.instances {
            v.push((
                self.postgres.saturating_add(i),
                format!("member {i} PostgreSQL"),
            ));
            v.push((self.api.saturating_add(i), format!("member {i} REST API")));
            if let Some(proxy) = self.proxy {
                v.push((proxy.saturating_add(i), format!("member {i} primary proxy")));
            }
        }
        v
    }
}

fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The first clash between two clusters' ports, as a message naming both.
pub fn clash(clusters: &[(String, Ports)]) -> Option<String> {
    for (i, (a, pa)) in clusters.iter().enumerate() {
        for (b, pb) in &clusters[i + 1..] {
            for (port, what_a) in pa.all() {
                if let Some((_, what_b)) = pb.all().into_iter().find(|(p, _)| *p == port) {
                    return Some(format!(
                        "port {port} is used by cluster {a} ({what_a}) and by cluster {b} ({what_b}); \
                         set spec.local.ports in one of them"
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, extra: &str) -> ClusterFile {
        let yaml = format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: {name}\nspec:\n{extra}"
        );
        serde_yaml::from_str(&yaml).expect("valid")
    }

    #[test]
    fn explicit_ports_are_used_as_written() {
        let f = file(
            "demo",
            "  endpoints: {replica: {enabled: true, port: 5433}}\n  local:\n    ports: {primary: 5432, replica: 5433, postgres: 15432, api: 18008, etcd: 12379}\n",
        );
        let p = Ports::of(&f, true);
        assert_eq!(
            p,
            Ports {
                primary: 5432,
                replica: Some(5433),
                etcd: Some(12379),
                zookeeper: None,
                postgres: 15432,
                api: 18008,
                proxy: Some(18072),
                instances: 3
            }
        );
        assert!(
            p.all()
                .contains(&(15434, "member 2 PostgreSQL".to_string()))
        );
        assert!(p.all().contains(&(12380, "etcd (peer)".to_string())));
        assert!(
            p.all()
                .contains(&(18074, "member 2 primary proxy".to_string()))
        );
        let checked = Ports::of(
            &file(
                "demo",
                "  endpoints: {routing: healthCheck}
",
            ),
            false,
        );
        assert_eq!(
            checked.proxy, None,
            "no proxies when HAProxy checks /primary"
        );
    }

    #[test]
    fn derived_ports_depend_only_on_the_name() {
        let a = Ports::of(&file("orders", "  {}\n"), true);
        let b = Ports::of(&file("orders", "  instances: 5\n"), true);
        assert_eq!(a.primary, b.primary);
        assert!(a.primary >= 20_000 && a.api + a.instances < 32_768);
        assert_eq!(a.replica, None);
    }

    #[test]
    fn a_cluster_on_its_own_zookeeper_gets_etcds_client_port_for_it() {
        let ports_of = crate::local::up::ports_of;
        let own = ports_of(&file("zk", "  dcs: {zookeeper: {}}\n"));
        let etcd = ports_of(&file("zk", "  {}\n"));
        assert_eq!((own.etcd, own.zookeeper), (None, etcd.etcd));
        assert!(
            own.all()
                .contains(&(etcd.etcd.unwrap_or(0), "ZooKeeper (client)".into()))
        );
        let theirs = ports_of(&file("zk", "  dcs: {zookeeper: {hosts: [\"h:2181\"]}}\n"));
        assert_eq!((theirs.etcd, theirs.zookeeper), (None, None));
    }

    #[test]
    fn clashes_name_the_port_and_both_clusters() {
        let a = Ports::of(
            &file(
                "a",
                "  local:\n    ports: {primary: 7000, postgres: 7010, api: 7020}\n",
            ),
            false,
        );
        let b = Ports::of(
            &file(
                "b",
                "  local:\n    ports: {primary: 7100, postgres: 7012, api: 7120}\n",
            ),
            false,
        );
        let msg = clash(&[("a".into(), a), ("b".into(), b)]).expect("clash");
        assert_eq!(
            msg,
            "port 7012 is used by cluster a (member 2 PostgreSQL) and by cluster b (member 0 PostgreSQL); set spec.local.ports in one of them"
        );
    }
}
