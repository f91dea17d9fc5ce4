//! How `spilo up` takes a changed `postgresql.version` of a running cluster: the cluster is
//! held as it runs ([`hold_major_upgrades`]), what standby clusters forbid is found
//! ([`standby_blockers`]), then the upgrade is checked and performed ([`major_upgrade`],
//! with `LocalCluster`'s upgrade in `cluster/upgrade.rs`).

use super::cluster::LocalCluster;
use super::up::{Desired, check_postgres};
use spilo_model::spec::ClusterFile;
use std::collections::BTreeMap;

/// `file` on major version `version`: a `binDir` names the file's own version's programs,
/// so on another version it is dropped (that version's installed programs are used).
pub(super) fn on_version(file: &ClusterFile, version: u32) -> ClusterFile {
    let mut f = file.clone();
    if f.spec.postgresql.version != version {
        f.spec.postgresql.version = version;
        f.spec.postgresql.bin_dir = None;
    }
    f
}

/// A running cluster whose file asks for another major version is held as it runs until its
/// upgrade is done: its members would start the new version's binaries on data they cannot
/// read. Returns `desired` with each such cluster's file replaced by the one it runs with,
/// and per such cluster the file to upgrade to: the running one with the new version (and
/// the new `binDir`, if any); the file's other changes follow once the upgrade is done.
pub(super) fn hold_major_upgrades(
    desired: &Desired,
    running: &BTreeMap<String, ClusterFile>,
) -> (Desired, BTreeMap<String, ClusterFile>) {
    let mut upgrades = BTreeMap::new();
    let mut held = desired.clone();
    for (name, file) in running {
        let Some((src, f)) = desired.get(name) else {
            continue;
        };
        if file.spec.postgresql.version == f.spec.postgresql.version {
            continue;
        }
        held.insert(name.clone(), (src.clone(), file.clone()));
        let mut to = file.clone();
        to.spec.postgresql.version = f.spec.postgresql.version;
        to.spec.postgresql.bin_dir = f.spec.postgresql.bin_dir.clone();
        upgrades.insert(name.clone(), to);
    }
    (held, upgrades)
}

/// What keeps cluster `name` (running `file`) from a major upgrade of its own: it runs on
/// ZooKeeper, or standby clusters: it is one (it follows its source's version), or others
/// stream from it (a standby cannot replay a newer major version's WAL).
pub(super) fn standby_blockers(name: &str, file: &ClusterFile, desired: &Desired) -> Vec<String> {
    let mut out = Vec::new();
    if file
        .spec
        .dcs
        .as_ref()
        .is_some_and(|d| d.zookeeper.is_some())
    {
        out.push(format!(
            "cluster {name} runs on ZooKeeper, where `spilo up`'s major upgrade is not tested yet"
        ));
    }
    if let Some(from) = file.spec.standby.as_ref().and_then(|s| s.from.as_ref()) {
        out.push(format!(
            "cluster {name} is a standby of {from}: it runs its source's major version"
        ));
    }
    let downstream: Vec<&str> = desired
        .iter()
        .filter(|(_, (_, f))| {
            f.spec
                .standby
                .as_ref()
                .and_then(|s| s.from.as_ref())
                .is_some_and(|from| from.as_str() == name)
        })
        .map(|(n, _)| n.as_str())
        .collect();
    if !downstream.is_empty() {
        out.push(format!(
            "{} stream from cluster {name} as standby clusters and cannot replay a newer major \
             version's WAL; an upgrade of a source with standby clusters is not supported yet",
            downstream.join(", ")
        ));
    }
    out
}

/// Everything that is checked before cluster `c` is upgraded to `to` (`blockers`: what the
/// caller found already): the new version's programs are there (with SSL if the cluster
/// speaks TLS), the archive prefix is the new version's own, the preconditions hold within
/// `settle`, and `pg_upgrade --check` on the primary finds nothing. The primary's index, or
/// the blockers; changes nothing. `spilo up` and `spilo plan --local` both ask this.
pub(super) async fn upgrade_check(
    c: &LocalCluster,
    to: &ClusterFile,
    blockers: Vec<String>,
    settle: std::time::Duration,
) -> anyhow::Result<Result<usize, Vec<String>>> {
    let name = &c.name;
    match check_postgres(name, c.source(), to) {
        _ if !blockers.is_empty() => Ok(Err(blockers)),
        Err(e) => Ok(Err(vec![format!("{e:#}")])),
        // Both versions' WAL under one prefix: the new system's timeline history files
        // would meet the old one's.
        Ok(()) if c.file.spec.backup.is_some() && c.file.wal_prefix() == to.wal_prefix() => {
            Ok(Err(vec![format!(
                "backup.prefix {} is the archive of both versions; name one for the new \
                 version (the default, spilo/{name}/wal/<version>/, is)",
                to.wal_prefix()
            )]))
        }
        Ok(()) => c.upgrade_blockers(to, settle).await,
    }
}

/// Checks and performs the major upgrade of `c` to `to`; says what happened. Returns whether
/// the cluster runs `to`'s version now, or why `spilo up` cannot go on (an upgrade stopped
/// past its point of no return). `blockers`: what the caller found already.
pub(super) async fn major_upgrade(
    c: &mut LocalCluster,
    to: ClusterFile,
    blockers: Vec<String>,
) -> Result<bool, String> {
    let (name, from, version) = (
        c.name.clone(),
        c.file.spec.postgresql.version,
        to.spec.postgresql.version,
    );
    println!("~ cluster {name} (major upgrade: PostgreSQL {from} -> {version})");
    let checked = upgrade_check(c, &to, blockers, super::cluster::SETTLE).await;
    let primary = match checked {
        Err(e) => {
            eprintln!(
                "could not check the upgrade of cluster {name}: {e:#}; it keeps running \
                 PostgreSQL {from}, nothing was changed"
            );
            return Ok(false);
        }
        Ok(Err(blockers)) => {
            eprintln!(
                "refused to upgrade cluster {name} to PostgreSQL {version}; it keeps running \
                 PostgreSQL {from}, nothing was changed (an edit of its file tries again):"
            );
            for b in blockers {
                eprintln!("  - {b}");
            }
            return Ok(false);
        }
        Ok(Ok(primary)) => primary,
    };
    println!("  pg_upgrade --check: no blockers; upgrading with {name}-{primary}'s data");
    match c.major_upgrade(to, primary).await {
        Ok(u) => {
            println!(
                "cluster {name} runs PostgreSQL {version}: write downtime {:.1}s",
                u.downtime.as_secs_f64()
            );
            for n in u.notes {
                println!("{n}");
            }
            Ok(true)
        }
        Err(e) if e.downcast_ref::<super::cluster::Stranded>().is_some() => Err(format!("{e:#}")),
        Err(e) => {
            eprintln!("the upgrade of cluster {name} failed: {e:#}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Desired;
    use std::collections::BTreeMap;

    #[test]
    fn a_new_major_version_holds_the_running_cluster_until_it_is_upgraded() {
        let file = |version: u32, instances: u32| -> spilo_model::spec::ClusterFile {
            serde_yaml::from_str(&format!(
                "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: alpha}}\nspec:\n  \
                 instances: {instances}\n  postgresql: {{version: {version}}}\n"
            ))
            .expect("valid")
        };
        let desired: Desired =
            BTreeMap::from([("alpha".to_string(), ("alpha.yaml".to_string(), file(18, 4)))]);
        let running = BTreeMap::from([("alpha".to_string(), file(15, 3))]);
        let (held, upgrades) = super::hold_major_upgrades(&desired, &running);
        let (_, kept) = &held["alpha"];
        assert_eq!(
            (kept.spec.postgresql.version, kept.spec.instances),
            (15, 3),
            "the running file, not the edit's 4 instances"
        );
        assert_eq!(
            upgrades["alpha"],
            file(18, 3),
            "the running file with the new version: the rest follows after"
        );
        // The file names the running version again: the edit goes through.
        let desired: Desired =
            BTreeMap::from([("alpha".to_string(), ("alpha.yaml".to_string(), file(15, 4)))]);
        let (held, upgrades) = super::hold_major_upgrades(&desired, &running);
        assert!(upgrades.is_empty());
        assert_eq!(held["alpha"].1.spec.instances, 4);
    }

    #[test]
    fn a_file_on_another_version_leaves_its_bin_dir_behind() {
        let file: spilo_model::spec::ClusterFile = serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: alpha}\nspec:\n  \
             postgresql: {version: 18, binDir: /opt/pg18/bin}\n",
        )
        .expect("valid");
        let on_15 = super::on_version(&file, 15);
        assert_eq!(
            (on_15.spec.postgresql.version, on_15.spec.postgresql.bin_dir),
            (15, None)
        );
        assert_eq!(
            super::on_version(&file, 18),
            file,
            "its own version: as it is"
        );
    }

    #[test]
    fn a_standby_cluster_and_a_source_of_one_are_not_upgraded_on_their_own() {
        let file = |name: &str, standby: &str| -> spilo_model::spec::ClusterFile {
            serde_yaml::from_str(&format!(
                "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}}}\nspec: {{{standby}}}\n"
            ))
            .expect("valid")
        };
        let (src, dr) = (file("src", ""), file("dr", "standby: {from: src}"));
        let desired: Desired = BTreeMap::from([
            ("src".to_string(), ("src.yaml".to_string(), src.clone())),
            ("dr".to_string(), ("dr.yaml".to_string(), dr.clone())),
        ]);
        assert_eq!(
            super::standby_blockers("dr", &dr, &desired),
            vec!["cluster dr is a standby of src: it runs its source's major version"]
        );
        let on_src = super::standby_blockers("src", &src, &desired);
        assert_eq!(on_src.len(), 1);
        assert!(
            on_src[0].starts_with("dr stream from cluster src"),
            "{on_src:?}"
        );
        let alone: Desired =
            BTreeMap::from([("src".to_string(), ("src.yaml".to_string(), src.clone()))]);
        assert!(super::standby_blockers("src", &src, &alone).is_empty());
    }
}
