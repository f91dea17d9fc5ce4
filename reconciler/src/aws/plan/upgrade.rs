//! A change of `postgresql.version` on a running cluster is a major upgrade (its members'
//! data directories are of another major version, as they publish it; in a `spilo diff`,
//! the base commit's file says which version was applied). spilo performs one on
//! the local target only (`local/cluster/upgrade`); on AWS an apply would replace every instance with binaries that cannot read the data,
//! so the cluster's plan is blocked and says so.

use crate::aws::observed::ObservedEtcd;
use spilo_model::spec::ClusterFile;
use std::collections::BTreeSet;

/// Why `file` cannot be planned against its running members, when their data is of another
/// major version than the file's `postgresql.version`.
pub fn major_version_change(file: &ClusterFile, etcd: &ObservedEtcd) -> Option<String> {
    let want = file.spec.postgresql.version;
    let running: BTreeSet<u32> = etcd
        .members
        .iter()
        .filter_map(|m| m.postgres_version)
        .chain(etcd.applied_version)
        .collect();
    if running.iter().all(|v| *v == want) {
        return None;
    }
    let have: Vec<String> = running.iter().map(u32::to_string).collect();
    Some(format!(
        "postgresql.version is {want}, but its members run PostgreSQL {}: a major upgrade, which \
         spilo performs on the local target only so far; an apply would start every instance \
         with PostgreSQL {want}'s binaries on data they cannot read. Keep postgresql.version: {} in the file",
        have.join(" and "),
        have.first().cloned().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::observed::{Observation, ObservedMember};

    fn etcd(versions: &[Option<u32>]) -> ObservedEtcd {
        ObservedEtcd {
            config: Observation::Absent,
            members: versions
                .iter()
                .enumerate()
                .map(|(i, v)| ObservedMember {
                    name: format!("m{i}"),
                    role: "replica".into(),
                    state: "running".into(),
                    leader: i == 0,
                    lag_bytes: None,
                    pending_restart: false,
                    postgres_version: *v,
                })
                .collect(),
            boot_failures: Default::default(),
            drill: None,
            catalog: None,
            read_unix: 0,
            applied_version: None,
        }
    }

    fn file(version: u32) -> ClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  \
             target: aws\n  postgresql: {{version: {version}}}\n  dcs: {{hosts: [\"10.0.0.1:2379\"]}}\n  \
             aws: {{region: eu-west-1, vpc: v, subnets: [s]}}\n"
        ))
        .expect("valid")
    }

    #[test]
    fn a_version_the_members_do_not_run_blocks_the_plan() {
        let why =
            major_version_change(&file(18), &etcd(&[Some(15), Some(15), None])).expect("blocked");
        assert!(
            why.starts_with(
                "postgresql.version is 18, but its members run PostgreSQL 15: a major upgrade"
            ) && why.ends_with("Keep postgresql.version: 15 in the file"),
            "{why}"
        );
        // The same version, members that publish none yet (booting), or no members: planned.
        assert_eq!(
            major_version_change(&file(15), &etcd(&[Some(15), None])),
            None
        );
        assert_eq!(major_version_change(&file(18), &etcd(&[None])), None);
        assert_eq!(major_version_change(&file(18), &etcd(&[])), None);
    }
}
