//! `spilo init`: asks for a new cluster's settings the way `senza init` did in the 2015 Spilo
//! demo (with its defaults in brackets) and writes a cluster file that passes `spilo validate`.
//! Every question has a flag; with `--yes`, unanswered questions take their defaults, so it runs
//! without a terminal.

use crate::spec::validate_files;
use anyhow::{Context, bail};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Answers given as flags; `None` means "ask" (or, with `yes`, take the default).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InitArgs {
    /// Cluster name (a DNS label).
    #[arg(long)]
    pub name: Option<String>,
    /// Number of instances.
    #[arg(long)]
    pub instances: Option<String>,
    /// Where it runs: aws or local.
    #[arg(long)]
    pub target: Option<String>,
    /// AWS region.
    #[arg(long)]
    pub region: Option<String>,
    /// S3 bucket for the WAL archive.
    #[arg(long)]
    pub bucket: Option<String>,
    /// EC2 instance type.
    #[arg(long)]
    pub instance_type: Option<String>,
    /// Route53 hosted zone.
    #[arg(long)]
    pub hosted_zone: Option<String>,
    /// The VPC the cluster lives in.
    #[arg(long)]
    pub vpc: Option<String>,
    /// Subnets of that VPC, comma separated (one per availability zone).
    #[arg(long)]
    pub subnets: Option<String>,
    /// etcd discovery domain (SRV records).
    #[arg(long)]
    pub discovery_domain: Option<String>,
    /// Data volume size in GB (10 or more).
    #[arg(long)]
    pub volume_size: Option<String>,
    /// Data volume type: gp2, gp3, io1, io2 or standard.
    #[arg(long)]
    pub volume_type: Option<String>,
    /// Provisioned IOPS (io1 and io2).
    #[arg(long)]
    pub iops: Option<String>,
    /// Snapshot to create the data volume from.
    #[arg(long)]
    pub snapshot_id: Option<String>,
    /// Filesystem of the data partition: ext4 or xfs.
    #[arg(long)]
    pub filesystem: Option<String>,
    /// Mount options, comma separated.
    #[arg(long)]
    pub mount_options: Option<String>,
    /// Where to write the file (default: clusters/<name>.yaml).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Do not ask: take the default for every question not answered by a flag.
    #[arg(long, short)]
    pub yes: bool,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

struct Asker<'a> {
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    yes: bool,
}

impl Asker<'_> {
    /// Returns the flag's value, or asks (re-asking after an invalid answer), or takes the
    /// default under `--yes`.
    fn ask(
        &mut self,
        flag: &Option<String>,
        flag_name: &str,
        prompt: &str,
        default: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> anyhow::Result<String> {
        if let Some(v) = flag {
            check(v).map_err(|e| anyhow::anyhow!("--{flag_name} {v:?}: {e}"))?;
            return Ok(v.clone());
        }
        if self.yes {
            if default.is_empty() && check("").is_err() {
                bail!("--{flag_name} is required with --yes");
            }
            return Ok(default.to_string());
        }
        loop {
            write!(self.out, "{prompt} [{default}]: ")?;
            self.out.flush()?;
            let mut line = String::new();
            if self.input.read_line(&mut line)? == 0 {
                bail!("no answer for \"{prompt}\" (input ended); pass --{flag_name} or --yes");
            }
            let answer = line.trim();
            let answer = if answer.is_empty() { default } else { answer };
            match check(answer) {
                Ok(()) => return Ok(answer.to_string()),
                Err(e) => writeln!(self.out, "Error: {e}")?,
            }
        }
    }
}

fn dns_label(s: &str) -> Result<(), String> {
    spilo_model::ClusterName::new(s)
        .map(|_| ())
        .map_err(|e| e.reason.to_string())
}

fn number_at_least(min: u64) -> impl Fn(&str) -> Result<(), String> {
    move |s| match s.parse::<u64>() {
        Ok(n) if n >= min => Ok(()),
        _ => Err(format!("enter a number of at least {min}")),
    }
}

fn one_of(options: &'static [&'static str]) -> impl Fn(&str) -> Result<(), String> {
    move |s| {
        if options.contains(&s) {
            Ok(())
        } else {
            Err(format!("enter one of: {}", options.join(", ")))
        }
    }
}

fn anything(_: &str) -> Result<(), String> {
    Ok(())
}

fn not_empty(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("an answer is required".into())
    } else {
        Ok(())
    }
}

/// Asks, writes the file, validates it; returns its path.
pub fn run(
    args: &InitArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<PathBuf> {
    let mut a = Asker {
        input,
        out,
        yes: args.yes,
    };
    let name = a.ask(&args.name, "name", "Cluster name", "", |s| {
        not_empty(s)?;
        dns_label(s)
    })?;
    let instances = a.ask(
        &args.instances,
        "instances",
        "Number of instances",
        "3",
        number_at_least(1),
    )?;
    let target = a.ask(
        &args.target,
        "target",
        "Target (aws or local)",
        "aws",
        one_of(&["aws", "local"]),
    )?;
    let mut body = format!(
        "# yaml-language-server: $schema=../schemas/cluster.schema.json\n\
         apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n  target: {target}\n"
    );
    if target == "aws" {
        let region = a.ask(
            &args.region,
            "region",
            "AWS region",
            "eu-central-1",
            not_empty,
        )?;
        let bucket = a.ask(
            &args.bucket,
            "bucket",
            "Postgres WAL S3 bucket to use",
            "zalando-spilo-app",
            not_empty,
        )?;
        let instance_type = a.ask(
            &args.instance_type,
            "instance-type",
            "EC2 instance type",
            "t2.micro",
            not_empty,
        )?;
        let zone = a.ask(
            &args.hosted_zone,
            "hosted-zone",
            "Hosted Zone",
            "acid.example.com",
            not_empty,
        )?;
        let vpc = a.ask(
            &args.vpc,
            "vpc",
            "VPC id",
            "vpc-0123456789abcdef0",
            not_empty,
        )?;
        let subnets = a.ask(
            &args.subnets,
            "subnets",
            "Subnets (comma-separated, one per availability zone)",
            "subnet-0123456789abcdef0,subnet-1123456789abcdef0,subnet-2123456789abcdef0",
            not_empty,
        )?;
        let subnets: Vec<&str> = subnets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let subnets = subnets.join(", ");
        let discovery = a.ask(
            &args.discovery_domain,
            "discovery-domain",
            "ETCD Discovery Domain",
            "postgres.example.com",
            not_empty,
        )?;
        let size = a.ask(
            &args.volume_size,
            "volume-size",
            "Database volume size (GB, 10 or more)",
            "10",
            number_at_least(10),
        )?;
        let vtype = a.ask(
            &args.volume_type,
            "volume-type",
            "Database volume type (gp2, gp3, io1, io2 or standard)",
            "gp2",
            one_of(&["gp2", "gp3", "io1", "io2", "standard"]),
        )?;
        let iops = if matches!(vtype.as_str(), "io1" | "io2") {
            let default = (size.parse::<u64>().unwrap_or(10) * 30)
                .max(100)
                .to_string();
            Some(a.ask(
                &args.iops,
                "iops",
                "Provisioned IOPS",
                &default,
                number_at_least(100),
            )?)
        } else {
            None
        };
        let snapshot = a.ask(
            &args.snapshot_id,
            "snapshot-id",
            "ID of the snapshot to populate EBS volume from",
            "",
            anything,
        )?;
        let fs = a.ask(
            &args.filesystem,
            "filesystem",
            "Filesystem for the data partition",
            "ext4",
            one_of(&["ext4", "xfs"]),
        )?;
        let mount = a.ask(
            &args.mount_options,
            "mount-options",
            "Filesystem mount options (comma-separated)",
            "noatime,nodiratime,nobarrier",
            anything,
        )?;
        let mut storage = format!("size: {size}, type: {vtype}, filesystem: {fs}");
        if let Some(i) = iops {
            storage.push_str(&format!(", iops: {i}"));
        }
        if !snapshot.is_empty() {
            storage.push_str(&format!(", snapshotId: {snapshot}"));
        }
        let opts: Vec<&str> = mount
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        storage.push_str(&format!(", mountOptions: [{}]", opts.join(", ")));
        body.push_str(&format!(
            "  dcs:\n    discoveryDomain: {discovery}\n\
             \x20 aws:\n    region: {region}\n    instanceType: {instance_type}\n    hostedZone: {zone}\n    vpc: {vpc}\n    subnets: [{subnets}]\n    storage: {{{storage}}}\n\
             \x20 backup:\n    bucket: {bucket}\n\
             \x20 secrets:\n    superuser: {{ssm: /spilo/{name}/superuser}}\n    replication: {{ssm: /spilo/{name}/replication}}\n"
        ));
    }
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("clusters").join(format!("{name}.yaml")));
    let checked = validate_files(&[(path.display().to_string(), body.clone())]);
    if checked.has_errors() {
        bail!(
            "the answers do not make a valid cluster:\n{}",
            crate::spec::render_text(&checked.diagnostics)
        );
    }
    if path.exists() && !args.force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    write!(a.out, "Generating cluster file {}..", path.display())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&path, body).with_context(|| format!("write {}", path.display()))?;
    writeln!(a.out, " OK")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(args: InitArgs, input: &str) -> (anyhow::Result<PathBuf>, String) {
        let mut inp = std::io::Cursor::new(input.as_bytes().to_vec());
        let mut out = Vec::new();
        let r = run(&args, &mut inp, &mut out);
        (r, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn answers_from_a_pipe_write_a_valid_aws_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out_path = dir.path().join("orders.yaml");
        let args = InitArgs {
            output: Some(out_path.clone()),
            ..Default::default()
        };
        // name, instances, target, region, bucket, type, zone, vpc, subnets, domain,
        // size (5 is refused, then 20), volume type, iops, snapshot, filesystem, mount options.
        let input = "orders\n\n\n\norders-wal\nm6g.large\n\nvpc-0a1b2c3d\nsubnet-0a1b2c3d, subnet-1a1b2c3d\n\n5\n20\nio1\n\n\nxfs\n\n";
        let (r, shown) = run_with(args, input);
        r.expect("init succeeds");
        assert!(shown.contains("Cluster name []: "), "{shown}");
        assert!(
            shown.contains("Postgres WAL S3 bucket to use [zalando-spilo-app]: "),
            "{shown}"
        );
        assert!(
            shown.contains("Error: enter a number of at least 10"),
            "{shown}"
        );
        assert!(shown.contains("Provisioned IOPS [600]: "), "{shown}");
        assert!(shown.ends_with(" OK\n"), "{shown}");
        let text = std::fs::read_to_string(&out_path).expect("written");
        assert!(text.contains("storage: {size: 20, type: io1, filesystem: xfs, iops: 600, mountOptions: [noatime, nodiratime, nobarrier]}"), "{text}");
        assert!(text.contains("bucket: orders-wal"), "{text}");
        assert!(text.contains("instanceType: m6g.large"), "{text}");
        assert!(
            text.contains("discoveryDomain: postgres.example.com"),
            "{text}"
        );
        let checked = validate_files(&[("orders.yaml".into(), text)]);
        assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
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
        let (r, shown) = run_with(args, "");
        r.expect("init succeeds");
        assert!(!shown.contains('['), "no questions asked: {shown}");
        let text = std::fs::read_to_string(&out_path).expect("written");
        assert!(
            text.contains("name: billing\nspec:\n  instances: 5\n  target: local\n"),
            "{text}"
        );
    }

    #[test]
    fn yes_without_a_name_is_an_error() {
        let (r, _) = run_with(
            InitArgs {
                yes: true,
                ..Default::default()
            },
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
        let (r, _) = run_with(args, "");
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
        let (r, _) = run_with(args, "");
        assert!(
            r.expect_err("exists")
                .to_string()
                .contains("exists; pass --force")
        );
        assert_eq!(std::fs::read_to_string(&out_path).expect("read"), "keep me");
    }

    #[test]
    fn input_that_ends_early_is_an_error() {
        let (r, _) = run_with(InitArgs::default(), "orders\n");
        let e = r.expect_err("eof").to_string();
        assert!(e.contains("no answer for \"Number of instances\""), "{e}");
    }
}
