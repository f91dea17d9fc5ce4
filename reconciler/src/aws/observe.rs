//! Observing: the stacks, Route53 records, WAL buckets and etcd keys of the clusters a plan
//! covers, turned into [`Observed`]. Every failed call becomes *unknown* with the reason;
//! only a definite "does not exist" becomes *absent*.

use super::clients::{Clients, RegionClients, describe};
use super::observed::{
    EtcdMemberSeen, GroupMember, Observation, Observed, ObservedCluster, ObservedConfig,
    ObservedEtcd, ObservedEtcdCluster, ObservedGroup, ObservedMember, ObservedStack, SrvTargets,
};
use super::template::{self, CLUSTER_TAG};
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::primitives::DateTimeFormat;
use aws_sdk_cloudformation::types::TemplateStage;
use etcd_client::GetOptions;
use futures::StreamExt;
use serde_json::Value;
use spilo_model::spec::{ClusterFile, DcsSpec, EtcdClusterFile};
use spilo_model::{ClusterName, KeyKind, Keyspace, MemberName, MemberStatus, summarize};
use std::collections::{BTreeMap, BTreeSet};

mod etcd_cluster;
pub use etcd_cluster::observe_etcd_cluster;

/// How many clusters are observed at once.
const PARALLEL: usize = 16;

/// Observes every cluster in `files` and every managed stack in `regions` (plus the files'
/// regions) whose file is gone.
pub async fn observe(
    clients: &Clients,
    files: &[&ClusterFile],
    etcd_files: &[&EtcdClusterFile],
    regions: &[String],
) -> Observed {
    let mut all_regions: BTreeSet<String> = regions.iter().cloned().collect();
    for f in files {
        if let Some(a) = &f.spec.aws {
            all_regions.insert(a.region.clone());
        }
    }
    for f in etcd_files {
        all_regions.insert(f.spec.aws.region.clone());
    }
    let mut observed = Observed::default();
    let results: Vec<ObservedCluster> = futures::stream::iter(files.iter())
        .map(|f| observe_cluster(clients, f))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for o in results {
        observed.clusters.insert(o.name.clone(), o);
    }
    let etcd_results: Vec<ObservedCluster> = futures::stream::iter(etcd_files.iter())
        .map(|f| observe_etcd_cluster(clients, f))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for o in etcd_results {
        observed.clusters.insert(o.name.clone(), o);
    }
    let wanted: BTreeSet<&str> = files
        .iter()
        .map(|f| f.metadata.name.as_str())
        .chain(etcd_files.iter().map(|f| f.metadata.name.as_str()))
        .collect();
    let mut managed = Vec::new();
    for region in &all_regions {
        let c = clients.region(region).await;
        match list_managed(&c).await {
            Ok(stacks) => {
                for (name, stack) in stacks {
                    if wanted.contains(name.as_str()) {
                        continue;
                    }
                    let stack = Observation::of_read(full_stack(&c, &stack.stack_id).await);
                    managed.push(name.clone());
                    observed.clusters.insert(
                        name.clone(),
                        ObservedCluster::of(name, stack, Observation::Absent),
                    );
                }
            }
            Err(e) => {
                observed.stack_list = Observation::Unknown(format!("{region}: {e}"));
                return observed;
            }
        }
    }
    managed.sort();
    observed.stack_list = Observation::Present(managed);
    observed
}

/// Observes one cluster.
pub async fn observe_cluster(clients: &Clients, file: &ClusterFile) -> ObservedCluster {
    let name = file.metadata.name.to_string();
    let Some(aws) = &file.spec.aws else {
        return ObservedCluster::of(
            name,
            Observation::Unknown("not an AWS cluster".into()),
            Observation::Absent,
        );
    };
    let c = clients.region(&aws.region).await;
    let stack_name = template::stack_name(&name);
    let stack = async { Observation::of_read(full_stack(&c, &stack_name).await) };
    let dns = async {
        match (&aws.hosted_zone, template::dns_name(file)) {
            (Some(zone), Some(fqdn)) => {
                Some(dns_record(&c, zone, aws.hosted_zone_id.as_deref(), &fqdn).await)
            }
            _ => None,
        }
    };
    let bucket = async {
        match &file.spec.backup {
            Some(b) => Some(bucket(&c, &b.bucket).await),
            None => None,
        }
    };
    let image_id = template::image_id(file);
    let images = observe_images(
        &c,
        &image_id,
        file.spec
            .backup
            .as_ref()
            .map(|b| b.bucket.as_str())
            .filter(|_| super::image::from_bucket(file)),
        super::image::architecture(file),
    );
    let etcd = observe_etcd(file.spec.dcs.as_ref(), &file.metadata.name);
    let (stack, dns, bucket, (image, image_object, image_file), etcd) =
        tokio::join!(stack, dns, bucket, images, etcd);
    let (resources_gone, group) = match &stack {
        Observation::Present(s) => {
            let (gone, group) = tokio::join!(resources_gone(&c, s, dns.as_ref()), group_of(&c, s));
            (gone, group)
        }
        _ => (Vec::new(), None),
    };
    ObservedCluster {
        name,
        stack,
        dns,
        bucket,
        image,
        image_object,
        image_file,
        etcd,
        resources_gone,
        etcd_cluster: None,
        group,
    }
}

/// The stack's auto-scaling group with the launch template version of each instance; `None`
/// when the stack lists no group.
pub async fn group_of(
    c: &RegionClients,
    stack: &ObservedStack,
) -> Option<Observation<ObservedGroup>> {
    let name = stack
        .resources
        .get("AutoScalingGroup")
        .and_then(|(_, id)| id.clone())?;
    Some(describe_group(c, &name).await)
}

/// Auto-scaling group `name` as it is now.
pub async fn describe_group(c: &RegionClients, name: &str) -> Observation<ObservedGroup> {
    let out = match c
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => {
            return Observation::Unknown(format!("describe-auto-scaling-groups: {}", describe(&e)));
        }
    };
    let Some(g) = out.auto_scaling_groups().first() else {
        return Observation::Absent;
    };
    Observation::Present(ObservedGroup {
        name: name.to_string(),
        desired: g
            .desired_capacity()
            .and_then(|d| usize::try_from(d).ok())
            .unwrap_or_default(),
        version: g
            .launch_template()
            .and_then(|t| t.version())
            .map(str::to_string),
        instances: g
            .instances()
            .iter()
            .filter(|i| {
                // Instances on their way out are no longer the group's.
                !i.lifecycle_state()
                    .is_some_and(|s| s.as_str().starts_with("Terminat"))
            })
            .map(|i| GroupMember {
                id: i.instance_id().unwrap_or_default().to_string(),
                version: i
                    .launch_template()
                    .and_then(|t| t.version())
                    .map(str::to_string),
            })
            .collect(),
    })
}

/// What instances start from: the image id an SSM parameter `image` holds (when it is one),
/// the spilo image in `bucket` (when they install it from there) and, when it is missing
/// there, the tarball on this machine with its digest (what an upload needs, which the plan
/// pins).
#[allow(clippy::type_complexity)]
async fn observe_images(
    c: &RegionClients,
    image: &str,
    bucket: Option<&str>,
    arch: spilo_model::spec::Architecture,
) -> (
    Option<Observation<String>>,
    Option<Observation<()>>,
    Option<(std::path::PathBuf, String)>,
) {
    let parameter = async {
        if spilo_model::spec::is_image_parameter(image) {
            Some(image_parameter(c, image).await)
        } else {
            None
        }
    };
    let object = async {
        match bucket {
            Some(b) => Some(object(c, b, &super::image::key(arch)).await),
            None => None,
        }
    };
    let (parameter, object) = tokio::join!(parameter, object);
    let file = match &object {
        Some(Observation::Absent) => super::image::find_local(arch).and_then(|p| {
            let digest = super::image::sha256(&p).ok()?;
            Some((p, digest))
        }),
        _ => None,
    };
    (parameter, object, file)
}

/// Resources the stack lists that are gone: the auto-scaling group (asked by name) and the
/// DNS record (from its observation). A failed check reports nothing: unknown is not gone.
async fn resources_gone(
    c: &RegionClients,
    stack: &ObservedStack,
    dns: Option<&Observation<String>>,
) -> Vec<String> {
    let mut gone = Vec::new();
    if let Some((_, Some(group))) = stack.resources.get("AutoScalingGroup")
        && let Ok(r) = c
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
        && r.auto_scaling_groups().is_empty()
    {
        gone.push(format!("AutoScalingGroup ({group})"));
    }
    if let (Some((_, physical)), Some(Observation::Absent)) =
        (stack.resources.get("DnsRecord"), dns)
    {
        gone.push(format!(
            "DnsRecord ({})",
            physical.as_deref().unwrap_or("?")
        ));
    }
    gone
}

fn is_missing_stack<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ValidationError") && e.message().is_some_and(|m| m.contains("does not exist"))
}

/// The stack `id` (name or ARN) with its template and resources; `None` when it does not exist.
pub async fn full_stack(c: &RegionClients, id: &str) -> Result<Option<ObservedStack>, String> {
    let described = match c.cfn.describe_stacks().stack_name(id).send().await {
        Ok(d) => d,
        Err(e) if is_missing_stack(&e) => return Ok(None),
        Err(e) => return Err(format!("describe-stacks: {}", describe(&e))),
    };
    let Some(s) = described.stacks().first() else {
        return Ok(None);
    };
    let status = s
        .stack_status()
        .map(|x| x.as_str().to_string())
        .unwrap_or_default();
    if status == "DELETE_COMPLETE" {
        return Ok(None);
    }
    let stack_id = s.stack_id().unwrap_or(id).to_string();
    let when = s.last_updated_time().or(s.creation_time());
    let last_changed = when
        .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok())
        .unwrap_or_default();
    let parameters = s
        .parameters()
        .iter()
        .filter_map(|p| {
            Some((
                p.parameter_key()?.to_string(),
                p.parameter_value().unwrap_or_default().to_string(),
            ))
        })
        .collect();
    let tags = s
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect();
    let outputs = s
        .outputs()
        .iter()
        .filter_map(|o| {
            Some((
                o.output_key()?.to_string(),
                o.output_value().unwrap_or_default().to_string(),
            ))
        })
        .collect();
    let body = c
        .cfn
        .get_template()
        .stack_name(&stack_id)
        .template_stage(TemplateStage::Original)
        .send()
        .await
        .map_err(|e| format!("get-template: {}", describe(&e)))?;
    let template: Value = serde_json::from_str(body.template_body().unwrap_or("{}"))
        .map_err(|e| format!("the stack's template is not the JSON spilo writes: {e}"))?;
    let res = c
        .cfn
        .describe_stack_resources()
        .stack_name(&stack_id)
        .send()
        .await
        .map_err(|e| format!("describe-stack-resources: {}", describe(&e)))?;
    let resources = res
        .stack_resources()
        .iter()
        .filter_map(|r| {
            Some((
                r.logical_resource_id()?.to_string(),
                (
                    r.resource_type().unwrap_or_default().to_string(),
                    r.physical_resource_id().map(str::to_string),
                ),
            ))
        })
        .collect();
    Ok(Some(ObservedStack {
        stack_id,
        status,
        last_changed,
        template,
        parameters,
        tags,
        termination_protection: s.enable_termination_protection().unwrap_or(false),
        resources,
        outputs,
    }))
}

/// A managed stack found by its tag.
pub struct ManagedStack {
    /// Its id.
    pub stack_id: String,
}

/// Stacks tagged `spilo:cluster` in one region, by cluster name.
async fn list_managed(c: &RegionClients) -> Result<BTreeMap<String, ManagedStack>, String> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .cfn
            .describe_stacks()
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("describe-stacks: {}", describe(&e)))?;
        for s in page.stacks() {
            let deleted = s
                .stack_status()
                .is_some_and(|st| st.as_str() == "DELETE_COMPLETE");
            let cluster = s
                .tags()
                .iter()
                .find(|t| t.key() == Some(CLUSTER_TAG))
                .and_then(|t| t.value());
            if let (false, Some(name), Some(id)) = (deleted, cluster, s.stack_id()) {
                out.insert(
                    name.to_string(),
                    ManagedStack {
                        stack_id: id.to_string(),
                    },
                );
            }
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// The id of hosted zone `zone`: `zone_id` when the file gives it, else looked up by name.
async fn hosted_zone_id(
    c: &RegionClients,
    zone: &str,
    zone_id: Option<&str>,
) -> Result<String, String> {
    if let Some(id) = zone_id {
        return Ok(id.to_string());
    }
    let zone_dot = format!("{}.", zone.trim_end_matches('.'));
    let zones = c
        .route53
        .list_hosted_zones_by_name()
        .dns_name(&zone_dot)
        .send()
        .await
        .map_err(|e| format!("list-hosted-zones: {}", describe(&e)))?;
    zones
        .hosted_zones()
        .iter()
        .find(|z| z.name() == zone_dot)
        .map(|z| z.id().to_string())
        .ok_or_else(|| format!("hosted zone {zone_dot} not found"))
}

/// The CNAME target of `fqdn` in `zone`.
/// The record `fqdn` in the zone given by id, or else found by name (which is ambiguous when
/// a private and a public zone share it: the file's `hostedZoneId` settles that).
async fn dns_record(
    c: &RegionClients,
    zone: &str,
    zone_id: Option<&str>,
    fqdn: &str,
) -> Observation<String> {
    let id = match hosted_zone_id(c, zone, zone_id).await {
        Ok(id) => id,
        Err(e) => return Observation::Unknown(e),
    };
    let records = match c
        .route53
        .list_resource_record_sets()
        .hosted_zone_id(id)
        .start_record_name(fqdn)
        .max_items(10)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return Observation::Unknown(format!("list-resource-record-sets: {}", describe(&e)));
        }
    };
    match records
        .resource_record_sets()
        .iter()
        .find(|r| r.name().trim_end_matches('.') == fqdn.trim_end_matches('.'))
    {
        Some(r) => Observation::Present(
            r.resource_records()
                .iter()
                .map(|v| v.value().to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        None => Observation::Absent,
    }
}

/// The image id an SSM parameter holds.
async fn image_parameter(c: &RegionClients, name: &str) -> Observation<String> {
    match c.ssm.get_parameter().name(name).send().await {
        Ok(out) => match out.parameter().and_then(|p| p.value()) {
            Some(v) => Observation::Present(v.to_string()),
            None => Observation::Unknown(format!("{name} has no value")),
        },
        Err(e) => {
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found())
            {
                Observation::Absent
            } else {
                Observation::Unknown(format!("get-parameter {name}: {}", describe(&e)))
            }
        }
    }
}

/// Whether an object exists (a missing bucket: no).
async fn object(c: &RegionClients, bucket: &str, key: &str) -> Observation<()> {
    match c.s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Observation::Present(()),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if e.as_service_error().is_some_and(|s| s.is_not_found()) || status == Some(404) {
                Observation::Absent
            } else {
                Observation::Unknown(format!("head-object s3://{bucket}/{key}: {}", describe(&e)))
            }
        }
    }
}

/// Whether the bucket exists.
async fn bucket(c: &RegionClients, name: &str) -> Observation<()> {
    match c.s3.head_bucket().bucket(name).send().await {
        Ok(_) => Observation::Present(()),
        Err(e) => {
            let not_found = e.as_service_error().is_some_and(|s| s.is_not_found());
            if not_found {
                Observation::Absent
            } else {
                Observation::Unknown(format!("head-bucket: {}", describe(&e)))
            }
        }
    }
}

/// The cluster's `config` and members in etcd.
pub async fn observe_etcd(dcs: Option<&DcsSpec>, scope: &ClusterName) -> Observation<ObservedEtcd> {
    observe_etcd_with(dcs, scope, None).await
}

/// [`observe_etcd`] over TLS with `tls`.
pub async fn observe_etcd_with(
    dcs: Option<&DcsSpec>,
    scope: &ClusterName,
    tls: Option<&spilo_discovery::EtcdTls>,
) -> Observation<ObservedEtcd> {
    let Some(dcs) = dcs else {
        return Observation::Absent;
    };
    let endpoints = match crate::etcd::endpoints(dcs).await {
        Ok(e) => e,
        Err(e) => return Observation::Unknown(e),
    };
    let own = match tls {
        Some(_) => None,
        None => match crate::etcd::client_tls(dcs) {
            Ok(t) => t,
            Err(e) => return Observation::Unknown(e),
        },
    };
    match read_etcd(&endpoints, scope, tls.or(own.as_ref())).await {
        Ok(e) => Observation::Present(e),
        Err(e) => Observation::Unknown(e),
    }
}

async fn read_etcd(
    endpoints: &[String],
    scope: &ClusterName,
    tls: Option<&spilo_discovery::EtcdTls>,
) -> Result<ObservedEtcd, String> {
    let mut client = crate::etcd::connect(endpoints, tls).await?;
    let keys = Keyspace::new(scope);
    let resp = tokio::time::timeout(
        crate::etcd::TIMEOUT,
        client.get(keys.prefix(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| "reading from etcd timed out".to_string())?
    .map_err(|e| format!("reading {}: {e}", keys.prefix()))?;
    let mut config = Observation::Absent;
    let mut leader = None;
    let mut statuses: BTreeMap<MemberName, MemberStatus> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut boot_failures = BTreeMap::new();
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        match keys.classify(key) {
            Some(KeyKind::Config) => {
                config = Observation::Present(ObservedConfig {
                    value: serde_json::from_slice(kv.value()).ok(),
                    mod_revision: kv.mod_revision(),
                });
            }
            Some(KeyKind::Leader) => {
                leader = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|s| MemberName::new(s).ok());
            }
            Some(KeyKind::Boot(name)) => {
                if let Ok(f) = serde_json::from_slice(kv.value()) {
                    boot_failures.insert(name.to_string(), f);
                }
            }
            // A corrupt member value is shown as such; it never stops a plan.
            Some(KeyKind::Member(name)) => match serde_json::from_slice(kv.value()) {
                Ok(m) => {
                    statuses.insert(name, m);
                }
                Err(_) => unreadable.push(name),
            },
            _ => {}
        }
    }
    let summary = summarize(scope, leader.as_ref(), &statuses);
    let mut members: Vec<ObservedMember> = summary
        .members
        .into_iter()
        .map(|row| ObservedMember {
            leader: summary.leader.as_ref() == Some(&row.name),
            name: row.name.to_string(),
            role: row.role,
            state: row.state,
            lag_bytes: row.lag_bytes,
            pending_restart: row.pending_restart,
        })
        .collect();
    members.extend(unreadable.into_iter().map(|name| ObservedMember {
        name: name.to_string(),
        role: "?".into(),
        state: "unreadable".into(),
        leader: false,
        lag_bytes: None,
        pending_restart: false,
    }));
    Ok(ObservedEtcd {
        config,
        members,
        boot_failures,
    })
}
