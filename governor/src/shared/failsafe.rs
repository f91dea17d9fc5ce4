//! Failsafe mode's promises: what a member checks before it confirms a primary that cannot
//! renew its lease ([`may_confirm`]), and the [`Gate`] through which it keeps its promise not
//! to take the leader key while the confirmation holds. The REST API accepts or refuses with
//! these rules, the HA loop closes the gate before it races, and the simulation applies the
//! same functions. The primary's side (asking every member) is `runtime::failsafe`.

use spilo_model::MemberName;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the primary sends in `POST /failsafe`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The primary asking.
    pub leader: MemberName,
    /// The primary's TTL in milliseconds: how long after sending it counts the confirmation.
    /// A member promises at least this long (its own TTL may differ during a change).
    #[serde(default)]
    pub ttl_ms: u64,
}

/// This member's promises to failsafe primaries, shared by the REST API (which accepts or
/// refuses) and the HA loop (which must not race while a promise holds).
#[derive(Debug, Default)]
pub struct Gate {
    inner: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// The primary last confirmed, and until when this member promised not to race.
    promised: Option<(MemberName, Instant)>,
    /// This member is taking, or holds, the leader key: it confirms nobody.
    closed: bool,
}

/// What a member last saw in etcd, as a confirmation depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<'a> {
    /// Failsafe mode is on (in `config`, or the `failsafe` key still exists).
    pub failsafe_on: bool,
    /// Who held the leader key.
    pub leader: Option<&'a MemberName>,
}

/// Why a member does not confirm a primary (`POST /failsafe`), before its gate is asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotConfirmed {
    /// The asker is this member.
    #[error("a member cannot confirm itself")]
    Itself,
    /// This member runs as primary or holds the leader key.
    #[error("this member runs as primary or holds the leader key")]
    Leading,
    /// It has not read etcd yet.
    #[error("this member has not read etcd yet")]
    NothingSeen,
    /// Failsafe mode is off.
    #[error("failsafe mode is off")]
    Off,
    /// Another member held the leader key.
    #[error("{0} holds the leader key")]
    OtherLeader(MemberName),
}

/// Whether `me` may confirm `asker` (the REST API's checks; the simulation applies the same):
/// not itself, not while it runs as primary or holds the leader key, not before it read etcd,
/// not with failsafe mode off, not while it saw another member hold the leader key.
pub fn may_confirm(
    asker: &MemberName,
    me: &MemberName,
    runs_primary: bool,
    holds_leader_key: bool,
    seen: Option<Seen<'_>>,
) -> Result<(), NotConfirmed> {
    if asker == me {
        return Err(NotConfirmed::Itself);
    }
    if runs_primary || holds_leader_key {
        return Err(NotConfirmed::Leading);
    }
    let seen = seen.ok_or(NotConfirmed::NothingSeen)?;
    if !seen.failsafe_on {
        return Err(NotConfirmed::Off);
    }
    match seen.leader {
        Some(holder) if holder != asker => Err(NotConfirmed::OtherLeader(holder.clone())),
        _ => Ok(()),
    }
}

/// Why a confirmation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This member races for, or holds, the leader key.
    #[error("this member is taking or holds the leader key")]
    Leading,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state stays consistent even if a holder panicked: every write is one assignment.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts `leader`'s heartbeat received at `now`: promises not to race until `now + ttl`.
    pub fn confirm(&self, leader: MemberName, now: Instant, ttl: Duration) -> Result<(), Refusal> {
        let mut s = self.state();
        if s.closed {
            return Err(Refusal::Leading);
        }
        s.promised = Some((leader, now + ttl));
        Ok(())
    }

    /// The promise in force at `now`, if any.
    pub fn promised(&self, now: Instant) -> Option<(MemberName, Instant)> {
        self.state()
            .promised
            .clone()
            .filter(|(_, until)| now < *until)
    }

    /// Before racing for the leader key: closes the gate unless a promise holds at `now`
    /// (then returns it and stays open). Atomic with [`Gate::confirm`].
    pub fn close_for_race(&self, now: Instant) -> Result<(), (MemberName, Instant)> {
        let mut s = self.state();
        if let Some((who, until)) = s.promised.clone()
            && now < until
        {
            return Err((who, until));
        }
        s.closed = true;
        Ok(())
    }

    /// After losing a race, or once this member follows someone else: confirms again.
    pub fn open(&self) {
        self.state().closed = false;
    }
}

/// The longest promise a request can ask for, whatever TTL it names.
pub const LONGEST_PROMISE: Duration = Duration::from_secs(3600);

/// How long a member promises: the longer of its own TTL and the primary's (from the request,
/// in ms), so a TTL being changed member by member cannot make a promise end before the
/// primary stops counting it; a hostile value is capped at [`LONGEST_PROMISE`].
pub fn promise_length(own_ttl: Duration, primary_ttl_ms: u64) -> Duration {
    own_ttl.max(Duration::from_millis(primary_ttl_ms).min(LONGEST_PROMISE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> MemberName {
        MemberName::new(s).expect("valid")
    }

    #[test]
    fn a_member_confirms_only_a_primary_it_may_not_contradict() {
        let n = |s: &str| spilo_model::MemberName::new(s).expect("name");
        let (a, b, c) = (n("a"), n("b"), n("c"));
        let on = |leader| {
            Some(Seen {
                failsafe_on: true,
                leader,
            })
        };
        assert_eq!(may_confirm(&a, &b, false, false, on(Some(&a))), Ok(()));
        assert_eq!(may_confirm(&a, &b, false, false, on(None)), Ok(()));
        assert_eq!(
            may_confirm(&a, &a, false, false, on(None)),
            Err(NotConfirmed::Itself)
        );
        assert_eq!(
            may_confirm(&a, &b, true, false, on(None)),
            Err(NotConfirmed::Leading)
        );
        assert_eq!(
            may_confirm(&a, &b, false, true, on(None)),
            Err(NotConfirmed::Leading)
        );
        assert_eq!(
            may_confirm(&a, &b, false, false, None),
            Err(NotConfirmed::NothingSeen)
        );
        assert_eq!(
            may_confirm(
                &a,
                &b,
                false,
                false,
                Some(Seen {
                    failsafe_on: false,
                    leader: None
                })
            ),
            Err(NotConfirmed::Off)
        );
        assert_eq!(
            may_confirm(&a, &b, false, false, on(Some(&c))),
            Err(NotConfirmed::OtherLeader(c.clone()))
        );
    }

    #[test]
    fn a_promise_holds_for_a_ttl_and_blocks_the_race() {
        let gate = Gate::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(4);
        gate.confirm(name("m1"), t0, ttl)
            .expect("open gate confirms");
        assert_eq!(gate.promised(t0), Some((name("m1"), t0 + ttl)));
        assert_eq!(
            gate.close_for_race(t0 + Duration::from_secs(3)),
            Err((name("m1"), t0 + ttl))
        );
        assert_eq!(gate.promised(t0 + ttl), None);
        gate.close_for_race(t0 + ttl).expect("the promise ended");
        assert_eq!(
            gate.confirm(name("m1"), t0 + ttl, ttl),
            Err(Refusal::Leading),
            "a racing member confirms nobody"
        );
        gate.open();
        gate.confirm(name("m2"), t0 + ttl, ttl)
            .expect("confirms again after losing");
    }

    #[test]
    fn a_promise_lasts_the_longer_ttl_within_a_cap() {
        let four = Duration::from_secs(4);
        assert_eq!(
            promise_length(four, 0),
            four,
            "an old primary that sends no TTL"
        );
        assert_eq!(promise_length(four, 2_000), four);
        assert_eq!(promise_length(four, 30_000), Duration::from_secs(30));
        assert_eq!(promise_length(four, u64::MAX), LONGEST_PROMISE);
        let t0 = Instant::now();
        Gate::default()
            .confirm(name("m1"), t0, promise_length(four, u64::MAX))
            .expect("a capped promise fits in an Instant");
    }
}
