//! PostgreSQL clusters on an etcd cluster that is in the account but not in the commit
//! (`dcs.etcdCluster` naming another repository's etcd cluster). Its stack, found by name in
//! the cluster's region, gives the domain the members find etcd under; it must be an etcd
//! cluster's stack and hold the cluster's own CA. A cluster whose etcd cluster is missing or
//! wrong gets the reason as its (unknown) etcd observation, so nothing of it is planned.

use super::clients::Clients;
use super::etcd_stack::{CA_OUTPUT, DOMAIN_OUTPUT, KIND_TAG};
use super::observe::full_stack;
use super::observed::{Observation, ObservedStack};
use super::template::stack_name;
use crate::desired::Desired;
use spilo_model::spec::{ClusterFile, SecretRef, Target};
use std::collections::BTreeMap;

/// Gives every AWS cluster on an etcd cluster outside the commit that cluster's domain as its
/// `dcs.discoveryDomain`; returns, by cluster name, why it could not for the others.
pub async fn resolve(clients: &Clients, desired: &mut Desired) -> BTreeMap<String, String> {
    let mut unresolved = BTreeMap::new();
    for (_, f) in desired.clusters.iter_mut() {
        let (Some(aws), Some(dcs)) = (&f.spec.aws, &f.spec.dcs) else {
            continue;
        };
        if f.spec.target != Target::Aws || dcs.discovery_domain.is_some() {
            continue;
        }
        let Some(etcd) = &dcs.etcd_cluster else {
            continue;
        };
        let c = clients.region(&aws.region).await;
        let stack = Observation::of_read(full_stack(&c, &stack_name(etcd.as_str())).await);
        match domain_from(f, &stack) {
            Ok(domain) => {
                if let Some(dcs) = f.spec.dcs.as_mut() {
                    dcs.discovery_domain = Some(domain);
                }
            }
            Err(why) => {
                unresolved.insert(f.metadata.name.to_string(), why);
            }
        }
    }
    unresolved
}

/// The domain of the etcd cluster `file` names, from that cluster's stack as observed; or why
/// the file cannot run on it.
pub fn domain_from(
    file: &ClusterFile,
    stack: &Observation<ObservedStack>,
) -> Result<String, String> {
    let etcd = file
        .spec
        .dcs
        .as_ref()
        .and_then(|d| d.etcd_cluster.as_ref())
        .map(|n| n.to_string())
        .unwrap_or_default();
    let region = file
        .spec
        .aws
        .as_ref()
        .map(|a| a.region.as_str())
        .unwrap_or_default();
    let name = stack_name(&etcd);
    let s = match stack {
        Observation::Present(s) => s,
        Observation::Absent => {
            return Err(format!(
                "etcd cluster {etcd} is neither in this commit nor in the account (no stack {name} in {region})"
            ));
        }
        Observation::Unknown(why) => {
            return Err(format!(
                "etcd cluster {etcd}: cannot read stack {name}: {why}"
            ));
        }
    };
    if s.tags.get(KIND_TAG).map(String::as_str) != Some("EtcdCluster") {
        return Err(format!(
            "etcd cluster {etcd}: stack {name} in {region} is not an etcd cluster's (tag {KIND_TAG} is not EtcdCluster)"
        ));
    }
    let Some(domain) = s.outputs.get(DOMAIN_OUTPUT).filter(|d| !d.is_empty()) else {
        return Err(format!(
            "etcd cluster {etcd}: stack {name} has no output {DOMAIN_OUTPUT} yet ({})",
            s.status
        ));
    };
    let theirs: Option<SecretRef> = s
        .outputs
        .get(CA_OUTPUT)
        .and_then(|v| serde_json::from_str(v).ok());
    if theirs.as_ref() != file.spec.secrets.ca.as_ref() {
        return Err(format!(
            "etcd cluster {etcd} admits certificates of its CA {}, this cluster's spec.secrets.ca is {} (they must be the same)",
            theirs
                .as_ref()
                .map(crate::spec::describe_secret)
                .unwrap_or_else(|| "(not recorded in its stack)".into()),
            file.spec
                .secrets
                .ca
                .as_ref()
                .map(crate::spec::describe_secret)
                .unwrap_or_else(|| "(none)".into()),
        ));
    }
    Ok(domain.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::observed::ObservedStack;

    fn orders(ca: &str) -> ClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  instances: 2\n  target: aws\n  \
             dcs: {{etcdCluster: etcd-main}}\n  secrets: {{ca: {ca}}}\n  \
             aws: {{region: eu-west-1, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d]}}\n"
        ))
        .expect("valid")
    }

    fn etcd_stack() -> Observation<ObservedStack> {
        let file: spilo_model::spec::EtcdClusterFile = serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {name: etcd-main}\nspec:\n  \
             aws: {region: eu-west-1, vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d], hostedZone: db.example.com, image: ami-0a1b2c3d}\n  \
             secrets: {ca: {ssm: /spilo/ca}}\n",
        )
        .expect("valid");
        let rendered = crate::aws::etcd_stack::render(&file);
        // CloudFormation resolves the outputs: here they are plain strings already.
        let outputs = rendered.template["Outputs"]
            .as_object()
            .expect("outputs")
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v["Value"].as_str()?.to_string())))
            .collect();
        let mut s = ObservedStack::as_rendered(rendered, "id".into(), "CREATE_COMPLETE");
        s.outputs = outputs;
        Observation::Present(s)
    }

    #[test]
    fn the_etcd_stack_in_the_account_gives_its_domain_to_a_cluster_of_its_ca() {
        assert_eq!(
            domain_from(&orders("{ssm: /spilo/ca}"), &etcd_stack()),
            Ok("etcd-main.db.example.com".into())
        );
    }

    #[test]
    fn a_missing_foreign_or_other_ca_etcd_stack_is_refused_with_the_reason() {
        let f = orders("{ssm: /spilo/ca}");
        assert_eq!(
            domain_from(&f, &Observation::Absent),
            Err("etcd cluster etcd-main is neither in this commit nor in the account (no stack spilo-etcd-main in eu-west-1)".into())
        );
        assert_eq!(
            domain_from(&f, &Observation::Unknown("throttled".into())),
            Err("etcd cluster etcd-main: cannot read stack spilo-etcd-main: throttled".into())
        );
        let mut postgres = etcd_stack();
        if let Observation::Present(s) = &mut postgres {
            s.tags.remove(KIND_TAG);
        }
        let why = domain_from(&f, &postgres).expect_err("not an etcd stack");
        assert!(why.contains("is not an etcd cluster's"), "{why}");
        let why = domain_from(&orders("{ssm: /other/ca}"), &etcd_stack()).expect_err("other CA");
        assert_eq!(
            why,
            "etcd cluster etcd-main admits certificates of its CA {ssm: /spilo/ca}, this cluster's spec.secrets.ca is {ssm: /other/ca} (they must be the same)"
        );
    }
}
