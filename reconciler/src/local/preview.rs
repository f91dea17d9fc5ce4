//! `spilo plan --local`: what `spilo up` would do with the given cluster files (the working
//! tree's `clusters/`, or a pull request's checkout) to the clusters it runs here, without
//! doing it. Clusters to start, resize or stop ([`super::plan`]), and each major upgrade with
//! the checks `spilo up` makes before one: the new version's programs, the archive prefix,
//! the preconditions (given a few seconds to hold) and `pg_upgrade --check`, live, on the primary's member
//! (through the governor, which takes the member's upgrade lock: a plan and an upgrade never
//! run pg_upgrade at once). Nothing changes but pg_upgrade's scratch directory.

use super::cluster::{LocalCluster, data_version};
use super::major::{standby_blockers, upgrade_check};
use super::plan::{Change, plan};
use super::state::{ClusterState, Layout, alive};
use super::up::Desired;
use super::user::RunAs;
use spilo_model::spec::ClusterFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Exit codes, as `spilo plan` for AWS: nothing to do, changes, an error or a blocker.
const EXIT_CLEAN: u8 = 0;
const EXIT_CHANGES: u8 = 2;
const EXIT_BLOCKED: u8 = 1;

/// How long the upgrade's preconditions may take to hold (a member that just started reports
/// streaming on its governor's next loop): what still fails them then is a blocker.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// A major upgrade the files ask for: the cluster's data holds `from`, its file says `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The cluster.
    pub cluster: String,
    /// The major version its data holds.
    pub from: u32,
    /// The file's `postgresql.version`.
    pub to: u32,
}

/// The clusters whose data (`data_versions`, by cluster; absent: no data yet) holds another
/// major version than their file asks for.
pub fn upgrades(desired: &Desired, data_versions: &BTreeMap<String, u32>) -> Vec<Upgrade> {
    desired
        .iter()
        .filter_map(|(name, (_, f))| {
            let from = *data_versions.get(name)?;
            let to = f.spec.postgresql.version;
            (from != to).then(|| Upgrade {
                cluster: name.clone(),
                from,
                to,
            })
        })
        .collect()
}

/// The file as the cluster runs it before its upgrade: `file` on the data's version, with
/// that version's programs (a `binDir` in the file names the new version's).
fn as_running(file: &ClusterFile, version: u32) -> ClusterFile {
    let mut f = file.clone();
    f.spec.postgresql.version = version;
    f.spec.postgresql.bin_dir = None;
    f
}

/// Runs `spilo plan --local`; prints the plan and returns the exit code.
pub async fn run(paths: &[PathBuf], state_dir: Option<&Path>) -> anyhow::Result<u8> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("clusters")]
    } else {
        paths.to_vec()
    };
    let run_as = RunAs::detect()?;
    let (root, _) = super::state_dir(state_dir, &paths, &run_as)?;
    let layout = Layout { root };
    let (desired, _) = super::up::load(&paths)?;
    let running: BTreeMap<String, ClusterState> = layout
        .clusters()
        .into_iter()
        .filter_map(|n| layout.read(&n).ok())
        .filter(|s| alive(s.supervisor_pid) && !layout.down_marker(&s.cluster).exists())
        .map(|s| (s.cluster.clone(), s))
        .collect();
    let data_versions: BTreeMap<String, u32> = desired
        .keys()
        .filter_map(|n| Some((n.clone(), data_version(&layout.cluster(n))?)))
        .collect();

    let mut blocked = false;
    let todo = upgrades(&desired, &data_versions);
    for u in &todo {
        println!(
            "~ cluster {} (major upgrade: PostgreSQL {} -> {})",
            u.cluster, u.from, u.to
        );
        let (_, file) = &desired[&u.cluster];
        let Some(state) = running.get(&u.cluster) else {
            println!(
                "  checked when `spilo up` runs the cluster: pg_upgrade --check asks its \
                 running primary"
            );
            continue;
        };
        let c = LocalCluster::attach(state, as_running(file, u.from), &layout, &run_as);
        let standbys = standby_blockers(&u.cluster, &c.file, &desired);
        match upgrade_check(&c, file, standbys, SETTLE).await? {
            Ok(primary) => println!(
                "  pg_upgrade --check on {}-{primary}: no blockers",
                u.cluster
            ),
            Err(blockers) => {
                blocked = true;
                println!("  blocked; `spilo up` would refuse it and change nothing:");
                for b in blockers {
                    println!("  - {b}");
                }
            }
        }
    }
    let want: BTreeMap<String, u32> = desired
        .iter()
        .map(|(n, (_, f))| (n.clone(), f.spec.instances))
        .collect();
    let have: BTreeMap<String, u32> = running
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                u32::try_from(s.members.len()).unwrap_or(u32::MAX),
            )
        })
        .collect();
    let changes = plan(&want, &have);
    for change in &changes {
        let upgrading = matches!(change, Change::Resize { cluster, .. }
            if todo.iter().any(|u| &u.cluster == cluster));
        if upgrading {
            println!("{change}, after its upgrade");
        } else {
            println!("{change}");
        }
    }
    Ok(if blocked {
        EXIT_BLOCKED
    } else if todo.is_empty() && changes.is_empty() {
        println!("No changes: the local clusters run as their files say.");
        EXIT_CLEAN
    } else {
        EXIT_CHANGES
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, version: u32) -> ClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}}}\nspec:\n  \
             postgresql: {{version: {version}, binDir: /opt/pg{version}/bin}}\n"
        ))
        .expect("valid")
    }

    #[test]
    fn an_upgrade_is_a_file_asking_for_another_version_than_the_data_holds() {
        let desired: Desired = [("a", 18), ("b", 15), ("c", 18)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), (format!("{n}.yaml"), file(n, v))))
            .collect();
        // c has no data yet: it is created on 18, nothing to upgrade.
        let data = BTreeMap::from([("a".to_string(), 15), ("b".to_string(), 15)]);
        assert_eq!(
            upgrades(&desired, &data),
            vec![Upgrade {
                cluster: "a".into(),
                from: 15,
                to: 18
            }]
        );
    }

    #[test]
    fn the_running_file_uses_the_data_versions_own_programs() {
        let f = as_running(&file("a", 18), 15);
        assert_eq!(f.spec.postgresql.version, 15);
        assert_eq!(f.spec.postgresql.bin_dir, None, "18's binDir is not 15's");
    }
}
