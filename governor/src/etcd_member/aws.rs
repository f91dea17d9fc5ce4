//! What the keeper asks AWS: its auto-scaling group's instances (autoscaling), and the
//! cluster's DNS records in Route53: the SRV records `_etcd-client-ssl._tcp.<domain>` and
//! `_etcd-server-ssl._tcp.<domain>` pointing at `<instance id>.<domain>`, and those names' A
//! records. Only the etcd leader's keeper writes them.

use super::decide::{GroupInstance, RecordSet, Seen};
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

/// The records of the cluster today: what the decisions compare ([`RecordSet`]), and each A
/// record as it is (values and TTL), which Route53 needs to delete it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Both SRV records' targets and the members' addresses.
    pub set: RecordSet,
    /// `<id>` -> (values, TTL) of every member name's A record.
    a_records: BTreeMap<String, (Vec<String>, i64)>,
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

    /// Today's records under the domain (the zone lists a domain's names together, in the
    /// order of their reversed labels); `Unknown` when a page cannot be read to its end.
    pub async fn records(&self) -> Seen<Records> {
        let mut out = Records::default();
        let apex = format!("{}.", self.domain);
        let suffix = format!(".{apex}");
        let (client, server) = (
            format!("{}.", self.client_srv()),
            format!("{}.", self.server_srv()),
        );
        let mut start: Option<(String, RrType)> = Some((apex.clone(), RrType::A));
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
                if !n.ends_with(&suffix) && n != apex {
                    left = true;
                    break;
                }
                let values: Vec<String> = set
                    .resource_records()
                    .iter()
                    .map(|r| r.value().to_string())
                    .collect();
                let targets = || -> Vec<String> {
                    let mut t: Vec<String> = values
                        .iter()
                        .filter_map(|v| v.split_whitespace().nth(3))
                        .filter_map(|t| self.member_of(t))
                        .collect();
                    t.sort();
                    t
                };
                match set.r#type() {
                    RrType::Srv if n == client => out.set.client = targets(),
                    RrType::Srv if n == server => out.set.server = targets(),
                    RrType::A => {
                        if let (Some(id), Some(ip)) = (self.member_of(&n), values.first()) {
                            out.set.addresses.insert(id.clone(), ip.clone());
                            out.a_records
                                .insert(id, (values.clone(), set.ttl().unwrap_or(RECORD_TTL)));
                        }
                    }
                    _ => {}
                }
            }
            if !left && page.is_truncated() {
                match (page.next_record_name(), page.next_record_type()) {
                    (Some(n), Some(t)) => start = Some((n.to_string(), t.clone())),
                    _ => {
                        return Seen::Unknown(
                            "the record list was cut without saying where it goes on".into(),
                        );
                    }
                }
            }
        }
        Seen::Known(out)
    }

    /// The instance id of `<id>.<domain>.`: a name one level below the domain whose label is
    /// an instance id (`i-` and hex digits); other names are not the keeper's.
    fn member_of(&self, name: &str) -> Option<String> {
        let first = name
            .trim_end_matches('.')
            .strip_suffix(&format!(".{}", self.domain))?;
        let hex = first.strip_prefix("i-")?;
        (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| first.to_string())
    }

    /// Claims the records for a new cluster of this instance alone: both SRV records and its
    /// A record, created in one change batch only if none exists. `Ok(false)`: another
    /// instance's claim (or a cluster) is there.
    pub async fn claim(&self, me: &str, ip: &str) -> Result<bool, String> {
        let members = BTreeMap::from([(me.to_string(), ip.to_string())]);
        match self
            .change(self.changes(ChangeAction::Create, &members, &Records::default())?)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.contains("already exists") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes the records name exactly `members` (instance id -> address): A records for each,
    /// both SRV records listing them, stale A records deleted as they are; one change batch.
    pub async fn write_records(
        &self,
        members: &BTreeMap<String, String>,
        today: &Records,
    ) -> Result<(), String> {
        self.change(self.changes(ChangeAction::Upsert, members, today)?)
            .await
    }

    fn changes(
        &self,
        action: ChangeAction,
        members: &BTreeMap<String, String>,
        today: &Records,
    ) -> Result<Vec<Change>, String> {
        let mut changes = Vec::new();
        for (id, ip) in members {
            changes.push(change(
                action.clone(),
                &format!("{id}.{}.", self.domain),
                RrType::A,
                vec![ip.clone()],
                RECORD_TTL,
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
                action.clone(),
                &format!("{name}."),
                RrType::Srv,
                values,
                RECORD_TTL,
            )?);
        }
        for (id, (values, ttl)) in &today.a_records {
            if !members.contains_key(id) {
                changes.push(change(
                    ChangeAction::Delete,
                    &format!("{id}.{}.", self.domain),
                    RrType::A,
                    values.clone(),
                    *ttl,
                )?);
            }
        }
        Ok(changes)
    }

    async fn change(&self, changes: Vec<Change>) -> Result<(), String> {
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
    ttl: i64,
) -> Result<Change, String> {
    let records = values
        .into_iter()
        .map(|v| ResourceRecord::builder().value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let set = ResourceRecordSet::builder()
        .name(name)
        .r#type(kind)
        .ttl(ttl)
        .set_resource_records(Some(records))
        .build()
        .map_err(|e| e.to_string())?;
    Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()
        .map_err(|e| e.to_string())
}
