//! The rendered CloudFormation template and parameters of cluster files.

use super::*;

fn file(extra: &str) -> ClusterFile {
    serde_yaml::from_str(&format!(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders, team: shop}}\nspec:\n  target: aws\n  dcs: {{hosts: [\"10.0.0.1:2379\"]}}\n  aws: {{region: eu-central-1, vpc: vpc-1, subnets: [subnet-a, subnet-b], hostedZone: db.example.com}}\n{extra}"
    ))
    .expect("valid file")
}

#[test]
fn with_the_cluster_ca_the_load_balancer_checks_https() {
    let s = render(&file(
        "  secrets: {ca: {secretsManager: 'arn:aws:secretsmanager:eu-central-1:1:secret:orders-ca'}}\n",
    ))
    .expect("aws");
    assert_eq!(
        s.template["Resources"]["PrimaryLoadBalancer"]["Properties"]["HealthCheck"]["Target"],
        "HTTPS:8008/primary"
    );
    let role = s.template["Resources"]["Role"].to_string();
    assert!(
        role.contains("arn:aws:secretsmanager:eu-central-1:1:secret:orders-ca"),
        "the instance role reads the CA: {role}"
    );
}

#[test]
fn with_proxy_routing_every_instance_forwards_to_the_primary() {
    let s = render(&file(
        "  endpoints: {routing: proxy, replica: {enabled: true, port: 5433}}\n",
    ))
    .expect("aws");
    let r = &s.template["Resources"];
    let primary = &r["PrimaryLoadBalancer"]["Properties"];
    assert_eq!(primary["HealthCheck"]["Target"], "HTTP:8008/proxy");
    assert_eq!(primary["Listeners"][0]["InstancePort"], "5433");
    assert_eq!(primary["Listeners"][0]["LoadBalancerPort"], "5432");
    // The replicas' endpoint still checks each replica and reaches PostgreSQL itself.
    let replica = &r["ReplicaLoadBalancer"]["Properties"];
    assert_eq!(replica["HealthCheck"]["Target"], "HTTP:8008/replica");
    assert_eq!(replica["Listeners"][0]["InstancePort"], "5432");
    assert_eq!(
        r["LoadBalancerIngressProxy"]["Properties"]["FromPort"],
        5433
    );
    // The members run the proxy on that port.
    let config =
        crate::aws::userdata::config(&file("  endpoints: {routing: proxy}\n")).expect("config");
    assert_eq!(
        config.proxy.map(|p| p.listen.to_string()),
        Some("0.0.0.0:5433".to_string())
    );
    // Without it: no proxy, no rule.
    assert!(
        render(&file("")).expect("aws").template["Resources"]
            .get("LoadBalancerIngressProxy")
            .is_none()
    );
}

#[test]
fn a_local_cluster_has_no_stack() {
    let f: ClusterFile = serde_yaml::from_str(
        "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: x}\nspec: {}\n",
    )
    .expect("valid");
    assert!(render(&f).is_none());
}

#[test]
fn the_stack_routes_to_the_primary_and_names_the_dns_record() {
    let s = render(&file("")).expect("aws");
    assert_eq!(s.stack_name, "spilo-orders");
    let r = &s.template["Resources"];
    assert_eq!(
        r["PrimaryLoadBalancer"]["Properties"]["HealthCheck"]["Target"],
        "HTTP:8008/primary"
    );
    assert!(r.get("ReplicaLoadBalancer").is_none());
    assert_eq!(
        r["DnsRecord"]["Properties"]["Name"],
        "orders.db.example.com."
    );
    assert_eq!(
        r["AutoScalingGroup"]["Properties"]["MinSize"],
        json!({"Ref": "Instances"})
    );
    assert_eq!(s.parameters["Instances"], "3");
    assert_eq!(s.parameters["InstanceType"], "t3.medium");
    assert_eq!(s.tags[CLUSTER_TAG], "orders");
    assert_eq!(s.tags["spilo:team"], "shop");
    // No backup section: no S3 access at all; the primary's scale-in protection and the
    // stack's own signal.
    let policies = &r["Role"]["Properties"]["Policies"];
    assert_eq!(policies.as_array().map(Vec::len), Some(2), "{policies}");
    assert_eq!(policies[0]["PolicyName"], "scale-in");
    assert_eq!(policies[1]["PolicyName"], "signal");
    // The stack waits for every member, and the ELB keeps idle connections for an hour.
    assert_eq!(
        r["AutoScalingGroup"]["CreationPolicy"],
        json!({"ResourceSignal": {"Count": {"Ref": "Instances"}, "Timeout": "PT15M"}})
    );
    assert_eq!(
        r["PrimaryLoadBalancer"]["Properties"]["ConnectionSettings"]["IdleTimeout"],
        3600
    );
    assert_eq!(
        r["DnsRecord"]["Properties"]["HostedZoneName"],
        "db.example.com."
    );
    assert_eq!(
        s.parameters["ImageId"],
        "/aws/service/debian/release/12/latest/amd64"
    );
}

#[test]
fn the_stack_waits_15_minutes_for_its_members_60_for_a_clone_or_as_the_file_says() {
    assert_eq!(boot_timeout(&file("")), "PT15M");
    let clone = file("  bootstrap:\n    clone: {from: other}\n");
    assert_eq!(boot_timeout(&clone), "PT60M");
    let mut set = clone.clone();
    if let Some(aws) = set.spec.aws.as_mut() {
        aws.boot_timeout = Some(25);
    }
    assert_eq!(boot_timeout(&set), "PT25M");
    let stack = render(&clone).expect("aws");
    assert_eq!(
        stack.template["Resources"]["AutoScalingGroup"]["CreationPolicy"]["ResourceSignal"]["Timeout"],
        "PT60M"
    );
}

#[test]
fn launched_resources_carry_the_stack_tags_but_the_prune_flag() {
    let mut f = file("  tags: {cost-center: '4711'}\n");
    f.metadata.labels.insert("tier".into(), "gold".into());
    let s = render(&f).expect("aws");
    let mut expected: Vec<Value> = s
        .tags
        .iter()
        .filter(|(k, _)| k.as_str() != PRUNE_TAG)
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect();
    expected.sort_by_key(|t| t["Key"].as_str().map(str::to_string));
    assert!(s.tags.contains_key("spilo:label:tier"));
    let lt = &s.template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"];
    let specs = lt["TagSpecifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(specs.len(), 2, "instances and volumes");
    for spec in specs {
        assert_eq!(spec["Tags"], Value::Array(expected.clone()), "{spec}");
    }
}

#[test]
fn volumes_carry_the_cluster_tags_and_the_record_is_made_by_zone_id() {
    let s = render(&file(
        "  tags: {cost-center: '4711'}
",
    ))
    .expect("aws");
    let lt = &s.template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"];
    let specs = lt["TagSpecifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[1]["ResourceType"], "volume");
    assert!(
        specs[1]["Tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!({"Key": "cost-center", "Value": "4711"}))),
        "{specs:?}"
    );
    let mut f = file("");
    if let Some(a) = f.spec.aws.as_mut() {
        a.hosted_zone_id = Some("Z0123456789ABCDEFGHIJ".into());
        a.instance_type = "m7g.large".into();
    }
    let s = render(&f).expect("aws");
    let dns = &s.template["Resources"]["DnsRecord"]["Properties"];
    assert_eq!(dns["HostedZoneId"], "Z0123456789ABCDEFGHIJ");
    assert!(dns.get("HostedZoneName").is_none());
    assert!(
        s.parameters["ImageId"].ends_with("/arm64"),
        "{:?}",
        s.parameters
    );
}

#[test]
fn s3_access_is_limited_to_the_clusters_archives() {
    // The default prefix: every major version's archive of the cluster (an upgrade writes the
    // new one before the stack moves, and keeps reading the old one after).
    let s = render(&file("  backup: {bucket: wal-bucket}\n")).expect("aws");
    let statements = &s.template["Resources"]["Role"]["Properties"]["Policies"][0]["PolicyDocument"]
        ["Statement"];
    assert_eq!(
        statements[1]["Resource"],
        "arn:aws:s3:::wal-bucket/spilo/orders/wal/*"
    );
    assert_eq!(
        statements[0]["Condition"]["StringLike"]["s3:prefix"][0],
        "spilo/orders/wal/*"
    );
    // A prefix of the file's own: that one only.
    let s = render(&file(
        "  backup: {bucket: wal-bucket, prefix: archives/orders}\n",
    ))
    .expect("aws");
    let statements = &s.template["Resources"]["Role"]["Properties"]["Policies"][0]["PolicyDocument"]
        ["Statement"];
    assert_eq!(
        statements[1]["Resource"],
        "arn:aws:s3:::wal-bucket/archives/orders/*"
    );
}

#[test]
fn a_replica_endpoint_adds_a_second_load_balancer() {
    let s = render(&file(
        "  endpoints: {replica: {enabled: true, port: 5433}}\n",
    ))
    .expect("aws");
    let r = &s.template["Resources"];
    assert_eq!(
        r["ReplicaLoadBalancer"]["Properties"]["HealthCheck"]["Target"],
        "HTTP:8008/replica"
    );
    assert_eq!(
        r["ReplicaLoadBalancer"]["Properties"]["Listeners"][0]["LoadBalancerPort"],
        "5433"
    );
    assert_eq!(
        r["AutoScalingGroup"]["Properties"]["LoadBalancerNames"],
        json!([{"Ref": "PrimaryLoadBalancer"}, {"Ref": "ReplicaLoadBalancer"}])
    );
}

#[test]
fn rendering_is_deterministic() {
    let a = serde_json::to_string(&render(&file("")).expect("aws").template).expect("json");
    let b = serde_json::to_string(&render(&file("")).expect("aws").template).expect("json");
    assert_eq!(a, b);
}
