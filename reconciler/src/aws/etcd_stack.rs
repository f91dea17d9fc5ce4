//! Rendering an etcd cluster file (`kind: EtcdCluster`) as its stack `spilo-<name>`: the
//! members' security group (peer traffic among members, client traffic from members and from
//! the clients' security group, which the stack exports for the PostgreSQL clusters that use
//! it), an IAM role with exactly what the keeper does (read its group, keep its records in the
//! hosted zone, read the CA, install the spilo image), a launch template whose user data runs
//! `governor etcd-member` from the spilo image, and an auto-scaling group of `members`. Pure
//! and deterministic, like the PostgreSQL stacks' rendering.

use super::names::{CLUSTER_TAG, PRUNE_TAG, stack_name};
use super::template::StackSpec;
use super::userdata::{BOOT_LIB, DATA_DEVICE, VERSION, quote};
use serde_json::{Value, json};
use spilo_model::governor::{EtcdMemberConfig, TlsConfig};
use spilo_model::spec::{ETCD_CLIENT_PORT, ETCD_PEER_PORT, EtcdClusterFile, Filesystem};
use std::collections::BTreeMap;

/// Where an etcd member's data volume is mounted.
pub const DATA_MOUNT: &str = "/var/lib/spilo-etcd";
/// The tag that tells an etcd cluster's stack from a PostgreSQL cluster's.
pub const KIND_TAG: &str = "spilo:kind";

/// The stack output naming the domain the cluster's SRV records live under.
pub const DOMAIN_OUTPUT: &str = "Domain";

/// The stack output holding the CA the members admit, as a JSON secret reference: clusters
/// of other repositories on this etcd cluster are checked against it.
pub const CA_OUTPUT: &str = "Ca";

pub use super::names::etcd_clients_export as clients_export;

/// The image instances start from (as for PostgreSQL clusters).
pub fn image_id(file: &EtcdClusterFile) -> String {
    file.spec
        .aws
        .image
        .clone()
        .unwrap_or_else(|| super::image::base_image_parameter(architecture(file)))
}

/// The architecture of the members.
pub fn architecture(file: &EtcdClusterFile) -> spilo_model::spec::Architecture {
    spilo_model::spec::Architecture::of_instance_type(&file.spec.aws.instance_type)
}

/// Whether instances install the spilo image from `imageBucket` (they start from a Debian
/// image given by an SSM parameter).
pub fn from_bucket(file: &EtcdClusterFile) -> bool {
    file.spec
        .aws
        .image
        .as_deref()
        .is_none_or(spilo_model::spec::is_image_parameter)
}

/// The keeper's configuration every member runs with (each gives its id and address at start).
pub fn member_config(file: &EtcdClusterFile) -> EtcdMemberConfig {
    let aws = &file.spec.aws;
    EtcdMemberConfig {
        cluster: file.metadata.name.to_string(),
        domain: file.domain(),
        hosted_zone_id: aws.hosted_zone_id.clone().unwrap_or_default(),
        region: aws.region.clone(),
        data_dir: format!("{DATA_MOUNT}/data").into(),
        etcd_bin: "/usr/bin/etcd".into(),
        client_port: ETCD_CLIENT_PORT,
        peer_port: ETCD_PEER_PORT,
        interval: 5,
        learner_start_grace: 120,
        tls: TlsConfig::new(
            format!("{DATA_MOUNT}/ca.crt").into(),
            super::userdata::secret(&file.spec.secrets.ca),
        ),
    }
}

/// The user data: install the image (on a Debian image), write the keeper's configuration,
/// check the version, mount the data volume, run the keeper.
pub fn user_data(file: &EtcdClusterFile) -> String {
    let storage = &file.spec.aws.storage;
    let fs = match storage.filesystem {
        Filesystem::Ext4 => "ext4",
        Filesystem::Xfs => "xfs",
    };
    let install = match (&file.spec.image_bucket, from_bucket(file)) {
        (Some(bucket), true) => super::userdata::install_image_from(
            &file.spec.aws.region,
            &stack_name(file.metadata.name.as_str()),
            &format!("s3://{bucket}/{}", super::image::key(architecture(file))),
        ),
        _ => String::new(),
    };
    format!(
        "#!/bin/bash\n\
         # spilo etcd member of {name}, rendered by spilo {VERSION} from the etcd cluster file.\n\
         # The spilo image runs this at every boot; the functions come from the image.\n\
         set -euo pipefail\n\
         {install}\
         . {BOOT_LIB}\n\
         spilo_write_etcd_config <<'SPILO_CONFIG'\n{config}SPILO_CONFIG\n\
         spilo_require_version {VERSION}\n\
         spilo_mount_data {DATA_DEVICE} {fs} {opts} {DATA_MOUNT} etcd\n\
         spilo_run_etcd_member\n",
        name = file.metadata.name,
        config = member_config(file).to_yaml(),
        opts = quote(&storage.mount_options.join(",")),
    )
}

/// The role's inline policies.
pub fn policies(file: &EtcdClusterFile) -> Vec<Value> {
    let aws = &file.spec.aws;
    let zone = aws.hosted_zone_id.clone().unwrap_or_default();
    let mut statements = vec![
        // The group's instances; these actions take no resource but `*`.
        json!({
            "Effect": "Allow",
            "Action": [
                "autoscaling:DescribeAutoScalingInstances",
                "autoscaling:DescribeAutoScalingGroups",
            ],
            "Resource": "*",
        }),
        json!({
            "Effect": "Allow",
            "Action": ["route53:ListResourceRecordSets", "route53:ChangeResourceRecordSets"],
            "Resource": format!("arn:aws:route53:::hostedzone/{zone}"),
        }),
    ];
    statements.extend(super::policies::secret_statements(
        &[&file.spec.secrets.ca],
        file.spec.secrets.kms_key.as_deref(),
    ));
    if let (Some(bucket), true) = (&file.spec.image_bucket, from_bucket(file)) {
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": format!("arn:aws:s3:::{bucket}/{}*", super::image::prefix()),
        }));
    }
    vec![json!({
        "PolicyName": "etcd-member",
        "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
    })]
}

/// The stack.
pub fn render(file: &EtcdClusterFile) -> StackSpec {
    let aws = &file.spec.aws;
    let name = file.metadata.name.as_str();
    let vpc = aws.vpc.clone().unwrap_or_default();
    let mut resources = serde_json::Map::new();
    resources.insert(
        "ClientSecurityGroup".into(),
        json!({"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": format!("spilo etcd {name}: its clients"),
            "VpcId": vpc,
        }}),
    );
    let mut ingress: Vec<Value> = Vec::new();
    for rule in &aws.extra_ingress {
        ingress.extend(rule_ingress(rule));
    }
    resources.insert(
        "MemberSecurityGroup".into(),
        json!({"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": format!("spilo etcd {name}: members"),
            "VpcId": vpc,
            "SecurityGroupIngress": ingress,
        }}),
    );
    for (id, port, source) in [
        ("MemberIngressPeer", ETCD_PEER_PORT, "MemberSecurityGroup"),
        (
            "MemberIngressClient",
            ETCD_CLIENT_PORT,
            "MemberSecurityGroup",
        ),
        ("ClientIngress", ETCD_CLIENT_PORT, "ClientSecurityGroup"),
    ] {
        resources.insert(
            id.into(),
            json!({"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
                "GroupId": {"Fn::GetAtt": ["MemberSecurityGroup", "GroupId"]},
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "SourceSecurityGroupId": {"Fn::GetAtt": [source, "GroupId"]},
            }}),
        );
    }
    super::template::instance_resources(
        &mut resources,
        &super::template::Instances {
            policies: policies(file),
            extra_policies: &aws.extra_policies,
            storage: &aws.storage,
            tags: tags(file)
                .iter()
                .map(|(k, v)| json!({"Key": k, "Value": v}))
                .collect(),
            user_data: user_data(file),
            security_groups: vec![json!({"Fn::GetAtt": ["MemberSecurityGroup", "GroupId"]})],
        },
    );
    resources.insert(
        "AutoScalingGroup".into(),
        json!({"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": {"Ref": "Members"},
            "MaxSize": {"Ref": "Members"},
            "DesiredCapacity": {"Ref": "Members"},
            "LaunchTemplate": {
                "LaunchTemplateId": {"Ref": "LaunchTemplate"},
                "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
            },
            "VPCZoneIdentifier": aws.subnets,
            "HealthCheckType": "EC2",
            "HealthCheckGracePeriod": 300,
            "Tags": [{"Key": "Name", "Value": stack_name(name), "PropagateAtLaunch": true}],
        }}),
    );
    let image = image_id(file);
    let image_type = if spilo_model::spec::is_image_parameter(&image) {
        "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    } else {
        "AWS::EC2::Image::Id"
    };
    let template = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!("spilo etcd cluster {name}; managed by spilo from git, do not edit by hand"),
        "Parameters": {
            "Members": {"Type": "Number", "AllowedValues": ["3", "5"], "Description": "etcd members"},
            "InstanceType": {"Type": "String", "Description": "EC2 instance type"},
            "ImageId": {"Type": image_type, "Description": "The image instances start from"},
        },
        "Resources": resources,
        "Outputs": {
            "ClientSecurityGroup": {
                "Value": {"Fn::GetAtt": ["ClientSecurityGroup", "GroupId"]},
                "Export": {"Name": clients_export(name)},
            },
            DOMAIN_OUTPUT: {"Value": file.domain()},
            CA_OUTPUT: {"Value": serde_json::to_string(&file.spec.secrets.ca).unwrap_or_default()},
        },
    });
    let parameters = BTreeMap::from([
        ("Members".to_string(), file.spec.members.to_string()),
        ("InstanceType".to_string(), aws.instance_type.clone()),
        ("ImageId".to_string(), image),
    ]);
    let mut stack_tags = tags(file);
    stack_tags.insert(PRUNE_TAG.into(), file.spec.reconcile.prune.to_string());
    StackSpec {
        stack_name: stack_name(name),
        region: aws.region.clone(),
        template,
        parameters,
        tags: stack_tags,
    }
}

/// The etcd cluster's tags: `spec.tags`, labels, team, name and kind.
fn tags(file: &EtcdClusterFile) -> BTreeMap<String, String> {
    let mut tags = file.spec.tags.clone();
    for (k, v) in &file.metadata.labels {
        tags.insert(format!("spilo:label:{k}"), v.clone());
    }
    if let Some(team) = &file.metadata.team {
        tags.insert("spilo:team".into(), team.clone());
    }
    tags.insert(CLUSTER_TAG.into(), file.metadata.name.to_string());
    tags.insert(KIND_TAG.into(), "EtcdCluster".into());
    tags
}

/// Ingress of an extra rule to etcd's client port.
fn rule_ingress(rule: &spilo_model::spec::IngressRule) -> Vec<Value> {
    let mut v =
        json!({"IpProtocol": "tcp", "FromPort": ETCD_CLIENT_PORT, "ToPort": ETCD_CLIENT_PORT});
    if let Some(c) = &rule.cidr {
        v["CidrIp"] = json!(c);
    }
    if let Some(sg) = &rule.security_group {
        v["SourceSecurityGroupId"] = json!(sg);
    }
    vec![v]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(extra: &str) -> EtcdClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {{name: etcd-main, team: platform}}\nspec:\n  \
             aws: {{region: eu-central-1, vpc: vpc-1, subnets: [subnet-a], hostedZone: db.example.com, hostedZoneId: Z1}}\n  \
             imageBucket: images\n  secrets: {{ca: {{ssm: /spilo/ca}}}}\n{extra}"
        ))
        .expect("valid file")
    }

    #[test]
    fn a_stack_of_members_that_only_members_and_clients_reach() {
        let s = render(&file(""));
        assert_eq!(s.stack_name, "spilo-etcd-main");
        assert_eq!(s.parameters["Members"], "3");
        assert_eq!(s.tags[KIND_TAG], "EtcdCluster");
        let r = &s.template["Resources"];
        for (id, port, source) in [
            ("MemberIngressPeer", 2380, "MemberSecurityGroup"),
            ("MemberIngressClient", 2379, "MemberSecurityGroup"),
            ("ClientIngress", 2379, "ClientSecurityGroup"),
        ] {
            assert_eq!(r[id]["Properties"]["FromPort"], port, "{id}");
            assert_eq!(
                r[id]["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0], source,
                "{id}"
            );
        }
        assert_eq!(
            s.template["Outputs"]["ClientSecurityGroup"]["Export"]["Name"],
            "spilo-etcd-main-clients"
        );
        assert_eq!(
            s.template["Outputs"]["Domain"]["Value"],
            "etcd-main.db.example.com"
        );
        // Deterministic.
        assert_eq!(render(&file("")), s);
    }

    #[test]
    fn the_role_reads_its_group_writes_only_its_zone_and_reads_only_its_ca() {
        let p = policies(&file(""));
        let statements = &p[0]["PolicyDocument"]["Statement"];
        let text = statements.to_string();
        assert!(text.contains("arn:aws:route53:::hostedzone/Z1"), "{text}");
        assert!(
            text.contains("autoscaling:DescribeAutoScalingGroups"),
            "{text}"
        );
        assert!(text.contains("parameter/spilo/ca"), "{text}");
        assert!(
            text.contains(&format!(
                "arn:aws:s3:::images/{}*",
                super::super::image::prefix()
            )),
            "{text}"
        );
        assert!(!text.contains("s3:PutObject"), "{text}");
    }

    #[test]
    fn the_user_data_runs_the_keeper_with_a_configuration_it_reads_back() {
        let u = user_data(&file(""));
        assert!(u.contains("spilo_run_etcd_member"), "{u}");
        assert!(u.contains(&format!("{DATA_MOUNT} etcd")), "{u}");
        let config = u
            .split("<<'SPILO_CONFIG'\n")
            .nth(1)
            .and_then(|r| r.split("SPILO_CONFIG\n").next())
            .expect("config in the user data");
        let c = EtcdMemberConfig::parse(config).expect("the keeper reads it");
        assert_eq!(c.domain, "etcd-main.db.example.com");
        assert_eq!(c.hosted_zone_id, "Z1");
        assert_eq!(c.tls.ca_key.ssm.as_deref(), Some("/spilo/ca"));
        // Debian's image installs the spilo image of this version from the bucket.
        assert!(
            u.contains(&format!(
                "s3://images/{}",
                super::super::image::key(architecture(&file("")))
            )),
            "{u}"
        );
    }
}
