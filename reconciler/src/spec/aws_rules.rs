//! Rules of the AWS sections the schema cannot express: ids, regions, bucket names and
//! secrets an instance can read.

use super::diagnostic::Severity;
use super::position::Path;
use super::validate::Reporter;
use spilo_model::spec::{VolumeType, is_image_parameter};

/// The rules of a `spec.aws` section that every kind of file shares: the data volume, the
/// region, the image's shape, the VPC and subnets, extra ingress.
pub(super) fn aws_placement(aws: &spilo_model::spec::AwsSpec, r: &mut Reporter<'_>) {
    let p = Path::parse;
    let st = &aws.storage;
    if st.size < 10 {
        r.at(
            &p("spec.aws.storage.size"),
            Severity::Error,
            format!("must be at least 10 (GB) on AWS, got {}", st.size),
        );
    }
    if st.iops.is_some()
        && !matches!(
            st.volume_type,
            VolumeType::Io1 | VolumeType::Io2 | VolumeType::Gp3
        )
    {
        r.at(
            &p("spec.aws.storage.iops"),
            Severity::Error,
            "only io1, io2 and gp3 volumes take provisioned IOPS",
        );
    }
    if st.throughput.is_some() && st.volume_type != VolumeType::Gp3 {
        r.at(
            &p("spec.aws.storage.throughput"),
            Severity::Error,
            "only gp3 volumes take a throughput",
        );
    }
    if matches!(st.volume_type, VolumeType::Io1 | VolumeType::Io2) && st.iops.is_none() {
        r.at(
            &p("spec.aws.storage.iops"),
            Severity::Error,
            "io1 and io2 volumes need iops",
        );
    }
    // Values the instances' boot script carries: only characters they can need.
    if !aws.region.is_empty() && !is_region(&aws.region) {
        r.at(
            &p("spec.aws.region"),
            Severity::Error,
            format!(
                "must be an AWS region such as eu-central-1, got {:?}",
                aws.region
            ),
        );
    }
    for (i, o) in st.mount_options.iter().enumerate() {
        if !made_of(o, "=_.:/-") {
            r.at(
                &p(&format!("spec.aws.storage.mountOptions[{i}]")),
                Severity::Error,
                format!("must be a mount option (letters, digits and =_.:/-), got {o:?}"),
            );
        }
    }
    for (i, o) in st.mount_options.iter().enumerate() {
        if matches!(o.as_str(), "nobarrier" | "barrier=0") {
            r.at(
                &p(&format!("spec.aws.storage.mountOptions[{i}]")),
                Severity::Warning,
                format!(
                    "{o} turns off write barriers: on power loss committed transactions can \
                     be lost or the filesystem corrupted (XFS no longer accepts it); leave it out"
                ),
            );
        }
    }
    if let Some(i) = &aws.image
        && !(is_image_parameter(i) || is_aws_id(i, "ami"))
    {
        r.at(
            &p("spec.aws.image"),
            Severity::Error,
            format!(
                "must be an AMI id such as ami-0a1b2c3d4e5f60718 (an image carrying spilo) or an SSM parameter holding one, such as /aws/service/debian/release/12/latest/amd64 (a Debian 12 image spilo installs itself on), got {i:?}"
            ),
        );
    }
    if aws.region.is_empty() {
        r.at(&p("spec.aws.region"), Severity::Error, "must not be empty");
    }
    if let Some(v) = &aws.vpc
        && !is_aws_id(v, "vpc")
    {
        r.at(
            &p("spec.aws.vpc"),
            Severity::Error,
            format!("must be a VPC id such as vpc-0a1b2c3d4e5f60718, got {v:?}"),
        );
    }
    for (i, s) in aws.subnets.iter().enumerate() {
        if !is_aws_id(s, "subnet") {
            r.at(
                &p(&format!("spec.aws.subnets[{i}]")),
                Severity::Error,
                format!("must be a subnet id such as subnet-0a1b2c3d4e5f60718, got {s:?}"),
            );
        }
    }
    if aws.vpc.is_none() {
        r.at_key(
            &p("spec.aws"),
            Severity::Error,
            "target aws needs vpc: the security groups and the load balancer live in it",
        );
    }
    if aws.subnets.is_empty() {
        r.at_key(
            &p("spec.aws"),
            Severity::Error,
            "target aws needs subnets (one per availability zone) for the instances and the load balancer",
        );
    }
    for (i, rule) in aws.extra_ingress.iter().enumerate() {
        let at = p(&format!("spec.aws.extraIngress[{i}]"));
        if rule.cidr.is_some() == rule.security_group.is_some() {
            r.at(
                &at,
                Severity::Error,
                "set exactly one of cidr or securityGroup",
            );
        } else if let Some(sg) = &rule.security_group
            && !is_aws_id(sg, "sg")
        {
            r.at(
                &at.key("securityGroup"),
                Severity::Error,
                format!("must be a security group id such as sg-0a1b2c3d4e5f60718, got {sg:?}"),
            );
        } else if let Some(c) = &rule.cidr
            && !super::rules::is_cidr(c)
        {
            r.at(
                &at.key("cidr"),
                Severity::Error,
                format!("must be an IPv4 range such as 10.0.0.0/16, got {c:?}"),
            );
        }
    }
}

/// On AWS every member reads the three secrets from SSM Parameter Store or Secrets Manager
/// with its instance role: an `env:` or `file:` reference, or none, would stop every boot.
pub(super) fn aws_secrets(s: &spilo_model::spec::ClusterSpec, r: &mut Reporter<'_>) {
    for (field, secret, why) in [
        (
            "superuser",
            &s.secrets.superuser,
            "the superuser's password",
        ),
        (
            "replication",
            &s.secrets.replication,
            "the replication password",
        ),
        (
            "restapi",
            &s.secrets.restapi,
            "the REST API token (without it switchover, restart and backups are refused)",
        ),
    ] {
        match secret {
            None => r.at_key(
                &Path::parse("spec.secrets"),
                Severity::Error,
                format!(
                    "target aws needs spec.secrets.{field}, {why}: {{ssm: PARAMETER}} or {{secretsManager: ARN}}"
                ),
            ),
            Some(sr) if sr.env.is_some() || sr.file.is_some() => r.at(
                &Path::parse(&format!("spec.secrets.{field}")),
                Severity::Error,
                "an instance cannot read env or file references: use {ssm: PARAMETER} or {secretsManager: ARN}",
            ),
            Some(_) => {}
        }
    }
    if let Some(ca) = &s.secrets.ca
        && (ca.env.is_some() || ca.file.is_some())
    {
        r.at(
            &Path::parse("spec.secrets.ca"),
            Severity::Error,
            "an instance cannot read env or file references: use {ssm: PARAMETER} or {secretsManager: ARN}",
        );
    }
}

/// Whether `s` is an AWS resource id `<kind>-` followed by 8 or 17 lowercase hex digits.
fn is_aws_id(s: &str, kind: &str) -> bool {
    s.strip_prefix(kind)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|hex| {
            matches!(hex.len(), 8 | 17)
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

/// Whether `s` is non-empty and made only of ASCII letters, digits and `extra`.
fn made_of(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// Whether `s` looks like an AWS region name (`eu-central-1`).
fn is_region(s: &str) -> bool {
    made_of(s, "-")
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_digit())
}

/// Whether `s` follows S3's bucket naming rules for the characters and length.
pub(super) fn is_bucket_name(s: &str) -> bool {
    made_of(s, ".-")
        && (3..=63).contains(&s.len())
        && !s.chars().any(|c| c.is_ascii_uppercase())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}
