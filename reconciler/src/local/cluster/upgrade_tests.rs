//! Unit tests of the upgrade's pure parts: preconditions and the record.
use super::*;
use spilo_model::{ClusterName, Lsn, MemberName, MemberState, MemberStatus};

fn status(i: usize, role: MemberRole, leader: bool, lsn: u64, streaming: bool) -> NodeStatus {
    let member: MemberStatus = serde_json::from_value(serde_json::json!({
        "conn_url": "postgres://127.0.0.1:5432/postgres",
        "api_url": "http://127.0.0.1:8008",
        "role": role,
        "state": MemberState::Running,
        "wal": if role == MemberRole::Primary {
            serde_json::json!({"write": Lsn(lsn).to_string()})
        } else {
            serde_json::json!({"replay": Lsn(lsn).to_string()})
        },
        "postgres_version": 15,
    }))
    .expect("a member status");
    NodeStatus {
        name: MemberName::new(format!("alpha-{i}")).expect("name"),
        scope: ClusterName::new("alpha").expect("name"),
        member,
        leader: None,
        is_leader: leader,
        streaming,
        upstream: None,
        dcs_reachable: true,
        governor_pid: 1,
        postmaster_pid: Some(2),
        last_decision: String::new(),
        archive: None,
        catalog_error: None,
    }
}

#[test]
fn a_healthy_cluster_names_its_primary() {
    let s = vec![
        Some(status(0, MemberRole::Replica, false, 1000, true)),
        Some(status(1, MemberRole::Primary, true, 1000 + MAX_LAG, false)),
        Some(status(2, MemberRole::Replica, false, 2000, true)),
    ];
    assert_eq!(
        preconditions(&s, 18),
        Ok(1),
        "exactly MAX_LAG behind is allowed"
    );
}

#[test]
fn a_replica_far_behind_a_silent_member_or_no_primary_block_it() {
    let s = vec![
        Some(status(
            0,
            MemberRole::Primary,
            true,
            100 * 1024 * 1024,
            false,
        )),
        Some(status(1, MemberRole::Replica, false, 0, true)),
        None,
        Some(status(
            3,
            MemberRole::Replica,
            false,
            100 * 1024 * 1024,
            false,
        )),
    ];
    assert_eq!(
        preconditions(&s, 18),
        Err(vec![
            "alpha-1 is 100 MB behind the primary (at most 16 MB)".to_string(),
            "member 2 does not answer: every member must run".to_string(),
            "alpha-3 does not stream from the primary".to_string(),
        ])
    );
    let none = vec![Some(status(0, MemberRole::Replica, false, 0, true))];
    assert_eq!(
        preconditions(&none, 18),
        Err(vec![
            "the cluster has 0 running primaries; an upgrade needs exactly one".to_string()
        ])
    );
}

#[test]
fn the_record_orders_its_steps_and_reads_back() {
    assert!(Step::Stopping < Step::Linking && Step::Linking < Step::Committed);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("members/alpha-0/data")).expect("mkdir");
    std::fs::write(dir.path().join("members/alpha-0/data/PG_VERSION"), "15\n").expect("write");
    assert_eq!(data_version(dir.path()), Some(15));
    let r = Record {
        from: 15,
        to: 18,
        primary: 0,
        step: Step::Committed,
    };
    std::fs::write(
        record_path(dir.path()),
        serde_json::to_vec(&r).expect("json"),
    )
    .expect("write");
    assert_eq!(read_record(dir.path()).expect("readable"), Some(r));
    assert_eq!(
        data_version(dir.path()),
        Some(18),
        "committed counts as done"
    );
    std::fs::write(record_path(dir.path()), "{").expect("write");
    assert!(
        read_record(dir.path()).is_err(),
        "a torn record is an error, not no upgrade"
    );
}
