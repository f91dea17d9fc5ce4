//! `POST /analyze`: only the leader running as primary rebuilds the statistics, one rebuild
//! at a time, and a failed vacuumdb is a 500 with its reason.

use super::*;
use crate::shared::{Statistics, StatsError, StatsFuture};

/// Answers `answer` to every rebuild and counts them.
struct FixedStats {
    answer: Result<String, StatsError>,
    calls: Mutex<u32>,
}

impl Statistics for FixedStats {
    fn rebuild(&self) -> StatsFuture<'_> {
        *self.calls.lock().expect("calls") += 1;
        let answer = self.answer.clone();
        Box::pin(async move { answer })
    }
}

fn with(node: NodeStatus, answer: Result<String, StatsError>) -> (Arc<Shared>, Arc<FixedStats>) {
    let stats = Arc::new(FixedStats {
        answer,
        calls: Mutex::new(0),
    });
    let mut r = rig(node, fake(keep), Instant::now());
    Arc::get_mut(&mut r.shared).expect("only owner").statistics = Some(stats.clone());
    (r.shared, stats)
}

#[tokio::test]
async fn the_leader_rebuilds_the_statistics_and_other_members_refuse() {
    let primary = || node_status("m1", MemberRole::Primary, true, false);
    let (shared, stats) = with(primary(), Ok("statistics rebuilt".into()));
    let anonymous = ops::post_analyze(State(shared.clone()), HeaderMap::new()).await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED);
    assert_eq!(*stats.calls.lock().expect("calls"), 0);
    let done = ops::post_analyze(State(shared), token()).await;
    assert_eq!(done.0, StatusCode::OK);
    assert_eq!(done.1.0["message"], "statistics rebuilt");
    assert_eq!(*stats.calls.lock().expect("calls"), 1);

    let (shared, stats) = with(
        node_status("m2", MemberRole::Replica, false, true),
        Ok("statistics rebuilt".into()),
    );
    let replica = ops::post_analyze(State(shared), token()).await;
    assert_eq!(replica.0, StatusCode::CONFLICT);
    assert!(
        replica.1.0["message"]
            .as_str()
            .is_some_and(|m| m.contains("not the leader")),
        "{:?}",
        replica.1
    );
    assert_eq!(
        *stats.calls.lock().expect("calls"),
        0,
        "a replica runs nothing"
    );

    let (shared, _) = with(primary(), Err(StatsError::Busy));
    assert_eq!(
        ops::post_analyze(State(shared), token()).await.0,
        StatusCode::CONFLICT
    );
    let (shared, _) = with(primary(), Err(StatsError::Failed("no space".into())));
    let failed = ops::post_analyze(State(shared), token()).await;
    assert_eq!(failed.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        failed.1.0["message"]
            .as_str()
            .is_some_and(|m| m.contains("no space")),
        "{:?}",
        failed.1
    );
}
