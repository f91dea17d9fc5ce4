//! What has drifted, from desired and observed state: pure.
//!
//! AWS side: the stack's parameters, template or tags differ from what the commit renders, the
//! stack is missing, or it sits in a failed or rolled-back state. Runtime side, from etcd:
//! no leader, fewer running members than `instances`, a replica lagging beyond
//! `ha.maximumLagOnFailover`, the `config` key different from the file, and with
//! `backup.verify` a failed restore drill or none passed within `maxAge`. An etcd cluster's
//! own: fewer started voting members than `members`, SRV records naming others.

use crate::aws::observed::{EtcdMemberSeen, Observation, Observed, ObservedCluster, SrvTargets};
use crate::aws::plan::{self, Action, DesiredInput, PlanOptions};
use serde::{Deserialize, Serialize};
use spilo_model::spec::{ClusterFile, EtcdClusterFile, srv_names};

/// Kinds of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A stack parameter differs from git.
    StackParameters,
    /// The stack's template differs from what git renders.
    StackTemplate,
    /// The stack's tags differ from git.
    StackTags,
    /// The stack is in a failed or rolled-back state.
    StackState,
    /// A resource the stack lists was deleted outside CloudFormation.
    ResourceDeleted,
    /// The file's stack does not exist.
    StackMissing,
    /// No member holds the leader key.
    NoLeader,
    /// Fewer running members than `instances`.
    MissingMembers,
    /// A replica lags beyond the failover limit.
    ReplicaLag,
    /// etcd `config` differs from the file.
    ConfigDiffers,
    /// A member runs with a changed setting that waits for a restart.
    PendingRestart,
    /// The branch's newest commit has an invalid cluster file (nothing of it is applied).
    InvalidCommit,
    /// An etcd cluster's SRV records name other members than the started voting ones.
    EtcdRecords,
    /// With `backup.verify`: the last restore drill failed, or none passed within `maxAge`.
    BackupUnverified,
    /// The declared roles and databases are not as the file says: a convergence failed, or
    /// they were changed by hand (reported under `drift: warn`).
    Catalog,
}

impl DriftKind {
    /// The snake_case name used in alerts and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::StackParameters => "stack_parameters",
            DriftKind::StackTemplate => "stack_template",
            DriftKind::StackTags => "stack_tags",
            DriftKind::StackState => "stack_state",
            DriftKind::ResourceDeleted => "resource_deleted",
            DriftKind::StackMissing => "stack_missing",
            DriftKind::NoLeader => "no_leader",
            DriftKind::MissingMembers => "missing_members",
            DriftKind::ReplicaLag => "replica_lag",
            DriftKind::ConfigDiffers => "config_differs",
            DriftKind::PendingRestart => "pending_restart",
            DriftKind::InvalidCommit => "invalid_commit",
            DriftKind::EtcdRecords => "etcd_records",
            DriftKind::BackupUnverified => "backup_unverified",
            DriftKind::Catalog => "catalog",
        }
    }

    /// Whether re-applying the file can fix it (the AWS and config kinds).
    pub fn revertible(self) -> bool {
        matches!(
            self,
            DriftKind::StackParameters
                | DriftKind::StackTemplate
                | DriftKind::StackTags
                | DriftKind::StackMissing
                | DriftKind::ConfigDiffers
        )
    }
}

/// One drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The cluster (`*` for the repository).
    pub cluster: String,
    /// What kind.
    pub kind: DriftKind,
    /// What it is about within the cluster (a member), when more than one can drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// For humans.
    pub detail: String,
}

impl Drift {
    /// Identity for alerting: one alert per key while it persists.
    pub fn key(&self) -> String {
        match &self.subject {
            Some(s) => format!("{}/{}/{s}", self.cluster, self.kind.as_str()),
            None => format!("{}/{}", self.cluster, self.kind.as_str()),
        }
    }
}

/// One cluster's drift, or why it cannot be told.
pub type ClusterDrift = Result<Vec<Drift>, String>;

fn drift(cluster: &str, kind: DriftKind, detail: String) -> Drift {
    Drift {
        cluster: cluster.to_string(),
        kind,
        subject: None,
        detail,
    }
}

/// Drift of one AWS cluster.
pub fn detect(path: &str, file: &ClusterFile, obs: &ObservedCluster) -> ClusterDrift {
    let input = DesiredInput {
        based_on: ("", "", ""),
        clusters: vec![(path, file)],
        etcd_clusters: Vec::new(),
    };
    let mut out = stack_drift(&input, obs)?;
    if let Observation::Present(etcd) = &obs.etcd
        && obs.stack.present().is_some()
    {
        out.extend(runtime(file, etcd));
    }
    Ok(out)
}

/// Drift of one etcd cluster: its stack's, fewer started voting members than the file's,
/// and SRV records that name other members than those. Its membership unknown (no quorum,
/// no records, no client certificate) makes the cluster's drift unknown unless its stack
/// drifted.
pub fn detect_etcd(path: &str, file: &EtcdClusterFile, obs: &ObservedCluster) -> ClusterDrift {
    let input = DesiredInput {
        based_on: ("", "", ""),
        clusters: Vec::new(),
        etcd_clusters: vec![(path, file)],
    };
    let mut out = stack_drift(&input, obs)?;
    let Some(running) = &obs.etcd_cluster else {
        return Ok(out);
    };
    match &running.members {
        Observation::Present(members) => out.extend(etcd_runtime(file, members, &running.records)),
        Observation::Absent => {}
        Observation::Unknown(why) => {
            if out.is_empty() {
                return Err(format!("etcd members: {why}"));
            }
        }
    }
    Ok(out)
}

/// Runtime drift of an etcd cluster from its members and SRV records.
pub fn etcd_runtime(
    file: &EtcdClusterFile,
    members: &[EtcdMemberSeen],
    records: &Observation<SrvTargets>,
) -> Vec<Drift> {
    let name = file.metadata.name.as_str();
    let mut out = Vec::new();
    let mut voters: Vec<String> = members
        .iter()
        .filter(|m| !m.learner && m.started && !m.name.is_empty())
        .map(|m| m.name.clone())
        .collect();
    voters.sort();
    let wanted = file.spec.members as usize;
    if voters.len() < wanted {
        out.push(drift(
            name,
            DriftKind::MissingMembers,
            format!(
                "{} of {wanted} etcd members started and voting ({})",
                voters.len(),
                if voters.is_empty() {
                    "none".to_string()
                } else {
                    voters.join(", ")
                }
            ),
        ));
    }
    let listed = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.join(", ")
        }
    };
    match records {
        Observation::Present(t) => {
            let (client, server) = srv_names(&file.domain());
            for (record, targets) in [(client, &t.client), (server, &t.server)] {
                if *targets != voters {
                    out.push(Drift {
                        cluster: name.to_string(),
                        kind: DriftKind::EtcdRecords,
                        subject: Some(record.clone()),
                        detail: format!(
                            "{record} points at {}; the started voting members are {}",
                            listed(targets),
                            listed(&voters)
                        ),
                    });
                }
            }
        }
        Observation::Absent => out.push(drift(
            name,
            DriftKind::EtcdRecords,
            format!(
                "no SRV records under {}; the started voting members are {}",
                file.domain(),
                listed(&voters)
            ),
        )),
        Observation::Unknown(_) => {}
    }
    out
}

/// A cluster's stack drift: its state, resources deleted by hand, and what re-applying the
/// file would change, from a plan of the one file in `input`.
fn stack_drift(input: &DesiredInput<'_>, obs: &ObservedCluster) -> ClusterDrift {
    let name = obs.name.as_str();
    let mut out = Vec::new();
    // The stack's own state first: a failed stack is drift even though nothing can be planned.
    if let Observation::Present(s) = &obs.stack
        && (s.status.ends_with("ROLLBACK_COMPLETE") || s.status.ends_with("_FAILED"))
    {
        out.push(drift(
            name,
            DriftKind::StackState,
            format!("stack {} is {}", s.stack_id, s.status),
        ));
    }
    for r in &obs.resources_gone {
        out.push(Drift {
            cluster: name.to_string(),
            kind: DriftKind::ResourceDeleted,
            subject: r.split(' ').next().map(str::to_string),
            detail: format!(
                "{r} was deleted outside CloudFormation, which still lists it; re-applying the same template does not bring it back: change the resource's logical id or recreate the stack"
            ),
        });
    }
    let mut observed = Observed::default();
    observed.clusters.insert(name.to_string(), obs.clone());
    let p = plan::plan(
        input,
        &observed,
        PlanOptions {
            prune: false,
            allow_replace: true,
        },
    );
    let Some(c) = p.clusters.first() else {
        return Ok(out);
    };
    if c.action == Action::Blocked {
        if out.is_empty() {
            return Err(c.reason.clone().unwrap_or_else(|| "cannot observe".into()));
        }
        return Ok(out);
    }
    if c.action == Action::Create {
        out.push(drift(
            name,
            DriftKind::StackMissing,
            format!("stack {} does not exist", c.stack_name),
        ));
    } else {
        if !c.parameters.is_empty() {
            let what: Vec<String> = c
                .parameters
                .iter()
                .map(|v| {
                    format!(
                        "{} is {} in AWS, {} in git",
                        v.name,
                        v.before.as_deref().unwrap_or("unset"),
                        v.after.as_deref().unwrap_or("unset")
                    )
                })
                .collect();
            out.push(drift(name, DriftKind::StackParameters, what.join("; ")));
        }
        if !c.template_diff.is_empty() {
            let ids: Vec<&str> = c.resources.iter().map(|r| r.logical_id.as_str()).collect();
            out.push(drift(
                name,
                DriftKind::StackTemplate,
                format!("the template differs from git ({})", ids.join(", ")),
            ));
        }
        if !c.tags.is_empty() {
            let names: Vec<&str> = c.tags.iter().map(|t| t.name.as_str()).collect();
            out.push(drift(
                name,
                DriftKind::StackTags,
                format!("tags differ from git: {}", names.join(", ")),
            ));
        }
    }
    if let Some(cfg) = &c.config
        && cfg.before.is_some()
    {
        let lines = crate::aws::show::config_lines(cfg);
        out.push(drift(
            name,
            DriftKind::ConfigDiffers,
            format!("etcd config differs from git: {}", lines.join("; ")),
        ));
    }
    Ok(out)
}

/// Runtime drift from the members a cluster publishes in etcd.
pub fn runtime(file: &ClusterFile, etcd: &crate::aws::observed::ObservedEtcd) -> Vec<Drift> {
    let name = file.metadata.name.as_str();
    let mut out = Vec::new();
    if !etcd.members.iter().any(|m| m.leader) {
        out.push(drift(
            name,
            DriftKind::NoLeader,
            "no member holds the leader key".into(),
        ));
    }
    let running = etcd.members.iter().filter(|m| m.state == "running").count();
    let wanted = file.spec.instances as usize;
    if running < wanted {
        out.push(drift(
            name,
            DriftKind::MissingMembers,
            format!("{running} of {wanted} members running"),
        ));
    }
    let limit = file.spec.ha.maximum_lag_on_failover;
    for m in etcd.members.iter().filter(|m| m.pending_restart) {
        out.push(Drift {
            cluster: name.to_string(),
            kind: DriftKind::PendingRestart,
            subject: Some(m.name.clone()),
            detail: format!(
                "{} runs with a changed setting that waits for a restart",
                m.name
            ),
        });
    }
    let declares = !file.spec.roles.is_empty() || !file.spec.databases.is_empty();
    if let Some(c) = etcd.catalog.as_ref().filter(|_| declares) {
        if let Some(e) = &c.error {
            out.push(drift(
                name,
                DriftKind::Catalog,
                format!("roles and databases not converged (on {}): {e}", c.member),
            ));
        } else if !c.drift.is_empty() {
            out.push(drift(
                name,
                DriftKind::Catalog,
                format!(
                    "roles and databases changed by hand: {}",
                    c.drift.join("; ")
                ),
            ));
        }
    }
    if let Some(v) = file.spec.backup.as_ref().and_then(|b| b.verify.as_ref()) {
        let max_age = humantime::parse_duration(&v.max_age).map_or(u64::MAX, |d| d.as_secs());
        // No key: no member has started drills yet (a new cluster, or none running, which
        // is drift of its own); the key begins the clock.
        if let Some(detail) = etcd
            .drill
            .as_ref()
            .and_then(|record| record.problem(max_age, etcd.read_unix))
        {
            out.push(drift(name, DriftKind::BackupUnverified, detail));
        }
    }
    for m in &etcd.members {
        if let Some(lag) = m.lag_bytes
            && lag > limit
        {
            out.push(Drift {
                cluster: name.to_string(),
                kind: DriftKind::ReplicaLag,
                subject: Some(m.name.clone()),
                detail: format!(
                    "{} is {lag} bytes behind the leader (limit {limit})",
                    m.name
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::observed::ObservedMember;

    fn file() -> ClusterFile {
        serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: a}\nspec:\n  instances: 2\n  target: aws\n  dcs: {hosts: [\"10.0.0.1:2379\"]}\n  aws: {region: eu-west-1, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d]}\n",
        )
        .expect("valid")
    }

    fn member(name: &str, leader: bool, state: &str) -> ObservedMember {
        ObservedMember {
            name: name.into(),
            role: if leader { "primary" } else { "replica" }.into(),
            state: state.into(),
            leader,
            lag_bytes: None,
            pending_restart: false,
        }
    }

    fn applied(f: &ClusterFile) -> ObservedCluster {
        let id = "arn:aws:cloudformation:eu-west-1:1:stack/spilo-a/x".to_string();
        let mut o = ObservedCluster::as_applied(f, id, "UPDATE_COMPLETE", 3).expect("aws");
        if let Observation::Present(e) = &mut o.etcd {
            e.members = vec![
                member("m0", true, "running"),
                member("m1", false, "running"),
            ];
        }
        o
    }

    fn kinds(d: &[Drift]) -> Vec<DriftKind> {
        d.iter().map(|x| x.kind).collect()
    }

    fn etcd_file() -> EtcdClusterFile {
        serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {name: etcd-main}\nspec:\n  \
             aws: {region: eu-west-1, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d], hostedZone: db.example.com, image: ami-0a1b2c3d}\n  \
             secrets: {ca: {ssm: /spilo/ca}}\n",
        )
        .expect("valid")
    }

    fn voter(name: &str) -> EtcdMemberSeen {
        EtcdMemberSeen {
            name: name.into(),
            learner: false,
            started: true,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The etcd cluster applied, with `members` and SRV records pointing at `targets`.
    fn etcd_running(
        f: &EtcdClusterFile,
        members: Vec<EtcdMemberSeen>,
        targets: &[&str],
    ) -> ObservedCluster {
        let mut o = ObservedCluster::etcd_as_applied(f, "stack-id".into());
        o.etcd_cluster = Some(crate::aws::observed::ObservedEtcdCluster {
            members: Observation::Present(members),
            records: Observation::Present(SrvTargets {
                client: names(targets),
                server: names(targets),
            }),
        });
        o
    }

    #[test]
    fn an_etcd_cluster_of_its_members_with_records_naming_them_has_no_drift() {
        let f = etcd_file();
        let all = vec![voter("i-1"), voter("i-2"), voter("i-3")];
        let o = etcd_running(&f, all, &["i-1", "i-2", "i-3"]);
        assert_eq!(detect_etcd("e.yaml", &f, &o), Ok(Vec::new()));
    }

    #[test]
    fn a_lost_etcd_member_and_records_naming_others_are_drift() {
        let f = etcd_file();
        // A member gone, a learner not counted, an unstarted member not counted; the records
        // still name the gone one.
        let mut learner = voter("i-4");
        learner.learner = true;
        let unstarted = EtcdMemberSeen {
            name: String::new(),
            learner: false,
            started: false,
        };
        let o = etcd_running(
            &f,
            vec![voter("i-1"), voter("i-2"), learner, unstarted],
            &["i-1", "i-2", "i-3"],
        );
        let d = detect_etcd("e.yaml", &f, &o).expect("known");
        assert_eq!(
            kinds(&d),
            [
                DriftKind::MissingMembers,
                DriftKind::EtcdRecords,
                DriftKind::EtcdRecords
            ]
        );
        assert_eq!(
            d[0].detail,
            "2 of 3 etcd members started and voting (i-1, i-2)"
        );
        assert_eq!(
            d[1].detail,
            "_etcd-client-ssl._tcp.etcd-main.db.example.com points at i-1, i-2, i-3; the started voting members are i-1, i-2"
        );
        assert_eq!(
            d[2].subject.as_deref(),
            Some("_etcd-server-ssl._tcp.etcd-main.db.example.com")
        );
        // Records gone altogether.
        let mut gone = etcd_running(&f, vec![voter("i-1"), voter("i-2"), voter("i-3")], &[]);
        if let Some(e) = &mut gone.etcd_cluster {
            e.records = Observation::Absent;
        }
        let d = detect_etcd("e.yaml", &f, &gone).expect("known");
        assert_eq!(kinds(&d), [DriftKind::EtcdRecords]);
        assert!(
            d[0].detail
                .starts_with("no SRV records under etcd-main.db.example.com")
        );
    }

    #[test]
    fn unknown_etcd_membership_is_unknown_drift_unless_the_stack_drifted() {
        let f = etcd_file();
        let mut o = etcd_running(&f, Vec::new(), &[]);
        if let Some(e) = &mut o.etcd_cluster {
            e.members = Observation::Unknown("cannot reach etcd".into());
            e.records = Observation::Unknown("throttled".into());
        }
        assert_eq!(
            detect_etcd("e.yaml", &f, &o),
            Err("etcd members: cannot reach etcd".into())
        );
        if let Observation::Present(s) = &mut o.stack {
            s.parameters.insert("Members".into(), "5".into());
        }
        let d = detect_etcd("e.yaml", &f, &o).expect("the stack's drift is known");
        assert_eq!(kinds(&d), [DriftKind::StackParameters]);
        // The stack missing altogether: no membership was looked at.
        let missing =
            ObservedCluster::of("etcd-main".into(), Observation::Absent, Observation::Absent);
        let d = detect_etcd("e.yaml", &f, &missing).expect("known");
        assert_eq!(kinds(&d), [DriftKind::StackMissing]);
    }

    #[test]
    fn an_applied_healthy_cluster_has_no_drift() {
        let f = file();
        assert_eq!(detect("c.yaml", &f, &applied(&f)), Ok(Vec::new()));
    }

    #[test]
    fn a_hand_edited_template_and_a_rolled_back_stack_are_drift() {
        let f = file();
        let mut o = applied(&f);
        if let Observation::Present(s) = &mut o.stack {
            s.template["Resources"]["Role"]["Properties"]["ManagedPolicyArns"] =
                serde_json::json!(["arn:aws:iam::aws:policy/AdministratorAccess"]);
            s.status = "UPDATE_ROLLBACK_COMPLETE".into();
        }
        let d = detect("c.yaml", &f, &o).expect("known");
        assert_eq!(kinds(&d), [DriftKind::StackState, DriftKind::StackTemplate]);
        assert!(d[1].detail.contains("Role"), "{d:?}");
    }

    #[test]
    fn lost_leader_and_members_are_runtime_drift() {
        let f = file();
        let mut o = applied(&f);
        if let Observation::Present(e) = &mut o.etcd {
            e.members = vec![member("m1", false, "starting")];
        }
        let d = detect("c.yaml", &f, &o).expect("known");
        assert_eq!(kinds(&d), [DriftKind::NoLeader, DriftKind::MissingMembers]);
        assert_eq!(d[1].detail, "0 of 2 members running");
    }

    #[test]
    fn unknown_etcd_is_not_drift_but_unknown() {
        let f = file();
        let mut o = applied(&f);
        o.etcd = Observation::Unknown("connection refused".into());
        let e = detect("c.yaml", &f, &o).expect_err("unknown");
        assert!(e.contains("connection refused"), "{e}");
    }

    #[test]
    fn a_failed_or_stale_restore_drill_is_drift_only_with_verify() {
        let mut f = file();
        let run = |unix, ok| spilo_model::DrillRun {
            unix,
            member: "a-1".into(),
            backup: Some("base_1".into()),
            ok,
            failed: if ok {
                vec![]
            } else {
                vec!["wal: segment X of timeline 1 is missing".into()]
            },
            rpo_ms: Some(1000),
            rto_ms: Some(2000),
        };
        let etcd = |drill: Option<spilo_model::DrillRecord>| crate::aws::observed::ObservedEtcd {
            config: Observation::Absent,
            members: vec![
                member("m0", true, "running"),
                member("m1", false, "running"),
            ],
            boot_failures: Default::default(),
            drill,
            catalog: None,
            read_unix: 10_000,
        };
        let unverified = |f: &ClusterFile, e| {
            runtime(f, &e)
                .into_iter()
                .filter(|d| d.kind == DriftKind::BackupUnverified)
                .map(|d| d.detail)
                .collect::<Vec<_>>()
        };
        // Without backup.verify nothing is said, even about a failed drill.
        let failed = spilo_model::DrillRecord::after(None, run(9_990, false));
        assert!(unverified(&f, etcd(Some(failed.clone()))).is_empty());
        f.spec.backup =
            serde_yaml::from_str("{bucket: b, verify: {schedule: \"0 3 * * 0\", maxAge: 1h}}")
                .expect("backup");
        assert!(
            unverified(&f, etcd(None)).is_empty(),
            "no key: drills not begun"
        );
        let begun = spilo_model::DrillRecord::scheduled(1_000);
        let why = unverified(&f, etcd(Some(begun)));
        assert!(
            why[0].contains("none has passed since drills began"),
            "{why:?}"
        );
        let why = unverified(&f, etcd(Some(failed)));
        assert!(
            why[0].contains("segment X of timeline 1 is missing"),
            "{why:?}"
        );
        let fresh = spilo_model::DrillRecord::after(None, run(9_000, true));
        assert!(unverified(&f, etcd(Some(fresh))).is_empty());
        let stale = spilo_model::DrillRecord::after(None, run(1_000, true));
        let why = unverified(&f, etcd(Some(stale)));
        assert!(why[0].contains("within 3600s"), "{why:?}");
    }

    #[test]
    fn roles_changed_by_hand_or_not_converged_are_drift_of_a_file_that_declares_them() {
        let mut f = file();
        let mut e = crate::aws::observed::ObservedEtcd {
            config: Observation::Absent,
            members: vec![
                member("m0", true, "running"),
                member("m1", false, "running"),
            ],
            boot_failures: Default::default(),
            drill: None,
            catalog: Some(spilo_model::catalog::CatalogStatus {
                member: "m0".into(),
                unix: 1,
                error: None,
                drift: vec!["role app: -createdb".into()],
            }),
            read_unix: 10_000,
        };
        let catalog = |f: &ClusterFile, e: &crate::aws::observed::ObservedEtcd| {
            runtime(f, e)
                .into_iter()
                .filter(|d| d.kind == DriftKind::Catalog)
                .map(|d| d.detail)
                .collect::<Vec<_>>()
        };
        assert!(
            catalog(&f, &e).is_empty(),
            "a file without roles says nothing"
        );
        f.spec.roles = serde_yaml::from_str("{app: {}}").expect("roles");
        assert_eq!(
            catalog(&f, &e),
            ["roles and databases changed by hand: role app: -createdb"]
        );
        if let Some(c) = e.catalog.as_mut() {
            c.error = Some("database app: extension x does not exist: no such extension".into());
        }
        assert!(catalog(&f, &e)[0].starts_with("roles and databases not converged (on m0)"));
        e.catalog = Some(Default::default());
        assert!(catalog(&f, &e).is_empty());
    }
}
