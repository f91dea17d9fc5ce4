//! `spilo resources|events|instances CLUSTER`: a stack's resources, its events and its
//! instances (joined with the members the governors publish in etcd), as tables like Senza's
//! or as JSON.

use super::apply::event_line;
use super::clients::{Clients, describe};
use super::observe;
use super::template;
use serde::Serialize;
use spilo_model::ClusterName;
use spilo_model::spec::DcsSpec;
use std::fmt::Write;

/// One resource row.
#[derive(Debug, Serialize)]
pub struct ResourceRow {
    /// Logical id.
    pub logical_id: String,
    /// Type.
    pub resource_type: String,
    /// Physical id.
    pub physical_id: Option<String>,
}

/// The resources of `cluster`'s stack.
pub async fn resources(
    clients: &Clients,
    region: &str,
    cluster: &str,
) -> anyhow::Result<Vec<ResourceRow>> {
    let r = clients.region(region).await;
    let stack = observe::full_stack(&r, &template::stack_name(cluster))
        .await
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no stack {} in {region}", template::stack_name(cluster)))?;
    Ok(stack
        .resources
        .into_iter()
        .map(|(logical_id, (resource_type, physical_id))| ResourceRow {
            logical_id,
            resource_type,
            physical_id,
        })
        .collect())
}

/// The resources as a table.
pub fn resources_table(rows: &[ResourceRow]) -> String {
    let mut out = format!("{:<30} {:<42} {}\n", "Logical ID", "Type", "Physical ID");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<30} {:<42} {}",
            r.logical_id,
            r.resource_type,
            r.physical_id.as_deref().unwrap_or("-")
        );
    }
    out
}

/// One event.
#[derive(Debug, Serialize)]
pub struct EventRow {
    /// RFC 3339 time.
    pub time: String,
    /// Resource type.
    pub resource_type: String,
    /// Logical id.
    pub logical_id: String,
    /// Status.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// The table line.
    #[serde(skip)]
    pub line: String,
}

/// The stack's events, oldest first.
pub async fn events(
    clients: &Clients,
    region: &str,
    cluster: &str,
) -> anyhow::Result<Vec<EventRow>> {
    let r = clients.region(region).await;
    let resp = r
        .cfn
        .describe_stack_events()
        .stack_name(template::stack_name(cluster))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("describe-stack-events: {}", describe(&e)))?;
    let mut rows: Vec<EventRow> = resp
        .stack_events()
        .iter()
        .map(|e| EventRow {
            time: e
                .timestamp()
                .and_then(|t| {
                    t.fmt(aws_sdk_cloudformation::primitives::DateTimeFormat::DateTime)
                        .ok()
                })
                .unwrap_or_default(),
            resource_type: e.resource_type().unwrap_or_default().to_string(),
            logical_id: e.logical_resource_id().unwrap_or_default().to_string(),
            status: e
                .resource_status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            reason: e.resource_status_reason().unwrap_or_default().to_string(),
            line: event_line(e),
        })
        .collect();
    rows.reverse();
    Ok(rows)
}

/// One instance.
#[derive(Debug, Serialize)]
pub struct InstanceRow {
    /// EC2 instance id (also the member name).
    pub instance_id: String,
    /// Availability zone.
    pub zone: String,
    /// Auto Scaling lifecycle state.
    pub lifecycle: String,
    /// Auto Scaling health.
    pub health: String,
    /// The member's role from etcd, `-` when it has not registered.
    pub role: String,
    /// The member's state from etcd.
    pub state: String,
    /// Why its boot failed, with the boot log's last lines (etcd `boot/<instance>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_failure: Option<spilo_model::BootFailure>,
}

/// The instances of the cluster's auto-scaling group, with their members' roles.
pub async fn instances(
    clients: &Clients,
    region: &str,
    cluster: &str,
    dcs: Option<&DcsSpec>,
) -> anyhow::Result<Vec<InstanceRow>> {
    let r = clients.region(region).await;
    let stack = observe::full_stack(&r, &template::stack_name(cluster))
        .await
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no stack {} in {region}", template::stack_name(cluster)))?;
    let Some((_, Some(group))) = stack.resources.get("AutoScalingGroup").cloned() else {
        anyhow::bail!("the stack has no auto-scaling group");
    };
    let resp = r
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&group)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("describe-auto-scaling-groups: {}", describe(&e)))?;
    let members = match ClusterName::new(cluster.to_string()) {
        Ok(scope) => observe::observe_etcd(dcs, &scope).await,
        Err(e) => super::observed::Observation::Unknown(e.to_string()),
    };
    let (members, mut boot_failures) = members
        .present()
        .map(|e| (e.members.clone(), e.boot_failures.clone()))
        .unwrap_or_default();
    let mut rows = Vec::new();
    for g in resp.auto_scaling_groups() {
        for i in g.instances() {
            let id = i.instance_id().unwrap_or_default().to_string();
            let m = members.iter().find(|m| m.name == id);
            rows.push(InstanceRow {
                zone: i.availability_zone().unwrap_or_default().to_string(),
                lifecycle: i
                    .lifecycle_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                health: i.health_status().unwrap_or_default().to_string(),
                role: m
                    .map(|m| {
                        if m.leader {
                            "primary".to_string()
                        } else {
                            m.role.clone()
                        }
                    })
                    .unwrap_or_else(|| "-".into()),
                state: m.map(|m| m.state.clone()).unwrap_or_else(|| "-".into()),
                boot_failure: boot_failures.remove(&id),
                instance_id: id,
            });
        }
    }
    rows.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(rows)
}

/// The instances as a table.
pub fn instances_table(rows: &[InstanceRow]) -> String {
    let mut out = format!(
        "{:<22} {:<16} {:<12} {:<8} {:<8} {}\n",
        "Instance", "Zone", "Lifecycle", "Health", "Role", "State"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:<12} {:<8} {:<8} {}",
            r.instance_id, r.zone, r.lifecycle, r.health, r.role, r.state
        );
    }
    for r in rows {
        if let Some(f) = &r.boot_failure {
            out.push_str(&boot_failure_text(&r.instance_id, f));
        }
    }
    out
}

/// A failed boot as text: the reason, then the boot log's last lines, indented.
pub fn boot_failure_text(instance: &str, f: &spilo_model::BootFailure) -> String {
    let mut out = format!("{instance}: boot failed at {}: {}\n", f.at, f.reason);
    for l in &f.log {
        let _ = writeln!(out, "    {l}");
    }
    out
}
