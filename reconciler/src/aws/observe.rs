//! Observing: the stacks, Route53 records, WAL buckets and etcd keys of the clusters a plan
//! covers, turned into [`Observed`]. Every failed call becomes *unknown* with the reason;
//! only a definite "does not exist" becomes *absent*. What can be listed is read once per
//! plan by pages ([`inventory`]); a stack's template and resources only when the stack
//! changed since the last plan recorded them ([`stack_cache`]); etcd over one client per etcd.

use super::clients::{Clients, RegionClients, describe};
use super::observed::{
    EtcdMemberSeen, Observation, Observed, ObservedCluster, ObservedConfig, ObservedEtcd,
    ObservedEtcdCluster, ObservedGroup, ObservedMember, ObservedStack, SrvTargets,
};
use super::template::{self, CLUSTER_TAG};
use etcd_client::GetOptions;
use futures::StreamExt;
use spilo_model::spec::{ClusterFile, DcsSpec, EtcdClusterFile};
use spilo_model::{ClusterName, KeyKind, Keyspace, MemberName, MemberStatus, summarize};
use std::collections::{BTreeMap, BTreeSet};

mod etcd_cluster;
mod inventory;
mod stack_cache;
mod stacks;
pub use etcd_cluster::observe_etcd_cluster;
use inventory::Inventory;
pub use stacks::full_stack;

/// How many clusters are assembled at once (each may still fetch a changed stack's template).
const PARALLEL: usize = 16;

/// Observes every cluster in `files` and every managed stack in `regions` (plus the files'
/// regions) whose file is gone. The regions' stacks and groups, the zones' records and the
/// buckets are read once, by pages ([`Inventory`]); etcd once per etcd the files name.
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
    let (inventory, mut etcd) = tokio::join!(
        Inventory::read(clients, files, &all_regions),
        observe_etcd_all(files)
    );
    let mut observed = Observed::default();
    let results: Vec<ObservedCluster> = futures::stream::iter(files.iter())
        .map(|f| {
            let etcd = etcd
                .remove(f.metadata.name.as_str())
                .unwrap_or(Observation::Absent);
            observe_cluster(clients, &inventory, f, etcd)
        })
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
    for (region, found) in &inventory.regions {
        let stacks = match &found.stacks {
            Ok(s) => s,
            Err(e) => {
                observed.stack_list = Observation::Unknown(format!("{region}: {e}"));
                return observed;
            }
        };
        let c = clients.region(region).await;
        for head in stacks.values() {
            let Some(name) = head.tags.get(CLUSTER_TAG) else {
                continue;
            };
            if wanted.contains(name.as_str()) {
                continue;
            }
            let stack = match stacks::complete(&c, head.clone()).await {
                Ok(s) => Observation::Present(s),
                Err(e) => Observation::Unknown(e),
            };
            managed.push(name.clone());
            observed.clusters.insert(
                name.clone(),
                ObservedCluster::of(name.clone(), stack, Observation::Absent),
            );
        }
    }
    managed.sort();
    observed.stack_list = Observation::Present(managed);
    observed
}

/// The token of the page after the one asked for with `token`: `None` at the end; an error
/// when the service hands the same token back (the listing would never end).
fn next_page(
    token: &Option<String>,
    next: Option<&str>,
    call: &str,
) -> Result<Option<String>, String> {
    match next {
        Some(n) if token.as_deref() == Some(n) => {
            Err(format!("{call}: the next page is the same page"))
        }
        n => Ok(n.map(str::to_string)),
    }
}

/// Observes one cluster from what `inventory` read and its etcd keys: only a stack changed
/// since the last plan costs calls of its own (its template and resources).
async fn observe_cluster(
    clients: &Clients,
    inventory: &Inventory,
    file: &ClusterFile,
    etcd: Observation<ObservedEtcd>,
) -> ObservedCluster {
    let name = file.metadata.name.to_string();
    let Some(aws) = &file.spec.aws else {
        return ObservedCluster::of(
            name,
            Observation::Unknown("not an AWS cluster".into()),
            Observation::Absent,
        );
    };
    let region = aws.region.as_str();
    let stack = match inventory.stack(region, &template::stack_name(&name)) {
        Ok(Some(head)) => {
            let c = clients.region(region).await;
            match stacks::complete(&c, head.clone()).await {
                Ok(s) => Observation::Present(s),
                Err(e) => Observation::Unknown(e),
            }
        }
        Ok(None) => Observation::Absent,
        Err(e) => Observation::Unknown(e),
    };
    let dns = match (&aws.hosted_zone, template::dns_name(file)) {
        (Some(zone), Some(fqdn)) => {
            Some(inventory.record(&(zone.clone(), aws.hosted_zone_id.clone()), &fqdn))
        }
        _ => None,
    };
    let bucket = file
        .spec
        .backup
        .as_ref()
        .map(|b| inventory.bucket(&b.bucket));
    let image_id = template::image_id(file);
    let image = spilo_model::spec::is_image_parameter(&image_id).then(|| {
        inventory
            .image_parameters
            .get(&(region.to_string(), image_id.clone()))
            .cloned()
            .unwrap_or_else(|| Observation::Unknown(format!("{image_id} was not read")))
    });
    let image_object = match &file.spec.backup {
        Some(b) if super::image::from_bucket(file) => {
            let key = super::image::key(super::image::architecture(file));
            Some(
                inventory
                    .image_objects
                    .get(&(region.to_string(), b.bucket.clone(), key.clone()))
                    .cloned()
                    .unwrap_or_else(|| Observation::Unknown(format!("{key} was not read"))),
            )
        }
        _ => None,
    };
    let image_file = match &image_object {
        Some(Observation::Absent) => {
            super::image::find_local_with_digest(super::image::architecture(file))
        }
        _ => None,
    };
    let (resources_gone, group, dns) = match &stack {
        Observation::Present(s) => {
            // The listings may be older than the stack's last change: a group or record
            // missing from them is asked for alone before it counts as gone.
            let group = match s
                .resources
                .get("AutoScalingGroup")
                .and_then(|(_, id)| id.clone())
            {
                Some(g) => Some(match inventory.group(region, &g) {
                    Observation::Absent => describe_group(&clients.region(region).await, &g).await,
                    seen => seen,
                }),
                None => None,
            };
            let dns = match (dns, &aws.hosted_zone, template::dns_name(file)) {
                (Some(Observation::Absent), Some(zone), Some(fqdn))
                    if s.resources.contains_key("DnsRecord") =>
                {
                    let zone = (zone.clone(), aws.hosted_zone_id.clone());
                    let c = clients.region(region).await;
                    Some(inventory::lookup_record(&c, &zone, &fqdn).await)
                }
                (dns, _, _) => dns,
            };
            (resources_gone(s, group.as_ref(), dns.as_ref()), group, dns)
        }
        _ => (Vec::new(), None, dns),
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
    match out.auto_scaling_groups().first() {
        Some(g) => Observation::Present(inventory::group_of_sdk(name, g)),
        None => Observation::Absent,
    }
}

/// Resources the stack lists that are gone: the auto-scaling group and the DNS record (from
/// their observations). Unknown is not gone.
fn resources_gone(
    stack: &ObservedStack,
    group: Option<&Observation<ObservedGroup>>,
    dns: Option<&Observation<String>>,
) -> Vec<String> {
    let mut gone = Vec::new();
    if let (Some((_, Some(name))), Some(Observation::Absent)) =
        (stack.resources.get("AutoScalingGroup"), group)
    {
        gone.push(format!("AutoScalingGroup ({name})"));
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

/// The etcd keys of every cluster in `files`, by cluster name: one client per etcd (the
/// same `dcs` section), its clusters read over it 16 at a time.
async fn observe_etcd_all(files: &[&ClusterFile]) -> BTreeMap<String, Observation<ObservedEtcd>> {
    let mut by_dcs: BTreeMap<String, (&DcsSpec, Vec<&ClusterName>)> = BTreeMap::new();
    for f in files {
        if let Some(dcs) = &f.spec.dcs {
            let key = serde_json::to_string(dcs).unwrap_or_else(|_| f.metadata.name.to_string());
            by_dcs
                .entry(key)
                .or_insert((dcs, Vec::new()))
                .1
                .push(&f.metadata.name);
        }
    }
    let groups: Vec<Vec<_>> = futures::stream::iter(by_dcs.into_values())
        .map(|(dcs, scopes)| async move {
            let client = async {
                let endpoints = crate::etcd::endpoints(dcs).await?;
                let tls = crate::etcd::client_tls(dcs)?;
                crate::etcd::connect(&endpoints, tls.as_ref()).await
            };
            match client.await {
                Ok(client) => {
                    futures::stream::iter(scopes)
                        .map(|scope| {
                            let mut client = client.clone();
                            async move {
                                let read = read_scope(&mut client, scope).await;
                                (scope.to_string(), Observation::of_read(read.map(Some)))
                            }
                        })
                        .buffer_unordered(PARALLEL)
                        .collect::<Vec<_>>()
                        .await
                }
                Err(e) => scopes
                    .into_iter()
                    .map(|scope| (scope.to_string(), Observation::Unknown(e.clone())))
                    .collect(),
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    groups.into_iter().flatten().collect()
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
    read_scope(&mut client, scope).await
}

/// The `config`, leader, members and boot failures of `scope`, read by its prefix.
async fn read_scope(
    client: &mut etcd_client::Client,
    scope: &ClusterName,
) -> Result<ObservedEtcd, String> {
    let keys = Keyspace::new(scope);
    let resp = tokio::time::timeout(
        crate::etcd::TIMEOUT,
        client.get(keys.prefix(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| "reading from etcd timed out".to_string())?
    .map_err(|e| format!("reading {}: {e}", keys.prefix()))?;
    let kvs: Vec<(String, Vec<u8>, i64)> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key_str().ok()?.to_string(),
                kv.value().to_vec(),
                kv.mod_revision(),
            ))
        })
        .collect();
    Ok(parse_scope(scope, &kvs))
}

/// The same observation of a cluster whose store is ZooKeeper (`hosts`).
pub async fn observe_zookeeper(hosts: &[String], scope: &ClusterName) -> Observation<ObservedEtcd> {
    let read = async {
        let client = crate::zookeeper::connect(hosts).await?;
        crate::zookeeper::read_cluster(&client, &Keyspace::new(scope)).await
    };
    match read.await {
        Ok(kvs) => Observation::Present(parse_scope(scope, &kvs)),
        Err(e) => Observation::Unknown(format!("{e:#}")),
    }
}

/// The observation of `scope` from its keys as `(key, value, revision)`.
fn parse_scope(scope: &ClusterName, kvs: &[(String, Vec<u8>, i64)]) -> ObservedEtcd {
    let keys = Keyspace::new(scope);
    let mut config = Observation::Absent;
    let mut leader = None;
    let mut statuses: BTreeMap<MemberName, MemberStatus> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut boot_failures = BTreeMap::new();
    let mut drill = None;
    let mut catalog = None;
    let mut upgrade = None;
    for (key, value, revision) in kvs {
        match keys.classify(key) {
            Some(KeyKind::Config) => {
                config = Observation::Present(ObservedConfig {
                    value: serde_json::from_slice(value).ok(),
                    mod_revision: *revision,
                });
            }
            Some(KeyKind::Leader) => {
                leader = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| MemberName::new(s).ok());
            }
            Some(KeyKind::Boot(name)) => {
                if let Ok(f) = serde_json::from_slice(value) {
                    boot_failures.insert(name.to_string(), f);
                }
            }
            Some(KeyKind::Drill) => drill = serde_json::from_slice(value).ok(),
            Some(KeyKind::Catalog) => catalog = serde_json::from_slice(value).ok(),
            Some(KeyKind::Upgrade) => upgrade = serde_json::from_slice(value).ok(),
            // A corrupt member value is shown as such; it never stops a plan.
            Some(KeyKind::Member(name)) => match serde_json::from_slice(value) {
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
            postgres_version: statuses.get(&row.name).and_then(|m| m.postgres_version),
        })
        .collect();
    members.extend(unreadable.into_iter().map(|name| ObservedMember {
        name: name.to_string(),
        role: "?".into(),
        state: "unreadable".into(),
        leader: false,
        lag_bytes: None,
        pending_restart: false,
        postgres_version: None,
    }));
    ObservedEtcd {
        config,
        members,
        boot_failures,
        drill,
        catalog,
        read_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        applied_version: None,
        upgrade,
    }
}
