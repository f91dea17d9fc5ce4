//! Failsafe mode's two halves: the primary's confirmation task and every member's promise.
//!
//! A primary cannot tell an etcd outage from being cut off, so without failsafe mode it stops
//! accepting writes before its lease can end. With failsafe mode on (the cluster's `config`),
//! the primary whose lease renewals fail asks every member listed in the `failsafe` key (and
//! every member it last saw) with `POST /failsafe`. When all of them accept, it may stay
//! writable until the send time plus the TTL ([`run`] publishes that instant; the fence and
//! `decide` honour it). A member that accepts promises, through its [`Gate`](crate::shared::failsafe::Gate), not to take the
//! leader key until its receipt time plus the TTL, and it refuses to accept once it is racing
//! for the key itself or holds it. So whoever takes the leader key next does so only after the
//! primary has stopped accepting writes: the same argument as the lease's, with the members'
//! promises in place of etcd's expiry.

use crate::config::ApiCredentials;
use crate::ha::LeaseView;
use crate::shared::failsafe::Heartbeat;
use spilo_model::{MemberName, MemberStatus};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A member the primary must hear from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: MemberName,
    /// Its REST API base URL.
    pub api_url: String,
}

/// Settings of the confirmation task.
pub struct Settings {
    /// This member.
    pub me: MemberName,
    /// The lease length: how long one round of confirmations lasts.
    pub ttl: Duration,
    /// How often to ask while the lease is in trouble (the lease renewal interval).
    pub interval: Duration,
    /// The credentials to present (the cluster shares them).
    pub auth: Option<ApiCredentials>,
}

/// Whether the lease has missed two renewals in a row (or is gone): time to ask the members.
pub fn lease_in_trouble(
    lease: &LeaseView,
    now: Instant,
    ttl: Duration,
    interval: Duration,
) -> bool {
    match (lease.id, lease.valid_until) {
        (Some(_), Some(until)) => until.saturating_duration_since(now) + 2 * interval < ttl,
        _ => true,
    }
}

/// Runs until `cancel` fires. While this member runs a primary (`armed`), failsafe mode is on
/// and the `failsafe` key lists it (`peers` is `Some`) and the lease backing the leader key is in trouble (or is no longer
/// the current lease), asks every peer each `interval`; publishes
/// on `confirmed` the send time plus the TTL of the last round every peer accepted.
pub async fn run(
    settings: Settings,
    http: reqwest::Client,
    mut armed: watch::Receiver<super::fence::Armed>,
    mut peers: watch::Receiver<Option<Vec<Peer>>>,
    mut lease: watch::Receiver<LeaseView>,
    confirmed: watch::Sender<Option<Instant>>,
    cancel: CancellationToken,
) {
    let mut failing: Option<String> = None;
    loop {
        let now = Instant::now();
        let guard = *armed.borrow_and_update();
        let is_armed = guard.is_some();
        let targets = peers.borrow_and_update().clone();
        let view = *lease.borrow_and_update();
        // Also while the leader key is not bound to the current lease: after an outage,
        // until the HA loop has taken the key back.
        let key_lease = guard.and_then(|g| g.lease);
        if let Some(targets) = targets.filter(|_| is_armed)
            && (view.id != key_lease
                || lease_in_trouble(&view, now, settings.ttl, settings.interval))
        {
            let sent = Instant::now();
            let refused = ask_all(&settings, &http, &targets).await;
            if refused.is_empty() {
                let was = confirmed.borrow().is_some_and(|t| sent < t);
                confirmed.send_replace(Some(sent + settings.ttl));
                if !was || failing.take().is_some() {
                    tracing::warn!(
                        members = targets.len(),
                        "failsafe: the lease cannot be renewed and every member confirmed this \
                         primary; it stays writable while they keep confirming"
                    );
                }
            } else {
                let why = refused.join("; ");
                if failing.as_ref() != Some(&why) {
                    tracing::warn!("failsafe: not every member confirmed this primary: {why}");
                }
                failing = Some(why);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
            r = armed.changed() => if r.is_err() { return },
            r = peers.changed() => if r.is_err() { return },
        }
    }
}

/// Sends the heartbeat to every target at once; returns who did not accept, and why.
async fn ask_all(settings: &Settings, http: &reqwest::Client, targets: &[Peer]) -> Vec<String> {
    let body = Heartbeat {
        leader: settings.me.clone(),
        ttl_ms: u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX),
    };
    let timeout = settings.ttl / 4;
    let asks = targets.iter().map(|p| {
        let url = format!("{}/failsafe", p.api_url.trim_end_matches('/'));
        let mut req = http.post(&url).json(&body).timeout(timeout);
        if let Some(auth) = &settings.auth {
            req = match (&auth.token, &auth.basic) {
                (Some(token), _) => req.bearer_auth(token),
                (None, Some((user, password))) => req.basic_auth(user, Some(password)),
                (None, None) => req,
            };
        }
        async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("{} answered {}", p.name, r.status())),
                Err(e) => Some(format!("{} did not answer ({e})", p.name)),
            }
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// What the leader writes into the `failsafe` key: every member it sees (with this member
/// always in), plus members of the current key that have been missing from etcd for less than
/// `grace` (after an etcd outage every member key has expired; they come back one by one, and
/// a member dropped from the key may not take over later). `absent_since` remembers when
/// each went missing.
pub fn key_members(
    me: (&MemberName, &str),
    seen: &BTreeMap<MemberName, MemberStatus>,
    current: Option<&BTreeMap<MemberName, String>>,
    absent_since: &mut BTreeMap<MemberName, Instant>,
    now: Instant,
    grace: Duration,
) -> BTreeMap<MemberName, String> {
    let mut wanted: BTreeMap<MemberName, String> = seen
        .iter()
        .map(|(name, m)| (name.clone(), m.api_url.clone()))
        .collect();
    wanted.insert(me.0.clone(), me.1.to_string());
    absent_since.retain(|name, _| !wanted.contains_key(name));
    for (name, url) in current.into_iter().flatten() {
        if wanted.contains_key(name) {
            continue;
        }
        let since = *absent_since.entry(name.clone()).or_insert(now);
        if now.saturating_duration_since(since) < grace {
            wanted.insert(name.clone(), url.clone());
        }
    }
    // Only the members kept for their grace period are remembered.
    absent_since.retain(|name, _| wanted.contains_key(name));
    wanted
}

/// Whom the primary asks: everyone in the key it wrote or the key it found, but itself.
pub fn peers(
    me: &MemberName,
    wanted: &BTreeMap<MemberName, String>,
    current: Option<&BTreeMap<MemberName, String>>,
) -> Vec<Peer> {
    let mut all = current.cloned().unwrap_or_default();
    all.extend(wanted.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.into_iter()
        .filter(|(name, _)| name != me)
        .map(|(name, api_url)| Peer { name, api_url })
        .collect()
}

/// What one pass of the leader does with the `failsafe` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPass {
    /// The members whose confirmations count: none unless the key read back lists this
    /// member, so a member the key does not name yet cannot race while this primary relies on
    /// the others.
    pub ask: Option<Vec<Peer>>,
    /// The key to write (`Some(None)`: delete it), when it must change.
    pub write: Option<Option<BTreeMap<MemberName, String>>>,
}

/// The leader `me` (whose API is `api_url`) over the `failsafe` key at `now`: in failsafe mode
/// the key lists the members to ask for confirmations ([`key_members`], a missing one kept for
/// `3 * ttl`), otherwise it is removed. The runtime and the simulation both run this.
pub fn key_pass(
    (me, api_url): (&MemberName, &str),
    view: &crate::ha::ClusterView,
    absent_since: &mut BTreeMap<MemberName, Instant>,
    now: Instant,
    ttl: Duration,
) -> KeyPass {
    if !view.failsafe_mode() {
        absent_since.clear();
        return KeyPass {
            ask: None,
            write: view.failsafe.is_some().then_some(None),
        };
    }
    let wanted = key_members(
        (me, api_url),
        &view.members,
        view.failsafe.as_ref(),
        absent_since,
        now,
        3 * ttl,
    );
    KeyPass {
        ask: view
            .failsafe
            .as_ref()
            .filter(|k| k.contains_key(me))
            .map(|_| peers(me, &wanted, view.failsafe.as_ref())),
        write: (view.failsafe.as_ref() != Some(&wanted)).then_some(Some(wanted)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> MemberName {
        MemberName::new(s).expect("valid")
    }

    fn status(url: &str) -> MemberStatus {
        MemberStatus {
            conn_url: "postgres://127.0.0.1:5432/postgres".into(),
            api_url: url.into(),
            role: spilo_model::MemberRole::Replica,
            state: spilo_model::MemberState::Running,
            timeline: None,
            wal: Default::default(),
            tags: Default::default(),
            pending_restart: false,
            error: None,
            postgres_version: None,
        }
    }

    #[test]
    fn the_key_keeps_a_missing_member_for_a_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(12);
        let me = name("m1");
        let seen: BTreeMap<_, _> = [(name("m2"), status("http://m2"))].into();
        let mut absent = BTreeMap::new();
        let first = key_members((&me, "http://m1"), &seen, None, &mut absent, t0, grace);
        assert_eq!(
            first.keys().map(MemberName::as_str).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        // m2's member key expires (an etcd outage): kept for the grace period, then dropped.
        let none = BTreeMap::new();
        let later = key_members(
            (&me, "http://m1"),
            &none,
            Some(&first),
            &mut absent,
            t0,
            grace,
        );
        assert_eq!(later, first);
        let still = key_members(
            (&me, "http://m1"),
            &none,
            Some(&later),
            &mut absent,
            t0 + grace - Duration::from_secs(1),
            grace,
        );
        assert_eq!(still, first);
        let gone = key_members(
            (&me, "http://m1"),
            &none,
            Some(&still),
            &mut absent,
            t0 + grace,
            grace,
        );
        assert_eq!(
            gone.keys().map(MemberName::as_str).collect::<Vec<_>>(),
            ["m1"]
        );
        assert!(absent.is_empty(), "nothing left to remember: {absent:?}");
        let asked = peers(&me, &gone, Some(&still));
        assert_eq!(
            asked,
            vec![Peer {
                name: name("m2"),
                api_url: "http://m2".into()
            }],
            "whoever is in the key found is still asked, so it cannot race"
        );
    }

    #[test]
    fn trouble_starts_after_two_missed_renewals() {
        let now = Instant::now();
        let ttl = Duration::from_secs(4);
        let interval = ttl / 8;
        let fresh = LeaseView {
            id: Some(1),
            valid_until: Some(now + ttl),
        };
        assert!(!lease_in_trouble(&fresh, now, ttl, interval));
        assert!(!lease_in_trouble(&fresh, now + interval, ttl, interval));
        assert!(lease_in_trouble(
            &fresh,
            now + 2 * interval + Duration::from_millis(1),
            ttl,
            interval
        ));
        assert!(lease_in_trouble(&LeaseView::default(), now, ttl, interval));
    }
}
