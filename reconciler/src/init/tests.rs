//! The questionnaire's answers, defaults and rendered files.

use super::*;

pub(super) fn run_with(
    args: InitArgs,
    account: Option<&str>,
    input: &str,
) -> (anyhow::Result<PathBuf>, String) {
    let mut inp = std::io::Cursor::new(input.as_bytes().to_vec());
    let mut out = Vec::new();
    let mut lookup = |_: &str| account.map(str::to_string);
    let r = run(&args, &mut lookup, &mut inp, &mut out);
    (r, String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn answers_from_a_pipe_write_a_valid_aws_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("orders.yaml");
    let args = InitArgs {
        output: Some(out_path.clone()),
        region: Some("eu-west-1".into()),
        ..Default::default()
    };
    // name, instances, target, bucket, create, type, zone, vpc (empty refused), subnets,
    // domain, size (5 is refused, then 20), volume type, iops, snapshot, filesystem,
    // mount options, databases (a reserved name is refused), extensions.
    let input = "orders\n\n\norders-wal\nno\nm6g.large\ndb.example.com\n\nvpc-0a1b2c3d\nsubnet-0a1b2c3d, subnet-1a1b2c3d\netcd.example.com\n5\n20\nio1\n\n\nxfs\n\npostgres\norders, billing\npgcrypto\n";
    let (r, shown) = run_with(args, Some("123456789012"), input);
    r.expect("init succeeds");
    assert!(shown.contains("Cluster name: "), "{shown}");
    assert!(
        shown.contains(
            "S3 bucket for the WAL archive and backups [spilo-123456789012-eu-west-1-orders]: "
        ),
        "{shown}"
    );
    assert!(shown.contains("EC2 instance type [t3.medium]: "), "{shown}");
    assert!(
        shown.contains("VPC id: Error: an answer is required"),
        "{shown}"
    );
    assert!(
        shown.contains("Error: enter a number of at least 10"),
        "{shown}"
    );
    assert!(shown.contains("Provisioned IOPS [600]: "), "{shown}");
    assert!(shown.ends_with(" OK\n"), "{shown}");
    let text = std::fs::read_to_string(&out_path).expect("written");
    assert!(text.contains("storage: {size: 20, type: io1, filesystem: xfs, iops: 600, mountOptions: [noatime, nodiratime]}"), "{text}");
    assert!(
        text.contains("bucket: orders-wal\n    createBucket: false"),
        "{text}"
    );
    assert!(text.contains("instanceType: m6g.large"), "{text}");
    assert!(text.contains("discoveryDomain: etcd.example.com"), "{text}");
    assert!(
        shown.contains("with a generated password kept in SSM under /spilo/<cluster>/roles/")
            && shown.contains("postgres: reserved"),
        "{shown}"
    );
    assert!(
        text.ends_with(
            "  roles:\n    orders: {password: {generated: true}}\n    billing: {password: {generated: true}}\n  \
             databases:\n    orders: {owner: orders, extensions: [pgcrypto]}\n    billing: {owner: billing, extensions: [pgcrypto]}\n"
        ),
        "{text}"
    );
    let checked = validate_files(&[("orders.yaml".into(), text)]);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
}

#[test]
fn yes_takes_current_defaults_and_leaves_placeholders_that_validation_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("shop.yaml");
    let args = InitArgs {
        name: Some("shop".into()),
        target: Some("aws".into()),
        region: Some("eu-west-1".into()),
        output: Some(out_path.clone()),
        yes: true,
        ..Default::default()
    };
    let (r, shown) = run_with(args, Some("123456789012"), "");
    r.expect("written despite the placeholders");
    let text = std::fs::read_to_string(&out_path).expect("written");
    assert!(text.contains("instanceType: t3.medium"), "{text}");
    assert!(
        text.contains("type: gp3, filesystem: ext4, mountOptions: [noatime, nodiratime]}"),
        "{text}"
    );
    assert!(!text.contains("nobarrier"), "{text}");
    assert!(
        text.contains("bucket: spilo-123456789012-eu-west-1-shop\n    createBucket: true"),
        "{text}"
    );
    assert!(
        !text.contains("zalando") && !text.contains("example.com\n"),
        "{text}"
    );
    let checked = validate_files(&[("shop.yaml".into(), text)]);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect();
    assert_eq!(
        errors,
        [
            "spec.dcs.discoveryDomain: <replace with the DNS domain of your etcd SRV records, e.g. etcd.example.com> is a placeholder written by spilo init: replace it with the real value",
            "spec.aws.hostedZone: <replace with your Route53 hosted zone, e.g. db.example.com> is a placeholder written by spilo init: replace it with the real value",
            "spec.aws.vpc: <replace with your VPC id, vpc-...> is a placeholder written by spilo init: replace it with the real value",
            "spec.aws.subnets[0]: <replace with your subnet ids, one per availability zone, subnet-...> is a placeholder written by spilo init: replace it with the real value",
        ]
    );
    assert!(shown.contains("Replace the 4 placeholder(s)"), "{shown}");
}

#[test]
fn without_an_account_the_bucket_is_a_placeholder_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("shop.yaml");
    let args = InitArgs {
        name: Some("shop".into()),
        region: Some("eu-west-1".into()),
        vpc: Some("vpc-0a1b2c3d".into()),
        subnets: Some("subnet-0a1b2c3d".into()),
        hosted_zone: Some("db.example.com".into()),
        discovery_domain: Some("etcd.example.com".into()),
        output: Some(out_path.clone()),
        yes: true,
        ..Default::default()
    };
    let (r, _) = run_with(args, None, "");
    r.expect("written");
    let text = std::fs::read_to_string(&out_path).expect("written");
    assert!(
        text.contains("bucket: \"<replace with an S3 bucket of your account"),
        "{text}"
    );
    let checked = validate_files(&[("shop.yaml".into(), text)]);
    assert_eq!(checked.diagnostics.len(), 1, "{:?}", checked.diagnostics);
    assert_eq!(checked.diagnostics[0].path, "spec.backup.bucket");
}

#[test]
fn the_default_bucket_fits_s3s_length_limit() {
    assert_eq!(
        default_bucket("123456789012", "eu-west-1", "shop"),
        "spilo-123456789012-eu-west-1-shop"
    );
    let long = default_bucket("123456789012", "ap-southeast-2", &"a-".repeat(30));
    assert!(long.len() <= 63 && !long.ends_with('-'), "{long}");
}

#[test]
fn flags_and_yes_need_no_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("x.yaml");
    let args = InitArgs {
        name: Some("billing".into()),
        instances: Some("5".into()),
        target: Some("local".into()),
        output: Some(out_path.clone()),
        yes: true,
        ..Default::default()
    };
    let (r, shown) = run_with(args, None, "");
    r.expect("init succeeds");
    assert!(!shown.contains('['), "no questions asked: {shown}");
    let text = std::fs::read_to_string(&out_path).expect("written");
    assert!(
        text.contains("name: billing\nspec:\n  instances: 5\n  target: local\n"),
        "{text}"
    );
    assert!(!text.contains("roles:"), "no databases by default: {text}");
}

#[test]
fn a_local_cluster_gets_its_databases_and_their_roles_from_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("shop.yaml");
    let args = InitArgs {
        name: Some("shop".into()),
        target: Some("local".into()),
        databases: Some("shop".into()),
        extensions: Some("pg_stat_statements".into()),
        output: Some(out_path.clone()),
        yes: true,
        ..Default::default()
    };
    let (r, _) = run_with(args, None, "");
    r.expect("init succeeds");
    let text = std::fs::read_to_string(&out_path).expect("written");
    assert!(
        text.ends_with(
            "  roles:\n    shop: {password: {generated: true}}\n  databases:\n    shop: {owner: shop, extensions: [pg_stat_statements]}\n"
        ),
        "{text}"
    );
    let checked = validate_files(&[("shop.yaml".into(), text)]);
    assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
    let bad = InitArgs {
        name: Some("shop".into()),
        target: Some("local".into()),
        databases: Some("Shop".into()),
        output: Some(dir.path().join("bad.yaml")),
        yes: true,
        ..Default::default()
    };
    let (r, _) = run_with(bad, None, "");
    let e = r.expect_err("not a plain name");
    assert!(e.to_string().contains("--databases \"Shop\""), "{e}");
}

#[test]
fn yes_without_a_name_is_an_error() {
    let (r, _) = run_with(
        InitArgs {
            yes: true,
            ..Default::default()
        },
        None,
        "",
    );
    assert_eq!(
        r.expect_err("no name").to_string(),
        "--name is required with --yes"
    );
}

#[test]
fn a_bad_flag_value_is_refused() {
    let args = InitArgs {
        name: Some("Bad_Name".into()),
        yes: true,
        ..Default::default()
    };
    let (r, _) = run_with(args, None, "");
    let e = r.expect_err("bad name").to_string();
    assert!(
        e.starts_with("--name \"Bad_Name\": may only contain"),
        "{e}"
    );
}

#[test]
fn an_existing_file_is_kept_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("x.yaml");
    std::fs::write(&out_path, "keep me").expect("write");
    let args = InitArgs {
        name: Some("x".into()),
        target: Some("local".into()),
        output: Some(out_path.clone()),
        yes: true,
        ..Default::default()
    };
    let (r, _) = run_with(args, None, "");
    assert!(
        r.expect_err("exists")
            .to_string()
            .contains("exists; pass --force")
    );
    assert_eq!(std::fs::read_to_string(&out_path).expect("read"), "keep me");
}

#[test]
fn input_that_ends_early_is_an_error() {
    let (r, _) = run_with(InitArgs::default(), None, "orders\n");
    let e = r.expect_err("eof").to_string();
    assert!(e.contains("no answer for \"Number of instances\""), "{e}");
}
