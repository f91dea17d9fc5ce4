//! The `spec.aws` section: instance type, image, the EBS data volume, subnets, hosted zone,
//! extra ingress and IAM policies.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// AWS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsSpec {
    /// The region, e.g. `eu-central-1`.
    pub region: String,
    /// EC2 instance type.
    #[serde(default = "d_instance_type")]
    pub instance_type: String,
    /// The image instances start from: an SSM parameter holding a Debian 12 AMI (default:
    /// Debian's public `/aws/service/debian/release/12/latest/<amd64|arm64>`, following the
    /// instance type), on which the instances install the spilo image of the CLI's version
    /// from `backup.bucket`; or an AMI id (`ami-...`) of an image that carries spilo already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The data volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// The VPC the instances, the load balancer and the security groups live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// Subnets of that VPC for the instances and the load balancer (one per availability zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    /// The Route53 hosted zone the DNS name is created in, e.g. `db.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_zone: Option<String>,
    /// The hosted zone's id (`Z0123456789ABCDEFGHIJ`): the record is created by id, which is
    /// unambiguous when a private and a public zone share the name (split horizon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_zone_id: Option<String>,
    /// More sources allowed to reach PostgreSQL (bastions, monitoring).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ingress: Vec<IngressRule>,
    /// Minutes the stack waits for every member to signal that it runs before the creation
    /// fails (CloudFormation allows up to 720). Default 15, or 60 when the cluster is a clone
    /// (restoring and replaying an archive takes longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 720))]
    pub boot_timeout: Option<u32>,
    /// More IAM policy ARNs for the instances' role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_policies: Vec<String>,
}

/// The instance type when a file names none: a current general-purpose type with enough
/// memory for a small database (burstable micro types are not).
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

fn d_instance_type() -> String {
    DEFAULT_INSTANCE_TYPE.into()
}

/// A processor architecture of instances and images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// x86-64.
    Amd64,
    /// AWS Graviton (64-bit ARM).
    Arm64,
}

impl Architecture {
    /// The name used in image names and parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Amd64 => "amd64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The architecture of an EC2 instance type: Graviton families carry a `g` right after
    /// their generation (`m7g`, `c7gn`, `r8g`, `t4g`, `x2gd`, `im4gn`) and `a1`; the rest
    /// are x86-64.
    pub fn of_instance_type(instance_type: &str) -> Self {
        let family = instance_type.split('.').next().unwrap_or_default();
        let after_generation = family
            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
            .trim_start_matches(|c: char| c.is_ascii_digit());
        if family == "a1" || after_generation.starts_with('g') {
            Architecture::Arm64
        } else {
            Architecture::Amd64
        }
    }
}

/// The EBS data volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size in GB (10 or more).
    #[serde(default = "d_size")]
    pub size: u32,
    /// Volume type.
    #[serde(default, rename = "type")]
    pub volume_type: VolumeType,
    /// Provisioned IOPS (io1, io2, gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u32>,
    /// Throughput in MiB/s (gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u32>,
    /// A snapshot to create the volume from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Filesystem of the data partition.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Mount options.
    #[serde(default = "d_mount_options")]
    pub mount_options: Vec<String>,
}

fn d_size() -> u32 {
    10
}
fn d_mount_options() -> Vec<String> {
    vec!["noatime".into(), "nodiratime".into()]
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: d_size(),
            volume_type: VolumeType::default(),
            iops: None,
            throughput: None,
            snapshot_id: None,
            filesystem: Filesystem::default(),
            mount_options: d_mount_options(),
        }
    }
}

/// EBS volume types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// General purpose SSD, the default.
    #[default]
    Gp3,
    /// Older general purpose SSD.
    Gp2,
    /// Provisioned IOPS SSD.
    Io1,
    /// Provisioned IOPS SSD, newer.
    Io2,
    /// Magnetic.
    Standard,
}

/// Filesystems for the data volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4, the default.
    #[default]
    Ext4,
    /// XFS.
    Xfs,
}

/// A source allowed to reach PostgreSQL: exactly one of `cidr` or `securityGroup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// An IPv4 range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// A security group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
    /// Ports (default 5432).
    #[serde(default = "d_ingress_ports")]
    pub ports: Vec<u16>,
}

fn d_ingress_ports() -> Vec<u16> {
    vec![5432]
}

/// Whether an `aws.image` value names an SSM parameter (`/...`) rather than an AMI id.
pub fn is_image_parameter(image: &str) -> bool {
    image.starts_with('/')
}

#[cfg(test)]
mod tests {
    use super::Architecture;

    #[test]
    fn graviton_families_are_arm64_and_the_rest_amd64() {
        for t in [
            "m7g.large",
            "c7gn.xlarge",
            "t4g.micro",
            "x2gd.metal",
            "im4gn.large",
            "a1.medium",
            "g5g.xlarge",
            "r8g.2xlarge",
        ] {
            assert_eq!(
                Architecture::of_instance_type(t),
                Architecture::Arm64,
                "{t}"
            );
        }
        for t in [
            "t3.medium",
            "m7i.large",
            "m7i-flex.large",
            "g5.xlarge",
            "r6id.large",
            "u-6tb1.metal",
            "c5n.large",
        ] {
            assert_eq!(
                Architecture::of_instance_type(t),
                Architecture::Amd64,
                "{t}"
            );
        }
    }
}
