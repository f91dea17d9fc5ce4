//! The stack operations of an apply: a CloudFormation change set (created, waited for,
//! executed) or a delete, with the stack's events streamed as they come and, when it ends
//! badly, the first failing event.

use super::Log;
use crate::aws::clients::{RegionClients, describe};
use crate::aws::observe;
use crate::aws::plan::{ClusterPlan, Plan};
use aws_sdk_cloudformation::primitives::DateTimeFormat;
use aws_sdk_cloudformation::types::{Capability, ChangeSetStatus, ChangeSetType, Parameter, Tag};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long one stack operation may take before apply gives up waiting (the operation itself
/// goes on in CloudFormation).
const STACK_DEADLINE: Duration = Duration::from_secs(3600);

fn change_set_name(plan: &Plan) -> String {
    let commit: String = plan.based_on.commit.chars().take(12).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("spilo-{commit}-{now}")
}

pub(super) async fn change_stack(
    r: &RegionClients,
    plan: &Plan,
    c: &ClusterPlan,
    kind: ChangeSetType,
    log: &Log,
) -> Result<(), String> {
    let Some(desired) = &c.desired else {
        return Err("the plan carries no stack to apply".into());
    };
    let body = serde_json::to_string(&desired.template).map_err(|e| e.to_string())?;
    let name = change_set_name(plan);
    let created = r
        .cfn
        .create_change_set()
        .stack_name(&c.stack_name)
        .change_set_name(&name)
        .change_set_type(kind.clone())
        .template_body(body)
        .set_parameters(Some(
            desired
                .parameters
                .iter()
                .map(|(k, v)| {
                    Parameter::builder()
                        .parameter_key(k)
                        .parameter_value(v)
                        .build()
                })
                .collect(),
        ))
        .set_tags(Some(
            desired
                .tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .capabilities(Capability::CapabilityIam)
        .description(format!("spilo apply of {}", plan.based_on.commit))
        .send()
        .await
        .map_err(|e| format!("create-change-set: {}", describe(&e)))?;
    let cs_id = created.id().unwrap_or(&name).to_string();
    log.line(
        &c.name,
        &format!("change set {name} ({}) of {}", kind.as_str(), c.stack_name),
    );
    // Wait for the change set to be computed.
    let mut wait = Backoff::new();
    loop {
        let d = r
            .cfn
            .describe_change_set()
            .change_set_name(&cs_id)
            .stack_name(&c.stack_name)
            .send()
            .await
            .map_err(|e| format!("describe-change-set: {}", describe(&e)))?;
        match d.status() {
            Some(ChangeSetStatus::CreateComplete) => break,
            Some(ChangeSetStatus::Failed) => {
                let reason = d.status_reason().unwrap_or_default().to_string();
                if reason.contains("didn't contain changes") || reason.contains("No updates") {
                    log.line(&c.name, "CloudFormation sees no changes");
                    let _ = r
                        .cfn
                        .delete_change_set()
                        .change_set_name(&cs_id)
                        .stack_name(&c.stack_name)
                        .send()
                        .await;
                    return Ok(());
                }
                return Err(format!("the change set failed: {reason}"));
            }
            _ => wait
                .sleep()
                .await
                .map_err(|_| "the change set was not ready within an hour".to_string())?,
        }
    }
    let started = aws_sdk_cloudformation::primitives::DateTime::from(std::time::SystemTime::now());
    r.cfn
        .execute_change_set()
        .change_set_name(&cs_id)
        .stack_name(&c.stack_name)
        .send()
        .await
        .map_err(|e| format!("execute-change-set: {}", describe(&e)))?;
    let status = stream_events(r, &c.name, &c.stack_name, started, log).await?;
    if status.ends_with("ROLLBACK_COMPLETE") || status.ends_with("_FAILED") {
        return Err(ended_badly(r, &c.stack_name, &status, started).await);
    }
    Ok(())
}

pub(super) async fn delete_stack(
    r: &RegionClients,
    c: &ClusterPlan,
    log: &Log,
) -> Result<(), String> {
    let id = match observe::full_stack(r, &c.stack_name).await? {
        Some(s) => s.stack_id,
        None => {
            log.line(&c.name, "the stack is already gone");
            return Ok(());
        }
    };
    let started = aws_sdk_cloudformation::primitives::DateTime::from(std::time::SystemTime::now());
    r.cfn
        .delete_stack()
        .stack_name(&id)
        .send()
        .await
        .map_err(|e| format!("delete-stack: {}", describe(&e)))?;
    let status = stream_events(r, &c.name, &id, started, log).await?;
    if status != "DELETE_COMPLETE" {
        return Err(ended_badly(r, &id, &status, started).await);
    }
    Ok(())
}

/// Polls the stack's events, printing each new one once, until the stack is no longer in
/// progress; returns its final status.
async fn stream_events(
    r: &RegionClients,
    cluster: &str,
    stack: &str,
    since: aws_sdk_cloudformation::primitives::DateTime,
    log: &Log,
) -> Result<String, String> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut wait = Backoff::new();
    loop {
        let status = match observe::full_stack(r, stack).await {
            Ok(Some(s)) => s.status,
            Ok(None) => "DELETE_COMPLETE".to_string(),
            Err(e) => return Err(e),
        };
        for line in new_events(r, stack, since, &mut seen).await {
            log.line(cluster, &line);
        }
        if !status.ends_with("_IN_PROGRESS") {
            return Ok(status);
        }
        wait.sleep().await.map_err(|_| {
            format!("{stack} still {status} after an hour; it goes on in CloudFormation")
        })?;
    }
}

/// Event lines like `senza events`: time, resource type, logical id, status, reason.
pub fn event_line(e: &aws_sdk_cloudformation::types::StackEvent) -> String {
    format!(
        "{}  {:<42} {:<28} {:<22} {}",
        e.timestamp()
            .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok())
            .unwrap_or_default(),
        e.resource_type().unwrap_or_default(),
        e.logical_resource_id().unwrap_or_default(),
        e.resource_status().map(|s| s.as_str()).unwrap_or_default(),
        e.resource_status_reason().unwrap_or_default()
    )
}

async fn new_events(
    r: &RegionClients,
    stack: &str,
    since: aws_sdk_cloudformation::primitives::DateTime,
    seen: &mut BTreeSet<String>,
) -> Vec<String> {
    let Ok(events) = r.cfn.describe_stack_events().stack_name(stack).send().await else {
        return Vec::new();
    };
    let mut fresh: Vec<&aws_sdk_cloudformation::types::StackEvent> = events
        .stack_events()
        .iter()
        .filter(|e| e.timestamp().is_some_and(|t| t.secs() >= since.secs()))
        .filter(|e| e.event_id().is_some_and(|id| !seen.contains(id)))
        .collect();
    fresh.reverse();
    fresh
        .into_iter()
        .map(|e| {
            seen.insert(e.event_id().unwrap_or_default().to_string());
            event_line(e)
        })
        .collect()
}

/// The error for a stack operation that ended in `status`: the rollback and the first failure.
async fn ended_badly(
    r: &RegionClients,
    stack: &str,
    status: &str,
    since: aws_sdk_cloudformation::primitives::DateTime,
) -> String {
    let failing = first_failure(r, stack, since).await;
    format!(
        "the stack ended in {status}{}",
        failing
            .map(|f| format!("; first failure: {f}"))
            .unwrap_or_default()
    )
}

/// The oldest failed event since `since`.
async fn first_failure(
    r: &RegionClients,
    stack: &str,
    since: aws_sdk_cloudformation::primitives::DateTime,
) -> Option<String> {
    let events = r
        .cfn
        .describe_stack_events()
        .stack_name(stack)
        .send()
        .await
        .ok()?;
    events
        .stack_events()
        .iter()
        .rev()
        .filter(|e| e.timestamp().is_some_and(|t| t.secs() >= since.secs()))
        .find(|e| {
            e.resource_status()
                .is_some_and(|s| s.as_str().ends_with("_FAILED"))
        })
        .map(|e| {
            format!(
                "{} ({}) {}: {}",
                e.logical_resource_id().unwrap_or_default(),
                e.resource_type().unwrap_or_default(),
                e.resource_status().map(|s| s.as_str()).unwrap_or_default(),
                e.resource_status_reason().unwrap_or_default()
            )
        })
}

/// Polling with growing pauses (0.2 s up to 5 s) under a deadline.
struct Backoff {
    pause: Duration,
    deadline: tokio::time::Instant,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            pause: Duration::from_millis(200),
            deadline: tokio::time::Instant::now() + STACK_DEADLINE,
        }
    }

    async fn sleep(&mut self) -> Result<(), ()> {
        if tokio::time::Instant::now() >= self.deadline {
            return Err(());
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
        Ok(())
    }
}
