//! The etcd member keeper's pure decisions against hand-made groups, members and records.

use super::*;

fn live(ids: &[&str]) -> Vec<GroupInstance> {
    ids.iter()
        .map(|i| GroupInstance {
            id: i.to_string(),
            live: true,
        })
        .collect()
}

fn group(ids: &[&str]) -> Seen<Vec<GroupInstance>> {
    Seen::Known(live(ids))
}

fn member(id: u64, name: &str) -> Member {
    Member {
        id,
        name: name.into(),
        peer_urls: vec![format!("https://{name}:2380")],
        client_urls: vec![format!("https://{name}:2379")],
        is_learner: false,
    }
}

fn members(names: &[&str]) -> Vec<Member> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| member(i as u64 + 1, n))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn obs(me: &str) -> Observation {
    Observation {
        me: me.into(),
        my_peer_url: format!("https://{me}:2380"),
        has_data: false,
        group: group(&["i-1", "i-2", "i-3"]),
        records: Seen::Known(vec![]),
        members: Seen::Unknown("no live record target".into()),
    }
}

#[test]
fn the_first_instance_claims_the_records_and_starts_a_cluster_the_others_wait() {
    assert_eq!(
        next_step(&obs("i-1")),
        Step::Start {
            state: ClusterState::New,
            initial_cluster: vec![("i-1".into(), "https://i-1:2380".into())],
            claim: true,
        }
    );
    assert!(matches!(next_step(&obs("i-2")), Step::Wait(w) if w.contains("i-1")));
    // Its claim stands (records name only it): it starts again without claiming.
    let o = Observation {
        records: Seen::Known(strings(&["i-1"])),
        ..obs("i-1")
    };
    assert!(matches!(next_step(&o), Step::Start { claim: false, .. }));
}

#[test]
fn records_of_instances_that_all_left_the_group_start_nothing_new() {
    let mut o = obs("i-1");
    o.records = Seen::Known(strings(&["i-old1", "i-old2"]));
    assert!(
        matches!(next_step(&o), Step::Wait(w) if w.contains("delete the records")),
        "{:?}",
        next_step(&o)
    );
}

#[test]
fn nothing_is_started_or_joined_on_unknown() {
    for o in [
        Observation {
            group: Seen::Unknown("timeout".into()),
            ..obs("i-1")
        },
        Observation {
            records: Seen::Unknown("SERVFAIL".into()),
            ..obs("i-1")
        },
        // Records name a live instance, but the cluster does not answer: never a new one.
        Observation {
            records: Seen::Known(strings(&["i-2"])),
            members: Seen::Unknown("connection refused".into()),
            ..obs("i-1")
        },
        // Not (yet) in the group.
        Observation {
            group: group(&["i-2", "i-3"]),
            ..obs("i-1")
        },
    ] {
        assert!(matches!(next_step(&o), Step::Wait(_)), "{o:?}");
    }
}

#[test]
fn a_member_with_data_starts_from_it_unless_the_cluster_removed_it() {
    let o = Observation {
        has_data: true,
        group: Seen::Unknown("timeout".into()),
        records: Seen::Unknown("timeout".into()),
        ..obs("i-3")
    };
    assert!(matches!(next_step(&o), Step::Start { claim: false, .. }));
    let removed = Observation {
        has_data: true,
        records: Seen::Known(strings(&["i-1", "i-2"])),
        members: Seen::Known(members(&["i-1", "i-2"])),
        ..obs("i-3")
    };
    assert!(matches!(next_step(&removed), Step::Discard(_)));
}

#[test]
fn a_new_instance_joins_as_a_learner_then_starts_with_every_member() {
    let mut o = obs("i-3");
    o.records = Seen::Known(strings(&["i-1", "i-2"]));
    o.members = Seen::Known(members(&["i-1", "i-2"]));
    assert_eq!(next_step(&o), Step::AddSelf);
    // After the add: listed without a name, not started.
    let mut after = members(&["i-1", "i-2"]);
    after.push(Member {
        id: 3,
        name: String::new(),
        peer_urls: vec!["https://i-3:2380".into()],
        client_urls: vec![],
        is_learner: true,
    });
    o.members = Seen::Known(after);
    assert_eq!(
        next_step(&o),
        Step::Start {
            state: ClusterState::Existing,
            initial_cluster: vec![
                ("i-1".into(), "https://i-1:2380".into()),
                ("i-2".into(), "https://i-2:2380".into()),
                ("i-3".into(), "https://i-3:2380".into()),
            ],
            claim: false,
        }
    );
}

#[test]
fn the_initial_cluster_lists_an_unstarted_member_too() {
    let mut all = members(&["i-1", "i-2"]);
    all.push(Member {
        id: 0xab,
        name: String::new(),
        peer_urls: vec!["https://i-9:2380".into()],
        client_urls: vec![],
        is_learner: true,
    });
    all.push(Member {
        id: 0xcd,
        name: String::new(),
        peer_urls: vec!["https://i-3:2380".into()],
        client_urls: vec![],
        is_learner: true,
    });
    let o = obs("i-3");
    let ic = initial_cluster(&all, &o);
    assert_eq!(ic.len(), 4, "{ic:?}");
    assert!(ic.contains(&("joining-ab".into(), "https://i-9:2380".into())));
    assert!(ic.contains(&("i-3".into(), "https://i-3:2380".into())));
}

#[test]
fn a_replacement_removes_the_member_it_replaces_before_it_joins() {
    // i-2 was terminated; i-4 replaces it.
    let mut o = obs("i-4");
    o.group = group(&["i-1", "i-3", "i-4"]);
    o.records = Seen::Known(strings(&["i-1", "i-2", "i-3"]));
    o.members = Seen::Known(members(&["i-1", "i-2", "i-3"]));
    assert!(matches!(next_step(&o), Step::Remove { id: 2, .. }));
    o.members = Seen::Known(vec![member(1, "i-1"), member(3, "i-3")]);
    assert_eq!(next_step(&o), Step::AddSelf);
}

#[test]
fn nothing_is_removed_that_etcd_could_not_commit() {
    // (voters, running) below a quorum now: 3/1, 4/2, 2/1. Nothing removed, nothing
    // added, the loss of quorum named.
    for (names, live_ids) in [
        (vec!["i-1", "i-2", "i-3"], vec!["i-1", "i-4", "i-5"]),
        (
            vec!["i-1", "i-2", "i-3", "i-6"],
            vec!["i-1", "i-2", "i-4", "i-5"],
        ),
        (vec!["i-1", "i-2"], vec!["i-1", "i-4"]),
    ] {
        let mut o = obs("i-4");
        o.group = group(&live_ids);
        o.records = Seen::Known(strings(&names));
        o.members = Seen::Known(members(&names));
        assert!(
            matches!(next_step(&o), Step::Wait(ref w) if w.contains("quorum")),
            "{names:?} with {live_ids:?}: {:?}",
            next_step(&o)
        );
        let u = upkeep(
            "i-1",
            &live(&live_ids),
            &members(&names),
            &RecordSet::default(),
            &Unstarted::default(),
        );
        assert_eq!(u.remove, None, "{names:?} with {live_ids:?}");
    }
    // Five voters, two gone: three run, a quorum now; one removal at a time.
    let five = members(&["i-1", "i-2", "i-3", "i-4", "i-5"]);
    let u = upkeep(
        "i-1",
        &live(&["i-1", "i-2", "i-3"]),
        &five,
        &RecordSet::default(),
        &Unstarted::default(),
    );
    assert!(matches!(u.remove, Some((4, _))), "{u:?}");
}

#[test]
fn joins_go_one_at_a_time() {
    let mut o = obs("i-5");
    o.group = group(&["i-1", "i-2", "i-3", "i-4", "i-5"]);
    o.records = Seen::Known(strings(&["i-1", "i-2", "i-3"]));
    let mut learner = member(4, "i-4");
    learner.is_learner = true;
    let mut all = members(&["i-1", "i-2", "i-3"]);
    all.push(learner);
    o.members = Seen::Known(all);
    assert!(matches!(next_step(&o), Step::Wait(w) if w.contains("learner")));
}

#[test]
fn a_learner_that_never_started_is_removed_by_the_leader_after_the_grace_only() {
    // i-4 was added as a learner and its instance died before etcd started: no name, no
    // client URLs. A fifth instance waits for it.
    let stuck = Member {
        id: 4,
        name: String::new(),
        peer_urls: vec!["https://10.0.0.4:2380".into()],
        client_urls: Vec::new(),
        is_learner: true,
    };
    let mut all = members(&["i-1", "i-2", "i-3"]);
    all.push(stuck);
    let mut o = obs("i-5");
    o.group = group(&["i-1", "i-2", "i-3", "i-5"]);
    o.records = Seen::Known(strings(&["i-1", "i-2", "i-3"]));
    o.members = Seen::Known(all.clone());
    assert!(matches!(next_step(&o), Step::Wait(w) if w.contains("joining")));
    let g = live(&["i-1", "i-2", "i-3", "i-5"]);
    let waited = |secs: u64| Unstarted {
        seen: BTreeMap::from([(4, Duration::from_secs(secs))]),
        grace: Duration::from_secs(120),
    };
    let u = upkeep("i-1", &g, &all, &RecordSet::default(), &waited(119));
    assert_eq!(u.remove, None, "within the grace it may still start");
    let u = upkeep("i-1", &g, &all, &RecordSet::default(), &waited(120));
    assert_eq!(
        u.remove,
        Some((
            4,
            "learner https://10.0.0.4:2380 has not started in 120 s".into()
        ))
    );
    // Not timed (a new leader) or started: nothing removed.
    let u = upkeep(
        "i-1",
        &g,
        &all,
        &RecordSet::default(),
        &Unstarted::default(),
    );
    assert_eq!(u.remove, None);
    // Without a quorum of running voters nothing is removed, not even a learner.
    let g = live(&["i-1", "i-5"]);
    let u = upkeep("i-1", &g, &all, &RecordSet::default(), &waited(600));
    assert_eq!(u.remove, None);
}

#[test]
fn an_instance_whose_data_is_gone_joins_again_only_while_the_others_keep_quorum() {
    let mut o = obs("i-2");
    o.records = Seen::Known(strings(&["i-1", "i-2", "i-3"]));
    o.members = Seen::Known(members(&["i-1", "i-2", "i-3"]));
    assert!(matches!(next_step(&o), Step::Remove { id: 2, .. }));
    // i-3 is gone too: without i-2 only i-1 runs.
    o.group = group(&["i-1", "i-2"]);
    assert!(matches!(next_step(&o), Step::Wait(w) if w.contains("not removed")));
}

#[test]
fn the_leader_promotes_learners_removes_the_departed_and_keeps_every_record_to_the_voters() {
    let g = live(&["i-1", "i-3", "i-4"]);
    let mut learner = member(4, "i-4");
    learner.is_learner = true;
    let mut all = members(&["i-1", "i-2", "i-3"]);
    all.push(learner);
    let u = upkeep(
        "i-1",
        &g,
        &all,
        &RecordSet::default(),
        &Unstarted::default(),
    );
    assert_eq!(u.promote, vec![4]);
    assert!(matches!(u.remove, Some((2, _))));
    // i-2 stays named until its removal succeeded.
    let want: BTreeMap<String, String> = ["i-1", "i-2", "i-3"]
        .iter()
        .map(|n| (n.to_string(), n.to_string()))
        .collect();
    assert_eq!(u.records.as_ref(), Some(&want));
    let right = RecordSet {
        client: strings(&["i-1", "i-2", "i-3"]),
        server: strings(&["i-1", "i-2", "i-3"]),
        addresses: want.clone(),
    };
    assert_eq!(
        upkeep("i-1", &g, &all, &right, &Unstarted::default()).records,
        None
    );
    // A server record or an address that differs is written again.
    let wrong_server = RecordSet {
        server: strings(&["i-1"]),
        ..right.clone()
    };
    assert!(
        upkeep("i-1", &g, &all, &wrong_server, &Unstarted::default())
            .records
            .is_some()
    );
    let mut moved = right.clone();
    moved.addresses.insert("i-3".into(), "10.0.0.9".into());
    assert!(
        upkeep("i-1", &g, &all, &moved, &Unstarted::default())
            .records
            .is_some()
    );
    // A leader whose own instance left the group does nothing.
    assert_eq!(
        upkeep(
            "i-2",
            &g,
            &all,
            &RecordSet::default(),
            &Unstarted::default()
        ),
        Upkeep::default()
    );
}

#[test]
fn hosts_of_peer_urls() {
    assert_eq!(
        host_of("https://10.0.1.5:2380").as_deref(),
        Some("10.0.1.5")
    );
    assert_eq!(host_of("https://:2380"), None);
}
