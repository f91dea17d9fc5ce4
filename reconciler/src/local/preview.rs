//! `spilo plan --local`: what `spilo up` would do with the given cluster files (the working
//! tree's `clusters/`, or a pull request's checkout) to the clusters it runs here, without
//! doing it: clusters to start, resize or stop ([`super::plan`]), and each major upgrade with
//! the checks `spilo up` makes before one, against the file the cluster runs (`state.json`):
//! the new version's programs, the archive prefix, the preconditions (given a few seconds to
//! hold) and `pg_upgrade --check`, live, on the primary's member, through the governor, which
//! holds the member's upgrade lock while it runs. Other edits of a running cluster's file
//! (parameters, `spec.standby`) are not planned. Nothing of the clusters changes; the check
//! writes its configuration file and pg_upgrade's scratch directory, and removes both.

use super::cluster::{LocalCluster, data_version, read_record};
use super::major::{hold_major_upgrades, on_version, standby_blockers, upgrade_check};
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

/// A major upgrade the files ask for: the cluster runs `from`, its file says `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The cluster.
    pub cluster: String,
    /// The major version it runs (or its data holds, when it does not run).
    pub from: u32,
    /// The file's `postgresql.version`.
    pub to: u32,
}

/// The clusters whose version (`versions`: what each runs or its data holds; absent: no
/// data yet) is another major version than their file asks for.
pub fn upgrades(desired: &Desired, versions: &BTreeMap<String, u32>) -> Vec<Upgrade> {
    desired
        .iter()
        .filter_map(|(name, (_, f))| {
            let from = *versions.get(name)?;
            let to = f.spec.postgresql.version;
            (from != to).then(|| Upgrade {
                cluster: name.clone(),
                from,
                to,
            })
        })
        .collect()
}

/// The file a cluster runs, as its `state.json` records it; for a state written before it
/// did, `file` on the data's version.
fn running_file(state: &ClusterState, file: &ClusterFile, version: u32) -> ClusterFile {
    state
        .running
        .clone()
        .unwrap_or_else(|| on_version(file, version))
}

/// Runs `spilo plan --local`; prints the plan and returns the exit code. Run it as the user
/// that runs `spilo up`: the check runs the cluster's governor program as that user would.
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
    // What each cluster runs, else what its data holds.
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    let mut files: BTreeMap<String, ClusterFile> = BTreeMap::new();
    for (name, (_, f)) in &desired {
        let data = data_version(&layout.cluster(name));
        match (running.get(name), data) {
            (Some(state), Some(v)) => {
                let file = running_file(state, f, v);
                versions.insert(name.clone(), file.spec.postgresql.version);
                files.insert(name.clone(), file);
            }
            (None, Some(v)) => {
                versions.insert(name.clone(), v);
            }
            _ => {}
        }
    }

    let mut blocked = false;
    let todo = upgrades(&desired, &versions);
    let (_, targets) = hold_major_upgrades(&desired, &files);
    for u in &todo {
        println!(
            "~ cluster {} (major upgrade: PostgreSQL {} -> {})",
            u.cluster, u.from, u.to
        );
        if let Some(r) = read_record(&layout.cluster(&u.cluster))? {
            println!(
                "  an upgrade to PostgreSQL {} is under way ({:?}); `spilo up` finishes or \
                 rolls it back",
                r.to, r.step
            );
            continue;
        }
        let (Some(state), Some(file), Some(to)) = (
            running.get(&u.cluster),
            files.get(&u.cluster),
            targets.get(&u.cluster),
        ) else {
            println!(
                "  checked when `spilo up` runs the cluster: pg_upgrade --check asks its \
                 running primary"
            );
            continue;
        };
        let c = LocalCluster::attach(state, file.clone(), &layout, &run_as);
        let standbys = standby_blockers(&u.cluster, file, &desired);
        match upgrade_check(&c, to, standbys, SETTLE).await? {
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
    let want = super::up::instance_counts(&desired);
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
        println!("No cluster to start, resize, stop or upgrade.");
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
}
