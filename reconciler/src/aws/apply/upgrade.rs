//! The major upgrade of a running cluster (`plan::upgrade`), before its stack moves to the
//! new version. An instance runs nothing but the governor beside PostgreSQL, so the leader's
//! governor upgrades its own data in place (`POST /upgrade`, `governor::runtime::upgrade`):
//!
//! 1. `pg_upgrade --check` and the settings, on the leader with the new version's
//!    configuration: a blocker ends the apply before anything changed;
//! 2. a base backup on the old version (the restore point), when the cluster archives;
//! 3. the other instances terminated, the group's size decremented with each (their data
//!    cannot follow; the upgrade in place starts from the leader alone), and their member
//!    keys gone from etcd;
//! 4. the upgrade: the leader stops PostgreSQL, gives up its key, links, and its governor
//!    starts again on the new version and leads (the write downtime);
//! 5. after the stack moved to the new version ([`restore_size`]), the group back to its
//!    size: the new instances copy the upgraded leader, and the rollout replaces the
//!    leader's instance, whose launch template is the old one;
//! 6. a base backup into the new version's archive, and the planner's statistics rebuilt
//!    ([`after`]).
//!
//! `spilo plan` asks step 1 alone ([`check`], `aws::upgrade_check`), so the plan lists the
//! blockers before anything is applied.
//!
//! An apply stopped halfway is finished by the next. Before step 4 the apply writes the
//! cluster's `upgrade` record to etcd (deleted when the link was refused or rolled back,
//! and at the end of step 6): the next plan finds the members still on the old version
//! with fewer replicas (the upgrade again, from step 1), or on the new one with the record
//! (steps 5 and 6: the stack, the rollout, the backup and the statistics).

use super::Log;
use super::rollout::{group_name, read_cluster, rest_api, target};
use crate::aws::clients::RegionClients;
use crate::aws::observe::describe_group;
use crate::aws::observed::Observation;
use crate::aws::plan::ClusterPlan;
use crate::aws::plan::upgrade::MajorUpgrade;
use spilo_model::ClusterName;
use std::time::{Duration, Instant};

/// How long the replicas' member keys may take to go, and the leader to lead again.
const STEP: Duration = Duration::from_secs(30 * 60);

fn scope_of(c: &ClusterPlan) -> Result<ClusterName, String> {
    ClusterName::new(c.name.clone()).map_err(|e| e.to_string())
}

fn dcs_of(c: &ClusterPlan) -> Result<&spilo_model::spec::DcsSpec, String> {
    c.dcs
        .as_ref()
        .ok_or_else(|| "the plan names no etcd for the upgrade".to_string())
}

/// The leader's name and REST API URL.
async fn leader(c: &ClusterPlan) -> Result<(String, String), String> {
    let cluster = read_cluster(dcs_of(c)?, &scope_of(c)?).await?;
    let name = cluster
        .summary
        .leader
        .as_ref()
        .map(ToString::to_string)
        .ok_or_else(|| "the cluster has no leader: nothing was changed".to_string())?;
    let url = cluster
        .summary
        .members
        .iter()
        .find(|m| m.name.as_str() == name)
        .map(|m| m.api_url.clone())
        .ok_or_else(|| format!("the leader {name} has no member key"))?;
    Ok((name, url))
}

/// Steps 1 to 4: the cluster runs the new version on its leader alone when this returns.
pub async fn run(region: &RegionClients, c: &ClusterPlan, log: &Log) -> Result<(), String> {
    let Some(u) = &c.major_upgrade else {
        return Ok(());
    };
    if u.finishing {
        log.line(
            &c.name,
            &format!(
                "major upgrade: the members run PostgreSQL {} already; finishing what an \
                 earlier apply left",
                u.to
            ),
        );
        return Ok(());
    }
    let (dcs, scope) = (dcs_of(c)?, scope_of(c)?);
    // A base backup and pg_upgrade answer when they are done.
    let api = rest_api(
        &target(dcs, &scope).await?,
        "the leader upgrades its data when asked",
        STEP,
    )?;
    let (name, url) = leader(c).await?;
    log.line(
        &c.name,
        &format!("major upgrade: checking on the leader {name}"),
    );
    let checked = ask_check(c, u, (&api, &url), &name)
        .await
        .map_err(|why| format!("{why}; nothing was changed"))?;
    log.line(&c.name, &format!("major upgrade: {checked}"));
    let backup = api
        .post(&url, "/backup", &serde_json::json!({}))
        .await
        .map_err(|e| format!("POST /backup on the leader: {e:#}"))?;
    match backup.status {
        200 => log.line(
            &c.name,
            &format!(
                "major upgrade: base backup on PostgreSQL {}: {}",
                u.from, backup.message
            ),
        ),
        409 => log.line(
            &c.name,
            &format!("major upgrade: no base backup first: {}", backup.message),
        ),
        _ => {
            return Err(format!(
                "the base backup before the upgrade failed: {} (HTTP {}); nothing was changed",
                backup.message, backup.status
            ));
        }
    }
    // Whatever fails from here on, the group gets its size back (a failed link was rolled
    // back and the leader runs the old version again; an apply that stopped is finished by
    // the next).
    let upgraded = match leave_the_leader_alone(region, c, &name, log).await {
        Ok(()) => upgrade_alone(c, u, (&api, &url), &name, log).await,
        Err(e) => Err(e),
    };
    if upgraded.is_err()
        && let Err(r) = restore_size(region, c, log).await
    {
        log.line(
            &c.name,
            &format!("major upgrade: the group's size was not restored: {r}"),
        );
    }
    upgraded
}

/// Step 1 alone, as `spilo plan` asks it before anything is applied: what the leader's check
/// says (`Ok`: no blockers), or the blockers, or why it could not be asked.
pub async fn check(c: &ClusterPlan, u: &MajorUpgrade) -> Result<String, String> {
    let (dcs, scope) = (dcs_of(c)?, scope_of(c)?);
    let api = rest_api(
        &target(dcs, &scope).await?,
        "the leader checks the upgrade when asked",
        CHECK,
    )?;
    let (name, url) = leader(c).await?;
    ask_check(c, u, (&api, &url), &name).await
}

/// How long the check may take (it makes a scratch cluster of the new version).
const CHECK: Duration = Duration::from_secs(300);

/// `POST /upgrade {"check": true}` on the leader `name`, with the parameters the apply writes
/// to etcd after the upgrade when they change (the new version must take them too).
async fn ask_check(
    c: &ClusterPlan,
    u: &MajorUpgrade,
    (api, url): (&crate::operate::Api, &str),
    name: &str,
) -> Result<String, String> {
    let mut body = serde_json::json!({"config": u.config, "check": true});
    // Only when they change: a governor older than this field refuses it (400).
    if let Some(cfg) = &c.config
        && cfg.before.as_ref().map(|b| &b.postgresql_parameters)
            != Some(&cfg.after.postgresql_parameters)
    {
        body["parameters"] = serde_json::json!(cfg.after.postgresql_parameters);
    }
    let check = api
        .post(url, "/upgrade", &body)
        .await
        .map_err(|e| format!("POST /upgrade on the leader {name}: {e:#}"))?;
    let older_image =
        check.status == 404 || check.status == 400 && check.message.contains("unknown field");
    match check.status {
        200 => Ok(check.message),
        _ if older_image => Err(format!(
            "the leader {name}'s governor has no POST /upgrade (its image is older than the \
             upgrade in place): roll the current image out first, with the file still on \
             PostgreSQL {}, then change the version",
            u.from
        )),
        s => Err(format!(
            "the upgrade check on {name} found: {} (HTTP {s})",
            check.message
        )),
    }
}

/// Step 4: the upgrade on the leader `name` alone (its REST API at `url`), until it leads
/// on the new version.
async fn upgrade_alone(
    c: &ClusterPlan,
    u: &MajorUpgrade,
    (api, url): (&crate::operate::Api, &str),
    name: &str,
    log: &Log,
) -> Result<(), String> {
    // From here on an apply that stops leaves the record, and the next plan finishes.
    let record = spilo_model::UpgradeRecord {
        from: u.from,
        to: u.to,
    };
    write_record(c, Some(record)).await?;
    let started = Instant::now();
    log.line(
        &c.name,
        &format!("major upgrade: pg_upgrade --link on {name}"),
    );
    let upgraded = api
        .post(url, "/upgrade", &serde_json::json!({"config": u.config}))
        .await
        .map_err(|e| format!("POST /upgrade on the leader: {e:#}"))?;
    if !upgraded.ok() {
        // Refused, or the link failed and was rolled back: the members run the old version.
        if let Err(e) = write_record(c, None).await {
            log.line(&c.name, &format!("major upgrade: {e}"));
        }
        return Err(format!(
            "the upgrade on {name} failed: {} (HTTP {})",
            upgraded.message, upgraded.status
        ));
    }
    leads_on(c, name, u).await?;
    log.line(
        &c.name,
        &format!(
            "major upgrade: {name} leads on PostgreSQL {} ({:.1}s without writes from the \
             stop of PostgreSQL {} to the upgraded leader's key)",
            u.to,
            started.elapsed().as_secs_f64(),
            u.from
        ),
    );
    Ok(())
}

/// Terminates every instance of the group but the leader's, decrementing the group's size,
/// and waits until the leader is the only member in etcd.
async fn leave_the_leader_alone(
    region: &RegionClients,
    c: &ClusterPlan,
    leader: &str,
    log: &Log,
) -> Result<(), String> {
    let group = group_name(region, &c.stack_name).await?;
    let instances = match describe_group(region, &group).await {
        Observation::Present(g) => g.instances,
        other => {
            return Err(format!(
                "auto-scaling group {group}: {}",
                other.unknown().unwrap_or("gone")
            ));
        }
    };
    // The group's smallest size is the file's `instances` (the stack's `MinSize`): one
    // instance for now, so the terminations below may shrink it.
    resize(region, &group, 1, None).await?;
    for i in instances.iter().filter(|i| i.id != leader) {
        // A failover since the check would make this instance the primary's: the leader is
        // read again before each termination, and nothing goes when it changed.
        still_leads(c, leader).await?;
        log.line(
            &c.name,
            &format!(
                "major upgrade: terminating {} (a replica's data cannot follow the upgrade; \
                 a new instance on the new version replaces it)",
                i.id
            ),
        );
        region
            .autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(&i.id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "terminate {} in {group}: {}",
                    i.id,
                    crate::aws::clients::describe(&e)
                )
            })?;
    }
    let deadline = Instant::now() + STEP;
    loop {
        let cluster = read_cluster(dcs_of(c)?, &scope_of(c)?).await?;
        let others: Vec<String> = cluster
            .summary
            .members
            .iter()
            .map(|m| m.name.to_string())
            .filter(|m| m != leader)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the terminated replicas' member keys did not go within {} minutes: {}",
                STEP.as_secs() / 60,
                others.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Fails unless `leader` still holds the leader key.
async fn still_leads(c: &ClusterPlan, leader: &str) -> Result<(), String> {
    let now = read_cluster(dcs_of(c)?, &scope_of(c)?)
        .await?
        .summary
        .leader
        .map(|l| l.to_string());
    if now.as_deref() == Some(leader) {
        return Ok(());
    }
    Err(format!(
        "the leader changed from {leader} to {} during the upgrade's preparation: no other \
         instance is terminated; apply again",
        now.as_deref().unwrap_or("nobody")
    ))
}

/// Waits until `name` holds the leader key again with data of the new version.
async fn leads_on(c: &ClusterPlan, name: &str, u: &MajorUpgrade) -> Result<(), String> {
    let t = target(dcs_of(c)?, &scope_of(c)?).await?;
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(state) = crate::operate::read_state(&t).await
            && state.leader.as_ref().is_some_and(|l| l.as_str() == name)
            && state
                .members
                .iter()
                .any(|(m, s)| m.as_str() == name && s.postgres_version == Some(u.to))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name} did not lead on PostgreSQL {} within {} minutes after its upgrade",
                u.to,
                STEP.as_secs() / 60
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sets the group's smallest size, and its desired one.
async fn resize(
    region: &RegionClients,
    group: &str,
    min: i32,
    desired: Option<i32>,
) -> Result<(), String> {
    region
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(group)
        .min_size(min)
        .set_desired_capacity(desired)
        .send()
        .await
        .map_err(|e| format!("resize {group}: {}", crate::aws::clients::describe(&e)))?;
    Ok(())
}

/// Step 5, and what an apply stopped after step 3 left: the group back to the stack's
/// `Instances` (the file's), when it is smaller, before the rollout counts on it.
pub async fn restore_size(
    region: &RegionClients,
    c: &ClusterPlan,
    log: &Log,
) -> Result<(), String> {
    let stack = region
        .cfn
        .describe_stacks()
        .stack_name(&c.stack_name)
        .send()
        .await
        .map_err(|e| {
            format!(
                "describe-stacks {}: {}",
                c.stack_name,
                crate::aws::clients::describe(&e)
            )
        })?;
    let Some(wanted) = stack
        .stacks()
        .first()
        .into_iter()
        .flat_map(|s| s.parameters())
        .find(|p| p.parameter_key() == Some("Instances"))
        .and_then(|p| p.parameter_value())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    let group = group_name(region, &c.stack_name).await?;
    let desired = match describe_group(region, &group).await {
        Observation::Present(g) => g.desired,
        other => {
            return Err(format!(
                "auto-scaling group {group}: {}",
                other.unknown().unwrap_or("gone")
            ));
        }
    };
    if usize::try_from(wanted).is_ok_and(|w| desired >= w) {
        return Ok(());
    }
    log.line(
        &c.name,
        &format!("major upgrade: the group back to {wanted} instances (it keeps {desired})"),
    );
    resize(region, &group, wanted, Some(wanted)).await
}

/// Steps 6 and 7, on whoever leads after the rollout: a base backup into the new version's
/// archive, then the planner's statistics rebuilt (`POST /analyze`: `vacuumdb
/// --analyze-in-stages`). Said, not fatal: the cluster runs, its schedule takes the next
/// backup, and autovacuum analyzes in time.
pub async fn after(c: &ClusterPlan, log: &Log) -> Result<(), String> {
    let Some(u) = &c.major_upgrade else {
        return Ok(());
    };
    let backup = ask_leader(c, "/backup").await;
    // Without an archive there is no backup to take (409 on the leader says so).
    let backed_up = match &backup {
        Ok((200, what)) => {
            format!("major upgrade: base backup on PostgreSQL {}: {what}", u.to)
        }
        Ok((409, why)) if why.contains("no archive") => format!("major upgrade: {why}"),
        Ok((status, why)) => format!(
            "major upgrade: the base backup after the upgrade did not happen: {why} (HTTP \
             {status})"
        ),
        Err(why) => {
            format!("major upgrade: the base backup after the upgrade did not happen: {why}")
        }
    };
    log.line(&c.name, &backed_up);
    let backed_up = matches!(&backup, Ok((200, _)))
        || matches!(&backup, Ok((409, why)) if why.contains("no archive"));
    let analyzed = analyze(c).await;
    log.line(
        &c.name,
        &match &analyzed {
            Ok(what) => format!("major upgrade: {what}"),
            Err(why) => format!(
                "major upgrade: the statistics were not rebuilt: {why} (autovacuum analyzes \
                 the tables in time; the next apply tries again)"
            ),
        },
    );
    // Both are best effort: a backup or an analyze that outlasts its call, or fails, is
    // said and not tried again by every later apply (the schedule takes the next backup,
    // autovacuum analyzes).
    write_record(c, None).await?;
    log.line(
        &c.name,
        &format!(
            "major upgrade: PostgreSQL {} -> {} finished{}",
            u.from,
            u.to,
            if backed_up && analyzed.is_ok() {
                ""
            } else {
                " (see above for what did not happen)"
            }
        ),
    );
    Ok(())
}

/// `POST /analyze` on the leader; a leader that does not know it leads yet (right after
/// the rollout's switchover, its status is a loop pass old) is asked again for a while.
async fn analyze(c: &ClusterPlan) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ask_leader(c, "/analyze").await {
            Ok((200, what)) => return Ok(what),
            Ok((409, why)) if why.contains("not the leader") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok((status, why)) => return Err(format!("{why} (HTTP {status})")),
            Err(why) => return Err(why),
        }
    }
}

/// Removes the `upgrade` record of a cluster whose stack is deleted (best effort: its etcd
/// may be gone with it), so a new cluster of the same name never finishes its upgrade.
pub async fn forget(c: &ClusterPlan, log: &Log) {
    if c.dcs.is_none() {
        return;
    }
    if let Err(e) = write_record(c, None).await {
        log.line(&c.name, &format!("major upgrade: {e}"));
    }
}

/// Writes (`Some`) or deletes the cluster's `upgrade` record, under the apply lock.
async fn write_record(
    c: &ClusterPlan,
    record: Option<spilo_model::UpgradeRecord>,
) -> Result<(), String> {
    let mut client = crate::etcd::connect_dcs(dcs_of(c)?).await?;
    let key = spilo_model::Keyspace::new(&scope_of(c)?).upgrade();
    match record {
        Some(r) => {
            let value = serde_json::to_string(&r).map_err(|e| e.to_string())?;
            client.put(key.clone(), value, None).await.map(|_| ())
        }
        None => client.delete(key.clone(), None).await.map(|_| ()),
    }
    .map_err(|e| format!("the upgrade record {key} in etcd: {e}"))
}

/// `POST <path>` on the leader, which answers when done: its status and message.
async fn ask_leader(c: &ClusterPlan, path: &str) -> Result<(u16, String), String> {
    let (dcs, scope) = (dcs_of(c)?, scope_of(c)?);
    let api = rest_api(
        &target(dcs, &scope).await?,
        &format!("POST {path} is asked"),
        STEP,
    )?;
    let (_, url) = leader(c).await?;
    let answer = api
        .post(&url, path, &serde_json::json!({}))
        .await
        .map_err(|e| format!("POST {path}: {e:#}"))?;
    Ok((answer.status, answer.message))
}
