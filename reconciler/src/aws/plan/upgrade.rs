//! A change of `postgresql.version` on a running cluster is a major upgrade (its members'
//! data directories are of another major version, as they publish it; in a `spilo diff`,
//! the base commit's file says which version was applied). On AWS it is planned when the
//! members are ready for it, and performed by `aws::apply::upgrade` before the stack moves
//! to the new version: the leader's governor upgrades its data in place (`POST /upgrade`),
//! then the rollout replaces every instance with one of the new version. Pure.

use crate::aws::observed::ObservedEtcd;
use crate::local::cluster::MAX_LAG;
use serde::{Deserialize, Serialize};
use spilo_model::spec::ClusterFile;
use std::collections::BTreeSet;

/// The major upgrade a plan performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MajorUpgrade {
    /// The version the members run.
    pub from: u32,
    /// The file's.
    pub to: u32,
    /// The members' governor configuration for `to`, which the leader upgrades to (as the
    /// user data writes it: secrets by reference only).
    pub config: String,
    /// What the leader's check said when the plan asked it against the running cluster
    /// ([`crate::aws::upgrade_check`]); `None` in a `spilo diff`, which touches no cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
    /// An earlier apply upgraded the members and stopped before the end (the `upgrade`
    /// record): only what comes after the leader's upgrade is left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finishing: bool,
}

impl MajorUpgrade {
    /// What the apply goes through, in words.
    pub fn describe(&self) -> String {
        if self.finishing {
            return format!(
                "finishes the major upgrade PostgreSQL {} -> {} an earlier apply left (the \
                 members run {}): the launch template on {} and the rollout, then a base \
                 backup and the statistics on {}",
                self.from, self.to, self.to, self.to, self.to
            );
        }
        format!(
            "major upgrade PostgreSQL {} -> {}: pg_upgrade --check on the leader first (a \
             blocker stops the apply before anything changes), a base backup, the replicas' \
             instances terminated, pg_upgrade --link on the leader (writes stop until it \
             leads on {}), then the launch template on {} and the rollout",
            self.from, self.to, self.to, self.to
        ) + &match &self.checked {
            Some(said) => format!("; the leader's check now: {said}"),
            None => String::new(),
        }
    }
}

/// The major upgrade `file` asks of its running members (`downstream`: the standby
/// clusters that follow it): `None` when they run its version (or publish none yet), else
/// the upgrade or why it cannot be done now.
pub fn major_upgrade(
    file: &ClusterFile,
    etcd: &ObservedEtcd,
    downstream: &[String],
) -> Option<Result<MajorUpgrade, String>> {
    let want = file.spec.postgresql.version;
    let running: BTreeSet<u32> = etcd
        .members
        .iter()
        .filter_map(|m| m.postgres_version)
        .chain(etcd.applied_version)
        .collect();
    if running.iter().all(|v| *v == want) {
        // An apply that stopped after the leader's upgrade left its record.
        let record = etcd
            .upgrade
            .filter(|r| r.to == want && !running.is_empty())?;
        return Some(
            crate::aws::userdata::config_text(file)
                .map(|config| MajorUpgrade {
                    from: record.from,
                    to: want,
                    config,
                    checked: None,
                    finishing: true,
                })
                .map_err(|e| format!("the governor configuration for {want}: {e}")),
        );
    }
    let have: Vec<String> = running.iter().map(u32::to_string).collect();
    let keep = format!(
        "keep postgresql.version: {} in the file until then",
        have.first().cloned().unwrap_or_default()
    );
    let from = match running.iter().collect::<Vec<_>>().as_slice() {
        [from] if **from < want => **from,
        [from] => {
            return Some(Err(format!(
                "postgresql.version is {want}, but its members run PostgreSQL {from}: \
                 PostgreSQL has no way back to an older major version; {keep}"
            )));
        }
        _ => {
            return Some(Err(format!(
                "postgresql.version is {want}, but its members run PostgreSQL {}: one version \
                 at a time; {keep}",
                have.join(" and ")
            )));
        }
    };
    let mut blockers = Vec::new();
    if let Some(sb) = &file.spec.standby {
        blockers.push(format!(
            "it is a standby cluster (of {}): it runs its source's major version",
            sb.from
                .as_ref()
                .map_or("its source".to_string(), |c| c.to_string())
        ));
    }
    if !downstream.is_empty() {
        blockers.push(format!(
            "standby clusters follow it ({}): they could not replay the new version's WAL",
            downstream.join(", ")
        ));
    }
    if file
        .spec
        .backup
        .as_ref()
        .is_some_and(|b| b.prefix.is_some())
    {
        blockers.push(
            "backup.prefix names one archive for both versions; leave it out (the default, \
             spilo/<name>/wal/<version>/, is the version's own)"
                .into(),
        );
    }
    if etcd.applied_version.is_none() {
        blockers.extend(member_blockers(etcd));
    }
    if etcd
        .config
        .present()
        .and_then(|c| c.value.as_ref())
        .is_some_and(|c| c.pause)
    {
        blockers.push(
            "the cluster is paused (maintenance mode), which would keep the upgraded leader \
             from starting: `spilo resume` it first"
                .into(),
        );
    }
    let config = match crate::aws::userdata::config_text(file) {
        Ok(c) => c,
        Err(e) => return Some(Err(format!("the governor configuration for {want}: {e}"))),
    };
    if blockers.is_empty() {
        Some(Ok(MajorUpgrade {
            from,
            to: want,
            config,
            checked: None,
            finishing: false,
        }))
    } else {
        Some(Err(format!(
            "the major upgrade PostgreSQL {from} -> {want} cannot start: {}; {keep}",
            blockers.join("; ")
        )))
    }
}

/// What keeps the members from an upgrade now: exactly one leader running as primary, every
/// other member a running replica within [`MAX_LAG`] (the replicas go, but one far behind
/// says the cluster is not healthy).
fn member_blockers(etcd: &ObservedEtcd) -> Vec<String> {
    let mut out = Vec::new();
    let leaders: Vec<_> = etcd
        .members
        .iter()
        .filter(|m| m.leader && m.role == "primary" && m.state == "running")
        .collect();
    if leaders.len() != 1 {
        out.push(format!(
            "{} running primaries hold the leader key; the upgrade needs exactly one",
            leaders.len()
        ));
    }
    for m in etcd.members.iter().filter(|m| !m.leader) {
        if m.role != "replica" || m.state != "running" {
            out.push(format!(
                "{} is not a running replica ({} {})",
                m.name, m.role, m.state
            ));
        } else if m.lag_bytes.is_none_or(|l| l > MAX_LAG) {
            out.push(format!(
                "{} is {} behind the primary (at most {} MB)",
                m.name,
                m.lag_bytes
                    .map_or("an unknown amount".to_string(), |l| format!(
                        "{} MB",
                        l / (1024 * 1024)
                    )),
                MAX_LAG / (1024 * 1024)
            ));
        }
    }
    out
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
            upgrade: None,
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

    fn member(name: &str, leader: bool, lag: Option<u64>, version: u32) -> ObservedMember {
        ObservedMember {
            name: name.into(),
            role: if leader { "primary" } else { "replica" }.into(),
            state: "running".into(),
            leader,
            lag_bytes: lag,
            pending_restart: false,
            postgres_version: Some(version),
        }
    }

    #[test]
    fn a_newer_version_than_the_healthy_members_run_is_an_upgrade() {
        let mut e = etcd(&[]);
        e.members = vec![member("a", true, None, 15), member("b", false, Some(0), 15)];
        let u = major_upgrade(&file(18), &e, &[]).and_then(Result::ok);
        assert_eq!(u.as_ref().map(|u| (u.from, u.to)), Some((15, 18)));
        let config = u.map(|u| u.config).unwrap_or_default();
        assert!(
            config.contains("/usr/lib/postgresql/18/bin") && config.contains("scope: orders"),
            "the members' configuration for 18: {config}"
        );
        // The same version, members that publish none yet (booting), or no members.
        assert_eq!(major_upgrade(&file(15), &e, &[]), None);
        assert_eq!(major_upgrade(&file(18), &etcd(&[None]), &[]), None);
        assert_eq!(major_upgrade(&file(18), &etcd(&[]), &[]), None);
    }

    #[test]
    fn what_keeps_the_members_from_an_upgrade_blocks_it() {
        let why =
            |e: &ObservedEtcd, f: &ClusterFile, down: &[String]| match major_upgrade(f, e, down) {
                Some(Err(why)) => why,
                other => panic!("not blocked: {other:?}"),
            };
        let mut e = etcd(&[]);
        e.members = vec![
            member("a", true, None, 15),
            member("b", false, Some(MAX_LAG + 1), 15),
        ];
        assert_eq!(
            why(&e, &file(18), &[]),
            "the major upgrade PostgreSQL 15 -> 18 cannot start: b is 16 MB behind the primary \
             (at most 16 MB); keep postgresql.version: 15 in the file until then"
        );
        e.members[1].lag_bytes = Some(0);
        e.members[0].leader = false;
        assert!(
            why(&e, &file(18), &[]).contains("0 running primaries hold the leader key"),
            "{e:?}"
        );
        e.members[0].leader = true;
        let down = ["replica-eu".to_string()];
        assert!(why(&e, &file(18), &down).contains("standby clusters follow it (replica-eu)"));
        // Maintenance mode.
        let mut paused = e.clone();
        paused.config = Observation::Present(crate::aws::observed::ObservedConfig {
            value: Some(spilo_model::ClusterConfig {
                pause: true,
                ..Default::default()
            }),
            mod_revision: 1,
        });
        assert!(why(&paused, &file(18), &[]).contains("the cluster is paused (maintenance mode)"));
        // Back, and two versions at once.
        assert!(why(&e, &file(14), &[]).contains("no way back to an older major version"));
        e.members[1].postgres_version = Some(18);
        assert!(
            why(&e, &file(18), &[]).contains("run PostgreSQL 15 and 18: one version at a time")
        );
    }
}
