//! Applying a plan: exactly what it says, cluster by cluster.
//!
//! Per cluster: take the cluster's apply lock in etcd (a key bound to this process's lease,
//! so a crashed apply frees it), check that the stack and the etcd config are still what the
//! plan was based on, then change the stack through a CloudFormation change set (the type
//! always set explicitly) while streaming its events, and write the etcd config by
//! compare-and-swap. A new cluster's config is written before its stack, so its governors
//! start with it; otherwise after the stack succeeded. A failure reports the failing event
//! and the rollback and stops that cluster only. Clusters are applied [`PARALLEL`] at a time
//! (a real stack takes minutes); every output line starts with its cluster's name.

use super::clients::{Clients, RegionClients, describe};
use super::observe;
use super::plan::{Action, ClusterPlan, ConfigChange, Plan, cluster_basis};
use aws_sdk_cloudformation::primitives::DateTimeFormat;
use aws_sdk_cloudformation::types::{Capability, ChangeSetStatus, ChangeSetType, Parameter, Tag};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use spilo_model::{ClusterName, Keyspace};
use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

/// How long one stack operation may take before apply gives up waiting (the operation itself
/// goes on in CloudFormation).
const STACK_DEADLINE: Duration = Duration::from_secs(3600);
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
        let o = super::observed::ObservedCluster {
            name: c.name.clone(),
            stack,
            dns: None,
            bucket: None,
            image: None,
            image_object: None,
            image_file: None,
            resources_gone: Vec::new(),
            etcd,
        };
        out.push((c.name.clone(), cluster_basis(&o)));
    }
    out
}

/// Applies `plan`, writing progress to `log`.
pub async fn apply(clients: &Clients, plan: &Plan, log: &Log) -> Report {
    use futures::StreamExt;
    let mut results: Vec<(usize, String, Outcome)> =
        futures::stream::iter(plan.clusters.iter().enumerate())
            .map(|(i, c)| async move {
                if !wants_apply(c) {
                    let why = c.reason.clone().unwrap_or_else(|| "no changes".into());
                    return (i, c.name.clone(), Outcome::Skipped(why));
                }
                let outcome = match apply_cluster(clients, plan, c, log).await {
                    Ok(()) => Outcome::Applied,
                    Err(e) => {
                        log.line(&c.name, &format!("FAILED: {e}"));
                        Outcome::Failed(e)
                    }
                };
                (i, c.name.clone(), outcome)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
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
        let endpoints = crate::etcd::endpoints(dcs).await?;
        let mut client = crate::etcd::connect(&endpoints).await?;
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
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs((LOCK_TTL / 3) as u64)).await;
                if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                    return;
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
    let lock = Lock::take(c).await?;
    let result = apply_locked(clients, plan, c, log).await;
    if let Some(l) = lock {
        l.release().await;
    }
    result
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
        Action::Delete => delete_stack(&region, c, log).await,
        Action::Create => {
            if let Some(cfg) = &c.config {
                write_config(c, cfg, log).await?;
            }
            change_stack(&region, plan, c, ChangeSetType::Create, log).await
        }
        _ => {
            if c.desired.is_some() {
                change_stack(&region, plan, c, ChangeSetType::Update, log).await?;
            }
            if let Some(cfg) = &c.config {
                write_config(c, cfg, log).await?;
            }
            Ok(())
        }
    }
}

/// Creates the WAL bucket, encrypted at rest and closed to public access. Outside the stack
/// on purpose: deleting the cluster must not delete its backups.
async fn create_bucket(
    r: &RegionClients,
    cluster: &str,
    region: &str,
    name: &str,
    log: &Log,
) -> Result<(), String> {
    use aws_sdk_s3::types::{
        BucketLocationConstraint, CreateBucketConfiguration, PublicAccessBlockConfiguration,
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule,
    };
    let mut req = r.s3.create_bucket().bucket(name);
    // us-east-1 is the one region that refuses its own name as a location constraint.
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_bucket_already_owned_by_you()) => {}
        Err(e) => return Err(format!("create the WAL bucket {name}: {}", describe(&e))),
    }
    r.s3.put_public_access_block()
        .bucket(name)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            format!(
                "close the WAL bucket {name} to public access: {}",
                describe(&e)
            )
        })?;
    let sse = ServerSideEncryptionByDefault::builder()
        .sse_algorithm(ServerSideEncryption::Aes256)
        .build()
        .map_err(|e| e.to_string())?;
    let config = ServerSideEncryptionConfiguration::builder()
        .rules(
            ServerSideEncryptionRule::builder()
                .apply_server_side_encryption_by_default(sse)
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    r.s3.put_bucket_encryption()
        .bucket(name)
        .server_side_encryption_configuration(config)
        .send()
        .await
        .map_err(|e| format!("encrypt the WAL bucket {name}: {}", describe(&e)))?;
    log.line(
        cluster,
        &format!("+ S3 bucket {name} created (kept when the cluster is deleted)"),
    );
    Ok(())
}

/// Uploads the spilo image's tarball (encrypted at rest).
async fn upload_image(
    r: &RegionClients,
    cluster: &str,
    u: &super::plan::ImageUpload,
    log: &Log,
) -> Result<(), String> {
    let digest = super::image::sha256(&u.file)
        .map_err(|e| format!("read the spilo image {}: {e}", u.file.display()))?;
    if digest != u.sha256 {
        return Err(format!(
            "the spilo image {} is not the file the plan saw (SHA-256 {digest}, planned {}): plan again",
            u.file.display(),
            u.sha256
        ));
    }
    let body = aws_sdk_s3::primitives::ByteStream::from_path(&u.file)
        .await
        .map_err(|e| format!("read the spilo image {}: {e}", u.file.display()))?;
    r.s3.put_object()
        .bucket(&u.bucket)
        .key(&u.key)
        .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "upload the spilo image to s3://{}/{}: {}",
                u.bucket,
                u.key,
                describe(&e)
            )
        })?;
    log.line(
        cluster,
        &format!("+ spilo image uploaded to s3://{}/{}", u.bucket, u.key),
    );
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
    let endpoints = crate::etcd::endpoints(dcs).await?;
    let mut client = crate::etcd::connect(&endpoints).await?;
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

fn change_set_name(plan: &Plan) -> String {
    let commit: String = plan.based_on.commit.chars().take(12).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("spilo-{commit}-{now}")
}

async fn change_stack(
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

async fn delete_stack(r: &RegionClients, c: &ClusterPlan, log: &Log) -> Result<(), String> {
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
