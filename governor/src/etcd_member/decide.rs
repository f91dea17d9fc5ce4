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

use std::collections::BTreeSet;

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
    /// Nothing to do yet: why.
    Wait(String),
}

/// The next step of an instance whose etcd does not run.
pub fn next_step(o: &Observation) -> Step {
    if o.has_data {
        // etcd takes its membership from the data directory; the flags are ignored.
        return Step::Start {
            state: ClusterState::Existing,
            initial_cluster: vec![(o.me.clone(), o.my_peer_url.clone())],
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
        // No cluster a live instance serves: the smallest live id starts one.
        return match live.iter().next() {
            Some(first) if *first == o.me => Step::Start {
                state: ClusterState::New,
                initial_cluster: vec![(o.me.clone(), o.my_peer_url.clone())],
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
    if let Some(mine) = members
        .iter()
        .find(|m| m.name == o.me || m.peer_urls.contains(&o.my_peer_url))
    {
        if mine.started() {
            // It ran here before and its data is gone: it must join again as a new member.
            return Step::Remove {
                id: mine.id,
                reason: format!("{} lost its data and joins again", o.me),
            };
        }
        // Added (by an earlier run of this keeper), not started yet.
        return Step::Start {
            state: ClusterState::Existing,
            initial_cluster: initial_cluster(members, o),
        };
    }
    if let Some((dead, reason)) = removable(members, &live) {
        return Step::Remove { id: dead, reason };
    }
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let running = running_voters(members, &live);
    if running < voters / 2 + 1 {
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

/// The `initial-cluster` of a joining instance: every member that started under its name, and
/// this instance.
fn initial_cluster(members: &[Member], o: &Observation) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = members
        .iter()
        .filter(|m| m.started() && m.name != o.me)
        .filter_map(|m| m.peer_urls.first().map(|u| (m.name.clone(), u.clone())))
        .collect();
    out.push((o.me.clone(), o.my_peer_url.clone()));
    out.sort();
    out
}

/// A member whose instance left the group and whose removal keeps a quorum of the voting
/// members that run: the first such, with the reason.
fn removable(members: &[Member], live: &BTreeSet<&str>) -> Option<(u64, String)> {
    let gone = |m: &&Member| m.started() && !live.contains(m.name.as_str());
    let dead = members.iter().find(gone)?;
    if dead.is_learner {
        return Some((
            dead.id,
            format!("learner {} left the auto-scaling group", dead.name),
        ));
    }
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let healthy_voters = running_voters(members, live);
    // After the removal the cluster has voters-1 members and needs a majority of them.
    let quorum_after = (voters - 1) / 2 + 1;
    (healthy_voters >= quorum_after).then(|| {
        (
            dead.id,
            format!("member {} left the auto-scaling group", dead.name),
        )
    })
}

/// The voting members that started on a live instance of the group.
fn running_voters(members: &[Member], live: &BTreeSet<&str>) -> usize {
    members
        .iter()
        .filter(|m| !m.is_learner && m.started() && live.contains(m.name.as_str()))
        .count()
}

/// What the etcd leader's keeper does in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upkeep {
    /// Learners that started, to promote (etcd refuses while one lags; tried again).
    pub promote: Vec<u64>,
    /// A member whose instance left the group, removed this round (at most one).
    pub remove: Option<(u64, String)>,
    /// The instance ids the SRV records should name (sorted), when they differ from today's.
    pub records: Option<Vec<String>>,
}

/// The leader's upkeep from the group, the members and today's records.
pub fn upkeep(group: &[GroupInstance], members: &[Member], records: &[String]) -> Upkeep {
    let live: BTreeSet<&str> = group
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.as_str())
        .collect();
    let promote = members
        .iter()
        .filter(|m| m.is_learner && m.started() && live.contains(m.name.as_str()))
        .map(|m| m.id)
        .collect();
    let remove = removable(members, &live);
    let mut wanted: Vec<String> = members
        .iter()
        .filter(|m| !m.is_learner && m.started())
        .filter(|m| remove.as_ref().is_none_or(|(id, _)| *id != m.id))
        .map(|m| m.name.clone())
        .collect();
    wanted.sort();
    let mut today = records.to_vec();
    today.sort();
    Upkeep {
        promote,
        remove,
        records: (wanted != today && !wanted.is_empty()).then_some(wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(ids: &[&str]) -> Seen<Vec<GroupInstance>> {
        Seen::Known(
            ids.iter()
                .map(|i| GroupInstance {
                    id: i.to_string(),
                    live: true,
                })
                .collect(),
        )
    }

    fn member(id: u64, name: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{name}:2380")],
            client_urls: vec![format!("https://{name}:2379")],
            is_learner: false,
        }
    }

    fn obs(me: &str) -> Observation {
        Observation {
            me: me.into(),
            my_peer_url: format!("https://{me}:2380"),
            has_data: false,
            group: group(&["i-1", "i-2", "i-3"]),
            records: Seen::Known(vec![]),
            members: Seen::Unknown("no live record target".into()),
        }
    }

    #[test]
    fn the_first_instance_starts_a_cluster_of_itself_and_the_others_wait_for_it() {
        assert_eq!(
            next_step(&obs("i-1")),
            Step::Start {
                state: ClusterState::New,
                initial_cluster: vec![("i-1".into(), "https://i-1:2380".into())],
            }
        );
        assert!(matches!(next_step(&obs("i-2")), Step::Wait(w) if w.contains("i-1")));
    }

    #[test]
    fn records_of_instances_that_left_the_group_are_no_cluster() {
        let mut o = obs("i-1");
        o.records = Seen::Known(vec!["i-old1".into(), "i-old2".into()]);
        assert!(matches!(
            next_step(&o),
            Step::Start {
                state: ClusterState::New,
                ..
            }
        ));
    }

    #[test]
    fn nothing_is_started_or_joined_on_unknown() {
        for o in [
            Observation {
                group: Seen::Unknown("timeout".into()),
                ..obs("i-1")
            },
            Observation {
                records: Seen::Unknown("SERVFAIL".into()),
                ..obs("i-1")
            },
            // Records name a live instance, but the cluster does not answer: never a new one.
            Observation {
                records: Seen::Known(vec!["i-2".into()]),
                members: Seen::Unknown("connection refused".into()),
                ..obs("i-1")
            },
        ] {
            assert!(matches!(next_step(&o), Step::Wait(_)), "{o:?}");
        }
    }

    #[test]
    fn a_member_with_data_starts_from_it_whatever_else_is_unknown() {
        let o = Observation {
            has_data: true,
            group: Seen::Unknown("timeout".into()),
            records: Seen::Unknown("timeout".into()),
            ..obs("i-3")
        };
        assert!(matches!(next_step(&o), Step::Start { .. }));
    }

    #[test]
    fn a_new_instance_joins_as_a_learner_then_starts_with_the_existing_members() {
        let mut o = obs("i-3");
        o.records = Seen::Known(vec!["i-1".into(), "i-2".into()]);
        o.members = Seen::Known(vec![member(1, "i-1"), member(2, "i-2")]);
        assert_eq!(next_step(&o), Step::AddSelf);
        // After the add: listed without a name, not started.
        o.members = Seen::Known(vec![
            member(1, "i-1"),
            member(2, "i-2"),
            Member {
                id: 3,
                name: String::new(),
                peer_urls: vec!["https://i-3:2380".into()],
                client_urls: vec![],
                is_learner: true,
            },
        ]);
        assert_eq!(
            next_step(&o),
            Step::Start {
                state: ClusterState::Existing,
                initial_cluster: vec![
                    ("i-1".into(), "https://i-1:2380".into()),
                    ("i-2".into(), "https://i-2:2380".into()),
                    ("i-3".into(), "https://i-3:2380".into()),
                ],
            }
        );
    }

    #[test]
    fn a_replacement_removes_the_member_it_replaces_before_it_joins() {
        // i-2 was terminated; i-4 replaces it.
        let mut o = obs("i-4");
        o.group = group(&["i-1", "i-3", "i-4"]);
        o.records = Seen::Known(vec!["i-1".into(), "i-2".into(), "i-3".into()]);
        o.members = Seen::Known(vec![member(1, "i-1"), member(2, "i-2"), member(3, "i-3")]);
        assert!(matches!(next_step(&o), Step::Remove { id: 2, .. }));
        o.members = Seen::Known(vec![member(1, "i-1"), member(3, "i-3")]);
        assert_eq!(next_step(&o), Step::AddSelf);
    }

    #[test]
    fn removal_never_leaves_the_running_voters_without_a_quorum() {
        // Two of three members' instances are gone: removing one would leave 2 voters of
        // which 1 runs: no quorum. Nothing is removed, nothing is added.
        let mut o = obs("i-4");
        o.group = group(&["i-1", "i-4", "i-5"]);
        o.records = Seen::Known(vec!["i-1".into(), "i-2".into(), "i-3".into()]);
        o.members = Seen::Known(vec![member(1, "i-1"), member(2, "i-2"), member(3, "i-3")]);
        assert!(
            matches!(next_step(&o), Step::Wait(w) if w.contains("quorum")),
            "{:?}",
            next_step(&o)
        );
        let u = upkeep(
            &[
                GroupInstance {
                    id: "i-1".into(),
                    live: true,
                },
                GroupInstance {
                    id: "i-4".into(),
                    live: true,
                },
            ],
            &[member(1, "i-1"), member(2, "i-2"), member(3, "i-3")],
            &["i-1".into(), "i-2".into(), "i-3".into()],
        );
        assert_eq!(u.remove, None);
    }

    #[test]
    fn joins_go_one_at_a_time() {
        let mut o = obs("i-5");
        o.group = group(&["i-1", "i-2", "i-3", "i-4", "i-5"]);
        o.records = Seen::Known(vec!["i-1".into(), "i-2".into(), "i-3".into()]);
        let mut learner = member(4, "i-4");
        learner.is_learner = true;
        o.members = Seen::Known(vec![
            member(1, "i-1"),
            member(2, "i-2"),
            member(3, "i-3"),
            learner,
        ]);
        assert!(matches!(next_step(&o), Step::Wait(w) if w.contains("learner")));
    }

    #[test]
    fn an_instance_whose_data_is_gone_joins_again_as_a_new_member() {
        let mut o = obs("i-2");
        o.records = Seen::Known(vec!["i-1".into(), "i-2".into(), "i-3".into()]);
        o.members = Seen::Known(vec![member(1, "i-1"), member(2, "i-2"), member(3, "i-3")]);
        assert!(matches!(next_step(&o), Step::Remove { id: 2, .. }));
    }

    #[test]
    fn the_leader_promotes_learners_removes_the_departed_and_keeps_records_to_the_voters() {
        let g: Vec<GroupInstance> = ["i-1", "i-3", "i-4"]
            .iter()
            .map(|i| GroupInstance {
                id: i.to_string(),
                live: true,
            })
            .collect();
        let mut learner = member(4, "i-4");
        learner.is_learner = true;
        let u = upkeep(
            &g,
            &[
                member(1, "i-1"),
                member(2, "i-2"),
                member(3, "i-3"),
                learner,
            ],
            &["i-1".into(), "i-2".into(), "i-3".into()],
        );
        assert_eq!(u.promote, vec![4]);
        assert!(matches!(u.remove, Some((2, _))));
        assert_eq!(u.records, Some(vec!["i-1".into(), "i-3".into()]));
        // Records already right: nothing to write.
        let u = upkeep(
            &g,
            &[member(1, "i-1"), member(3, "i-3")],
            &["i-3".into(), "i-1".into()],
        );
        assert_eq!(u.records, None);
    }
}
