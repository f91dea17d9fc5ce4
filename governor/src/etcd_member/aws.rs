//! What the keeper asks AWS: its auto-scaling group's instances (autoscaling), and the
//! cluster's DNS records in Route53: the SRV records `_etcd-client-ssl._tcp.<domain>` and
//! `_etcd-server-ssl._tcp.<domain>` pointing at `<instance id>.<domain>`, and those names' A
//! records. Only the etcd leader's keeper writes them.

use super::decide::{GroupInstance, Seen};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use std::collections::BTreeMap;

/// The TTL of the records: short, so clients follow a replaced member quickly.
pub const RECORD_TTL: i64 = 10;

/// The AWS clients of one keeper.
pub struct Aws {
    autoscaling: aws_sdk_autoscaling::Client,
    route53: aws_sdk_route53::Client,
    zone: String,
    domain: String,
    client_port: u16,
    peer_port: u16,
}

/// The records of the cluster today: member name (instance id) -> address, for the names the
/// client SRV record points at, and every A record under the domain (to delete stale ones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// The instance ids the client SRV record points at, in its order.
    pub targets: Vec<String>,
    /// `<id>` -> IPv4 address of every `<id>.<domain>` A record.
    pub addresses: BTreeMap<String, String>,
}

impl Aws {
    /// Clients for `region`; records under `domain` in hosted zone `zone`.
    pub async fn new(
        region: &str,
        zone: &str,
        domain: &str,
        client_port: u16,
        peer_port: u16,
    ) -> Self {
        let sdk = crate::aws::sdk_config(region).await;
        Self {
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            route53: aws_sdk_route53::Client::new(&sdk),
            zone: zone.trim_start_matches("/hostedzone/").to_string(),
            domain: domain.trim_end_matches('.').to_string(),
            client_port,
            peer_port,
        }
    }

    /// The instances of the group `me` belongs to.
    pub async fn group(&self, me: &str) -> Seen<Vec<GroupInstance>> {
        let mine = match self
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(me)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Seen::Unknown(crate::aws::describe(&e)),
        };
        let Some(name) = mine
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.auto_scaling_group_name())
        else {
            // Not (yet) attached to a group: it belongs to nothing, so it starts nothing.
            return Seen::Known(Vec::new());
        };
        let groups = match self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Seen::Unknown(crate::aws::describe(&e)),
        };
        let Some(group) = groups.auto_scaling_groups().first() else {
            return Seen::Unknown(format!("the auto-scaling group {name} is not listed"));
        };
        Seen::Known(
            group
                .instances()
                .iter()
                .filter_map(|i| {
                    let state = i.lifecycle_state()?.as_str().to_string();
                    Some(GroupInstance {
                        id: i.instance_id()?.to_string(),
                        live: state.starts_with("Pending") || state == "InService",
                    })
                })
                .collect(),
        )
    }

    fn client_srv(&self) -> String {
        spilo_model::spec::srv_names(&self.domain).0
    }

    fn server_srv(&self) -> String {
        spilo_model::spec::srv_names(&self.domain).1
    }

    /// Today's records under the domain (the zone lists a domain's names together).
    pub async fn records(&self) -> Seen<Records> {
        let mut out = Records::default();
        let suffix = format!(".{}.", self.domain);
        let mut start: Option<(String, RrType)> = Some((format!("{}.", self.domain), RrType::A));
        while let Some((name, kind)) = start.take() {
            let page = match self
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone)
                .start_record_name(&name)
                .start_record_type(kind)
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) => return Seen::Unknown(crate::aws::describe(&e)),
            };
            let mut left = false;
            for set in page.resource_record_sets() {
                let n = set.name().replace("\\052", "*");
                if !n.ends_with(&suffix) && n != format!("{}.", self.domain) {
                    left = true;
                    break;
                }
                let values = set.resource_records().iter().map(|r| r.value().to_string());
                if *set.r#type() == RrType::Srv && n == format!("{}.", self.client_srv()) {
                    // "priority weight port target."
                    out.targets = values
                        .filter_map(|v| v.split_whitespace().nth(3).map(str::to_string))
                        .filter_map(|t| self.member_of(&t))
                        .collect();
                } else if *set.r#type() == RrType::A
                    && let Some(id) = self.member_of(&n)
                    && let Some(ip) = set.resource_records().first()
                {
                    out.addresses.insert(id, ip.value().to_string());
                }
            }
            if !left
                && page.is_truncated()
                && let (Some(n), Some(t)) = (page.next_record_name(), page.next_record_type())
            {
                start = Some((n.to_string(), t.clone()));
            }
        }
        Seen::Known(out)
    }

    /// The instance id of `<id>.<domain>.`, for names one level below the domain.
    fn member_of(&self, name: &str) -> Option<String> {
        let first = name
            .trim_end_matches('.')
            .strip_suffix(&format!(".{}", self.domain))?;
        (!first.contains('.') && !first.starts_with('_')).then(|| first.to_string())
    }

    /// Makes the records name exactly `members` (instance id -> address): A records for each,
    /// both SRV records listing them, stale A records deleted; one change batch.
    pub async fn write_records(
        &self,
        members: &BTreeMap<String, String>,
        today: &Records,
    ) -> Result<(), String> {
        let mut changes = Vec::new();
        for (id, ip) in members {
            changes.push(change(
                ChangeAction::Upsert,
                &format!("{id}.{}.", self.domain),
                RrType::A,
                vec![ip.clone()],
            )?);
        }
        for (name, port) in [
            (self.client_srv(), self.client_port),
            (self.server_srv(), self.peer_port),
        ] {
            let values = members
                .keys()
                .map(|id| format!("0 0 {port} {id}.{}.", self.domain))
                .collect();
            changes.push(change(
                ChangeAction::Upsert,
                &format!("{name}."),
                RrType::Srv,
                values,
            )?);
        }
        for (id, ip) in &today.addresses {
            if !members.contains_key(id) {
                changes.push(change(
                    ChangeAction::Delete,
                    &format!("{id}.{}.", self.domain),
                    RrType::A,
                    vec![ip.clone()],
                )?);
            }
        }
        self.route53
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone)
            .change_batch(
                ChangeBatch::builder()
                    .set_changes(Some(changes))
                    .comment("spilo etcd members")
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| crate::aws::describe(&e))?;
        Ok(())
    }
}

fn change(
    action: ChangeAction,
    name: &str,
    kind: RrType,
    values: Vec<String>,
) -> Result<Change, String> {
    let records = values
        .into_iter()
        .map(|v| ResourceRecord::builder().value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let set = ResourceRecordSet::builder()
        .name(name)
        .r#type(kind)
        .ttl(RECORD_TTL)
        .set_resource_records(Some(records))
        .build()
        .map_err(|e| e.to_string())?;
    Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()
        .map_err(|e| e.to_string())
}
