//! Unit tests of the pure planner: observed state built by hand, no AWS.

use super::observed::{Observation, Observed, ObservedCluster, ObservedConfig, ObservedEtcd};
use super::plan::{Action, DesiredInput, Plan, PlanOptions, plan};
use super::template;
use spilo_model::spec::ClusterFile;

mod standby;

fn file(name: &str, extra: &str) -> ClusterFile {
    serde_yaml::from_str(&format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}}}\nspec:\n  target: aws\n  dcs: {{hosts: [\"10.0.0.1:2379\"]}}\n  aws: {{region: eu-west-1, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d], hostedZone: db.example.com}}\n{extra}"
    ))
    .expect("valid")
}

fn etcd_with(config: Option<&ClusterFile>) -> Observation<ObservedEtcd> {
    Observation::Present(ObservedEtcd {
        config: match config {
            Some(f) => Observation::Present(ObservedConfig {
                value: Some(f.spec.dynamic_config()),
                mod_revision: 7,
            }),
            None => Observation::Absent,
        },
        members: Vec::new(),
        boot_failures: Default::default(),
        drill: None,
        catalog: None,
        read_unix: 0,
        applied_version: None,
        upgrade: None,
    })
}

fn applied(f: &ClusterFile, status: &str) -> ObservedCluster {
    let id = format!(
        "arn:aws:cloudformation:eu-west-1:123456789012:stack/{}/x",
        template::stack_name(f.metadata.name.as_str())
    );
    let mut o = ObservedCluster::as_applied(f, id, status, 7).expect("aws");
    o.dns = Some(Observation::Present("lb".into()));
    o
}

fn fresh(f: &ClusterFile) -> ObservedCluster {
    ObservedCluster {
        name: f.metadata.name.to_string(),
        stack: Observation::Absent,
        dns: Some(Observation::Absent),
        bucket: None,
        image: None,
        image_object: None,
        image_file: None,
        resources_gone: Vec::new(),
        etcd: etcd_with(None),
        etcd_cluster: None,
        group: None,
    }
}

fn run(files: &[&ClusterFile], observed: Vec<ObservedCluster>, options: PlanOptions) -> Plan {
    let mut o = Observed::default();
    let mut names = Vec::new();
    for c in observed {
        if c.stack.present().is_some() {
            names.push(c.name.clone());
        }
        o.clusters.insert(c.name.clone(), c);
    }
    o.stack_list = Observation::Present(names);
    plan(
        &DesiredInput {
            based_on: ("repo", "HEAD", "c0ffee"),
            clusters: files.iter().map(|f| ("clusters/x.yaml", *f)).collect(),
            etcd_clusters: Vec::new(),
        },
        &o,
        options,
    )
}

fn only(p: &Plan) -> &super::plan::ClusterPlan {
    assert_eq!(p.clusters.len(), 1, "{p:?}");
    &p.clusters[0]
}

#[test]
fn a_new_cluster_is_created_with_its_config() {
    let f = file("a", "");
    let p = run(&[&f], vec![fresh(&f)], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Create);
    assert_eq!(c.config.as_ref().map(|c| c.expected_revision), Some(0));
    assert!(c.desired.is_some());
    assert!(p.has_changes() && !p.has_blocked());
}

#[test]
fn a_switch_to_quorum_commit_is_said_in_words_in_every_view() {
    let before = file("a", "  instances: 3\n  ha: {synchronousMode: true}\n");
    let after = file("a", "  instances: 3\n  ha: {synchronousMode: quorum}\n");
    let mut o = applied(&before, "UPDATE_COMPLETE");
    o.etcd = etcd_with(Some(&before));
    let p = run(&[&after], vec![o], PlanOptions::default());
    let words = "commits wait for ANY 1 of 2 replicas; a failover survives the loss of 1 member without data loss";
    let c = only(&p);
    assert_eq!(c.action, Action::Update);
    assert!(
        c.config
            .as_ref()
            .and_then(|c| c.synchronous.as_deref())
            .is_some_and(|s| s.starts_with(words)),
        "{c:?}"
    );
    let text = super::show::text(&p, super::show::Style::new(false));
    assert!(text.contains("+ synchronous_mode_quorum = true"), "{text}");
    assert!(text.contains(&format!("durability: {words}")), "{text}");
    assert!(super::show::markdown(&p, 60_000).contains(words));
    assert!(serde_json::to_string(&p).expect("json").contains(words));
    // A change elsewhere in the config does not repeat it.
    let tuned = file(
        "a",
        "  instances: 3\n  ha: {synchronousMode: quorum, ttl: 6}\n",
    );
    let mut o = applied(&after, "UPDATE_COMPLETE");
    o.etcd = etcd_with(Some(&after));
    let p = run(&[&tuned], vec![o], PlanOptions::default());
    assert_eq!(
        only(&p).config.as_ref().map(|c| c.synchronous.clone()),
        Some(None)
    );
}

#[test]
fn an_applied_cluster_is_noop() {
    let f = file("a", "");
    let p = run(
        &[&f],
        vec![applied(&f, "UPDATE_COMPLETE")],
        PlanOptions::default(),
    );
    assert_eq!(only(&p).action, Action::Noop);
    assert!(!p.has_changes());
    assert_eq!(p.based_on.clusters["a"].config_revision, Some(7));
}

#[test]
fn unknown_etcd_blocks_and_shows_no_change() {
    let f = file("a", "");
    let mut o = fresh(&f);
    o.etcd = Observation::Unknown("connection refused".into());
    let p = run(&[&f], vec![o], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Blocked);
    assert_eq!(
        c.reason.as_deref(),
        Some("cannot plan a: etcd: connection refused")
    );
    assert!(c.config.is_none() && c.resources.is_empty() && c.desired.is_none());
    assert!(p.has_blocked());
}

#[test]
fn a_stack_in_progress_or_failed_blocks() {
    let f = file("a", "  instances: 5\n");
    for (status, why) in [
        ("UPDATE_IN_PROGRESS", "in progress"),
        ("ROLLBACK_COMPLETE", "delete the stack"),
        ("UPDATE_ROLLBACK_FAILED", "fix the stack"),
    ] {
        let p = run(
            &[&f],
            vec![applied(&file("a", ""), status)],
            PlanOptions::default(),
        );
        let c = only(&p);
        assert_eq!(c.action, Action::Blocked, "{status}");
        assert!(c.reason.as_deref().unwrap_or("").contains(why), "{c:?}");
    }
}

#[test]
fn a_dns_name_taken_by_someone_else_blocks_a_create() {
    let f = file("a", "");
    let mut o = fresh(&f);
    o.dns = Some(Observation::Present("elsewhere.example.com".into()));
    let p = run(&[&f], vec![o], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Blocked);
    assert!(
        c.reason
            .as_deref()
            .unwrap_or("")
            .contains("a.db.example.com. already exists"),
        "{c:?}"
    );
}

#[test]
fn a_gone_file_orphans_unless_pruned() {
    let kept = file("a", "");
    let pruned = file("b", "  reconcile: {prune: true}\n");
    let p = run(
        &[],
        vec![
            applied(&kept, "CREATE_COMPLETE"),
            applied(&pruned, "CREATE_COMPLETE"),
        ],
        PlanOptions::default(),
    );
    let action = |n: &str| p.clusters.iter().find(|c| c.name == n).map(|c| c.action);
    assert_eq!(action("a"), Some(Action::Orphan));
    assert_eq!(action("b"), Some(Action::Delete), "the stack's prune tag");
    assert_eq!(p.clusters[1].region, "eu-west-1");
    let forced = run(
        &[],
        vec![applied(&kept, "CREATE_COMPLETE")],
        PlanOptions {
            prune: true,
            allow_replace: false,
            check_upgrades: false,
        },
    );
    assert_eq!(only(&forced).action, Action::Delete);
}

#[test]
fn an_unreadable_stack_list_deletes_nothing() {
    let f = file("a", "");
    let mut o = Observed::default();
    o.clusters
        .insert("a".into(), applied(&f, "CREATE_COMPLETE"));
    o.stack_list = Observation::Unknown("AccessDenied".into());
    let p = plan(
        &DesiredInput {
            based_on: ("repo", "HEAD", "c0ffee"),
            clusters: Vec::new(),
            etcd_clusters: Vec::new(),
        },
        &o,
        PlanOptions {
            prune: true,
            allow_replace: false,
            check_upgrades: false,
        },
    );
    assert!(
        p.clusters.iter().all(|c| c.action != Action::Delete),
        "{p:?}"
    );
    assert!(p.has_blocked());
}

#[test]
fn a_suspended_cluster_is_left_alone() {
    let f = file("a", "  instances: 5\n  reconcile: {suspend: true}\n");
    let p = run(
        &[&f],
        vec![applied(&file("a", ""), "CREATE_COMPLETE")],
        PlanOptions::default(),
    );
    let c = only(&p);
    assert_eq!(c.action, Action::Noop);
    assert!(c.reason.as_deref().unwrap_or("").contains("suspend"));
}

#[test]
fn a_replacement_passes_with_allow_replace() {
    let f = file("a", "  endpoints: {dns: {name: renamed}}\n");
    let before = applied(&file("a", ""), "CREATE_COMPLETE");
    let refused = run(&[&f], vec![before.clone()], PlanOptions::default());
    assert!(only(&refused).refused);
    let allowed = run(
        &[&f],
        vec![before],
        PlanOptions {
            prune: false,
            allow_replace: true,
            check_upgrades: false,
        },
    );
    let c = only(&allowed);
    assert_eq!(c.action, Action::Replace);
    assert!(!c.refused && c.desired.is_some());
}

#[test]
fn an_image_parameter_that_does_not_resolve_blocks_a_create() {
    let f = file("a", "");
    let mut o = fresh(&f);
    o.image = Some(Observation::Absent);
    let p = run(&[&f], vec![o], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Blocked);
    let reason = c.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(
            "the image parameter /aws/service/debian/release/12/latest/amd64 does not exist in eu-west-1"
        ),
        "{reason}"
    );
    let mut o = fresh(&f);
    o.image = Some(Observation::Unknown("AccessDenied".into()));
    assert_eq!(
        only(&run(&[&f], vec![o], PlanOptions::default())).action,
        Action::Blocked
    );
    let mut o = fresh(&f);
    o.image = Some(Observation::Present("ami-0123".into()));
    assert_eq!(
        only(&run(&[&f], vec![o], PlanOptions::default())).action,
        Action::Create
    );
}

#[test]
fn the_spilo_image_is_uploaded_when_the_bucket_lacks_it_and_this_machine_has_it() {
    let f = file("a", "  backup: {bucket: wal}\n");
    let key = super::image::key(spilo_model::spec::Architecture::Amd64);
    let mut o = applied(&f, "UPDATE_COMPLETE");
    o.bucket = Some(Observation::Present(()));
    o.image_object = Some(Observation::Absent);
    o.image_file = Some(("/images/spilo.tar.gz".into(), "ab12".into()));
    let c = run(&[&f], vec![o.clone()], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!(c.action, Action::Update);
    let u = c.image_upload.expect("an upload");
    assert_eq!((u.bucket.as_str(), u.key.as_str()), ("wal", key.as_str()));
    // Not on this machine: nothing could boot, so nothing is applied.
    o.image_file = None;
    let c = run(&[&f], vec![o.clone()], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!(c.action, Action::Blocked);
    assert!(
        c.reason
            .unwrap_or_default()
            .contains("build it with scripts/image")
    );
    // Present: nothing to do.
    o.image_object = Some(Observation::Present(()));
    let c = run(&[&f], vec![o.clone()], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!((c.action, c.image_upload), (Action::Noop, None));
    // Unknown (a bucket another account owns): blocked.
    o.image_object = Some(Observation::Unknown("403".into()));
    let c = run(&[&f], vec![o], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!(c.action, Action::Blocked);
}

#[test]
fn a_missing_bucket_is_created_only_when_the_file_asks_and_never_on_a_guess() {
    let asks = file("a", "  backup: {bucket: wal, createBucket: true}\n");
    let mut o = applied(&asks, "UPDATE_COMPLETE");
    o.bucket = Some(Observation::Absent);
    let c = run(&[&asks], vec![o], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!(
        (c.action, c.bucket.as_deref()),
        (Action::Update, Some("wal"))
    );
    let mut o = applied(&asks, "UPDATE_COMPLETE");
    o.bucket = Some(Observation::Unknown("403 Forbidden".into()));
    let c = run(&[&asks], vec![o], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!((c.action, c.bucket), (Action::Blocked, None));
    let silent = file("a", "  backup: {bucket: wal}\n");
    let mut o = applied(&silent, "UPDATE_COMPLETE");
    o.bucket = Some(Observation::Absent);
    let c = run(&[&silent], vec![o], PlanOptions::default())
        .clusters
        .remove(0);
    assert_eq!((c.action, c.bucket), (Action::Noop, None));
    assert!(
        c.warnings[0].contains("set spec.backup.createBucket: true"),
        "{:?}",
        c.warnings
    );
    // No restore drill declared: said; with one, not.
    assert!(
        c.warnings.iter().any(|w| w.starts_with("no backup.verify")),
        "{:?}",
        c.warnings
    );
    let drilled = file(
        "a",
        "  backup: {bucket: wal, verify: {schedule: \"0 3 * * 0\"}}\n",
    );
    let c = run(
        &[&drilled],
        vec![applied(&drilled, "UPDATE_COMPLETE")],
        PlanOptions::default(),
    )
    .clusters
    .remove(0);
    assert!(
        !c.warnings.iter().any(|w| w.contains("backup.verify")),
        "{:?}",
        c.warnings
    );
}

fn etcd_file(extra: &str) -> spilo_model::spec::EtcdClusterFile {
    serde_yaml::from_str(&format!(
        "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {{name: etcd-main}}\nspec:\n  \
         aws: {{region: eu-west-1, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d], hostedZone: db.example.com, image: ami-0a1b2c3d}}\n  \
         secrets: {{ca: {{ssm: /spilo/ca}}}}\n{extra}"
    ))
    .expect("valid")
}

fn run_etcd(
    f: &spilo_model::spec::EtcdClusterFile,
    observed: ObservedCluster,
    options: PlanOptions,
) -> Plan {
    let mut o = Observed::default();
    if observed.stack.present().is_some() {
        o.stack_list = Observation::Present(vec![observed.name.clone()]);
    }
    o.clusters.insert(observed.name.clone(), observed);
    plan(
        &DesiredInput {
            based_on: ("repo", "main", "abc"),
            clusters: Vec::new(),
            etcd_clusters: vec![("clusters/etcd-main.yaml", f)],
        },
        &o,
        options,
    )
}

#[test]
fn a_new_etcd_cluster_is_a_stack_with_no_etcd_keys_to_write() {
    let f = etcd_file("");
    let fresh = ObservedCluster::of("etcd-main".into(), Observation::Absent, Observation::Absent);
    let p = run_etcd(&f, fresh, PlanOptions::default());
    let c = &p.clusters[0];
    assert_eq!(c.action, Action::Create, "{c:?}");
    assert_eq!(c.stack_name, "spilo-etcd-main");
    assert!(c.config.is_none() && c.dcs.is_none());
    let ids: Vec<&str> = c.resources.iter().map(|r| r.logical_id.as_str()).collect();
    for id in [
        "AutoScalingGroup",
        "LaunchTemplate",
        "MemberSecurityGroup",
        "ClientSecurityGroup",
        "Role",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    // Applied, it plans as nothing to do.
    let applied = ObservedCluster::etcd_as_applied(&f, "stack-id".into());
    let p = run_etcd(&f, applied, PlanOptions::default());
    assert_eq!(p.clusters[0].action, Action::Noop, "{:?}", p.clusters[0]);
}

#[test]
fn an_etcd_change_in_place_is_an_update_and_replacing_every_member_is_refused_always() {
    let f = etcd_file("");
    let bigger = etcd_file("").spec.members + 2;
    let p = run_etcd(
        &etcd_file(&format!("  members: {bigger}\n")),
        ObservedCluster::etcd_as_applied(&f, "stack-id".into()),
        PlanOptions::default(),
    );
    assert_eq!(p.clusters[0].action, Action::Update, "{:?}", p.clusters[0]);
    assert!(!p.clusters[0].refused);
    // A stack whose group was made with a name: rendering without it replaces the group.
    let mut named = ObservedCluster::etcd_as_applied(&f, "stack-id".into());
    if let Observation::Present(s) = &mut named.stack {
        s.template["Resources"]["AutoScalingGroup"]["Properties"]["AutoScalingGroupName"] =
            serde_json::json!("etcd-main");
    }
    let p = run_etcd(
        &f,
        named,
        PlanOptions {
            prune: false,
            allow_replace: true,
            check_upgrades: false,
        },
    );
    let c = &p.clusters[0];
    assert_eq!(c.action, Action::Replace);
    assert!(c.refused, "refused even with --allow-replace");
    assert!(
        c.reason
            .as_deref()
            .is_some_and(|r| r.contains("every etcd member at once")),
        "{c:?}"
    );
}

#[test]
fn a_new_major_version_is_an_upgrade_before_the_rollout_unless_the_members_are_not_ready() {
    let on_15 = file("orders", "");
    let on_18 = file("orders", "  postgresql: {version: 18}\n");
    let mut running = applied(&on_15, "UPDATE_COMPLETE");
    if let Observation::Present(e) = &mut running.etcd {
        e.applied_version = None;
        for (name, leader) in [("i-1", true), ("i-2", false)] {
            e.members.push(super::observed::ObservedMember {
                name: name.into(),
                role: if leader { "primary" } else { "replica" }.into(),
                state: "running".into(),
                leader,
                lag_bytes: (!leader).then_some(0),
                pending_restart: false,
                postgres_version: Some(15),
            });
        }
    }
    let p = run(&[&on_18], vec![running.clone()], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Update, "{c:?}");
    assert_eq!(
        c.major_upgrade.as_ref().map(|u| (u.from, u.to)),
        Some((15, 18))
    );
    assert!(c.rollout.is_some() && c.desired.is_some(), "{c:?}");
    // The file as it runs: nothing to do.
    let p = run(&[&on_15], vec![running.clone()], PlanOptions::default());
    assert!(!p.has_blocked() && !p.has_changes(), "{p:?}");
    // A replica that does not stream: blocked, nothing planned.
    if let Observation::Present(e) = &mut running.etcd {
        e.members[1].state = "starting".into();
    }
    let p = run(&[&on_18], vec![running], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Blocked, "{c:?}");
    assert!(c.desired.is_none() && c.major_upgrade.is_none() && c.rollout.is_none());
    assert!(
        c.reason.as_deref().is_some_and(|r| r.contains(
            "the major upgrade PostgreSQL 15 -> 18 cannot start: i-2 is not a running replica"
        )),
        "{c:?}"
    );
}

#[test]
fn an_upgrade_an_apply_left_unfinished_is_finished_from_its_record() {
    let on_15 = file("orders", "");
    let on_18 = file("orders", "  postgresql: {version: 18}\n");
    // The stack still on 15; its leader, alone, upgraded to 18 by an apply that stopped.
    let mut halfway = applied(&on_15, "UPDATE_COMPLETE");
    if let Observation::Present(e) = &mut halfway.etcd {
        e.applied_version = None;
        e.members.push(super::observed::ObservedMember {
            name: "i-1".into(),
            role: "primary".into(),
            state: "running".into(),
            leader: true,
            lag_bytes: None,
            pending_restart: false,
            postgres_version: Some(18),
        });
        e.upgrade = Some(spilo_model::UpgradeRecord { from: 15, to: 18 });
    }
    let p = run(&[&on_18], vec![halfway.clone()], PlanOptions::default());
    let c = only(&p);
    assert_eq!(c.action, Action::Update, "{c:?}");
    let u = c
        .major_upgrade
        .as_ref()
        .expect("the upgrade's end is planned");
    assert!(u.finishing && (u.from, u.to) == (15, 18), "{u:?}");
    assert!(
        u.describe()
            .starts_with("finishes the major upgrade PostgreSQL 15 -> 18"),
        "{}",
        u.describe()
    );
    assert!(c.rollout.is_some() && c.desired.is_some(), "{c:?}");
    // A record of another version than the file's is not this upgrade's: a downgrade is
    // refused as ever.
    let p = run(&[&on_15], vec![halfway.clone()], PlanOptions::default());
    assert_eq!(only(&p).action, Action::Blocked, "{p:?}");
    // Without the record, members on the file's version leave nothing to finish.
    if let Observation::Present(e) = &mut halfway.etcd {
        e.upgrade = None;
    }
    let p = run(&[&on_18], vec![halfway], PlanOptions::default());
    assert!(only(&p).major_upgrade.is_none(), "{p:?}");
}
