//! The planner's tests of standby clusters: a standby starts as one, a running cluster whose
//! file disagrees is not planned, and one commit that swaps the standby is a switchover of
//! both (or of neither).

use super::*;

/// `etcd_with` for a config whose value `edit` changes.
fn etcd_config(
    f: &ClusterFile,
    edit: impl FnOnce(&mut spilo_model::ClusterConfig),
) -> Observation<ObservedEtcd> {
    let mut etcd = etcd_with(Some(f));
    if let Observation::Present(e) = &mut etcd
        && let Observation::Present(c) = &mut e.config
        && let Some(v) = c.value.as_mut()
    {
        edit(v);
    }
    etcd
}

#[test]
fn a_standby_cluster_starts_as_one_and_a_running_one_whose_file_disagrees_is_not_planned() {
    let standby = file(
        "dr",
        "  standby: {hosts: [\"orders.db.example.com:5432\"], archive: {bucket: wal, prefix: spilo/orders/wal/15/}}\n",
    );
    // Created: its config names the source, as its members' files do.
    let p = run(&[&standby], vec![fresh(&standby)], PlanOptions::default());
    let source = only(&p)
        .config
        .as_ref()
        .and_then(|c| c.after.standby_cluster.clone())
        .expect("a standby from the start");
    assert_eq!(source.hosts, ["orders.db.example.com:5432"]);
    assert_eq!(
        source.archive.and_then(|a| a.s3).map(|s| s.bucket),
        Some("wal".to_string())
    );
    assert!(only(&p).warnings.is_empty(), "{:?}", only(&p).warnings);

    // Running as a standby: nothing to change.
    let mut running = applied(&standby, "UPDATE_COMPLETE");
    running.etcd = etcd_config(&standby, |c| {
        c.standby_cluster = source_of(&standby).into();
    });
    let p = run(&[&standby], vec![running.clone()], PlanOptions::default());
    assert!(!p.has_changes(), "{:?}", only(&p).config);
    // A standby cluster listed there by hand is not one of the files': the plan, which
    // writes that list on AWS, takes it out.
    running.etcd = etcd_config(&standby, |c| {
        c.standby_cluster = source_of(&standby).into();
        c.downstream = vec![spilo_model::Downstream {
            cluster: "far".into(),
            api: vec!["https://10.0.0.9:8008".into()],
            primary: Vec::new(),
            follow: source_of(&standby),
        }];
    });
    let p = run(&[&standby], vec![running], PlanOptions::default());
    let change = only(&p).config.as_ref().expect("a config change");
    assert!(change.after.downstream.is_empty(), "{change:?}");

    // The file drops spec.standby: nothing of the cluster is planned, and the plan says how to
    // promote it.
    let primary = file("dr", "");
    let mut running = applied(&primary, "UPDATE_COMPLETE");
    running.etcd = etcd_config(&primary, |c| c.standby_cluster = source_of(&standby).into());
    let p = run(&[&primary], vec![running], PlanOptions::default());
    assert!(p.has_blocked() && only(&p).config.is_none(), "{p:?}");
    let why = only(&p).reason.clone().unwrap_or_default();
    assert!(
        why.contains("does not promote")
            && why.contains("spilo promote-standby dr --source-unreachable"),
        "{why}"
    );

    // The file adds spec.standby to a running primary cluster: it is not demoted.
    let mut running = applied(&standby, "UPDATE_COMPLETE");
    running.etcd = etcd_config(&standby, |c| c.standby_cluster = None);
    let p = run(&[&standby], vec![running], PlanOptions::default());
    assert!(p.has_blocked() && only(&p).config.is_none(), "{p:?}");
    let why = only(&p).reason.clone().unwrap_or_default();
    assert!(
        why.contains("demotes a running cluster only in a switchover"),
        "{why}"
    );
}

#[test]
fn one_commit_that_swaps_which_cluster_is_the_standby_is_a_switchover_of_both() {
    // orders runs as the primary cluster, dr as its standby; the commit swaps them.
    let orders_was = file("orders", "");
    let dr_was = file("dr", "  standby: {from: orders}\n");
    let orders_now = file("orders", "  standby: {from: dr}\n");
    let dr_now = file("dr", "");
    let observe = |now: &ClusterFile, was: &ClusterFile| {
        let mut o = applied(now, "UPDATE_COMPLETE");
        o.etcd = etcd_config(was, |c| {
            c.standby_cluster = crate::aws::userdata::standby_source(was)
        });
        o
    };
    let p = run(
        &[&orders_now, &dr_now],
        vec![observe(&orders_now, &orders_was), observe(&dr_now, &dr_was)],
        PlanOptions::default(),
    );
    assert!(!p.has_blocked(), "{p:?}");
    let by = |n: &str| named(&p, n);
    use crate::aws::plan::handover::Handover;
    assert_eq!(by("orders").handover, Some(Handover::Demoted("dr".into())));
    assert_eq!(by("dr").handover, Some(Handover::Promoted("orders".into())));
    let orders_after = by("orders").config.as_ref().expect("a config change");
    // After it, orders' governors ask dr through its load balancer before running a
    // primary (the fence of `spilo promote-standby --source-unreachable`), and orders lists
    // no standby cluster any more.
    let asked = &by("dr").config.as_ref().expect("config").after.downstream;
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].cluster, "orders");
    assert_eq!(asked[0].primary, ["orders.db.example.com:5432"]);
    assert!(asked[0].api.is_empty());
    assert_eq!(
        asked[0].follow.hosts,
        ["orders.db.example.com:5432"],
        "dr follows orders by its name once orders was promoted over it"
    );
    assert!(orders_after.after.downstream.is_empty());
    assert_eq!(
        orders_after
            .after
            .standby_cluster
            .as_ref()
            .and_then(|s| s.cluster.as_deref()),
        Some("dr")
    );
    assert_eq!(
        by("dr")
            .config
            .as_ref()
            .expect("config")
            .after
            .standby_cluster,
        None
    );
    assert!(
        by("dr")
            .handover
            .as_ref()
            .expect("a switchover")
            .describe("dr")
            .contains(
                "dr is promoted once its leader has received the end of the WAL of orders; when \
                 orders does not step down or dr does not catch up within 300s, orders takes \
                 writes again"
            ),
        "{p:?}"
    );
    let text = crate::aws::show::text(&p, crate::aws::show::Style::new(false));
    let words = "~ switchover between clusters: the primary of orders steps down";
    assert!(text.contains(words), "{text}");
    assert!(
        crate::aws::show::markdown(&p, 60_000)
            .contains("switchover between clusters: dr is promoted"),
        "markdown"
    );
    let json: serde_json::Value = serde_json::from_str(&crate::aws::show::json(&p)).expect("json");
    let dr_json = json["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "dr"))
        .expect("dr in the JSON plan");
    assert_eq!(
        dr_json["handover"],
        serde_json::json!({"role": "promoted", "cluster": "orders"})
    );

    // Either in maintenance mode: neither is planned.
    let mut paused = observe(&dr_now, &dr_was);
    if let Observation::Present(e) = &mut paused.etcd
        && let Observation::Present(c) = &mut e.config
        && let Some(v) = c.value.as_mut()
    {
        v.pause = true;
    }
    let p = run(
        &[&orders_now, &dr_now],
        vec![observe(&orders_now, &orders_was), paused],
        PlanOptions::default(),
    );
    assert!(
        named(&p, "dr")
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("dr is in maintenance mode")),
        "{p:?}"
    );
    assert_eq!(named(&p, "orders").action, Action::Blocked);

    // Half of it cannot be applied (dr is suspended): neither is changed.
    let dr_suspended = file("dr", "  reconcile: {suspend: true}\n");
    let p = run(
        &[&orders_now, &dr_suspended],
        vec![
            observe(&orders_now, &orders_was),
            observe(&dr_suspended, &dr_was),
        ],
        PlanOptions::default(),
    );
    let orders = named(&p, "orders");
    assert_eq!(orders.action, Action::Blocked, "{orders:?}");
    assert!(orders.config.is_none() && orders.handover.is_none());
    assert!(
        orders
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("half of a switchover with dr")),
        "{orders:?}"
    );

    // Only one file changes (orders made a standby of dr, dr still a standby of orders): a
    // circle, not a switchover; orders is not demoted.
    let p = run(
        &[&orders_now, &dr_was],
        vec![observe(&orders_now, &orders_was), observe(&dr_was, &dr_was)],
        PlanOptions::default(),
    );
    let orders = named(&p, "orders");
    assert_eq!(orders.action, Action::Blocked, "{orders:?}");
}

fn named<'a>(p: &'a Plan, name: &str) -> &'a crate::aws::plan::ClusterPlan {
    p.clusters.iter().find(|c| c.name == name).expect(name)
}

fn source_of(f: &ClusterFile) -> spilo_model::StandbySource {
    crate::aws::userdata::standby_source(f).expect("a standby")
}
