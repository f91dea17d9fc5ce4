//! What a plan reads once, in pages, instead of once per cluster: every stack and every
//! auto-scaling group of each region, the records of each hosted zone the files name, the
//! account's buckets, and each distinct image parameter and image object. A real account
//! throttles CloudFormation's describe calls at a few per second; reading by pages keeps a
//! plan of 2,000 clusters at tens of calls, not thousands.
//!
//! A listing that failed makes what it would have told *unknown* (with the reason); only a
//! complete listing that lacks a thing makes it *absent*.

use super::stacks::{self, StackHead};
use crate::aws::clients::{Clients, RegionClients, describe};
use crate::aws::observed::{GroupMember, Observation, ObservedGroup};
use aws_sdk_autoscaling::types::AutoScalingGroup;
use futures::StreamExt;
use spilo_model::spec::ClusterFile;
use std::collections::{BTreeMap, BTreeSet};

/// How many single reads (image objects, buckets missing from the list) run at once.
const PARALLEL: usize = 16;

/// One region's stacks and groups.
pub struct RegionInventory {
    /// Every stack that is not deleted, by name.
    pub stacks: Result<BTreeMap<String, StackHead>, String>,
    /// Every auto-scaling group, by name.
    pub groups: Result<BTreeMap<String, ObservedGroup>, String>,
}

/// A hosted zone as a file names it: by name, and by id when the file gives one.
pub type ZoneRef = (String, Option<String>);

/// Everything read in bulk for one plan.
#[derive(Default)]
pub struct Inventory {
    /// By region.
    pub regions: BTreeMap<String, RegionInventory>,
    /// Each named zone's records: name (no trailing dot) -> values, comma-separated.
    pub zones: BTreeMap<ZoneRef, Result<BTreeMap<String, String>, String>>,
    /// Each named bucket.
    pub buckets: BTreeMap<String, Observation<()>>,
    /// Each image parameter, by region and name.
    pub image_parameters: BTreeMap<(String, String), Observation<String>>,
    /// Each image object, by region, bucket and key.
    pub image_objects: BTreeMap<(String, String, String), Observation<()>>,
}

impl Inventory {
    /// Reads what `files` need and what `regions` hold.
    pub async fn read(
        clients: &Clients,
        files: &[&ClusterFile],
        regions: &BTreeSet<String>,
    ) -> Self {
        let mut zones: BTreeSet<ZoneRef> = BTreeSet::new();
        let mut buckets: BTreeSet<(String, String)> = BTreeSet::new();
        let mut parameters: BTreeSet<(String, String)> = BTreeSet::new();
        let mut objects: BTreeSet<(String, String, String)> = BTreeSet::new();
        for f in files {
            let Some(aws) = &f.spec.aws else { continue };
            if let Some(zone) = &aws.hosted_zone {
                zones.insert((zone.clone(), aws.hosted_zone_id.clone()));
            }
            if let Some(b) = &f.spec.backup {
                buckets.insert((aws.region.clone(), b.bucket.clone()));
                if crate::aws::image::from_bucket(f) {
                    let key = crate::aws::image::key(crate::aws::image::architecture(f));
                    objects.insert((aws.region.clone(), b.bucket.clone(), key));
                }
            }
            let image = crate::aws::template::image_id(f);
            if spilo_model::spec::is_image_parameter(&image) {
                parameters.insert((aws.region.clone(), image));
            }
        }
        // Route53 and the bucket list are global: any region's clients will do.
        let any = match regions.first() {
            Some(r) => Some(clients.region(r).await),
            None => None,
        };
        let regions_read = futures::future::join_all(regions.iter().map(|r| async move {
            let c = clients.region(r).await;
            let (stacks, groups) = tokio::join!(stacks::list_stacks(&c), list_groups(&c));
            let stacks = stacks.map(|all| all.into_iter().map(|h| (h.name.clone(), h)).collect());
            (r.clone(), RegionInventory { stacks, groups })
        }));
        let zones_read = futures::future::join_all(zones.into_iter().map(|z| {
            let any = any.clone();
            async move {
                let records = match &any {
                    Some(c) => zone_records(c, &z.0, z.1.as_deref()).await,
                    None => Err("no region to ask Route53 from".to_string()),
                };
                (z, records)
            }
        }));
        let buckets_read = async {
            match &any {
                Some(c) => read_buckets(clients, c, &buckets).await,
                None => BTreeMap::new(),
            }
        };
        let parameters_read = futures::stream::iter(parameters)
            .map(|(r, n)| async move {
                let c = clients.region(&r).await;
                let value = image_parameter(&c, &n).await;
                ((r, n), value)
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>();
        let objects_read = futures::stream::iter(objects)
            .map(|(r, b, k)| async move {
                let c = clients.region(&r).await;
                let value = object(&c, &b, &k).await;
                ((r, b, k), value)
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>();
        let (regions, zones, buckets, image_parameters, image_objects) = tokio::join!(
            regions_read,
            zones_read,
            buckets_read,
            parameters_read,
            objects_read
        );
        Inventory {
            regions: regions.into_iter().collect(),
            zones: zones.into_iter().collect(),
            buckets,
            image_parameters: image_parameters.into_iter().collect(),
            image_objects: image_objects.into_iter().collect(),
        }
    }

    /// The head of stack `name` in `region`: `Ok(None)` when the region's complete listing
    /// lacks it.
    pub fn stack(&self, region: &str, name: &str) -> Result<Option<&StackHead>, String> {
        match self.regions.get(region).map(|r| &r.stacks) {
            Some(Ok(stacks)) => Ok(stacks.get(name)),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("{region} was not read")),
        }
    }

    /// Auto-scaling group `name` in `region`.
    pub fn group(&self, region: &str, name: &str) -> Observation<ObservedGroup> {
        match self.regions.get(region).map(|r| &r.groups) {
            Some(Ok(groups)) => match groups.get(name) {
                Some(g) => Observation::Present(g.clone()),
                None => Observation::Absent,
            },
            Some(Err(e)) => Observation::Unknown(e.clone()),
            None => Observation::Unknown(format!("{region} was not read")),
        }
    }

    /// The record `fqdn` in zone `zone`.
    pub fn record(&self, zone: &ZoneRef, fqdn: &str) -> Observation<String> {
        match self.zones.get(zone) {
            Some(Ok(records)) => match records.get(fqdn.trim_end_matches('.')) {
                Some(v) => Observation::Present(v.clone()),
                None => Observation::Absent,
            },
            Some(Err(e)) => Observation::Unknown(e.clone()),
            None => Observation::Unknown(format!("hosted zone {} was not read", zone.0)),
        }
    }

    /// Bucket `name`.
    pub fn bucket(&self, name: &str) -> Observation<()> {
        self.buckets
            .get(name)
            .cloned()
            .unwrap_or_else(|| Observation::Unknown(format!("bucket {name} was not read")))
    }
}

/// An SDK auto-scaling group as observed: instances on their way out are no longer its.
pub fn group_of_sdk(name: &str, g: &AutoScalingGroup) -> ObservedGroup {
    ObservedGroup {
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
    }
}

/// Every auto-scaling group of the region, 100 a page (the most the API gives).
async fn list_groups(c: &RegionClients) -> Result<BTreeMap<String, ObservedGroup>, String> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .autoscaling
            .describe_auto_scaling_groups()
            .max_records(100)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("describe-auto-scaling-groups: {}", describe(&e)))?;
        for g in page.auto_scaling_groups() {
            if let Some(name) = g.auto_scaling_group_name() {
                out.insert(name.to_string(), group_of_sdk(name, g));
            }
        }
        token = match super::next_page(&token, page.next_token(), "describe-auto-scaling-groups")? {
            Some(next) => Some(next),
            None => return Ok(out),
        };
    }
}

/// The id of hosted zone `zone`: `zone_id` when the file gives it, else looked up by name.
pub(super) async fn hosted_zone_id(
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

/// Every record of a zone (found by id, or else by name, which is ambiguous when a private
/// and a public zone share it: the file's `hostedZoneId` settles that), 300 a page. A name
/// with several records keeps the first.
async fn zone_records(
    c: &RegionClients,
    zone: &str,
    zone_id: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let id = hosted_zone_id(c, zone, zone_id).await?;
    let mut out = BTreeMap::new();
    type Start = (String, aws_sdk_route53::types::RrType, Option<String>);
    let mut start: Option<Start> = None;
    loop {
        let mut call = c
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(&id)
            .max_items(300);
        if let Some((name, kind, identifier)) = &start {
            call = call
                .start_record_name(name)
                .start_record_type(kind.clone())
                .set_start_record_identifier(identifier.clone());
        }
        let page = call
            .send()
            .await
            .map_err(|e| format!("list-resource-record-sets: {}", describe(&e)))?;
        for r in page.resource_record_sets() {
            let values = values(r);
            out.entry(r.name().trim_end_matches('.').to_string())
                .or_insert(values);
        }
        // A page may end inside a set of weighted or latency records of one name and type:
        // the identifier says where to go on.
        let next = match (
            page.is_truncated(),
            page.next_record_name(),
            page.next_record_type(),
        ) {
            (true, Some(name), Some(kind)) => Some((
                name.to_string(),
                kind.clone(),
                page.next_record_identifier().map(str::to_string),
            )),
            _ => return Ok(out),
        };
        if next == start {
            return Err("list-resource-record-sets: the next page is the same page".into());
        }
        start = next;
    }
}

/// A record set's values, comma-separated.
fn values(r: &aws_sdk_route53::types::ResourceRecordSet) -> String {
    r.resource_records()
        .iter()
        .map(|v| v.value().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The record `fqdn` in `zone` asked for alone (to confirm that one missing from the zone's
/// listing is gone, since the listing may be older than the stack that made it).
pub async fn lookup_record(c: &RegionClients, zone: &ZoneRef, fqdn: &str) -> Observation<String> {
    let id = match hosted_zone_id(c, &zone.0, zone.1.as_deref()).await {
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
        Some(r) => Observation::Present(values(r)),
        None => Observation::Absent,
    }
}

/// The named buckets: those the account's bucket list holds are present; the others (or all,
/// when the list cannot be read) are asked one by one, since a bucket of another account is
/// not in the list.
async fn read_buckets(
    clients: &Clients,
    any: &RegionClients,
    wanted: &BTreeSet<(String, String)>,
) -> BTreeMap<String, Observation<()>> {
    let listed = list_buckets(any).await.unwrap_or_default();
    let asked: Vec<(String, Observation<()>)> =
        futures::stream::iter(wanted.iter().filter(|(_, b)| !listed.contains(b)))
            .map(|(r, b)| async move {
                let c = clients.region(r).await;
                (b.clone(), bucket(&c, b).await)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    wanted
        .iter()
        .filter(|(_, b)| listed.contains(b))
        .map(|(_, b)| (b.clone(), Observation::Present(())))
        .chain(asked)
        .collect()
}

/// The account's buckets, by pages.
async fn list_buckets(c: &RegionClients) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let page =
            c.s3.list_buckets()
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| format!("list-buckets: {}", describe(&e)))?;
        out.extend(
            page.buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_string)),
        );
        token = match super::next_page(&token, page.continuation_token(), "list-buckets")? {
            Some(next) => Some(next),
            None => return Ok(out),
        };
    }
}

/// The image id an SSM parameter holds.
pub(super) async fn image_parameter(c: &RegionClients, name: &str) -> Observation<String> {
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
pub(super) async fn object(c: &RegionClients, bucket: &str, key: &str) -> Observation<()> {
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
