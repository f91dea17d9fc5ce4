//! Rendering: one cluster file becomes one CloudFormation stack `spilo-<name>`: its template
//! (JSON, deterministic: the same file always renders the same bytes), its parameters and
//! its tags. Pure; `cfn-lint` checks the output in the tests.
//!
//! Resources: the members' security group (PostgreSQL and REST API between members and from
//! the load balancer, plus `extraIngress`), the load balancer's security group, an IAM role
//! and instance profile (S3 access only under the cluster's WAL prefix), a launch template
//! (image, instance type, EBS data volume, user data carrying the governor configuration),
//! an auto-scaling group with min = max = desired = `instances`, a load balancer per enabled
//! endpoint whose health check asks each governor's REST API who is primary (or a streaming
//! replica), and a Route53 record `<dns name>.<hostedZone>` pointing at the primary's.

use super::userdata;
use serde_json::{Value, json};
use spilo_model::spec::{ClusterFile, IngressRule, Routing, StorageSpec};
use std::collections::BTreeMap;

pub use super::names::{
    API_PORT, CLUSTER_TAG, POSTGRES_PORT, PROXY_PATH, PROXY_PORT, PRUNE_TAG, dns_label, dns_name,
    stack_name,
};

/// The image instances start from: the file's `aws.image` (an AMI id, or an SSM parameter
/// holding one), else Debian 12's public parameter for the instance type's architecture.
pub fn image_id(file: &ClusterFile) -> String {
    file.spec
        .aws
        .as_ref()
        .and_then(|a| a.image.clone())
        .unwrap_or_else(|| super::image::base_image_parameter(super::image::architecture(file)))
}

/// How long the stack waits for every member's signal before it fails, as CloudFormation
/// spells it: `aws.bootTimeout`, else 15 minutes, 60 for a clone.
pub fn boot_timeout(file: &ClusterFile) -> String {
    let minutes = file
        .spec
        .aws
        .as_ref()
        .and_then(|a| a.boot_timeout)
        .unwrap_or(if file.spec.bootstrap.clone.is_some() {
            60
        } else {
            15
        });
    format!("PT{minutes}M")
}

/// What one cluster should be in CloudFormation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StackSpec {
    /// `spilo-<name>`.
    pub stack_name: String,
    /// The region the stack lives in.
    pub region: String,
    /// The template.
    pub template: Value,
    /// Parameter values by name.
    pub parameters: BTreeMap<String, String>,
    /// Stack tags (CloudFormation copies them to every resource).
    pub tags: BTreeMap<String, String>,
}

/// Renders `file`; `None` when its target is not AWS.
pub fn render(file: &ClusterFile) -> Option<StackSpec> {
    let aws = file.spec.aws.as_ref()?;
    if file.spec.target != spilo_model::spec::Target::Aws {
        return None;
    }
    let spec = &file.spec;
    let name = file.metadata.name.as_str();
    let mut resources = serde_json::Map::new();
    let vpc = aws.vpc.clone().unwrap_or_default();
    let subnets = json!(aws.subnets);
    let endpoint_ports: Vec<u16> = [&spec.endpoints.primary, &spec.endpoints.replica]
        .iter()
        .filter(|e| e.enabled)
        .map(|e| e.port)
        .collect();

    // Security groups.
    let mut member_ingress: Vec<Value> = Vec::new();
    for rule in &aws.extra_ingress {
        member_ingress.extend(ingress(rule, &rule.ports));
    }
    resources.insert(
        "MemberSecurityGroup".into(),
        json!({"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": format!("spilo {name}: PostgreSQL members"),
            "VpcId": vpc,
            "SecurityGroupIngress": member_ingress,
        }}),
    );
    let mut lb_ingress: Vec<Value> = Vec::new();
    for rule in &aws.extra_ingress {
        if rule.ports.contains(&POSTGRES_PORT) {
            lb_ingress.extend(ingress(rule, &endpoint_ports));
        }
    }
    resources.insert(
        "LoadBalancerSecurityGroup".into(),
        json!({"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": format!("spilo {name}: load balancers"),
            "VpcId": vpc,
            "SecurityGroupIngress": lb_ingress,
        }}),
    );
    let mut member_ports = vec![
        (
            "MemberIngressPostgres",
            POSTGRES_PORT,
            "MemberSecurityGroup",
        ),
        ("MemberIngressApi", API_PORT, "MemberSecurityGroup"),
        (
            "LoadBalancerIngressPostgres",
            POSTGRES_PORT,
            "LoadBalancerSecurityGroup",
        ),
        (
            "LoadBalancerIngressApi",
            API_PORT,
            "LoadBalancerSecurityGroup",
        ),
    ];
    if spec.routing() == Routing::Proxy {
        member_ports.push((
            "LoadBalancerIngressProxy",
            PROXY_PORT,
            "LoadBalancerSecurityGroup",
        ));
    }
    for (id, port, source) in member_ports {
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

    // IAM: exactly what the boot and the governor do; the launch template.
    // The members' own group, and the clients' group of the etcd cluster they use.
    let mut security_groups = vec![json!({"Fn::GetAtt": ["MemberSecurityGroup", "GroupId"]})];
    if let Some(etcd) = spec.dcs.as_ref().and_then(|d| d.etcd_cluster.as_ref()) {
        security_groups
            .push(json!({"Fn::ImportValue": super::names::etcd_clients_export(etcd.as_str())}));
    }
    instance_resources(
        &mut resources,
        &Instances {
            policies: super::policies::instance_policies(file),
            extra_policies: &aws.extra_policies,
            storage: &aws.storage,
            tags: resource_tags(file),
            user_data: userdata::render(file),
            security_groups,
        },
    );
    let load_balancers: Vec<Value> = lb_ids(file)
        .iter()
        .map(|(id, _, _, _)| json!({"Ref": id}))
        .collect();
    resources.insert(
        "AutoScalingGroup".into(),
        json!({"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": {"Ref": "Instances"},
            "MaxSize": {"Ref": "Instances"},
            "DesiredCapacity": {"Ref": "Instances"},
            "LaunchTemplate": {
                "LaunchTemplateId": {"Ref": "LaunchTemplate"},
                "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
            },
            "VPCZoneIdentifier": subnets,
            "LoadBalancerNames": load_balancers,
            // The load balancers' checks say who is primary, not who is alive: an ELB check
            // here would replace every replica.
            "HealthCheckType": "EC2",
            "HealthCheckGracePeriod": 300,
            "Tags": [{"Key": "Name", "Value": stack_name(name), "PropagateAtLaunch": true}],
        },
        // The stack is complete only when every member signals that it runs (a primary, or a
        // streaming replica); a member whose boot fails signals FAILURE at once.
        "CreationPolicy": {"ResourceSignal": {"Count": {"Ref": "Instances"}, "Timeout": boot_timeout(file)}}}),
    );

    // Load balancers: the health check finds the primary (or the streaming replicas).
    let hc = &spec.endpoints.health_check;
    let interval = hc.interval.max(5);
    for (id, endpoint_port, instance_port, path) in lb_ids(file) {
        resources.insert(
            id.into(),
            json!({"Type": "AWS::ElasticLoadBalancing::LoadBalancer", "Properties": {
                "Scheme": "internal",
                "Subnets": subnets,
                "SecurityGroups": [{"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}],
                "CrossZone": true,
                "Listeners": [{
                    "LoadBalancerPort": endpoint_port.to_string(),
                    "InstancePort": instance_port.to_string(),
                    "Protocol": "TCP",
                }],
                "HealthCheck": {
                    // With the cluster CA the REST API speaks only HTTPS (an ELB does not
                    // verify a backend's certificate in its health check).
                    "Target": format!(
                        "{}:{API_PORT}{path}",
                        if file.spec.secrets.ca.is_some() { "HTTPS" } else { "HTTP" }
                    ),
                    "Interval": interval.to_string(),
                    "Timeout": (interval - 1).min(5).to_string(),
                    "HealthyThreshold": "2",
                    "UnhealthyThreshold": "2",
                },
                // Connections to a demoted primary must end, not drain.
                "ConnectionDrainingPolicy": {"Enabled": false},
                "ConnectionSettings": {"IdleTimeout": spec.endpoints.idle_timeout},
            }}),
        );
    }

    // DNS.
    let mut outputs = serde_json::Map::new();
    if spec.endpoints.primary.enabled {
        outputs.insert(
            "PrimaryEndpoint".into(),
            json!({"Value": {"Fn::GetAtt": ["PrimaryLoadBalancer", "DNSName"]}}),
        );
    }
    if let (Some(zone), true) = (&aws.hosted_zone, spec.endpoints.primary.enabled) {
        let zone = zone.trim_end_matches('.');
        let fqdn = format!("{}.{zone}.", dns_label(file));
        let mut record = json!({"Type": "AWS::Route53::RecordSet", "Properties": {
            "Name": fqdn,
            "Type": "CNAME",
            "TTL": spec.endpoints.dns.ttl.to_string(),
            "ResourceRecords": [{"Fn::GetAtt": ["PrimaryLoadBalancer", "DNSName"]}],
        }});
        // By id when known: a zone name can be ambiguous (split horizon).
        let (key, value) = match &aws.hosted_zone_id {
            Some(id) => ("HostedZoneId", json!(id)),
            None => ("HostedZoneName", json!(format!("{zone}."))),
        };
        record["Properties"][key] = value;
        resources.insert("DnsRecord".into(), record);
        outputs.insert("DnsName".into(), json!({"Value": fqdn}));
    }
    if spec.endpoints.replica.enabled {
        outputs.insert(
            "ReplicaEndpoint".into(),
            json!({"Value": {"Fn::GetAtt": ["ReplicaLoadBalancer", "DNSName"]}}),
        );
    }

    let image = image_id(file);
    let image_type = if spilo_model::spec::is_image_parameter(&image) {
        "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    } else {
        "AWS::EC2::Image::Id"
    };
    let template = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!("spilo PostgreSQL cluster {name}; managed by spilo from git, do not edit by hand"),
        "Parameters": {
            "Instances": {"Type": "Number", "MinValue": 1, "MaxValue": 64, "Description": "PostgreSQL instances"},
            "InstanceType": {"Type": "String", "Description": "EC2 instance type"},
            "ImageId": {"Type": image_type, "Description": "The image instances start from"},
        },
        "Resources": resources,
        "Outputs": outputs,
    });
    let parameters = BTreeMap::from([
        ("Instances".to_string(), spec.instances.to_string()),
        ("InstanceType".to_string(), aws.instance_type.clone()),
        ("ImageId".to_string(), image),
    ]);
    let mut tags = cluster_tags(file);
    tags.insert(PRUNE_TAG.into(), spec.reconcile.prune.to_string());
    Some(StackSpec {
        stack_name: stack_name(name),
        region: aws.region.clone(),
        template,
        parameters,
        tags,
    })
}

/// What the role and the launch template of a stack's instances are made of.
pub(super) struct Instances<'a> {
    /// The role's inline policies.
    pub policies: Vec<Value>,
    /// Managed policies added to the role.
    pub extra_policies: &'a [String],
    /// The data volume.
    pub storage: &'a StorageSpec,
    /// Tags of the instances and volumes (`Key`/`Value`).
    pub tags: Vec<Value>,
    /// The user data script.
    pub user_data: String,
    /// The instances' security groups.
    pub security_groups: Vec<Value>,
}

/// The instances' IAM role and instance profile, and their launch template (the `ImageId`
/// and `InstanceType` parameters, the encrypted data volume, IMDSv2 only, the user data).
pub(super) fn instance_resources(
    resources: &mut serde_json::Map<String, Value>,
    i: &Instances<'_>,
) {
    let mut role = json!({"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": ["ec2.amazonaws.com"]},
                "Action": ["sts:AssumeRole"],
            }],
        },
    }});
    role["Properties"]["Policies"] = json!(i.policies);
    if !i.extra_policies.is_empty() {
        role["Properties"]["ManagedPolicyArns"] = json!(i.extra_policies);
    }
    resources.insert("Role".into(), role);
    resources.insert(
        "InstanceProfile".into(),
        json!({"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "Role"}]}}),
    );
    let st = i.storage;
    let mut ebs = json!({
        "VolumeSize": st.size,
        "VolumeType": serde_json::to_value(st.volume_type).unwrap_or(Value::Null),
        "Encrypted": true,
        "DeleteOnTermination": true,
    });
    if let Some(iops) = st.iops {
        ebs["Iops"] = json!(iops);
    }
    if let Some(t) = st.throughput {
        ebs["Throughput"] = json!(t);
    }
    if let Some(s) = &st.snapshot_id {
        ebs["SnapshotId"] = json!(s);
    }
    let tag_specifications: Vec<Value> = ["instance", "volume"]
        .iter()
        .map(|t| json!({"ResourceType": t, "Tags": i.tags}))
        .collect();
    resources.insert(
        "LaunchTemplate".into(),
        json!({"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {
            "ImageId": {"Ref": "ImageId"},
            "InstanceType": {"Ref": "InstanceType"},
            "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["InstanceProfile", "Arn"]}},
            "SecurityGroupIds": i.security_groups,
            "BlockDeviceMappings": [{"DeviceName": userdata::DATA_DEVICE, "Ebs": ebs}],
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
            "UserData": {"Fn::Base64": i.user_data},
            // The data volume is the largest cost: it carries the cluster's tags too.
            "TagSpecifications": tag_specifications,
        }}}),
    );
}

/// The cluster's tags: `spec.tags`, its labels (`spilo:label:<key>`), its team and its name.
fn cluster_tags(file: &ClusterFile) -> BTreeMap<String, String> {
    let mut tags = file.spec.tags.clone();
    for (k, v) in &file.metadata.labels {
        tags.insert(format!("spilo:label:{k}"), v.clone());
    }
    if let Some(team) = &file.metadata.team {
        tags.insert("spilo:team".into(), team.clone());
    }
    tags.insert(CLUSTER_TAG.into(), file.metadata.name.to_string());
    tags
}

/// The cluster's tags as resource tags (`Key`/`Value` pairs) for what the auto-scaling group
/// launches, which CloudFormation does not tag with the stack's tags.
fn resource_tags(file: &ClusterFile) -> Vec<Value> {
    cluster_tags(file)
        .iter()
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect()
}

/// The load balancers: logical id, client port, health-check path.
fn lb_ids(file: &ClusterFile) -> Vec<(&'static str, u16, u16, String)> {
    let e = &file.spec.endpoints;
    let mut out = Vec::new();
    if e.primary.enabled {
        out.push(match file.spec.routing() {
            Routing::HealthCheck => (
                "PrimaryLoadBalancer",
                e.primary.port,
                POSTGRES_PORT,
                e.health_check.primary_path.clone(),
            ),
            // Every instance whose proxy has a target is in service.
            Routing::Proxy => (
                "PrimaryLoadBalancer",
                e.primary.port,
                PROXY_PORT,
                PROXY_PATH.to_string(),
            ),
        });
    }
    if e.replica.enabled {
        out.push((
            "ReplicaLoadBalancer",
            e.replica.port,
            POSTGRES_PORT,
            e.health_check.replica_path.clone(),
        ));
    }
    out
}

/// Ingress entries for one rule over `ports`.
fn ingress(rule: &IngressRule, ports: &[u16]) -> Vec<Value> {
    ports
        .iter()
        .map(|p| {
            let mut v = json!({"IpProtocol": "tcp", "FromPort": p, "ToPort": p});
            if let Some(c) = &rule.cidr {
                v["CidrIp"] = json!(c);
            }
            if let Some(sg) = &rule.security_group {
                v["SourceSecurityGroupId"] = json!(sg);
            }
            v
        })
        .collect()
}

#[cfg(test)]
mod tests;
