//! The second kind of file under `clusters/`: `kind: EtcdCluster`, an etcd cluster on AWS that
//! PostgreSQL clusters of the same repository use (`spec.dcs.etcdCluster`). Its members run
//! from the spilo image; each keeps the etcd membership equal to the auto-scaling group's
//! instances and the leader keeps the SRV records under [`EtcdClusterFile::domain`] equal to
//! the members.
//!
//! ```yaml
//! apiVersion: spilo/v1
//! kind: EtcdCluster
//! metadata:
//!   name: etcd-main
//! spec:
//!   members: 3
//!   aws: {region: eu-central-1, vpc: vpc-0abc, subnets: [subnet-0a], hostedZone: db.example.com}
//!   secrets: {ca: {secretsManager: arn:aws:secretsmanager:...:secret:spilo/ca}}
//! ```

use super::{ApiVersion, AwsSpec, Metadata, SecretRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The client port of etcd members on AWS.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// The peer port of etcd members on AWS.
pub const ETCD_PEER_PORT: u16 = 2380;

/// A whole etcd cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(
    title = "spilo EtcdCluster",
    description = "An etcd cluster on AWS for the PostgreSQL clusters of this repository."
)]
pub struct EtcdClusterFile {
    /// Always `spilo/v1`.
    pub api_version: ApiVersion,
    /// Always `EtcdCluster`.
    pub kind: EtcdKind,
    /// Name and ownership. The name is the stack suffix (`spilo-etcd-<name>`) and the first
    /// label of the SRV domain.
    pub metadata: Metadata,
    /// What the etcd cluster should be.
    pub spec: EtcdSpec,
}

/// The kind of an etcd cluster file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EtcdKind {
    /// An etcd cluster.
    EtcdCluster,
}

/// What the etcd cluster should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Number of etcd members: 3 (survives one lost member) or 5 (survives two).
    #[serde(default = "d_members")]
    #[schemars(range(min = 3, max = 5))]
    pub members: u32,
    /// Where the members run: region, VPC, subnets, instance type, image, data volume, and
    /// the hosted zone the SRV records are kept in (`hostedZone` is required).
    pub aws: AwsSpec,
    /// The CA every connection is checked against (required): peers and clients present a
    /// certificate issued by it. PostgreSQL clusters on this etcd cluster use the same CA.
    pub secrets: EtcdSecrets,
    /// The S3 bucket `spilo apply` uploads the spilo image to, which instances started from a
    /// Debian image install at their first boot (not needed when `aws.image` is an AMI id of
    /// an image that carries spilo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bucket: Option<String>,
    /// Delete the stack when the file is removed (`reconcile.prune`).
    #[serde(default)]
    pub reconcile: EtcdReconcile,
    /// Tags on every cloud resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

fn d_members() -> u32 {
    3
}

/// The etcd cluster's secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdSecrets {
    /// The CA's certificate and private key as one PEM bundle (Secrets Manager or SSM
    /// SecureString), read by the members' role only.
    pub ca: SecretRef,
    /// The KMS key (ARN) that encrypts the CA's secret when it is not the account's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

/// How the reconciler treats the etcd cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdReconcile {
    /// Delete the stack when its file is removed.
    #[serde(default)]
    pub prune: bool,
}

impl EtcdClusterFile {
    /// The domain the SRV records live under: `<name>.<hostedZone>`.
    pub fn domain(&self) -> String {
        let zone = self
            .spec
            .aws
            .hosted_zone
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('.');
        format!("{}.{zone}", self.metadata.name)
    }
}

/// The SRV record names of an etcd cluster over TLS under `domain`: (client, server).
pub fn srv_names(domain: &str) -> (String, String) {
    let domain = domain.trim_end_matches('.');
    (
        format!("_etcd-client-ssl._tcp.{domain}"),
        format!("_etcd-server-ssl._tcp.{domain}"),
    )
}

/// The DNS name of member `instance` under `domain`: what the SRV records point at and what
/// its certificate names.
pub fn member_host(instance: &str, domain: &str) -> String {
    format!("{instance}.{}", domain.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_file_is_a_three_member_cluster_with_its_domain_under_the_zone() {
        let f: EtcdClusterFile = serde_json::from_value(serde_json::json!({
            "apiVersion": "spilo/v1",
            "kind": "EtcdCluster",
            "metadata": {"name": "etcd-main"},
            "spec": {
                "aws": {"region": "eu-central-1", "hostedZone": "db.example.com."},
                "secrets": {"ca": {"ssm": "/spilo/ca"}}
            }
        }))
        .expect("short file");
        assert_eq!(f.spec.members, 3);
        assert_eq!(f.domain(), "etcd-main.db.example.com");
        assert_eq!(
            srv_names(&f.domain()),
            (
                "_etcd-client-ssl._tcp.etcd-main.db.example.com".to_string(),
                "_etcd-server-ssl._tcp.etcd-main.db.example.com".to_string()
            )
        );
        assert_eq!(
            member_host("i-0abc", &f.domain()),
            "i-0abc.etcd-main.db.example.com"
        );
    }
}
