//! The handlers against hand-made state and an in-memory store: what each endpoint answers
//! for the situations its table in [`super`] names, without etcd, PostgreSQL or a socket.

use super::*;

mod analyze;
use crate::config::ApiCredentials;
use crate::dcs::DcsError;
use crate::ha::{ClusterView, HaConfig, LeaderKey, LeaseView};
use crate::shared::{ClusterStore, CommandFailure, Op, StoreFuture};
use axum::http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};
use spilo_model::{
    ClusterConfig, ClusterName, Lsn, MemberName, MemberStatus, SwitchoverRequest, TimelineId,
    WalPositions,
};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Notify, RwLock, mpsc, watch};

fn name(s: &str) -> MemberName {
    MemberName::new(s).expect("name")
}

fn member(role: MemberRole, lsn: u64) -> MemberStatus {
    MemberStatus {
        conn_url: "postgres://127.0.0.1:5432/postgres".into(),
        api_url: "http://127.0.0.1:8008".into(),
        role,
        state: MemberState::Running,
        timeline: Some(TimelineId(1)),
        wal: WalPositions {
            write: (role == MemberRole::Primary).then_some(Lsn(lsn)),
            receive: (role == MemberRole::Replica).then_some(Lsn(lsn)),
            replay: (role == MemberRole::Replica).then_some(Lsn(lsn)),
        },
        tags: Default::default(),
        pending_restart: false,
        error: None,
        postgres_version: None,
    }
}

/// m1 leads at 1000 bytes, m2 replicates at `m2_lsn`.
fn view(m2_lsn: u64) -> ClusterView {
    ClusterView {
        initialize: Some("7".into()),
        leader: Some(LeaderKey {
            name: name("m1"),
            lease: 11,
        }),
        members: [
            (name("m1"), member(MemberRole::Primary, 1000)),
            (name("m2"), member(MemberRole::Replica, m2_lsn)),
        ]
        .into(),
        member_leases: [(name("m1"), 11), (name("m2"), 12)].into(),
        ..Default::default()
    }
}

/// An in-memory store; a switchover request is carried out at once by `on_switchover`.
struct FakeStore {
    view: Mutex<ClusterView>,
    config: Mutex<(Option<Value>, i64)>,
    on_switchover: fn(&mut ClusterView, &SwitchoverRequest),
}

impl ClusterStore for FakeStore {
    fn read_view(&self) -> StoreFuture<'_, ClusterView> {
        let v = self.view.lock().expect("view").clone();
        Box::pin(async move { Ok(v) })
    }
    fn request_switchover<'a>(&'a self, request: &'a SwitchoverRequest) -> StoreFuture<'a, bool> {
        let mut v = self.view.lock().expect("view");
        let written = v.switchover.is_none();
        if written {
            (self.on_switchover)(&mut v, request);
        }
        Box::pin(async move { Ok(written) })
    }
    fn cancel_switchover(&self) -> StoreFuture<'_, bool> {
        let had = self.view.lock().expect("view").switchover.take().is_some();
        Box::pin(async move { Ok(had) })
    }
    fn read_config(&self) -> StoreFuture<'_, (Option<Value>, i64)> {
        let c = self.config.lock().expect("config").clone();
        Box::pin(async move { Ok(c) })
    }
    fn write_config<'a>(
        &'a self,
        config: &'a ClusterConfig,
        revision: i64,
    ) -> StoreFuture<'a, bool> {
        let mut c = self.config.lock().expect("config");
        let written = c.1 == revision;
        if written {
            *c = (serde_json::to_value(config).ok(), revision + 1);
        }
        Box::pin(async move { Ok(written) })
    }
}

/// A store whose etcd is down.
struct DownStore;

impl ClusterStore for DownStore {
    fn read_view(&self) -> StoreFuture<'_, ClusterView> {
        Box::pin(async { Err(DcsError::Timeout(Duration::from_secs(2))) })
    }
    fn request_switchover<'a>(&'a self, _: &'a SwitchoverRequest) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(DcsError::Timeout(Duration::from_secs(2))) })
    }
    fn cancel_switchover(&self) -> StoreFuture<'_, bool> {
        Box::pin(async { Err(DcsError::Timeout(Duration::from_secs(2))) })
    }
    fn read_config(&self) -> StoreFuture<'_, (Option<Value>, i64)> {
        Box::pin(async { Err(DcsError::Timeout(Duration::from_secs(2))) })
    }
    fn write_config<'a>(&'a self, _: &'a ClusterConfig, _: i64) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(DcsError::Timeout(Duration::from_secs(2))) })
    }
}

/// The pieces a test holds on to besides the state.
struct Rig {
    shared: Arc<Shared>,
    lease: watch::Sender<LeaseView>,
    failsafe: watch::Sender<Option<Instant>>,
    commands: mpsc::Receiver<crate::shared::Command>,
}

fn node_status(me: &str, role: MemberRole, is_leader: bool, streaming: bool) -> NodeStatus {
    NodeStatus {
        name: name(me),
        scope: ClusterName::new("demo").expect("scope"),
        member: member(
            role,
            if role == MemberRole::Primary {
                1000
            } else {
                900
            },
        ),
        leader: None,
        is_leader,
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

fn rig(node: NodeStatus, store: Arc<dyn ClusterStore>, now: Instant) -> Rig {
    let (lease, lease_rx) = watch::channel(LeaseView {
        id: Some(11),
        valid_until: Some(now + Duration::from_secs(4)),
    });
    let (failsafe, failsafe_rx) = watch::channel(None);
    let (commands_tx, commands) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        node: RwLock::new(node),
        view: RwLock::new(Some(view(900))),
        lease: lease_rx,
        last_loop: RwLock::new(now),
        fence_margin: Duration::from_millis(500),
        ttl: Duration::from_secs(4),
        maximum_lag_on_failover: 1024,
        store,
        ha: HaConfig {
            maximum_lag_on_failover: 1024,
            primary_start_timeout: Duration::from_secs(30),
            max_primary_crashes: 3,
            fence_margin: Duration::from_millis(500),
            rewind_check_after: Duration::from_secs(10),
            archive_recovery_after: None,
            standby: None,
        },
        auth: Some(ApiCredentials {
            token: Some("s3cret".into()),
            basic: None,
        }),
        commands: commands_tx,
        wake: Arc::new(Notify::new()),
        switchover_outcome: RwLock::new(None),
        backups: RwLock::new(Default::default()),
        backup_requests: None,
        drill_requests: None,
        catalog_error: RwLock::new(None),
        failsafe: Default::default(),
        failsafe_until: failsafe_rx,
        proxy: None,
        loop_stats: Default::default(),
        live_wal: None,
        statistics: None,
    });
    Rig {
        shared,
        lease,
        failsafe,
        commands,
    }
}

fn fake(on_switchover: fn(&mut ClusterView, &SwitchoverRequest)) -> Arc<FakeStore> {
    Arc::new(FakeStore {
        view: Mutex::new(view(900)),
        config: Mutex::new((Some(json!({"ttl": 4})), 5)),
        on_switchover,
    })
}

fn keep(v: &mut ClusterView, r: &SwitchoverRequest) {
    v.switchover = Some(r.clone());
}

fn token() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer s3cret"),
    );
    h
}

fn message(r: &(StatusCode, Json<Value>)) -> String {
    r.1.0["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn primary_is_green_only_while_the_lease_or_failsafe_confirmation_holds() {
    let now = Instant::now();
    let r = rig(
        node_status("m1", MemberRole::Primary, true, false),
        fake(keep),
        now,
    );
    let s = || State(r.shared.clone());
    assert_eq!(primary(s()).await.0, StatusCode::OK);
    assert_eq!(health(s()).await.0, StatusCode::OK);
    assert_eq!(readiness(s()).await.0, StatusCode::OK);
    assert_eq!(
        replica(s(), Query(LagQuery { lag: None })).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The HA loop has not run since, but the lease ran out: /primary turns red at request time.
    r.lease.send_replace(LeaseView {
        id: Some(11),
        valid_until: Some(now),
    });
    let (code, Json(body)) = primary(s()).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.is_leader, "the body says the member does not lead");

    // Every member confirmed it (failsafe mode): green again until that confirmation ends.
    r.failsafe
        .send_replace(Some(Instant::now() + Duration::from_secs(4)));
    assert_eq!(primary(s()).await.0, StatusCode::OK);
    r.failsafe.send_replace(Some(Instant::now()));
    assert_eq!(primary(s()).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn replica_and_readiness_follow_streaming_and_lag() {
    let now = Instant::now();
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(keep),
        now,
    );
    let s = || State(r.shared.clone());
    // m2 replays at 900, the leader wrote 1000: 100 bytes behind.
    assert_eq!(
        replica(s(), Query(LagQuery { lag: None })).await.0,
        StatusCode::OK
    );
    assert_eq!(
        replica(s(), Query(LagQuery { lag: Some(100) })).await.0,
        StatusCode::OK
    );
    assert_eq!(
        replica(s(), Query(LagQuery { lag: Some(99) })).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(readiness(s()).await.0, StatusCode::OK, "within 1024 bytes");
    assert_eq!(primary(s()).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // Without the leader's position the lag is unknown: not ready, not within any limit.
    *r.shared.view.write().await = None;
    assert_eq!(readiness(s()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        replica(s(), Query(LagQuery { lag: Some(1 << 40) })).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    r.shared.node.write().await.streaming = false;
    assert_eq!(
        replica(s(), Query(LagQuery { lag: None })).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "a replica that does not stream"
    );
}

#[tokio::test]
async fn liveness_fails_after_a_ttl_without_a_pass_unless_a_long_action_runs() {
    let now = Instant::now();
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(keep),
        now,
    );
    let s = || State(r.shared.clone());
    assert_eq!(liveness(s()).await.0, StatusCode::OK);
    *r.shared.last_loop.write().await = now - Duration::from_secs(5);
    assert_eq!(liveness(s()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    r.shared.node.write().await.member.state = MemberState::Rewinding;
    assert_eq!(liveness(s()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_switchover_answers_with_the_new_primary_or_the_leaders_reason() {
    fn carried_out(v: &mut ClusterView, r: &SwitchoverRequest) {
        let to = r.candidate.clone().expect("candidate");
        v.leader = Some(LeaderKey {
            name: to.clone(),
            lease: 12,
        });
        v.members.insert(to, member(MemberRole::Primary, 1100));
    }
    let now = Instant::now();
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(carried_out),
        now,
    );
    let body = r#"{"leader": "m1", "candidate": "m2"}"#;
    let done = ops::post_switchover(State(r.shared.clone()), token(), body.into()).await;
    assert_eq!(done.0, StatusCode::OK, "{}", message(&done));
    assert_eq!(message(&done), "m2 is the new primary (was m1)");

    let unauthorized =
        ops::post_switchover(State(r.shared.clone()), HeaderMap::new(), body.into()).await;
    assert_eq!(unauthorized.0, StatusCode::UNAUTHORIZED);

    // The leader dropped the request and said why.
    fn refused(v: &mut ClusterView, _: &SwitchoverRequest) {
        v.switchover = None;
    }
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(refused),
        now,
    );
    let shared = r.shared.clone();
    let outcome =
        tokio::spawn(
            async move { ops::post_switchover(State(shared), token(), body.into()).await },
        );
    let answer = outcome.await.expect("handler");
    assert_eq!(answer.0, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        message(&answer),
        "the switchover did not happen: m1 is still the leader; its log says why"
    );

    // Refused before anything is written: a lagging candidate, a wrong leader, a bad body.
    let lagging = fake(keep);
    {
        let mut v = lagging.view.lock().expect("view");
        *v = view(0);
        v.members
            .insert(name("m1"), member(MemberRole::Primary, 5000));
    }
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        lagging.clone(),
        now,
    );
    let s = || State(r.shared.clone());
    let lag = ops::post_switchover(s(), token(), body.into()).await;
    assert_eq!(lag.0, StatusCode::PRECONDITION_FAILED);
    assert!(
        message(&lag).contains("5000 bytes behind"),
        "{}",
        message(&lag)
    );
    let wrong = ops::post_switchover(s(), token(), r#"{"leader": "m2"}"#.into()).await;
    assert_eq!(message(&wrong), "m2 is not the leader; m1 is");
    let bad = ops::post_switchover(s(), token(), r#"{"leeder": "m1"}"#.into()).await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    assert!(
        lagging.view.lock().expect("view").switchover.is_none(),
        "nothing was written"
    );
}

#[tokio::test]
async fn etcd_down_is_503_and_config_patches_are_compare_and_set() {
    let now = Instant::now();
    let down = rig(
        node_status("m1", MemberRole::Primary, true, false),
        Arc::new(DownStore),
        now,
    );
    let r = ops::post_switchover(State(down.shared.clone()), token(), String::new()).await;
    assert_eq!(r.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        message(&r).starts_with("coordination store: "),
        "{}",
        message(&r)
    );

    let store = fake(keep);
    let r = rig(
        node_status("m1", MemberRole::Primary, true, false),
        store.clone(),
        now,
    );
    let s = || State(r.shared.clone());
    let patched = ops::patch_config(s(), token(), r#"{"pause": true}"#.into()).await;
    assert_eq!(patched.0, StatusCode::OK);
    assert_eq!(patched.1.0["pause"], json!(true));
    assert_eq!(store.config.lock().expect("config").1, 6, "written once");
    let read = ops::get_config(s()).await;
    assert_eq!(read.1.0["pause"], json!(true));

    /// Another writer changes `config` between this patch's read and write.
    struct Racing(FakeStore);
    impl ClusterStore for Racing {
        fn read_view(&self) -> StoreFuture<'_, ClusterView> {
            self.0.read_view()
        }
        fn request_switchover<'a>(&'a self, r: &'a SwitchoverRequest) -> StoreFuture<'a, bool> {
            self.0.request_switchover(r)
        }
        fn cancel_switchover(&self) -> StoreFuture<'_, bool> {
            self.0.cancel_switchover()
        }
        fn read_config(&self) -> StoreFuture<'_, (Option<Value>, i64)> {
            let c = self.0.config.lock().expect("config").clone();
            self.0.config.lock().expect("config").1 += 1;
            Box::pin(async move { Ok(c) })
        }
        fn write_config<'a>(&'a self, c: &'a ClusterConfig, rev: i64) -> StoreFuture<'a, bool> {
            self.0.write_config(c, rev)
        }
    }
    let racing = Arc::new(Racing(FakeStore {
        view: Mutex::new(view(900)),
        config: Mutex::new((None, 0)),
        on_switchover: keep,
    }));
    let r = rig(
        node_status("m1", MemberRole::Primary, true, false),
        racing.clone(),
        now,
    );
    let lost = ops::patch_config(
        State(r.shared.clone()),
        token(),
        r#"{"pause": true}"#.into(),
    )
    .await;
    assert_eq!(lost.0, StatusCode::CONFLICT);
    assert_eq!(
        racing.0.config.lock().expect("config").0,
        None,
        "the other writer's value stands"
    );
    let bad = ops::patch_config(State(r.shared.clone()), token(), "{".into()).await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn commands_reach_the_loop_and_carry_its_answer_back() {
    let now = Instant::now();
    let mut r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(keep),
        now,
    );
    let shared = r.shared.clone();
    let restart = tokio::spawn(async move {
        ops::post_restart(State(shared), token(), r#"{"pending": true}"#.into()).await
    });
    let cmd = r.commands.recv().await.expect("a command");
    assert_eq!(cmd.op, Op::Restart { pending_only: true });
    cmd.reply
        .send(Err(CommandFailure {
            refused: true,
            why: "nothing waits for a restart".into(),
        }))
        .expect("the handler waits");
    let answer = restart.await.expect("handler");
    assert_eq!(answer.0, StatusCode::PRECONDITION_FAILED);
    assert_eq!(message(&answer), "nothing waits for a restart");

    let shared = r.shared.clone();
    let reload = tokio::spawn(async move { ops::post_reload(State(shared), token()).await });
    let cmd = r.commands.recv().await.expect("a command");
    assert_eq!(cmd.op, Op::Reload);
    drop(cmd);
    let answer = reload.await.expect("handler");
    assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(message(&answer), "the HA loop stopped");

    let none = ops::post_backup(State(r.shared.clone()), token()).await;
    assert_eq!(none.0, StatusCode::CONFLICT, "no archive configured");
}

#[tokio::test]
async fn a_drill_request_reaches_the_drill_task_and_its_refusals_change_nothing() {
    let now = Instant::now();
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(keep),
        now,
    );
    let none = ops::post_drill(State(r.shared.clone()), token(), String::new()).await;
    assert_eq!(none.0, StatusCode::CONFLICT, "no archive configured");

    let (tx, mut rx) = mpsc::channel(1);
    let mut shared = Arc::into_inner(r.shared).expect("one owner");
    shared.drill_requests = Some(tx);
    let shared = Arc::new(shared);
    let anonymous = ops::post_drill(State(shared.clone()), HeaderMap::new(), String::new()).await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED);
    let bad = ops::post_drill(
        State(shared.clone()),
        token(),
        r#"{"target_time": "yesterday"}"#.into(),
    )
    .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    assert!(message(&bad).contains("target_time"), "{}", message(&bad));
    assert!(rx.try_recv().is_err(), "nothing reached the drill task");

    let asking = shared.clone();
    let drill = tokio::spawn(async move {
        ops::post_drill(
            State(asking),
            token(),
            r#"{"backup": "base_000000010000000000000003", "sql": "SELECT true"}"#.into(),
        )
        .await
    });
    let request = rx.recv().await.expect("a request");
    assert_eq!(
        request.pick,
        crate::archive::backup::Pick::Named("base_000000010000000000000003".into())
    );
    assert_eq!(request.sql.as_deref(), Some("SELECT true"));
    request
        .reply
        .send(Err("the archive holds no finished backup".into()))
        .expect("the handler waits");
    let answer = drill.await.expect("handler");
    assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        message(&answer).contains("no finished backup"),
        "{}",
        message(&answer)
    );
}

#[tokio::test]
async fn failsafe_confirms_the_key_holder_and_then_keeps_its_promise() {
    let now = Instant::now();
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(keep),
        now,
    );
    let s = || State(r.shared.clone());
    let beat = |leader: &str| format!(r#"{{"leader": "{leader}", "ttl_ms": 4000}}"#);
    let off = failsafe::post_failsafe(s(), token(), beat("m1")).await;
    assert_eq!(off.0, StatusCode::CONFLICT, "failsafe mode is off");

    r.shared.view.write().await.as_mut().expect("view").failsafe =
        Some([(name("m1"), "http://m1".to_string())].into());
    let other = failsafe::post_failsafe(s(), token(), beat("m3")).await;
    assert_eq!(other.0, StatusCode::CONFLICT, "m1 holds the key, not m3");
    assert_eq!(other.1.0["message"], json!("m1 holds the leader key"));
    let me = failsafe::post_failsafe(s(), token(), beat("m2")).await;
    assert_eq!(me.0, StatusCode::BAD_REQUEST);
    let ok = failsafe::post_failsafe(s(), token(), beat("m1")).await;
    assert_eq!(ok.0, StatusCode::OK);
    assert_eq!(ok.1.0["accepted"], json!(true));
    let promised = r.shared.failsafe.promised(Instant::now());
    assert_eq!(promised.map(|(who, _)| who), Some(name("m1")));
    assert!(
        r.shared.failsafe.close_for_race(Instant::now()).is_err(),
        "the promise blocks this member's race for the key"
    );
}

#[tokio::test]
async fn metrics_and_cluster_read_the_same_state() {
    let now = Instant::now();
    let r = rig(
        node_status("m2", MemberRole::Replica, false, true),
        fake(keep),
        now,
    );
    let (_, text) = get_metrics(State(r.shared.clone())).await;
    assert!(text.contains("\nspilo_replica_streaming 1\n"), "{text}");
    assert!(
        text.contains("\nspilo_replication_lag_bytes 100\n"),
        "{text}"
    );
    let Json(summary) = cluster(State(r.shared.clone())).await;
    let text = serde_json::to_string(&summary).expect("json");
    assert!(text.contains("\"m1\"") && text.contains("\"m2\""), "{text}");
}

/// Answers with a fixed position, or not at all.
struct FixedWal(Option<u64>);

impl crate::shared::LiveWal for FixedWal {
    fn read(&self) -> crate::shared::LiveFuture<'_> {
        let answer = self.0.map(|lsn| crate::shared::LiveWalPositions {
            timeline: Some(TimelineId(2)),
            wal: WalPositions {
                write: None,
                receive: Some(Lsn(lsn)),
                replay: Some(Lsn(lsn)),
            },
        });
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn status_answers_live_positions_when_asked_and_503_when_postgres_cannot_say() {
    let with = |live: Option<u64>| {
        let mut r = rig(
            node_status("m2", MemberRole::Replica, false, true),
            fake(keep),
            Instant::now(),
        );
        Arc::get_mut(&mut r.shared).expect("only owner").live_wal = Some(Arc::new(FixedWal(live)));
        r
    };
    let lsn = |r: &Answer| r.1.0.member.wal.best();
    let r = with(Some(5000));
    let cached = status(State(r.shared.clone()), Query(StatusQuery { live: false })).await;
    assert_eq!(cached.0, StatusCode::OK);
    assert_ne!(
        lsn(&cached),
        Some(Lsn(5000)),
        "without live: the last pass's position"
    );
    let live = status(State(r.shared.clone()), Query(StatusQuery { live: true })).await;
    assert_eq!(live.0, StatusCode::OK);
    assert_eq!(lsn(&live), Some(Lsn(5000)));
    assert_eq!(live.1.0.member.timeline, Some(TimelineId(2)));
    // PostgreSQL runs but does not answer: no stale position passes for a live one.
    let r = with(None);
    let failed = status(State(r.shared.clone()), Query(StatusQuery { live: true })).await;
    assert_eq!(failed.0, StatusCode::SERVICE_UNAVAILABLE);
}
