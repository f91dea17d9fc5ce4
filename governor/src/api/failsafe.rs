//! `POST /failsafe {leader}`: a failsafe-mode primary whose lease cannot be renewed asks this
//! member to confirm it (see [`crate::runtime::failsafe`]). Accepting is a promise not to take
//! the leader key for a TTL (the longer of this member's and the primary's); it is refused
//! while this member runs as primary, holds or races for the leader key, last saw another
//! member holding it, or last saw failsafe mode off. Requires the API credentials.
//!
//! Answers 200 `{"accepted": true}`, 409 with why when refused, 400 on a bad body.

use super::auth;
use crate::shared::Shared;
use crate::shared::failsafe::{self, Heartbeat};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use spilo_model::{MemberRole, MemberState};
use std::sync::Arc;
use std::time::Instant;

type Reply = (StatusCode, Json<Value>);

fn refuse(status: StatusCode, message: impl Into<String>) -> Reply {
    (
        status,
        Json(json!({ "accepted": false, "message": message.into() })),
    )
}

pub(super) async fn post_failsafe(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: String,
) -> Reply {
    if let Err(r) = auth::check(shared.auth.as_ref(), &headers) {
        return refuse(r.status, r.message);
    }
    let beat: Heartbeat = match serde_json::from_str(&raw) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad body: {e}")),
    };
    {
        let node = shared.node.read().await;
        let view = shared.view.read().await;
        let primary =
            node.member.role == MemberRole::Primary && node.member.state == MemberState::Running;
        let seen = view.as_ref().map(|v| failsafe::Seen {
            failsafe_on: v.failsafe_mode() || v.failsafe.is_some(),
            leader: v.leader.as_ref().map(|l| &l.name),
        });
        if let Err(why) =
            failsafe::may_confirm(&beat.leader, &node.name, primary, node.is_leader, seen)
        {
            let status = match why {
                failsafe::NotConfirmed::Itself => StatusCode::BAD_REQUEST,
                _ => StatusCode::CONFLICT,
            };
            return refuse(status, why.to_string());
        }
    }
    let ttl = failsafe::promise_length(shared.ttl, beat.ttl_ms);
    match shared
        .failsafe
        .confirm(beat.leader.clone(), Instant::now(), ttl)
    {
        Ok(()) => {
            tracing::debug!(leader = %beat.leader, "failsafe: confirmed the primary");
            (StatusCode::OK, Json(json!({ "accepted": true })))
        }
        Err(e) => refuse(StatusCode::CONFLICT, e.to_string()),
    }
}
