//! The REST API (default port 8008): health checks a load balancer uses to find the primary,
//! and read-only JSON about this member and the cluster.
//!
//! | endpoint | 200 when (else 503) |
//! |---|---|
//! | `/primary`, `/read-write` | this member holds the leader key, its lease is valid (or, in failsafe mode, every member confirmed it), and PostgreSQL runs as a writable primary |
//! | `/replica[?lag=BYTES]` | PostgreSQL runs as a replica that is streaming (and within `lag` bytes of the leader) |
//! | `/health` | PostgreSQL runs, in any role |
//! | `/proxy` | this member runs the primary proxy and it has a primary to forward to ([`crate::proxy`]) |
//! | `/liveness` | the HA loop finished a pass within the TTL, or a long action (bootstrap, clone, rewind) runs |
//! | `/readiness` | the leader, or a streaming replica within `maximum_lag_on_failover` |
//! | `/status`, `/` | always 200: this member's [`NodeStatus`]; with `?live=true` its WAL positions read from PostgreSQL now (503 when PostgreSQL runs but does not answer) |
//! | `/cluster` | always 200: the member table from the last etcd read |
//! | `/history` | always 200: the promotion history |
//! | `/metrics` | always 200: this member in Prometheus' text format ([`metrics`]) |
//!
//! `POST /failsafe` is failsafe mode's confirmation between governors ([`failsafe`]).
//!
//! The operator endpoints (switchover, failover, restart, reload, reinitialize, config) are in
//! [`ops`]; the mutating ones require the credentials checked in [`auth`].
//!
//! Health endpoints answer with the member's status as JSON; `HEAD` answers the same status
//! code without a body. Decisions about the primary are re-checked against the lease at
//! request time, so a stalled HA loop cannot keep `/primary` green past the lease.

pub mod auth;
mod failsafe;
pub mod metrics;
pub mod ops;
#[cfg(test)]
mod tests;

use crate::shared::Shared;
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use spilo_model::{ClusterSummary, HistoryEntry, MemberRole, MemberState, NodeStatus, summarize};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

type Answer = (StatusCode, Json<NodeStatus>);

/// Serves the API on `listener` (HTTPS with `tls`) until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let app = router(shared);
    let r = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            tokio::spawn(async move {
                cancel.cancelled().await;
                stop.graceful_shutdown(Some(std::time::Duration::from_secs(1)));
            });
            match listener
                .into_std()
                .and_then(|std| axum_server::from_tcp_rustls(std, tls))
            {
                Ok(server) => server.handle(handle).serve(app.into_make_service()).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "the REST API stopped");
    }
}

/// The routes, for serving and for tests.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/status", get(status))
        .route("/primary", get(primary))
        .route("/read-write", get(primary))
        .route("/replica", get(replica))
        .route("/health", get(health))
        .route("/proxy", get(proxy))
        .route("/liveness", get(liveness))
        .route("/readiness", get(readiness))
        .route("/cluster", get(cluster))
        .route("/history", get(history))
        .route("/metrics", get(get_metrics))
        .route(
            "/switchover",
            post(ops::post_switchover).delete(ops::delete_switchover),
        )
        .route("/failover", post(ops::post_failover))
        .route("/failsafe", post(failsafe::post_failsafe))
        .route("/restart", post(ops::post_restart))
        .route("/reload", post(ops::post_reload))
        .route("/reinitialize", post(ops::post_reinitialize))
        .route("/upgrade", post(ops::post_upgrade))
        .route("/backup", post(ops::post_backup))
        .route("/analyze", post(ops::post_analyze))
        .route("/drill", post(ops::post_drill))
        .route("/config", get(ops::get_config).patch(ops::patch_config))
        .with_state(shared)
}

fn answer(ok: bool, node: NodeStatus) -> Answer {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(node))
}

async fn node(shared: &Shared) -> NodeStatus {
    let mut node = shared.node.read().await.clone();
    // The lease is checked now, not at the last loop pass.
    node.is_leader = node.is_leader && lease_valid(shared);
    node
}

/// The lease is valid, or failsafe mode's confirmation stands in for it.
fn lease_valid(shared: &Shared) -> bool {
    let now = Instant::now();
    shared.lease.borrow().valid_at(now, shared.fence_margin)
        || shared
            .failsafe_until
            .borrow()
            .is_some_and(|t| now + shared.fence_margin < t)
}

fn running(node: &NodeStatus, role: MemberRole) -> bool {
    node.member.role == role && node.member.state == MemberState::Running
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    live: bool,
}

/// With `live`, the WAL positions are PostgreSQL's now: a failover candidate compares them
/// with its own, and the last loop pass's may miss commits received since. A running
/// PostgreSQL that does not answer makes the answer 503, so the candidate counts no stale
/// position.
async fn status(State(shared): State<Arc<Shared>>, Query(q): Query<StatusQuery>) -> Answer {
    let mut node = node(&shared).await;
    if q.live
        && node.member.state == MemberState::Running
        && let Some(live) = &shared.live_wal
    {
        match live.read().await {
            Some(now) => {
                node.member.wal = now.wal;
                node.member.timeline = now.timeline.or(node.member.timeline);
            }
            None => return answer(false, node),
        }
    }
    answer(true, node)
}

async fn primary(State(shared): State<Arc<Shared>>) -> Answer {
    let node = node(&shared).await;
    let ok = node.is_leader && running(&node, MemberRole::Primary);
    answer(ok, node)
}

#[derive(Deserialize)]
struct LagQuery {
    lag: Option<u64>,
}

/// Bytes this member's replay position is behind the leader's write position, if known.
async fn lag_bytes(shared: &Shared, node: &NodeStatus) -> Option<u64> {
    let view = shared.view.read().await;
    let leader = view.as_ref()?.leader.as_ref()?;
    let leader_lsn = view.as_ref()?.members.get(&leader.name)?.wal.best()?;
    let mine = node.member.wal.replay.or(node.member.wal.receive)?;
    Some(leader_lsn.bytes_ahead_of(mine))
}

async fn replica(State(shared): State<Arc<Shared>>, Query(q): Query<LagQuery>) -> Answer {
    let node = node(&shared).await;
    let mut ok = running(&node, MemberRole::Replica) && node.streaming;
    if let Some(limit) = q.lag {
        ok = ok
            && lag_bytes(&shared, &node)
                .await
                .is_some_and(|lag| lag <= limit);
    }
    answer(ok, node)
}

async fn health(State(shared): State<Arc<Shared>>) -> Answer {
    let node = node(&shared).await;
    let ok = node.member.state == MemberState::Running;
    answer(ok, node)
}

async fn proxy(State(shared): State<Arc<Shared>>) -> Answer {
    let node = node(&shared).await;
    let ok = shared
        .proxy
        .as_ref()
        .is_some_and(|route| route.borrow().is_some());
    answer(ok, node)
}

async fn liveness(State(shared): State<Arc<Shared>>) -> Answer {
    let node = node(&shared).await;
    let fresh = shared.last_loop.read().await.elapsed() <= shared.ttl;
    let busy = matches!(
        node.member.state,
        MemberState::Bootstrapping | MemberState::CreatingReplica | MemberState::Rewinding
    );
    answer(fresh || busy, node)
}

async fn readiness(State(shared): State<Arc<Shared>>) -> Answer {
    let node = node(&shared).await;
    let ok = if node.is_leader {
        running(&node, MemberRole::Primary)
    } else {
        running(&node, MemberRole::Replica)
            && node.streaming
            && lag_bytes(&shared, &node)
                .await
                .is_some_and(|lag| lag <= shared.maximum_lag_on_failover)
    };
    answer(ok, node)
}

async fn cluster(State(shared): State<Arc<Shared>>) -> Json<ClusterSummary> {
    let node = shared.node.read().await.clone();
    let view = shared.view.read().await;
    let summary = match view.as_ref() {
        Some(v) => {
            let mut s = summarize(&node.scope, v.leader.as_ref().map(|l| &l.name), &v.members);
            s.paused = v.paused();
            s.mark_synchronous(v.config.as_ref(), v.sync.as_ref());
            s.mark_standby(v.config.as_ref());
            s
        }
        None => summarize(&node.scope, None, &Default::default()),
    };
    Json(summary)
}

async fn get_metrics(
    State(shared): State<Arc<Shared>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let node = node(&shared).await;
    let lag_bytes = if node.member.role == MemberRole::Replica {
        lag_bytes(&shared, &node).await
    } else {
        None
    };
    let now = Instant::now();
    let left = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now));
    let last_backup = shared
        .backups
        .read()
        .await
        .last_finished
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    let sample = metrics::Sample {
        leads: node.is_leader,
        lag_bytes,
        lease_left: left(shared.lease.borrow().valid_until),
        failsafe_left: left(*shared.failsafe_until.borrow()),
        stats: shared
            .loop_stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        last_backup,
        node,
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&sample),
    )
}

async fn history(State(shared): State<Arc<Shared>>) -> Json<Vec<HistoryEntry>> {
    let view = shared.view.read().await;
    Json(view.as_ref().map(|v| v.history.clone()).unwrap_or_default())
}
