//! The keeper's decisions, pure: from what one etcd instance observed (its auto-scaling group,
//! the SRV records, the etcd membership, its own data directory) to the one next step. No I/O
//! and no clock; the loop in `etcd_member` gathers, calls [`next_step`] (every member) and
//! [`upkeep`] (the etcd leader only), and carries the answer out.
//!
//! The rules, in the order they are tried:
//! - A member with data starts etcd from it (etcd ignores the initial-cluster flags then).
//! - Nothing is created on unknown: an unanswered group, record or membership read waits.
//! - A cluster exists when an SRV target is a live instance of the group. Then an instance
//!   that is not a member joins: a member whose instance left the group is removed first (one
//!   at a time, and only while the rest keep a quorum), then this instance is added as a
//!   *learner* (which votes on nothing until the leader promotes it once it caught up), then
//!   etcd starts with `initial-cluster-state=existing`.
//! - No cluster exists (no SRV records, or only ones naming instances that left the group):
//!   the live instance with the smallest id starts a cluster of itself; the others wait for
//!   its records and join one by one as above.
//! - The leader's upkeep promotes started learners, removes members whose instance left the
//!   group (never below a quorum of the voting members that run), and keeps the SRV records
//!   equal to the voting members that run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// An instance of the auto-scaling group, as AWS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInstance {
    /// The EC2 instance id, which is also the etcd member's name.
    pub id: String,
    /// Whether it counts as part of the group: `Pending*` or `InService`. Terminating,
    /// terminated, detaching or standby instances do not.
    pub live: bool,
}

/// An etcd member, as `member list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// etcd's member id.
    pub id: u64,
    /// The member's name: its instance id; empty until the member started once.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs; empty until it started.
    pub client_urls: Vec<String>,
    /// A learner: receives the log, does not vote.
    pub is_learner: bool,
}

impl Member {
    /// Whether the member has started (it published its client URLs).
    pub fn started(&self) -> bool {
        !self.client_urls.is_empty()
    }
}

/// A read that may not have answered. `Unknown` is never taken for absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<T> {
    /// The read answered with this.
    Known(T),
    /// The read failed or timed out: why.
    Unknown(String),
}

/// What one instance observed before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// This instance's id.
    pub me: String,
    /// This instance's peer URL (`https://<ip>:2380`).
    pub my_peer_url: String,
    /// Whether this instance's data directory holds an etcd member.
    pub has_data: bool,
    /// The group's instances.
    pub group: Seen<Vec<GroupInstance>>,
    /// The instance ids the SRV records point at (empty: no records).
    pub records: Seen<Vec<String>>,
    /// The etcd membership, read through the live record targets; `Unknown` when none answered
    /// (or no record names a live instance, which leaves nobody to ask).
    pub members: Seen<Vec<Member>>,
}

/// How etcd is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterState {
    /// A new cluster of the listed members (only this instance).
    New,
    /// Joining the existing cluster the list describes.
    Existing,
}

/// The one next step of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start etcd (it is not running).
    Start {
        /// New or existing cluster; ignored by etcd when the data directory holds a member.
        state: ClusterState,
        /// `name=peer-url` of every member etcd should know at its first start.
        initial_cluster: Vec<(String, String)>,
        /// A new cluster claims the SRV records first (created only if absent, atomically):
        /// of two instances that both see no records, only one starts a cluster.
        claim: bool,
    },
    /// Remove this member (whose instance left the group, or this instance's own lost one).
    Remove {
        /// Its etcd id.
        id: u64,
        /// Why, for the log.
        reason: String,
    },
    /// Add this instance as a learner with its peer URL.
    AddSelf,
    /// Move the data directory aside: the cluster removed this member, whose data can never
    /// serve again; the instance then joins as a new member.
    Discard(String),
    /// Nothing to do yet: why.
    Wait(String),
}

/// The next step of an instance whose etcd does not run.
pub fn next_step(o: &Observation) -> Step {
    if o.has_data {
        if let Seen::Known(members) = &o.members
            && !members.is_empty()
            && !members
                .iter()
                .any(|m| m.name == o.me || m.peer_urls.contains(&o.my_peer_url))
        {
            return Step::Discard(format!(
                "the cluster no longer lists {} (it was removed): its data is moved aside and it \
                 joins as a new member",
                o.me
            ));
        }
        // etcd takes its membership from the data directory; the flags are ignored.
        return Step::Start {
            state: ClusterState::Existing,
            initial_cluster: vec![(o.me.clone(), o.my_peer_url.clone())],
            claim: false,
        };
    }
    let group = match &o.group {
        Seen::Known(g) => g,
        Seen::Unknown(why) => {
            return Step::Wait(format!("the auto-scaling group is unknown: {why}"));
        }
    };
    let live: BTreeSet<&str> = group
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.as_str())
        .collect();
    if !live.contains(o.me.as_str()) {
        return Step::Wait("this instance is not (yet) a live instance of its group".into());
    }
    let records = match &o.records {
        Seen::Known(r) => r,
        Seen::Unknown(why) => return Step::Wait(format!("the SRV records are unknown: {why}")),
    };
    let live_targets: Vec<&str> = records
        .iter()
        .map(String::as_str)
        .filter(|t| live.contains(t) && *t != o.me)
        .collect();
    if live_targets.is_empty() {
        let only_me = records.iter().all(|t| *t == o.me);
        if !only_me {
            // Every recorded member's instance is gone, and the data with them: starting a
            // new, empty cluster is a person's decision.
            return Step::Wait(format!(
                "the SRV records name only instances that left the group ({}): the cluster is \
                 gone with its data; delete the records to start a new, empty cluster",
                records.join(", ")
            ));
        }
        // No cluster yet (or only this instance's own claim): the smallest live id starts it.
        return match live.iter().next() {
            Some(first) if *first == o.me => Step::Start {
                state: ClusterState::New,
                initial_cluster: vec![(o.me.clone(), o.my_peer_url.clone())],
                claim: records.is_empty(),
            },
            Some(first) => Step::Wait(format!(
                "no etcd cluster yet: waiting for {first} (the first instance) to start one"
            )),
            None => Step::Wait("this instance is not (yet) a live instance of its group".into()),
        };
    }
    let members = match &o.members {
        Seen::Known(m) => m,
        Seen::Unknown(why) => {
            return Step::Wait(format!(
                "the etcd cluster at {} does not answer: {why}",
                live_targets.join(", ")
            ));
        }
    };
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let running = running_voters(members, &live);
    if let Some(mine) = members
        .iter()
        .find(|m| m.name == o.me || m.peer_urls.contains(&o.my_peer_url))
    {
        if mine.started() {
            // It ran here before and its data is gone: it joins again as a new member, once
            // the others alone keep a quorum.
            let others = running - usize::from(!mine.is_learner);
            if !mine.is_learner && others < quorum(voters) {
                return Step::Wait(format!(
                    "{} lost its data, but without it {others} of {voters} voting members run: \
                     not removed",
                    o.me
                ));
            }
            return Step::Remove {
                id: mine.id,
                reason: format!("{} lost its data and joins again", o.me),
            };
        }
        // Added (by an earlier run of this keeper), not started yet.
        return Step::Start {
            state: ClusterState::Existing,
            initial_cluster: initial_cluster(members, o),
            claim: false,
        };
    }
    // Only the leader times unstarted learners (its upkeep): none is removed here.
    if let Some((dead, reason)) = removable(members, &live, &Unstarted::default()) {
        return Step::Remove { id: dead, reason };
    }
    if running < quorum(voters) {
        return Step::Wait(format!(
            "the etcd cluster has lost its quorum: {running} of {voters} voting members run \
             on live instances; it needs a disaster recovery, not another member"
        ));
    }
    if let Some(joining) = members.iter().find(|m| !m.started()) {
        return Step::Wait(format!(
            "another instance is joining ({}); one at a time",
            joining.peer_urls.join(",")
        ));
    }
    if members.iter().any(|m| m.is_learner) {
        return Step::Wait("a learner has not been promoted yet; one at a time".into());
    }
    Step::AddSelf
}

/// The `initial-cluster` of a joining instance: every member with each of its peer URLs (etcd
/// requires the same members and URLs as the cluster's), this instance under its name, the
/// others under theirs or, not started yet, a name of their id.
fn initial_cluster(members: &[Member], o: &Observation) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for m in members {
        let mine = m.name == o.me || m.peer_urls.contains(&o.my_peer_url);
        let name = if mine {
            o.me.clone()
        } else if m.name.is_empty() {
            format!("joining-{:x}", m.id)
        } else {
            m.name.clone()
        };
        for u in &m.peer_urls {
            out.push((name.clone(), u.clone()));
        }
    }
    out.sort();
    out
}

/// A member whose instance left the group and whose removal etcd can commit (the voting
/// members running on live instances are a quorum now; removing a dead member never weakens
/// it): a departed learner first, else a departed voter, with the reason.
fn removable(
    members: &[Member],
    live: &BTreeSet<&str>,
    unstarted: &Unstarted,
) -> Option<(u64, String)> {
    let gone = |m: &&Member| m.started() && !live.contains(m.name.as_str());
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let quorum = running_voters(members, live) >= quorum(voters);
    if !quorum {
        return None;
    }
    if let Some(l) = members.iter().filter(gone).find(|m| m.is_learner) {
        return Some((
            l.id,
            format!("learner {} left the auto-scaling group", l.name),
        ));
    }
    // A learner added whose etcd never started (its instance died in between) blocks every
    // later join: after the grace it goes (not voting, its removal never costs the quorum).
    if let Some((l, waited)) = members
        .iter()
        .filter(|m| m.is_learner && !m.started())
        .find_map(|m| Some((m, *unstarted.seen.get(&m.id)?)).filter(|(_, w)| *w >= unstarted.grace))
    {
        return Some((
            l.id,
            format!(
                "learner {} has not started in {} s",
                l.peer_urls.join(","),
                waited.as_secs()
            ),
        ));
    }
    members
        .iter()
        .filter(gone)
        .find(|m| !m.is_learner)
        .map(|d| {
            (
                d.id,
                format!("member {} left the auto-scaling group", d.name),
            )
        })
}

/// A majority of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The voting members that started on a live instance of the group.
fn running_voters(members: &[Member], live: &BTreeSet<&str>) -> usize {
    members
        .iter()
        .filter(|m| !m.is_learner && m.started() && live.contains(m.name.as_str()))
        .count()
}

/// The cluster's DNS records as they are: the targets of both SRV records and the A records
/// of the members' names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    /// Instance ids `_etcd-client-ssl._tcp` points at, sorted.
    pub client: Vec<String>,
    /// Instance ids `_etcd-server-ssl._tcp` points at, sorted.
    pub server: Vec<String>,
    /// Instance id -> address, of every member name's A record.
    pub addresses: BTreeMap<String, String>,
}

/// What the etcd leader's keeper does in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// Learners that started, to promote (etcd refuses while one lags; tried again).
    pub promote: Vec<u64>,
    /// A member whose instance left the group, removed this round (at most one).
    pub remove: Option<(u64, String)>,
    /// The records to write (member name -> address: both SRV records and the A records),
    /// when any of them differs from today's.
    pub records: Option<BTreeMap<String, String>>,
}

/// How long the leader's keeper has seen each unstarted learner unstarted, and how long one
/// may stay so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unstarted {
    /// etcd member id -> time seen unstarted.
    pub seen: BTreeMap<u64, Duration>,
    /// The grace before an unstarted learner is removed.
    pub grace: Duration,
}

/// The leader's upkeep from its own id, the group, the members, today's records and the
/// learners that have not started. A leader whose own instance is not live in the group does
/// nothing: its view of the group is not one to act on.
pub fn upkeep(
    me: &str,
    group: &[GroupInstance],
    members: &[Member],
    today: &RecordSet,
    unstarted: &Unstarted,
) -> Upkeep {
    let live: BTreeSet<&str> = group
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.as_str())
        .collect();
    if !live.contains(me) {
        return Upkeep::default();
    }
    let promote = members
        .iter()
        .filter(|m| m.is_learner && m.started() && live.contains(m.name.as_str()))
        .map(|m| m.id)
        .collect();
    let remove = removable(members, &live, unstarted);
    // Every voting member that runs, with the address of its peer URL; a member stays named
    // until its removal succeeded.
    let wanted: BTreeMap<String, String> = members
        .iter()
        .filter(|m| !m.is_learner && m.started() && !m.name.is_empty())
        .filter_map(|m| Some((m.name.clone(), host_of(m.peer_urls.first()?)?)))
        .collect();
    let names: Vec<String> = wanted.keys().cloned().collect();
    let differs = today.client != names || today.server != names || today.addresses != wanted;
    Upkeep {
        promote,
        remove,
        records: (differs && !wanted.is_empty()).then_some(wanted),
    }
}

/// The host of `https://host:port`.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests;
