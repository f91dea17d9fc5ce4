//! Drift detection against hand-made observations.
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
        postgres_version: None,
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
    let missing = ObservedCluster::of("etcd-main".into(), Observation::Absent, Observation::Absent);
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
        applied_version: None,
        upgrade: None,
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
        applied_version: None,
        upgrade: None,
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
