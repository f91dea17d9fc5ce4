//! The value of the `switchover` key: an operator's request to move the primary role, made
//! through a governor's REST API (`POST /switchover`, `POST /failover`) and carried out, or
//! refused, by the leader (or, without a leader, by the named candidate).

use crate::names::MemberName;
use serde::{Deserialize, Serialize};

/// A requested switchover (the primary hands over) or manual failover (there is no healthy
/// primary; only the named candidate may take the leader key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// The leader when the request was made; a different leader ignores and removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<MemberName>,
    /// The member to promote; `None` lets the leader pick the healthiest replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<MemberName>,
    /// When to carry it out, as Unix seconds; `None` means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<u64>,
    /// A manual failover (no healthy primary) rather than a switchover.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
    /// When it was requested, as Unix seconds.
    pub requested_at: u64,
}

impl SwitchoverRequest {
    /// Whether it is due at `now_unix` (Unix seconds).
    pub fn due(&self, now_unix: u64) -> bool {
        self.scheduled_at.is_none_or(|t| t <= now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_stable_and_due_follows_the_schedule() {
        let r = SwitchoverRequest {
            leader: Some(MemberName::new("a").expect("valid")),
            candidate: None,
            scheduled_at: Some(100),
            failover: false,
            requested_at: 90,
        };
        assert_eq!(
            serde_json::to_value(&r).expect("serializes"),
            serde_json::json!({"leader": "a", "scheduled_at": 100, "requested_at": 90})
        );
        assert!(!r.due(99));
        assert!(r.due(100));
        let now = SwitchoverRequest {
            scheduled_at: None,
            ..r
        };
        assert!(now.due(0));
    }
}
