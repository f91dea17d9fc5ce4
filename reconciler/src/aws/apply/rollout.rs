//! Replacing a cluster's instances one at a time after its launch template changed (see
//! [`crate::aws::plan::rollout`]): replicas first, each replacement streaming before the next
//! instance goes, then a switchover to a replaced replica through the leader's REST API, then
//! the former primary. Each round re-reads the group and etcd and takes the next step
//! ([`next_step`], pure), so an apply that stopped halfway is finished by the next one and a
//! finished instance is never replaced twice.
//!
//! The switchover needs the REST API credentials of the operating commands
//! (`SPILO_API_TOKEN`, `SPILO_API_CACERT` for an HTTPS API).

use super::Log;
use crate::aws::clients::RegionClients;
use crate::aws::observe::describe_group;
use crate::aws::observed::{Observation, ObservedGroup};
use crate::aws::plan::ClusterPlan;
use spilo_model::{ClusterSummary, MemberRow};
use std::time::{Duration, Instant};

/// How long one step may take: a replacement booting, restoring and catching up, or a
/// switchover.
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every instance runs the group's launch template and the cluster is healthy.
    Done,
    /// Nothing to do until this changes.
    Wait(String),
    /// Terminate this instance; the group launches its replacement.
    Replace {
        /// The instance.
        id: String,
        /// It runs the primary (a cluster of one instance).
        primary: bool,
    },
    /// Hand the primary role to a replaced replica.
    Switchover {
        /// The current leader.
        from: String,
        /// The replaced replica.
        to: String,
    },
}

/// Whether `m` does its job: the leader runs as primary, a replica runs within `max_lag`.
fn healthy(m: &MemberRow, leader: Option<&str>, max_lag: u64) -> bool {
    if m.state != "running" {
        return false;
    }
    if leader == Some(m.name.as_str()) {
        return m.role == "primary";
    }
    m.role == "replica" && m.lag_bytes.is_some_and(|l| l <= max_lag)
}

/// What etcd says about the cluster, for the next step.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The members and the leader.
    pub summary: ClusterSummary,
    /// A replica further behind than this is not healthy (`maximum_lag_on_failover`).
    pub max_lag: u64,
    /// In synchronous mode, the members a switchover may go to (the `sync` key's
    /// standbys); `None` otherwise.
    pub promotable: Option<Vec<String>>,
}

/// The next step of the rollout from the group (its instances and how many it keeps) and the
/// cluster as etcd shows it. Pure.
pub fn next_step(group: &ObservedGroup, cluster: &Cluster) -> Step {
    let desired = group.desired;
    let max_lag = cluster.max_lag;
    let promotable = cluster.promotable.as_deref();
    let cluster = &cluster.summary;
    let leader = cluster.leader.as_ref().map(|l| l.as_str());
    let member = |id: &str| cluster.members.iter().find(|m| m.name.as_str() == id);
    let unhealthy: Vec<&str> = group
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !member(id).is_some_and(|m| healthy(m, leader, max_lag)))
        .collect();
    let outdated = group.outdated();
    if group.instances.len() < desired {
        return Step::Wait(format!(
            "the group has {} of {desired} instances: a replacement is launching",
            group.instances.len()
        ));
    }
    if let Some(id) = unhealthy.first() {
        return Step::Wait(format!(
            "{id} does not run as a streaming replica or the primary yet"
        ));
    }
    if outdated.is_empty() {
        return Step::Done;
    }
    if let Some(id) = outdated.iter().find(|id| Some(**id) != leader) {
        return Step::Replace {
            id: id.to_string(),
            primary: false,
        };
    }
    let Some(from) = leader else {
        return Step::Wait("the cluster has no leader".into());
    };
    if group.instances.len() == 1 {
        return Step::Replace {
            id: from.to_string(),
            primary: true,
        };
    }
    // The replaced replica closest to the primary takes over (in synchronous mode, one of
    // the synchronous standbys).
    let to = group
        .instances
        .iter()
        .filter(|i| !outdated.contains(&i.id.as_str()))
        .filter(|i| promotable.is_none_or(|p| p.contains(&i.id)))
        .filter_map(|i| member(&i.id))
        .filter(|m| m.role == "replica")
        .min_by_key(|m| m.lag_bytes.unwrap_or(u64::MAX));
    match to {
        Some(m) => Step::Switchover {
            from: from.to_string(),
            to: m.name.to_string(),
        },
        None if promotable.is_some() => {
            Step::Wait("no replaced replica is a synchronous standby yet".into())
        }
        None => Step::Wait("no replaced replica to hand the primary to".into()),
    }
}

/// Runs the rollout of cluster `c` to its end.
pub async fn run(region: &RegionClients, c: &ClusterPlan, log: &Log) -> Result<(), String> {
    let Some(rollout) = &c.rollout else {
        return Ok(());
    };
    let dcs = c
        .dcs
        .as_ref()
        .ok_or_else(|| "the plan names no etcd for the rollout".to_string())?;
    let group_name = group_name(region, &c.stack_name).await?;
    log.line(&c.name, &format!("rollout: {}", rollout.describe()));
    let scope = spilo_model::ClusterName::new(c.name.clone()).map_err(|e| e.to_string())?;
    let mut last = String::new();
    let mut since = Instant::now();
    // Instances are replaced only in a cluster that runs: one without a leader would lose
    // what it has left.
    if read_cluster(dcs, &scope).await?.summary.leader.is_none() {
        return Err(
            "rollout not started: the cluster has no leader (replacing instances of a cluster \
             that does not run could lose what it has left); apply again once a primary runs"
                .into(),
        );
    }
    loop {
        let group = match describe_group(region, &group_name).await {
            Observation::Present(g) => g,
            other => {
                return Err(format!(
                    "auto-scaling group {group_name}: {}",
                    other.unknown().unwrap_or("gone")
                ));
            }
        };
        let cluster = read_cluster(dcs, &scope).await?;
        let step = next_step(&group, &cluster);
        let said = format!("{step:?}");
        if said != last {
            since = Instant::now();
            last = said;
        } else if since.elapsed() > STEP_TIMEOUT {
            return Err(format!(
                "the rollout made no progress for {} minutes: {step:?}",
                STEP_TIMEOUT.as_secs() / 60
            ));
        }
        match step {
            Step::Done => {
                log.line(
                    &c.name,
                    "rollout: every instance replaced, the cluster is healthy",
                );
                return Ok(());
            }
            Step::Wait(_) => {}
            Step::Replace { id, primary } => {
                log.line(
                    &c.name,
                    &format!(
                        "rollout: replacing {} {id}",
                        if primary { "the primary" } else { "replica" }
                    ),
                );
                terminate(region, &group_name, &id).await?;
            }
            Step::Switchover { from, to } => {
                log.line(&c.name, &format!("rollout: switchover {from} -> {to}"));
                switchover(&cluster.summary, &from, &to, &scope, dcs).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The name of the auto-scaling group of stack `stack`.
pub(super) async fn group_name(region: &RegionClients, stack: &str) -> Result<String, String> {
    region
        .cfn
        .describe_stack_resource()
        .stack_name(stack)
        .logical_resource_id("AutoScalingGroup")
        .send()
        .await
        .map_err(|e| {
            format!(
                "describe-stack-resource: {}",
                crate::aws::clients::describe(&e)
            )
        })?
        .stack_resource_detail()
        .and_then(|d| d.physical_resource_id())
        .map(str::to_string)
        .ok_or_else(|| format!("stack {stack} has no auto-scaling group"))
}

/// The members and the failover lag limit from the cluster's etcd.
pub(super) async fn read_cluster(
    dcs: &spilo_model::spec::DcsSpec,
    scope: &spilo_model::ClusterName,
) -> Result<Cluster, String> {
    let state = crate::operate::read_state(&target(dcs, scope).await?)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let config = state.cluster_config();
    Ok(Cluster {
        summary: spilo_model::summarize(scope, state.leader.as_ref(), &state.members),
        max_lag: config.maximum_lag_on_failover.unwrap_or(1 << 20),
        promotable: config.synchronous_mode.then(|| {
            state
                .sync
                .map(|s| s.members.iter().map(|m| m.to_string()).collect())
                .unwrap_or_default()
        }),
    })
}

/// The operating commands' view of the cluster's etcd.
pub(super) async fn target(
    dcs: &spilo_model::spec::DcsSpec,
    scope: &spilo_model::ClusterName,
) -> Result<crate::operate::Target, String> {
    let mut t = crate::operate::Target::at(
        scope.clone(),
        crate::etcd::endpoints(dcs).await?,
        "/service",
    );
    let var = |n: &str| std::env::var_os(n).map(std::path::PathBuf::from);
    if dcs.etcd_cluster.is_some() {
        t.etcd_cacert = var("SPILO_ETCD_CACERT");
        t.etcd_cert = var("SPILO_ETCD_CERT");
        t.etcd_key = var("SPILO_ETCD_KEY");
    }
    Ok(t)
}

async fn terminate(region: &RegionClients, group: &str, id: &str) -> Result<(), String> {
    region
        .autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(id)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .map_err(|e| {
            format!(
                "terminate {id} in {group}: {}",
                crate::aws::clients::describe(&e)
            )
        })?;
    Ok(())
}

/// The members' REST API with the operating commands' credentials (`SPILO_API_TOKEN`,
/// `SPILO_API_CACERT`); `why` says what needs it when they are missing.
pub(super) fn rest_api(
    t: &crate::operate::Target,
    why: &str,
    timeout: Duration,
) -> Result<crate::operate::Api, String> {
    let auth = crate::operate::ApiAuth {
        token: std::env::var("SPILO_API_TOKEN").ok(),
        cacert: std::env::var_os("SPILO_API_CACERT").map(std::path::PathBuf::from),
        ..Default::default()
    };
    if auth.token.is_none() {
        return Err(format!(
            "{why} through the REST API: set SPILO_API_TOKEN (and SPILO_API_CACERT for its \
             CA) to the cluster's restapi secret"
        ));
    }
    crate::operate::Api::with_timeout(&auth, t, timeout).map_err(|e| format!("{e:#}"))
}

/// Asks the leader to hand over to `to` and waits until `to` holds the leader key.
async fn switchover(
    summary: &ClusterSummary,
    from: &str,
    to: &str,
    scope: &spilo_model::ClusterName,
    dcs: &spilo_model::spec::DcsSpec,
) -> Result<(), String> {
    let t = target(dcs, scope).await?;
    let api = rest_api(
        &t,
        "the rollout hands the primary over",
        Duration::from_secs(90),
    )?;
    let url = summary
        .members
        .iter()
        .find(|m| m.name.as_str() == from)
        .map(|m| m.api_url.clone())
        .ok_or_else(|| format!("{from} is not a member"))?;
    let answer = api
        .post(
            &url,
            "/switchover",
            &serde_json::json!({"leader": from, "candidate": to}),
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
    if !answer.ok() {
        return Err(format!(
            "switchover {from} -> {to}: {} (HTTP {})",
            answer.message, answer.status
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(c) = read_cluster(dcs, scope).await
            && c.summary.leader.as_ref().is_some_and(|l| l.as_str() == to)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("{to} did not take over within 120 s"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::observed::GroupMember;
    use spilo_model::{ClusterName, MemberName, MemberTags};

    fn group(members: &[(&str, &str)]) -> ObservedGroup {
        ObservedGroup {
            name: "g".into(),
            version: Some("2".into()),
            desired: 3,
            instances: members
                .iter()
                .map(|(id, v)| GroupMember {
                    id: id.to_string(),
                    version: Some(v.to_string()),
                })
                .collect(),
        }
    }

    fn row(name: &str, role: &str, lag: Option<u64>) -> MemberRow {
        MemberRow {
            name: MemberName::new(name).expect("name"),
            host: String::new(),
            port: 0,
            role: role.into(),
            state: "running".into(),
            timeline: None,
            lag_bytes: lag,
            lsn: None,
            api_url: format!("https://{name}:8008"),
            tags: MemberTags::default(),
            pending_restart: false,
        }
    }

    fn cluster(leader: &str, rows: Vec<MemberRow>) -> Cluster {
        Cluster {
            summary: ClusterSummary {
                scope: ClusterName::new("orders").expect("name"),
                leader: Some(MemberName::new(leader).expect("name")),
                members: rows,
                paused: false,
                synchronous: None,
                standby_of: None,
                drill: None,
                roles: Vec::new(),
                databases: Vec::new(),
            },
            max_lag: 100,
            promotable: None,
        }
    }

    #[test]
    fn replicas_go_first_then_one_switchover_then_the_former_primary() {
        let healthy3 = |l: &str, a: &str, b: &str| {
            cluster(
                l,
                vec![
                    row(l, "primary", None),
                    row(a, "replica", Some(0)),
                    row(b, "replica", Some(10)),
                ],
            )
        };
        // All old: a replica goes first.
        let g = group(&[("i-1", "1"), ("i-2", "1"), ("i-3", "1")]);
        let step = next_step(&g, &healthy3("i-1", "i-2", "i-3"));
        assert!(
            matches!(&step, Step::Replace { id, primary: false } if id != "i-1"),
            "{step:?}"
        );
        // One replaced and still catching up: wait.
        let g = group(&[("i-1", "1"), ("i-3", "1"), ("i-4", "2")]);
        let mut c = healthy3("i-1", "i-3", "i-4");
        c.summary.members[2].lag_bytes = Some(5000);
        assert!(matches!(next_step(&g, &c), Step::Wait(w) if w.contains("i-4")));
        // A replacement not launched yet: wait.
        let g2 = group(&[("i-1", "1"), ("i-3", "1")]);
        assert_eq!(g2.desired, 3);
        assert!(matches!(
            next_step(&g2, &healthy3("i-1", "i-3", "i-4")),
            Step::Wait(_)
        ));
        // Both replicas replaced: a switchover to the closest replaced replica.
        let g = group(&[("i-1", "1"), ("i-4", "2"), ("i-5", "2")]);
        let c = cluster(
            "i-1",
            vec![
                row("i-1", "primary", None),
                row("i-4", "replica", Some(30)),
                row("i-5", "replica", Some(0)),
            ],
        );
        assert_eq!(
            next_step(&g, &c),
            Step::Switchover {
                from: "i-1".into(),
                to: "i-5".into()
            }
        );
        // In synchronous mode only a synchronous standby takes over.
        let mut sync = c.clone();
        sync.promotable = Some(vec!["i-4".into()]);
        assert_eq!(
            next_step(&g, &sync),
            Step::Switchover {
                from: "i-1".into(),
                to: "i-4".into()
            }
        );
        sync.promotable = Some(vec!["i-1".into()]);
        assert!(matches!(next_step(&g, &sync), Step::Wait(w) if w.contains("synchronous")));
        // After it, the former primary is an old replica: it goes.
        let c = cluster(
            "i-5",
            vec![
                row("i-1", "replica", Some(0)),
                row("i-4", "replica", Some(0)),
                row("i-5", "primary", None),
            ],
        );
        assert_eq!(
            next_step(&g, &c),
            Step::Replace {
                id: "i-1".into(),
                primary: false
            }
        );
        // Every instance current and healthy: done.
        let g = group(&[("i-4", "2"), ("i-5", "2"), ("i-6", "2")]);
        let c = healthy3("i-5", "i-4", "i-6");
        assert_eq!(next_step(&g, &c), Step::Done);
    }

    #[test]
    fn a_single_instance_is_replaced_in_place() {
        let mut g = group(&[("i-1", "1")]);
        g.desired = 1;
        let c = cluster("i-1", vec![row("i-1", "primary", None)]);
        assert_eq!(
            next_step(&g, &c),
            Step::Replace {
                id: "i-1".into(),
                primary: true
            }
        );
    }
}
