//! The REST API's operator endpoints. Every mutating one checks credentials first
//! ([`super::auth`]) and changes nothing on a refusal.
//!
//! | endpoint | does | answers |
//! |---|---|---|
//! | `POST /switchover` `{leader?, candidate?, scheduled_at?}` | writes the `switchover` request; the leader hands over | 200 done, 202 scheduled, 412 refused (with why), 409 one pending, 503 not done in time |
//! | `DELETE /switchover` | cancels a pending (scheduled) request | 200, 404 none |
//! | `POST /failover` `{candidate}` | without a healthy primary: only `candidate` may take the leader key | 200 done, 412 refused, 503 not done in time |
//! | `POST /restart` `{pending?}` | restarts this member's PostgreSQL in its role | 200, 412 refused, 500 failed |
//! | `POST /reload` | rewrites the configuration and reloads | 200, 412, 500 |
//! | `POST /reinitialize` | a replica copies the leader again | 200, 412, 500 |
//! | `POST /drill` `{backup?, target_time?, sql?}` | a restore drill of the archive on this member ([`crate::drill`]); waits for it | 200 `{ok, text, report}` (ok false: a check failed), 400 bad body, 409 no archive, 500 the drill could not run |
//! | `GET /config` | the cluster's `config` | 200 |
//! | `PATCH /config` | JSON merge patch of `config`, compare-and-swap | 200 new config, 400 bad, 409 changed meanwhile |

use super::auth;
use crate::ha::{ClusterView, switchover};
use crate::shared::Shared;
use crate::shared::{Command, Op};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use spilo_model::{ClusterConfig, MemberName, MemberRole, MemberState, SwitchoverRequest};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type Reply = (StatusCode, Json<Value>);

/// How long `POST /switchover` and `/failover` wait for the new leader.
const DONE_DEADLINE: Duration = Duration::from_secs(30);

fn reply(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, Json(json!({ "message": message.into() })))
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Reply> {
    auth::check(shared.auth.as_ref(), headers).map_err(|r| reply(r.status, r.message))
}

async fn fresh_view(shared: &Shared) -> Result<ClusterView, Reply> {
    shared.store.read_view().await.map_err(|e| {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("coordination store: {e}"),
        )
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The body of `POST /switchover` and `POST /failover`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverBody {
    /// The expected current leader.
    #[serde(default)]
    pub leader: Option<MemberName>,
    /// The member to promote.
    #[serde(default)]
    pub candidate: Option<MemberName>,
    /// When, as RFC 3339 (UTC, `Z`).
    #[serde(default)]
    pub scheduled_at: Option<String>,
}

/// Parses a request body (empty: the defaults); a body that does not parse is a 400.
pub fn parse_body<T: Default + for<'de> Deserialize<'de>>(raw: &str) -> Result<T, String> {
    if raw.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(raw).map_err(|e| format!("bad request body: {e}"))
}

fn body<T: Default + for<'de> Deserialize<'de>>(raw: &str) -> Result<T, Reply> {
    parse_body(raw).map_err(|e| reply(StatusCode::BAD_REQUEST, e))
}

pub(super) async fn post_switchover(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    match switchover_inner(&shared, &headers, &raw).await {
        Ok(r) | Err(r) => r,
    }
}

async fn switchover_inner(shared: &Shared, headers: &HeaderMap, raw: &str) -> Result<Reply, Reply> {
    authorized(shared, headers)?;
    let b: SwitchoverBody = body(raw)?;
    let view = fresh_view(shared).await?;
    let leader = view
        .leader
        .as_ref()
        .map(|l| l.name.clone())
        .ok_or_else(|| {
            reply(
                StatusCode::PRECONDITION_FAILED,
                "the cluster has no leader; use failover",
            )
        })?;
    if let Some(expected) = &b.leader
        && *expected != leader
    {
        return Err(reply(
            StatusCode::PRECONDITION_FAILED,
            format!("{expected} is not the leader; {leader} is"),
        ));
    }
    let scheduled_at = match &b.scheduled_at {
        None => None,
        Some(t) => {
            let at = humantime::parse_rfc3339_weak(t).map_err(|e| {
                reply(
                    StatusCode::BAD_REQUEST,
                    format!("scheduled_at {t:?} is not an RFC 3339 UTC time: {e}"),
                )
            })?;
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if secs < unix_now() {
                return Err(reply(
                    StatusCode::PRECONDITION_FAILED,
                    format!("scheduled_at {t} is in the past"),
                ));
            }
            Some(secs)
        }
    };
    if scheduled_at.is_some() {
        if view.paused() {
            return Err(reply(
                StatusCode::PRECONDITION_FAILED,
                "the cluster is paused (maintenance mode); `spilo resume` it first",
            ));
        }
        if let Some(c) = &b.candidate
            && !view.members.contains_key(c)
        {
            return Err(reply(
                StatusCode::PRECONDITION_FAILED,
                format!("{c} is not a member of the cluster"),
            ));
        }
    } else {
        switchover::check(&view, &leader, b.candidate.as_ref(), &shared.ha)
            .map_err(|why| reply(StatusCode::PRECONDITION_FAILED, why))?;
    }
    let request = SwitchoverRequest {
        leader: Some(leader.clone()),
        candidate: b.candidate.clone(),
        scheduled_at,
        failover: false,
        requested_at: unix_now(),
    };
    write_request(shared, &request).await?;
    if let Some(t) = &b.scheduled_at {
        return Ok(reply(
            StatusCode::ACCEPTED,
            format!(
                "switchover from {leader}{} scheduled at {t}",
                b.candidate.map(|c| format!(" to {c}")).unwrap_or_default()
            ),
        ));
    }
    await_new_leader(shared, &request, &leader).await
}

async fn write_request(shared: &Shared, request: &SwitchoverRequest) -> Result<(), Reply> {
    match shared.store.request_switchover(request).await {
        Ok(true) => {
            shared.wake.notify_one();
            Ok(())
        }
        Ok(false) => Err(reply(
            StatusCode::CONFLICT,
            "a switchover or failover is already pending (DELETE /switchover cancels it)",
        )),
        Err(e) => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("coordination store: {e}"),
        )),
    }
}

/// Polls etcd until the request is gone, then says whether the leader changed as asked.
async fn await_new_leader(
    shared: &Shared,
    request: &SwitchoverRequest,
    old: &MemberName,
) -> Result<Reply, Reply> {
    let deadline = Instant::now() + DONE_DEADLINE;
    loop {
        if let Ok(view) = fresh_view(shared).await {
            let leader = view.leader.as_ref().map(|l| &l.name);
            let leads = |m: &MemberName| {
                view.members
                    .get(m)
                    .is_some_and(|s| s.running_as(MemberRole::Primary))
            };
            if let Some(new) = leader
                && new != old
                && request.candidate.as_ref().is_none_or(|c| c == new)
                && leads(new)
            {
                return Ok(reply(
                    StatusCode::OK,
                    format!("{new} is the new primary (was {old})"),
                ));
            }
            if view.switchover.is_none() && leader.is_some_and(|l| l == old) {
                let outcome = shared.switchover_outcome.read().await.clone();
                let why = match outcome {
                    Some(o) if o.request == *request => match o.result {
                        Err(why) => why,
                        Ok(m) => format!("{m} leads"),
                    },
                    _ => format!("{old} is still the leader; its log says why"),
                };
                return Err(reply(
                    StatusCode::PRECONDITION_FAILED,
                    format!("the switchover did not happen: {why}"),
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no new primary within {}s; the request stays until the leader acts on it \
                     (DELETE /switchover cancels it)",
                    DONE_DEADLINE.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn delete_switchover(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    match shared.store.cancel_switchover().await {
        Ok(true) => reply(StatusCode::OK, "cancelled the pending switchover"),
        Ok(false) => reply(StatusCode::NOT_FOUND, "no switchover is pending"),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("coordination store: {e}"),
        ),
    }
}

pub(super) async fn post_failover(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    match failover_inner(&shared, &headers, &raw).await {
        Ok(r) | Err(r) => r,
    }
}

async fn failover_inner(shared: &Shared, headers: &HeaderMap, raw: &str) -> Result<Reply, Reply> {
    authorized(shared, headers)?;
    let b: SwitchoverBody = body(raw)?;
    let candidate = b
        .candidate
        .clone()
        .ok_or_else(|| reply(StatusCode::BAD_REQUEST, "failover needs a candidate"))?;
    let view = fresh_view(shared).await?;
    let leader = view.leader.as_ref().map(|l| l.name.clone());
    if let Some(l) = &leader
        && view
            .members
            .get(l)
            .is_some_and(|m| m.running_as(MemberRole::Primary))
    {
        return Err(reply(
            StatusCode::PRECONDITION_FAILED,
            format!("{l} is a healthy primary; use switchover"),
        ));
    }
    let m = view.members.get(&candidate).ok_or_else(|| {
        reply(
            StatusCode::PRECONDITION_FAILED,
            format!("{candidate} is not a member of the cluster"),
        )
    })?;
    if m.state != MemberState::Running || m.tags.nofailover {
        return Err(reply(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "{candidate} is {}{}; it cannot take over",
                m.state.as_str(),
                if m.tags.nofailover {
                    " and tagged nofailover"
                } else {
                    ""
                }
            ),
        ));
    }
    let request = SwitchoverRequest {
        leader: leader.clone(),
        candidate: Some(candidate.clone()),
        scheduled_at: None,
        failover: true,
        requested_at: unix_now(),
    };
    write_request(shared, &request).await?;
    let deadline = Instant::now() + DONE_DEADLINE;
    loop {
        if let Ok(view) = fresh_view(shared).await
            && view.leader.as_ref().is_some_and(|l| l.name == candidate)
            && view
                .members
                .get(&candidate)
                .is_some_and(|m| m.running_as(MemberRole::Primary))
        {
            return Ok(reply(
                StatusCode::OK,
                format!("{candidate} is the new primary"),
            ));
        }
        if Instant::now() > deadline {
            return Err(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{candidate} did not become primary within {}s",
                    DONE_DEADLINE.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of `POST /restart`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartBody {
    /// Only if a changed setting waits for a restart.
    #[serde(default)]
    pub pending: bool,
}

pub(super) async fn post_restart(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    match body::<RestartBody>(&raw) {
        Ok(b) => {
            command(
                &shared,
                Op::Restart {
                    pending_only: b.pending,
                },
            )
            .await
        }
        Err(r) => r,
    }
}

/// The body of `POST /upgrade`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    /// This member's governor configuration for the new major version (YAML).
    pub config: String,
    /// Only check (`pg_upgrade --check` and the settings); change nothing.
    #[serde(default)]
    pub check: bool,
    /// The cluster's parameters the orchestrator writes once the upgrade is done (its new
    /// etcd `config`), checked beside those the new version starts with.
    #[serde(default)]
    pub parameters: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /upgrade`: the major upgrade of this member's data in place, or its check (200 with
/// what was done, 412 with the blockers or why not; `runtime::upgrade`).
pub(super) async fn post_upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    match body::<UpgradeBody>(&raw) {
        Ok(b) if b.config.trim().is_empty() => reply(
            StatusCode::BAD_REQUEST,
            "the body names no configuration: {\"config\": \"<the member's configuration for the new version>\"}",
        ),
        Ok(b) => {
            command(
                &shared,
                Op::Upgrade {
                    config: b.config,
                    check: b.check,
                    parameters: b.parameters,
                },
            )
            .await
        }
        Err(r) => r,
    }
}

pub(super) async fn post_reload(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    command(&shared, Op::Reload).await
}

pub(super) async fn post_reinitialize(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    command(&shared, Op::Reinitialize).await
}

/// `POST /analyze`: the leader running as primary rebuilds the planner's statistics
/// (`vacuumdb --analyze-in-stages`, after a major upgrade) and answers when done: 200 with
/// what was done, 409 on another member or while a rebuild runs, 500 when vacuumdb failed.
pub(super) async fn post_analyze(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    let node = shared.node.read().await.clone();
    if !(node.is_leader
        && node.member.role == MemberRole::Primary
        && node.member.state == MemberState::Running)
    {
        return reply(
            StatusCode::CONFLICT,
            "this member is not the leader running as primary: the statistics are rebuilt \
             on the primary (replicas receive them)",
        );
    }
    let Some(stats) = &shared.statistics else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "this governor does not rebuild statistics",
        );
    };
    match stats.rebuild().await {
        Ok(done) => reply(StatusCode::OK, done),
        Err(e @ crate::shared::StatsError::Busy) => reply(StatusCode::CONFLICT, e.to_string()),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /backup`: the leader takes a base backup into the archive now and answers when it
/// is finished (200 with its name); 409 on a member that is not the leader or has no archive.
pub(super) async fn post_backup(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Reply {
    use crate::shared::BackupRefused as Refused;
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    let Some(requests) = &shared.backup_requests else {
        return reply(
            StatusCode::CONFLICT,
            "this member has no archive configured (archive in its configuration, backup in the cluster file)",
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests.send(tx).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the backup task is not running",
        );
    }
    match rx.await {
        Ok(Ok(name)) => (
            StatusCode::OK,
            Json(json!({ "message": format!("backup {name} finished"), "backup": name })),
        ),
        Ok(Err(e @ Refused::NotLeader)) => reply(StatusCode::CONFLICT, e.to_string()),
        Ok(Err(e @ Refused::Failed(_))) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the backup task stopped before answering",
        ),
    }
}

/// The body of `POST /drill`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    /// A backup's name, or `LATEST` (the default).
    #[serde(default)]
    pub backup: Option<String>,
    /// Replay up to this time (RFC 3339) instead of the archive's end.
    #[serde(default)]
    pub target_time: Option<String>,
    /// A query that must return `true` (default: the configuration's `archive.verify.sql`).
    #[serde(default)]
    pub sql: Option<String>,
}

pub(super) async fn post_drill(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    match drill_inner(&shared, &headers, &raw).await {
        Ok(r) | Err(r) => r,
    }
}

async fn drill_inner(shared: &Shared, headers: &HeaderMap, raw: &str) -> Result<Reply, Reply> {
    authorized(shared, headers)?;
    let b: DrillBody = body(raw)?;
    let target_time = b
        .target_time
        .as_deref()
        .map(spilo_model::TargetTime::parse)
        .transpose()
        .map_err(|e| reply(StatusCode::BAD_REQUEST, format!("target_time: {e}")))?;
    let requests = shared.drill_requests.as_ref().ok_or_else(|| {
        reply(
            StatusCode::CONFLICT,
            "this member has no archive configured (archive in its configuration, backup in the cluster file)",
        )
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request = crate::shared::DrillRequest {
        pick: crate::archive::backup::Pick::from_args(
            b.backup.as_deref().unwrap_or("LATEST"),
            target_time,
        ),
        target_time,
        sql: b.sql,
        reply: tx,
    };
    requests.send(request).await.map_err(|_| {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the restore drill task is not running",
        )
    })?;
    match rx.await {
        Ok(Ok(report)) => Ok((
            StatusCode::OK,
            Json(json!({ "ok": report.ok(), "text": report.text(), "report": report })),
        )),
        Ok(Err(e)) => Err(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the restore drill could not run: {e}"),
        )),
        Err(_) => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the restore drill task stopped before answering",
        )),
    }
}

async fn command(shared: &Shared, op: Op) -> Reply {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared
        .commands
        .send(Command { op, reply: tx })
        .await
        .is_err()
    {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the HA loop is not running",
        );
    }
    shared.wake.notify_one();
    match rx.await {
        Ok(Ok(what)) => reply(StatusCode::OK, what),
        Ok(Err(f)) if f.refused => reply(StatusCode::PRECONDITION_FAILED, f.why),
        Ok(Err(f)) => reply(StatusCode::INTERNAL_SERVER_ERROR, f.why),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "the HA loop stopped"),
    }
}

pub(super) async fn get_config(State(shared): State<Arc<Shared>>) -> Reply {
    match shared.store.read_config().await {
        Ok((Some(v), _)) => (StatusCode::OK, Json(v)),
        Ok((None, _)) => reply(StatusCode::NOT_FOUND, "the cluster has no config yet"),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("coordination store: {e}"),
        ),
    }
}

pub(super) async fn patch_config(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    if let Err(r) = authorized(&shared, &headers) {
        return r;
    }
    let patch: Value = match serde_json::from_str(&raw) {
        Ok(v) => v,
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let (current, revision) = match shared.store.read_config().await {
        Ok((v, rev)) => (v.unwrap_or_else(|| json!({})), rev),
        Err(e) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("coordination store: {e}"),
            );
        }
    };
    let config = match ClusterConfig::merge_patch(&current, &patch) {
        Ok(c) => c,
        Err(why) => return reply(StatusCode::BAD_REQUEST, why),
    };
    match shared.store.write_config(&config, revision).await {
        Ok(true) => (
            StatusCode::OK,
            Json(serde_json::to_value(&config).unwrap_or_default()),
        ),
        Ok(false) => reply(
            StatusCode::CONFLICT,
            "config changed while this patch was applied; read it again",
        ),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("coordination store: {e}"),
        ),
    }
}
