//! Applying a plan: exactly what it says, cluster by cluster.
//!
//! Per cluster: take the cluster's apply lock in etcd (a key bound to this process's lease,
//! so a crashed apply frees it), check that the stack and the etcd config are still what the
//! plan was based on, make what lives in S3 outside the stack ([`s3`]: the WAL bucket, the
//! spilo image), then change the stack ([`stack`]: a CloudFormation change set, the type
//! always set explicitly) while streaming its events, and write the etcd config by
//! compare-and-swap. A new cluster's config is written before its stack, so its governors
//! start with it; otherwise after the stack succeeded. A failure reports the failing event
//! and the rollback and stops that cluster only. Clusters are applied [`PARALLEL`] at a time
//! (a real stack takes minutes); every output line starts with its cluster's name.

mod handover;
pub mod rollout;
mod s3;
mod stack;
pub mod upgrade;

pub use stack::event_line;

use super::clients::Clients;
use super::observe;
use super::plan::handover::{Handover, STEP};
use super::plan::{Action, ClusterPlan, ConfigChange, Plan, cluster_basis};
use aws_sdk_cloudformation::types::ChangeSetType;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use s3::{create_bucket, upload_image};
use spilo_model::{ClusterName, Keyspace};
use stack::{change_stack, delete_stack};
use std::io::Write;
use std::time::Duration;

/// The apply lock's lease.
const LOCK_TTL: i64 = 30;
/// How many clusters are applied at once.
pub const PARALLEL: usize = 8;

/// Where progress lines go: shared by the clusters applied at once, a line at a time.
pub struct Log {
    out: std::sync::Mutex<Box<dyn Write + Send>>,
}

impl Log {
    /// Lines go to `out`.
    pub fn new(out: impl Write + Send + 'static) -> Self {
        Log {
            out: std::sync::Mutex::new(Box::new(out)),
        }
    }

    /// Writes `<cluster>: <text>`.
    pub fn line(&self, cluster: &str, text: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{cluster}: {text}");
            let _ = out.flush();
        }
    }
}

/// How one cluster's apply ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Applied,
    /// Nothing to do, or refused by the plan itself (shown in the plan).
    Skipped(String),
    /// Failed; nothing further of this cluster was changed.
    Failed(String),
}

/// The result per cluster.
#[derive(Debug, Default)]
pub struct Report {
    /// `(cluster, outcome)` in plan order.
    pub clusters: Vec<(String, Outcome)>,
}

impl Report {
    /// Whether any cluster failed.
    pub fn failed(&self) -> bool {
        self.clusters
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed(_)))
    }
}

/// Why a saved plan no longer applies.
pub fn stale_reasons(
    plan: &Plan,
    current_commit: &str,
    fresh: &[(String, super::plan::ClusterBasis)],
) -> Vec<String> {
    let mut out = Vec::new();
    if plan.based_on.commit != current_commit {
        out.push(format!(
            "{} now resolves to {}, the plan was made from {}",
            plan.based_on.reference, current_commit, plan.based_on.commit
        ));
    }
    for (name, now) in fresh {
        let Some(then) = plan.based_on.clusters.get(name) else {
            continue;
        };
        if then.stack_id != now.stack_id || then.stack_last_changed != now.stack_last_changed {
            out.push(format!(
                "{name}: the stack changed since the plan (then {}, now {})",
                describe_basis(then.stack_id.as_deref(), then.stack_last_changed.as_deref()),
                describe_basis(now.stack_id.as_deref(), now.stack_last_changed.as_deref()),
            ));
        }
        if then.config_revision != now.config_revision {
            out.push(format!(
                "{name}: the etcd config changed since the plan (revision {:?}, now {:?})",
                then.config_revision, now.config_revision
            ));
        }
    }
    out
}

fn describe_basis(id: Option<&str>, at: Option<&str>) -> String {
    match (id, at) {
        (None, _) => "absent".into(),
        (Some(_), Some(at)) => format!("changed at {at}"),
        (Some(id), None) => id.to_string(),
    }
}

fn wants_apply(c: &ClusterPlan) -> bool {
    !c.refused
        && matches!(
            c.action,
            Action::Create | Action::Update | Action::Replace | Action::Delete
        )
}

/// Re-observes the clusters a plan changes and returns their current basis.
pub async fn current_basis(
    clients: &Clients,
    plan: &Plan,
) -> Vec<(String, super::plan::ClusterBasis)> {
    let mut out = Vec::new();
    for c in plan.clusters.iter().filter(|c| wants_apply(c)) {
        let r = clients.region(&c.region).await;
        let stack = match observe::full_stack(&r, &c.stack_name).await {
            Ok(Some(s)) => super::observed::Observation::Present(s),
            Ok(None) => super::observed::Observation::Absent,
            Err(e) => super::observed::Observation::Unknown(e),
        };
        let etcd = match ClusterName::new(c.name.clone()) {
            Ok(scope) => observe::observe_etcd(c.dcs.as_ref(), &scope).await,
            Err(e) => super::observed::Observation::Unknown(e.to_string()),
        };
        let o = super::observed::ObservedCluster::of(c.name.clone(), stack, etcd);
        out.push((c.name.clone(), cluster_basis(&o)));
    }
    out
}

/// Applies `plan`, writing progress to `log`. The clusters promoted in a switchover between
/// clusters go last, each once the cluster stepping down for it has been applied (its stack:
/// the policy to read the promoted one's archive).
pub async fn apply(clients: &Clients, plan: &Plan, log: &Log) -> Report {
    use futures::StreamExt;
    let promoted = |c: &ClusterPlan| matches!(c.handover, Some(Handover::Promoted(_)));
    let phase = |last: bool, done: Vec<(usize, String, Outcome)>| {
        let done = std::sync::Arc::new(done);
        futures::stream::iter(
            plan.clusters
                .iter()
                .enumerate()
                .filter(move |(_, c)| promoted(c) == last),
        )
        .map(move |(i, c)| {
            let done = done.clone();
            async move {
                if !wants_apply(c) {
                    let why = c.reason.clone().unwrap_or_else(|| "no changes".into());
                    return (i, c.name.clone(), Outcome::Skipped(why));
                }
                if let Some(Handover::Promoted(x)) = &c.handover
                    && !done
                        .iter()
                        .any(|(_, n, o)| n == x && *o == Outcome::Applied)
                {
                    let why = format!("{x}, stepping down for this switchover, was not applied");
                    log.line(&c.name, &format!("FAILED: {why}"));
                    return (i, c.name.clone(), Outcome::Failed(why));
                }
                let outcome = match apply_cluster(clients, plan, c, log).await {
                    Ok(()) => Outcome::Applied,
                    Err(e) => {
                        log.line(&c.name, &format!("FAILED: {e}"));
                        Outcome::Failed(e)
                    }
                };
                (i, c.name.clone(), outcome)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
    };
    let first = phase(false, Vec::new()).await;
    let mut results = phase(true, first.clone()).await;
    results.extend(first);
    results.sort_by_key(|(i, _, _)| *i);
    Report {
        clusters: results.into_iter().map(|(_, n, o)| (n, o)).collect(),
    }
}

/// The apply lock of one cluster: a lease-bound key; released on drop of the keep-alive task
/// and by revoking the lease.
struct Lock {
    client: etcd_client::Client,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Lock {
    async fn take(c: &ClusterPlan) -> Result<Option<Lock>, String> {
        let Some(dcs) = &c.dcs else { return Ok(None) };
        let mut client = crate::etcd::connect_dcs(dcs).await?;
        let scope = ClusterName::new(c.name.clone()).map_err(|e| e.to_string())?;
        let key = Keyspace::new(&scope).apply_lock();
        let lease = client
            .lease_grant(LOCK_TTL, None)
            .await
            .map_err(|e| format!("etcd lease: {e}"))?
            .id();
        let holder = serde_json::json!({
            "pid": std::process::id(),
            "host": std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
        })
        .to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                holder,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = client.txn(txn).await.map_err(|e| format!("etcd: {e}"))?;
        if !resp.succeeded() {
            let _ = client.lease_revoke(lease).await;
            return Err(format!(
                "another apply of {} is running (it holds {key}); try again when it ends",
                c.name
            ));
        }
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| format!("etcd keep-alive: {e}"))?;
        // It ends only when the lease can no longer be kept (etcd unreachable for the TTL, or
        // the lease gone): the apply then stops, since another one may take the lock.
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs((LOCK_TTL / 3) as u64)).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match stream.message().await {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    _ => return,
                }
            }
        });
        Ok(Some(Lock {
            client,
            lease,
            keeper,
        }))
    }

    async fn release(mut self) {
        self.keeper.abort();
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

async fn apply_cluster(
    clients: &Clients,
    plan: &Plan,
    c: &ClusterPlan,
    log: &Log,
) -> Result<(), String> {
    let Some(mut lock) = Lock::take(c).await? else {
        return apply_locked(clients, plan, c, log).await;
    };
    if matches!(c.handover, Some(Handover::Promoted(_))) {
        // A switchover between clusters is not stopped halfway when the lock's lease is lost:
        // stopped after its source stepped down, neither cluster would take writes. Each of
        // its writes is a compare-and-swap, which fails if another apply changed the key.
        let result = apply_locked(clients, plan, c, log).await;
        lock.release().await;
        return result;
    }
    let result = while_locked(
        &mut lock.keeper,
        &c.name,
        apply_locked(clients, plan, c, log),
    )
    .await;
    lock.release().await;
    result
}

/// Runs `work` while the lock's `keeper` keeps its lease; stops it when the keeper ends.
async fn while_locked(
    keeper: &mut tokio::task::JoinHandle<()>,
    cluster: &str,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::select! {
        r = work => r,
        _ = keeper => Err(format!(
            "lost the apply lock of {cluster} (its etcd lease could not be kept alive); stopped \
             here (a CloudFormation change set already started goes on; the next plan shows \
             where things are)"
        )),
    }
}

async fn apply_locked(
    clients: &Clients,
    plan: &Plan,
    c: &ClusterPlan,
    log: &Log,
) -> Result<(), String> {
    // Under the lock, the cluster must still be what the plan saw.
    let now = current_basis_of(clients, plan, c).await;
    let stale = stale_reasons(plan, &plan.based_on.commit, &now);
    if !stale.is_empty() {
        return Err(format!("the plan is stale: {}", stale.join("; ")));
    }
    let region = clients.region(&c.region).await;
    if let Some(b) = &c.bucket {
        create_bucket(&region, &c.name, &c.region, b, log).await?;
    }
    if let Some(u) = &c.image_upload {
        upload_image(&region, &c.name, u, log).await?;
    }
    match c.action {
        Action::Delete => {
            delete_stack(&region, c, log).await?;
            upgrade::forget(c, log).await;
            Ok(())
        }
        Action::Create => {
            if let Some(cfg) = &c.config {
                write_config(c, cfg, log).await?;
            }
            change_stack(&region, plan, c, ChangeSetType::Create, log).await?;
            protect(&region, c, log).await
        }
        _ => {
            upgrade::run(&region, c, log).await?;
            if c.desired.is_some() {
                change_stack(&region, plan, c, ChangeSetType::Update, log).await?;
            }
            if c.major_upgrade.is_some() || c.rollout.is_some() {
                upgrade::restore_size(&region, c, log).await?;
            }
            protect(&region, c, log).await?;
            match (&c.handover, &c.config) {
                // Written by the switchover, once this cluster's stack is applied.
                (Some(Handover::Demoted(_)), _) => {}
                (Some(Handover::Promoted(x)), _) => {
                    let x = plan
                        .clusters
                        .iter()
                        .find(|p| p.name == *x)
                        .ok_or_else(|| format!("the plan has no cluster {x}"))?;
                    let line = handover::run(x, c, STEP, log).await?;
                    log.line(&c.name, &line);
                }
                (None, Some(cfg)) => write_config(c, cfg, log).await?,
                (None, None) => {}
            }
            rollout::run(&region, c, log).await?;
            upgrade::after(c, log).await
        }
    }
}

/// Turns the stack's termination protection on when the plan says so.
async fn protect(
    region: &super::clients::RegionClients,
    c: &ClusterPlan,
    log: &Log,
) -> Result<(), String> {
    if !c.protect {
        return Ok(());
    }
    region
        .cfn
        .update_termination_protection()
        .stack_name(&c.stack_name)
        .enable_termination_protection(true)
        .send()
        .await
        .map_err(|e| {
            format!(
                "update-termination-protection: {}",
                super::clients::describe(&e)
            )
        })?;
    log.line(&c.name, "termination protection on");
    Ok(())
}

async fn current_basis_of(
    clients: &Clients,
    plan: &Plan,
    c: &ClusterPlan,
) -> Vec<(String, super::plan::ClusterBasis)> {
    let one = Plan {
        clusters: vec![c.clone()],
        ..plan.clone()
    };
    current_basis(clients, &one).await
}

async fn write_config(c: &ClusterPlan, cfg: &ConfigChange, log: &Log) -> Result<(), String> {
    let Some(dcs) = &c.dcs else {
        return Err("the plan has an etcd config change but no etcd".into());
    };
    let mut client = crate::etcd::connect_dcs(dcs).await?;
    let scope = ClusterName::new(c.name.clone()).map_err(|e| e.to_string())?;
    let key = Keyspace::new(&scope).config();
    let value = serde_json::to_string(&cfg.after).map_err(|e| e.to_string())?;
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            cfg.expected_revision,
        )])
        .and_then([TxnOp::put(key.clone(), value, None)]);
    let resp = client.txn(txn).await.map_err(|e| format!("etcd: {e}"))?;
    if !resp.succeeded() {
        return Err(format!(
            "{key} changed since the plan (expected revision {}); plan again",
            cfg.expected_revision
        ));
    }
    log.line(&c.name, &format!("wrote {key}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_apply_stops_when_its_lock_can_no_longer_be_kept() {
        // The keeper gave up: the work, however long, stops with the reason.
        let mut lost = tokio::spawn(async {});
        let r = while_locked(&mut lost, "orders", std::future::pending()).await;
        let err = r.expect_err("stopped");
        assert!(err.starts_with("lost the apply lock of orders"), "{err}");
        // While it keeps the lease, the work's own result counts.
        let mut kept = tokio::spawn(std::future::pending::<()>());
        let r = while_locked(&mut kept, "orders", async { Err("no".to_string()) }).await;
        assert_eq!(r, Err("no".to_string()));
        let r = while_locked(&mut kept, "orders", async { Ok(()) }).await;
        assert_eq!(r, Ok(()));
        kept.abort();
    }
}
