//! The plan: `plan(desired, observed, options) -> Plan`, pure. A `Plan` is a value that
//! `apply` consumes and the renderers print; saved as JSON (format version
//! [`FORMAT_VERSION`], documented in `docs/plan-format.md`) it carries what it was based on,
//! so a stale plan is refused.
//!
//! Per cluster: create, update, replace (refused unless allowed), delete (only with prune),
//! no-op, orphan (file gone, prune off: left alone) or blocked (something observed is
//! unknown, or the stack is in a state nothing can be applied to).

use super::diff::{self, ResourceAction, ResourceChange, ValueChange};
use super::observed::{Observation, Observed, ObservedCluster, ObservedStack};
use super::template::{self, PRUNE_TAG, StackSpec};
use serde::{Deserialize, Serialize};
use spilo_model::ClusterConfig;
use spilo_model::spec::{ClusterFile, DcsSpec, EtcdClusterFile};
use std::collections::BTreeMap;

pub mod config;
mod etcd;
pub mod handover;
mod image;
pub mod upgrade;
use image::{ImageSource, plan_image};
pub mod restarts;
pub mod rollout;

/// The version of the plan's JSON format.
pub const FORMAT_VERSION: u32 = 1;

/// Choices the user makes on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Delete stacks whose file is gone even when their `reconcile.prune` was off.
    pub prune: bool,
    /// Let changes that replace a resource (load balancer, DNS record, ...) through.
    pub allow_replace: bool,
    /// Ask the leader's check of a planned major upgrade (`spilo plan`, `spilo apply`
    /// without a saved plan); off for the watcher and `spilo drift`, which would otherwise
    /// run it on the leader at every pass (the apply asks it again as its first step).
    #[serde(default)]
    pub check_upgrades: bool,
}

/// The state a plan was made against; apply refuses the plan when any of it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasedOn {
    /// The repository as given.
    pub repo: String,
    /// The ref as given.
    pub reference: String,
    /// The commit the ref resolved to.
    pub commit: String,
    /// Per cluster.
    pub clusters: BTreeMap<String, ClusterBasis>,
}

/// What one cluster's part of the plan assumed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBasis {
    /// The stack id, `None` when the stack was absent.
    pub stack_id: Option<String>,
    /// The stack's last change time.
    pub stack_last_changed: Option<String>,
    /// The etcd `config` key's modification revision (0: absent).
    pub config_revision: Option<i64>,
}

/// The spilo image's tarball to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUpload {
    /// The cluster's bucket.
    pub bucket: String,
    /// The key (`spilo/images/<version>/<file>`).
    pub key: String,
    /// The tarball on this machine.
    pub file: std::path::PathBuf,
    /// Its SHA-256 when planned: apply uploads only that file.
    pub sha256: String,
}

/// What happens to one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new stack.
    Create,
    /// Changes in place (stack and/or etcd config).
    Update,
    /// Changes that replace resources; applied only with `--allow-replace`.
    Replace,
    /// The stack is deleted.
    Delete,
    /// Nothing to do.
    Noop,
    /// The file is gone but pruning is off: the stack is left alone.
    Orphan,
    /// Cannot plan: see `reason`. Nothing of this cluster is touched.
    Blocked,
}

/// The etcd `config` change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// The value now (`None`: the key is absent or unreadable).
    pub before: Option<ClusterConfig>,
    /// The value to write.
    pub after: ClusterConfig,
    /// The revision the write is conditional on (0: create).
    pub expected_revision: i64,
    /// When the synchronous replication settings change: what they promise, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<String>,
    /// The roles and databases it adds or changes, one line each, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<String>,
}

/// One cluster's part of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// The cluster name.
    pub name: String,
    /// Its stack name.
    pub stack_name: String,
    /// The region.
    pub region: String,
    /// The file it comes from (absent for a delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What happens.
    pub action: Action,
    /// Why (blocked, refused, orphaned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether apply will refuse this cluster (a replacement without `--allow-replace`).
    pub refused: bool,
    /// Stack parameter changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ValueChange>,
    /// Stack tag changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<ValueChange>,
    /// Resource changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceChange>,
    /// The unified diff of the template (update and replace).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_diff: String,
    /// The etcd dynamic configuration change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigChange>,
    /// The cluster's etcd, for the config write and the apply lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dcs: Option<DcsSpec>,
    /// The stack to apply (create, update, replace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<StackSpec>,
    /// The spilo image to upload into the bucket before the stack (a plain Debian instance
    /// installs it from there at its first boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_upload: Option<ImageUpload>,
    /// The WAL bucket to create before the stack (absent and `backup.createBucket` set). It
    /// is created outside the stack and never deleted by spilo: it holds the backups, which
    /// must outlive the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Things worth knowing that change nothing (a missing WAL bucket, members down).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Instances `spilo apply` replaces one at a time after the stack change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<rollout::Rollout>,
    /// The stack's termination protection to turn on (`reconcile.terminationProtection`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protect: bool,
    /// A deletion the file authorised (`reconcile.prune` when last applied): `--auto-approve`
    /// may carry it out; any other needs the cluster's name typed back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_by_file: bool,
    /// Its part in a switchover between clusters: its `config` is written by that sequence,
    /// not on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<handover::Handover>,
    /// A major upgrade of the running members, before the stack moves to the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_upgrade: Option<upgrade::MajorUpgrade>,
}

impl ClusterPlan {
    fn new(name: &str, region: &str, file: Option<String>, action: Action) -> Self {
        ClusterPlan {
            name: name.to_string(),
            stack_name: template::stack_name(name),
            region: region.to_string(),
            file,
            action,
            reason: None,
            refused: false,
            parameters: Vec::new(),
            tags: Vec::new(),
            resources: Vec::new(),
            template_diff: String::new(),
            config: None,
            dcs: None,
            desired: None,
            bucket: None,
            image_upload: None,
            warnings: Vec::new(),
            rollout: None,
            major_upgrade: None,
            protect: false,
            delete_by_file: false,
            handover: None,
        }
    }

    /// Whether the stack changes (as opposed to only the etcd config).
    pub fn changes_stack(&self) -> bool {
        !self.resources.is_empty() || !self.parameters.is_empty() || !self.tags.is_empty()
    }
}

/// Resource counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Resources created (replacements count here and in `destroy`).
    pub add: usize,
    /// Resources, parameters-only stacks and etcd configs changed in place.
    pub change: usize,
    /// Resources deleted.
    pub destroy: usize,
    /// Clusters that cannot be planned or applied.
    pub blocked: usize,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// What the plan assumed.
    pub based_on: BasedOn,
    /// The options it was made with.
    pub options: PlanOptions,
    /// Per cluster, sorted by name.
    pub clusters: Vec<ClusterPlan>,
    /// Totals.
    pub summary: Summary,
}

impl Plan {
    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.clusters.iter().any(|c| {
            matches!(
                c.action,
                Action::Create | Action::Update | Action::Replace | Action::Delete
            )
        })
    }

    /// Whether any cluster is blocked or refused.
    pub fn has_blocked(&self) -> bool {
        self.clusters
            .iter()
            .any(|c| c.action == Action::Blocked || c.refused)
    }
}

/// The desired side: commit identity and cluster files with their paths.
pub struct DesiredInput<'a> {
    /// Repository, ref and commit.
    pub based_on: (&'a str, &'a str, &'a str),
    /// `(path, file)` of every cluster with target aws.
    pub clusters: Vec<(&'a str, &'a ClusterFile)>,
    /// `(path, file)` of every etcd cluster.
    pub etcd_clusters: Vec<(&'a str, &'a EtcdClusterFile)>,
}

/// Makes the plan.
pub fn plan(desired: &DesiredInput<'_>, observed: &Observed, options: PlanOptions) -> Plan {
    let mut clusters = Vec::new();
    let mut basis = BTreeMap::new();
    let handovers = handover::pairs(&desired.clusters, observed);
    let downstreams = config::downstreams(&desired.clusters);
    for (path, file) in &desired.clusters {
        let name = file.metadata.name.as_str();
        let Some(stack) = template::render(file) else {
            continue;
        };
        let obs = observed.clusters.get(name);
        let p = plan_cluster(
            path,
            file,
            stack,
            obs,
            options,
            (
                handovers.get(name),
                downstreams.get(name).map_or(&[][..], |d| d),
            ),
        );
        if let Some(o) = obs {
            basis.insert(name.to_string(), cluster_basis(o));
        }
        clusters.push(p);
    }
    for (path, file) in &desired.etcd_clusters {
        let name = file.metadata.name.as_str();
        let stack = super::etcd_stack::render(file);
        let obs = observed.clusters.get(name);
        if let Some(o) = obs {
            basis.insert(name.to_string(), cluster_basis(o));
        }
        clusters.push(etcd::plan_etcd_cluster(path, file, stack, obs, options));
    }
    // Stacks whose file is gone.
    match &observed.stack_list {
        Observation::Present(names) => {
            for name in names {
                let wanted = desired
                    .clusters
                    .iter()
                    .any(|(_, f)| f.metadata.name.as_str() == name)
                    || desired
                        .etcd_clusters
                        .iter()
                        .any(|(_, f)| f.metadata.name.as_str() == name);
                if wanted {
                    continue;
                }
                let Some(obs) = observed.clusters.get(name) else {
                    continue;
                };
                basis.insert(name.clone(), cluster_basis(obs));
                clusters.push(plan_removed(name, obs, options));
            }
        }
        Observation::Unknown(why) => {
            let mut p = ClusterPlan::new("*", "", None, Action::Blocked);
            p.stack_name = "(stacks whose file is gone)".into();
            p.reason = Some(format!(
                "cannot list managed stacks: {why}; nothing is deleted"
            ));
            clusters.push(p);
        }
        Observation::Absent => {}
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    handover::block_halves(&mut clusters);
    let summary = summarize(&clusters);
    Plan {
        format_version: FORMAT_VERSION,
        based_on: BasedOn {
            repo: desired.based_on.0.to_string(),
            reference: desired.based_on.1.to_string(),
            commit: desired.based_on.2.to_string(),
            clusters: basis,
        },
        options,
        clusters,
        summary,
    }
}

/// What a cluster's observation pins down for apply.
pub fn cluster_basis(o: &ObservedCluster) -> ClusterBasis {
    let stack = o.stack.present();
    ClusterBasis {
        stack_id: stack.map(|s| s.stack_id.clone()),
        stack_last_changed: stack.map(|s| s.last_changed.clone()),
        config_revision: o.etcd.present().and_then(|e| match &e.config {
            Observation::Present(c) => Some(c.mod_revision),
            Observation::Absent => Some(0),
            Observation::Unknown(_) => None,
        }),
    }
}

/// `p` with nothing to do, because of `why`.
pub(crate) fn blocked(mut p: ClusterPlan, why: String) -> ClusterPlan {
    // Nothing of a blocked cluster is touched, so nothing of it is shown as a change.
    p.config = None;
    p.resources.clear();
    p.parameters.clear();
    p.tags.clear();
    p.template_diff.clear();
    p.desired = None;
    p.bucket = None;
    p.image_upload = None;
    p.action = Action::Blocked;
    p.reason = Some(format!("cannot plan {}: {why}", p.name));
    p
}

fn plan_cluster(
    path: &str,
    file: &ClusterFile,
    stack: StackSpec,
    obs: Option<&ObservedCluster>,
    options: PlanOptions,
    (handover, downstream): (Option<&handover::Handover>, &[spilo_model::Downstream]),
) -> ClusterPlan {
    let name = file.metadata.name.as_str();
    let mut p = ClusterPlan::new(name, &stack.region, Some(path.to_string()), Action::Noop);
    p.dcs = file.spec.dcs.clone();
    if file.spec.reconcile.suspend {
        p.reason = Some("reconcile.suspend is set: left alone".into());
        return p;
    }
    let Some(obs) = obs else {
        return blocked(p, "it was not observed".into());
    };
    if let Some(why) = obs.stack.unknown() {
        return blocked(p, format!("stack {}: {why}", stack.stack_name));
    }
    let etcd = match &obs.etcd {
        Observation::Present(e) => e,
        Observation::Unknown(why) => return blocked(p, format!("etcd: {why}")),
        Observation::Absent => return blocked(p, "etcd: no endpoints".into()),
    };
    if let Some(why) = etcd.config.unknown() {
        return blocked(p, format!("etcd config: {why}"));
    }
    let followers: Vec<String> = downstream.iter().map(|d| d.cluster.clone()).collect();
    let major = match upgrade::major_upgrade(file, etcd, &followers) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(why)) => return blocked(p, why),
    };
    if let Some(Observation::Unknown(why)) = &obs.dns {
        return blocked(p, format!("DNS record: {why}"));
    }
    if let Some(b) = &file.spec.backup {
        match (&obs.bucket, b.create_bucket) {
            (Some(Observation::Absent), true) => p.bucket = Some(b.bucket.clone()),
            (Some(Observation::Absent), false) => p.warnings.push(format!(
                "WAL bucket {} does not exist: archiving and backups fail until it exists; \
                 set spec.backup.createBucket: true and spilo apply creates it (outside the \
                 stack, so the backups outlive the cluster), or create it yourself",
                b.bucket
            )),
            // Never create on a guess: a 403 may be somebody else's bucket of that name.
            (Some(Observation::Unknown(why)), true) => {
                return blocked(
                    p,
                    format!(
                        "WAL bucket {}: cannot tell whether it exists, so it is not created: {why}",
                        b.bucket
                    ),
                );
            }
            (Some(Observation::Unknown(why)), false) => p
                .warnings
                .push(format!("WAL bucket: cannot tell whether it exists: {why}")),
            _ => {}
        }
        if b.verify.is_none() {
            p.warnings.push(
                "no backup.verify: nothing checks that these backups restore (add \
                 verify: {schedule: \"0 3 * * 0\"}, a weekly restore drill)"
                    .into(),
            );
        }
    }

    p.config = match config::plan_config(file, &etcd.config, handover, downstream) {
        Ok(c) => c,
        Err(why) => return blocked(p, why),
    };
    p.handover = handover.cloned();

    if let (Observation::Absent, Some(Observation::Present(target))) = (&obs.stack, &obs.dns) {
        return blocked(
            p,
            format!(
                "the DNS name {} already exists (-> {target}) and does not belong to this cluster's stack",
                template::dns_name(file).unwrap_or_default()
            ),
        );
    }
    if let Err(why) = plan_stack(&mut p, stack, &obs.stack, options) {
        return blocked(p, why);
    }
    p.rollout = rollout::plan_rollout(&p, file.spec.instances, obs);
    p.major_upgrade = major;
    p.protect = file.spec.reconcile.termination_protection
        && obs
            .stack
            .present()
            .is_none_or(|s| !s.termination_protection);
    let more = p.rollout.is_some() || p.major_upgrade.is_some() || p.protect;
    if p.action == Action::Noop && (p.config.is_some() || p.bucket.is_some() || more) {
        p.action = Action::Update;
    }
    if p.action == Action::Noop && p.config.is_none() {
        p.template_diff.clear();
    }
    let src = ImageSource {
        region: stack_region(file),
        image: template::image_id(file),
        bucket: file.spec.backup.as_ref().map(|b| b.bucket.clone()),
        arch: super::image::architecture(file),
        creatable: true,
    };
    if let Err(why) = plan_image(&src, obs, &mut p) {
        return blocked(p, why);
    }
    p
}

fn stack_region(file: &ClusterFile) -> String {
    file.spec
        .aws
        .as_ref()
        .map(|a| a.region.clone())
        .unwrap_or_default()
}

/// The stack part of a plan: a create when it is absent, else its resource, parameter and tag
/// changes (a replacement refused without `--allow-replace`); `Err` names why it cannot be
/// planned.
fn plan_stack(
    p: &mut ClusterPlan,
    stack: StackSpec,
    observed: &Observation<ObservedStack>,
    options: PlanOptions,
) -> Result<(), String> {
    match observed {
        Observation::Absent => {
            p.action = Action::Create;
            p.resources = diff::resources(
                &serde_json::json!({}),
                &BTreeMap::new(),
                &stack.template,
                &stack.parameters,
            );
            p.parameters = diff::values(&BTreeMap::new(), &stack.parameters);
            p.desired = Some(stack);
        }
        Observation::Present(s) => {
            if let Some(why) = unusable_status(&s.status) {
                return Err(format!("stack {} is {}: {why}", s.stack_id, s.status));
            }
            p.resources = diff::resources(
                &s.template,
                &s.parameters,
                &stack.template,
                &stack.parameters,
            );
            p.parameters = diff::values(&s.parameters, &stack.parameters);
            p.tags = diff::values(&s.tags, &stack.tags);
            p.template_diff = diff::template_text(&s.template, &stack.template);
            let replaces: Vec<&str> = p
                .resources
                .iter()
                .filter(|r| r.action == ResourceAction::Replace)
                .map(|r| r.logical_id.as_str())
                .collect();
            if !replaces.is_empty() {
                p.action = Action::Replace;
                if !options.allow_replace {
                    p.refused = true;
                    p.reason = Some(format!(
                        "replaces {}: refused without --allow-replace",
                        replaces.join(", ")
                    ));
                }
            } else if p.changes_stack() {
                p.action = Action::Update;
            }
            if p.changes_stack() {
                p.desired = Some(stack);
            }
        }
        Observation::Unknown(why) => return Err(format!("stack: {why}")),
    }
    if p.action == Action::Noop {
        p.template_diff.clear();
    }
    Ok(())
}

/// Why a stack in `status` cannot take a change set, if it cannot.
fn unusable_status(status: &str) -> Option<&'static str> {
    if status.ends_with("_IN_PROGRESS") {
        Some("an operation is in progress; plan again when it ends")
    } else if status == "ROLLBACK_COMPLETE" || status == "ROLLBACK_FAILED" {
        Some("its creation failed; delete the stack, then plan again")
    } else if status.ends_with("_FAILED") {
        Some("a previous operation failed; fix the stack in CloudFormation first")
    } else {
        None
    }
}

fn plan_removed(name: &str, obs: &ObservedCluster, options: PlanOptions) -> ClusterPlan {
    let region = String::new();
    let mut p = ClusterPlan::new(name, &region, None, Action::Orphan);
    let s = match &obs.stack {
        Observation::Present(s) => s,
        Observation::Absent => {
            p.action = Action::Noop;
            return p;
        }
        Observation::Unknown(why) => {
            let why = format!("stack {}: {why}", p.stack_name);
            return blocked(p, why);
        }
    };
    if let Some(why) = unusable_status(&s.status)
        && s.status.ends_with("_IN_PROGRESS")
    {
        return blocked(p, format!("stack {} is {}: {why}", s.stack_id, s.status));
    }
    p.region = s.stack_id.split(':').nth(3).unwrap_or_default().to_string();
    let prune_tag = s.tags.get(PRUNE_TAG).map(String::as_str) == Some("true");
    if (options.prune || prune_tag) && s.termination_protection {
        p.action = Action::Delete;
        p.refused = true;
        p.reason = Some(format!(
            "{} has termination protection (reconcile.terminationProtection): spilo never \
             deletes it; a person turns it off first (aws cloudformation \
             update-termination-protection --no-enable-termination-protection)",
            p.stack_name
        ));
    } else if options.prune || prune_tag {
        p.action = Action::Delete;
        p.delete_by_file = prune_tag;
        let instances = s
            .parameters
            .get("Instances")
            .or_else(|| s.parameters.get("Members"))
            .cloned()
            .unwrap_or_else(|| "its".into());
        p.warnings.push(format!(
            "kept: its WAL archive and base backups (the bucket is outside the stack) and its \
             etcd keys (/service/{name}/); lost: the data volumes of its {instances} instances, \
             deleted with them"
        ));
        if !prune_tag {
            p.warnings.push(format!(
                "its file did not set reconcile.prune: spilo apply deletes it only with its name \
                 typed back (asked, or --confirm-delete {name})"
            ));
        }
        p.resources = diff::resources(
            &s.template,
            &s.parameters,
            &serde_json::json!({}),
            &BTreeMap::new(),
        );
    } else {
        p.reason = Some(format!(
            "its file is gone but reconcile.prune was off: {} is left running (pass --prune to delete it)",
            p.stack_name
        ));
    }
    p
}

fn summarize(clusters: &[ClusterPlan]) -> Summary {
    let mut s = Summary::default();
    for c in clusters {
        if c.action == Action::Blocked || c.refused {
            s.blocked += 1;
            continue;
        }
        let mut changed_in_place = false;
        for r in &c.resources {
            match r.action {
                ResourceAction::Add => s.add += 1,
                ResourceAction::Modify => s.change += 1,
                ResourceAction::Replace => {
                    s.add += 1;
                    s.destroy += 1;
                }
                ResourceAction::Remove => s.destroy += 1,
            }
            changed_in_place = true;
        }
        if !changed_in_place && (!c.parameters.is_empty() || !c.tags.is_empty()) {
            s.change += 1;
        }
        if c.config.is_some() {
            s.change += 1;
        }
        if c.bucket.is_some() {
            s.add += 1;
        }
        if c.image_upload.is_some() {
            s.add += 1;
        }
    }
    s
}
