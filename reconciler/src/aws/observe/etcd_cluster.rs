//! Observing one etcd cluster on AWS: its stack, its group's instances, the image it boots,
//! its members as etcd itself lists them, and the SRV records its clients discover it by.

use super::inventory::{hosted_zone_id, image_parameter, object};
use super::*;

/// Observes one etcd cluster: its stack, the image parameter and the spilo image in its
/// image bucket (no etcd keys of its own, no DNS record of the stack's).
pub async fn observe_etcd_cluster(clients: &Clients, file: &EtcdClusterFile) -> ObservedCluster {
    let name = file.metadata.name.to_string();
    let c = clients.region(&file.spec.aws.region).await;
    let stack_name = template::stack_name(&name);
    let stack = async { Observation::of_read(full_stack(&c, &stack_name).await) };
    let image_id = crate::aws::etcd_stack::image_id(file);
    let images = observe_images(
        &c,
        &image_id,
        file.spec
            .image_bucket
            .as_deref()
            .filter(|_| crate::aws::etcd_stack::from_bucket(file)),
        crate::aws::etcd_stack::architecture(file),
    );
    let (stack, (image, image_object, image_file)) = tokio::join!(stack, images);
    let (resources_gone, etcd_cluster) = match &stack {
        Observation::Present(s) => {
            let group = async {
                match s.resources.get("AutoScalingGroup") {
                    Some((_, Some(name))) => Some(describe_group(&c, name).await),
                    _ => None,
                }
            };
            let (group, members, records) =
                tokio::join!(group, etcd_membership(file), srv_targets(&c, file));
            let gone = resources_gone(s, group.as_ref(), None);
            (gone, Some(ObservedEtcdCluster { members, records }))
        }
        _ => (Vec::new(), None),
    };
    ObservedCluster {
        image,
        image_object,
        image_file,
        resources_gone,
        etcd_cluster,
        ..ObservedCluster::of(name, stack, Observation::Absent)
    }
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
            Some(b) => Some(object(c, b, &crate::aws::image::key(arch)).await),
            None => None,
        }
    };
    let (parameter, object) = tokio::join!(parameter, object);
    let file = match &object {
        Some(Observation::Absent) => crate::aws::image::find_local_with_digest(arch),
        _ => None,
    };
    (parameter, object, file)
}

/// The members of an etcd cluster of the repository, asked over TLS (found by its SRV
/// records, with spilo's client certificate from `SPILO_ETCD_*`).
async fn etcd_membership(file: &EtcdClusterFile) -> Observation<Vec<EtcdMemberSeen>> {
    let dcs = DcsSpec {
        discovery_domain: Some(file.domain()),
        etcd_cluster: Some(file.metadata.name.clone()),
        ..Default::default()
    };
    let mut client = match crate::etcd::connect_dcs(&dcs).await {
        Ok(c) => c,
        Err(e) => return Observation::Unknown(e),
    };
    match tokio::time::timeout(crate::etcd::TIMEOUT, client.member_list()).await {
        Ok(Ok(list)) => Observation::Present(
            list.members()
                .iter()
                .map(|m| EtcdMemberSeen {
                    name: m.name().to_string(),
                    learner: m.is_learner(),
                    started: !m.client_urls().is_empty(),
                })
                .collect(),
        ),
        Ok(Err(e)) => Observation::Unknown(format!("etcd member list: {e}")),
        Err(_) => Observation::Unknown("etcd member list timed out".into()),
    }
}

/// The member names an etcd cluster's two SRV records point at (absent: no record yet).
async fn srv_targets(c: &RegionClients, file: &EtcdClusterFile) -> Observation<SrvTargets> {
    let aws = &file.spec.aws;
    let zone = aws.hosted_zone.as_deref().unwrap_or_default();
    let id = match hosted_zone_id(c, zone, aws.hosted_zone_id.as_deref()).await {
        Ok(id) => id,
        Err(e) => return Observation::Unknown(e),
    };
    let domain = file.domain();
    let (client, server) = spilo_model::spec::srv_names(&domain);
    let mut out = SrvTargets::default();
    let mut found = false;
    for (name, into) in [(client, &mut out.client), (server, &mut out.server)] {
        let page = match c
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(&id)
            .start_record_name(&name)
            .start_record_type(aws_sdk_route53::types::RrType::Srv)
            .max_items(1)
            .send()
            .await
        {
            Ok(p) => p,
            Err(e) => {
                return Observation::Unknown(format!(
                    "list-resource-record-sets {name}: {}",
                    describe(&e)
                ));
            }
        };
        let Some(set) = page.resource_record_sets().first().filter(|r| {
            r.name().trim_end_matches('.') == name
                && *r.r#type() == aws_sdk_route53::types::RrType::Srv
        }) else {
            continue;
        };
        found = true;
        let suffix = format!(".{domain}");
        *into = set
            .resource_records()
            .iter()
            .filter_map(|r| r.value().split_whitespace().nth(3))
            .map(|target| {
                let host = target.trim_end_matches('.');
                host.strip_suffix(&suffix).unwrap_or(host).to_string()
            })
            .collect();
        into.sort();
    }
    if found {
        Observation::Present(out)
    } else {
        Observation::Absent
    }
}
