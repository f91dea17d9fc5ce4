//! `spilo init --kind etcd`: the questions of an etcd cluster file.

use super::{
    AccountLookup, Answer, Asker, InitArgs, ask_region, ask_subnets, default_bucket, not_empty,
    number_at_least, one_of,
};

/// The questions of an etcd cluster file (`--kind etcd`).
pub(super) fn etcd_body(
    args: &InitArgs,
    account: AccountLookup<'_>,
    a: &mut Asker<'_>,
    name: &str,
) -> anyhow::Result<String> {
    let members = a.ask(
        &args.instances,
        "instances",
        "Number of etcd members (3 or 5)",
        "3",
        one_of(&["3", "5"]),
    )?;
    let region = ask_region(args, a)?;
    let bucket = match (&args.bucket, account(&region)) {
        (Some(_), _) | (None, None) => a.ask_or_placeholder(
            &args.bucket,
            "bucket",
            "S3 bucket spilo apply uploads the spilo image to (one of your account)",
            "an S3 bucket of your account for the spilo image, e.g. spilo-ACCOUNT-REGION-images",
        )?,
        (None, Some(acct)) => Answer::Given(a.ask(
            &args.bucket,
            "bucket",
            "S3 bucket spilo apply uploads the spilo image to",
            &default_bucket(&acct, &region, "images"),
            not_empty,
        )?),
    };
    let instance_type = a.ask(
        &args.instance_type,
        "instance-type",
        "EC2 instance type",
        "t3.small",
        not_empty,
    )?;
    let zone = a.ask_or_placeholder(
        &args.hosted_zone,
        "hosted-zone",
        "Route53 hosted zone the SRV records go in (e.g. db.example.com)",
        "your Route53 hosted zone, e.g. db.example.com",
    )?;
    let vpc = a.ask_or_placeholder(&args.vpc, "vpc", "VPC id", "your VPC id, vpc-...")?;
    let subnets = ask_subnets(args, a)?;
    let size = a.ask(
        &args.volume_size,
        "volume-size",
        "Data volume size (GB, 10 or more)",
        "10",
        number_at_least(10),
    )?;
    Ok(format!(
        "# yaml-language-server: $schema=../schemas/etcd-cluster.schema.json\n\
         apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata:\n  name: {name}\nspec:\n  members: {members}\n\
         \x20 aws:\n    region: {region}\n    instanceType: {instance_type}\n    hostedZone: {zone}\n    vpc: {vpc}\n    subnets: [{subnets}]\n    storage: {{size: {size}}}\n\
         \x20 imageBucket: {bucket}\n\
         \x20 secrets:\n    ca: {{ssm: /spilo/{name}/ca}}  # the CA certificate and key, one PEM bundle (SecureString)\n",
        zone = zone.yaml(),
        vpc = vpc.yaml(),
        bucket = bucket.yaml(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::InitArgs;
    use super::super::tests::run_with;
    use crate::spec::validate_files;

    #[test]
    fn an_etcd_cluster_file_from_answers_is_valid_and_asks_only_what_etcd_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out_path = dir.path().join("etcd-main.yaml");
        let args = InitArgs {
            kind: Some("etcd".into()),
            output: Some(out_path.clone()),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        // name, members (4 refused, then 5), bucket (default), type (default), zone, vpc,
        // subnets, size (default).
        let input = "etcd-main\n4\n5\n\n\ndb.example.com\nvpc-0a1b2c3d\nsubnet-0a1b2c3d\n\n";
        let (r, shown) = run_with(args, Some("123456789012"), input);
        r.expect("init succeeds");
        assert!(
            shown.contains("Number of etcd members (3 or 5) [3]: Error: enter one of: 3, 5"),
            "{shown}"
        );
        assert!(shown.contains("EC2 instance type [t3.small]: "), "{shown}");
        assert!(!shown.contains("WAL"), "no PostgreSQL questions: {shown}");
        let text = std::fs::read_to_string(&out_path).expect("written");
        let checked = validate_files(&[("etcd-main.yaml".into(), text.clone())]);
        assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
        let f = &checked.etcd_clusters[0].1;
        assert_eq!(f.spec.members, 5);
        assert_eq!(f.domain(), "etcd-main.db.example.com");
        assert_eq!(
            f.spec.image_bucket.as_deref(),
            Some("spilo-123456789012-eu-west-1-images")
        );
        assert_eq!(
            f.spec.secrets.ca.ssm.as_deref(),
            Some("/spilo/etcd-main/ca")
        );
    }
}
