//! `spilo init`: asks for a new cluster's settings the way `senza init` did in the 2015 Spilo
//! demo (defaults in brackets) and writes a cluster file. Every question has a flag; with
//! `--yes`, unanswered questions take their defaults, so it runs without a terminal.
//!
//! The defaults are today's, not 2015's: a current instance type and gp3, no `nobarrier`, and a
//! WAL bucket named after the account, region and cluster (`spilo-<account>-<region>-<name>`,
//! created by `spilo apply` outside the stack) instead of somebody else's bucket. What cannot
//! be defaulted for the user's account (VPC, subnets, hosted zone, etcd discovery domain, the
//! bucket when the account is unknown) is asked without a default, and under `--yes` written as
//! a placeholder that `spilo validate` refuses, so such a file cannot be applied by accident.

use crate::spec::validate_files;
use anyhow::{Context, bail};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

mod etcd;

/// Answers given as flags; `None` means "ask" (or, with `yes`, take the default).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InitArgs {
    /// The kind of file: `postgres` (a PostgreSQL cluster, the default) or `etcd` (an etcd
    /// cluster on AWS that PostgreSQL clusters use).
    #[arg(long, value_parser = ["postgres", "etcd"])]
    pub kind: Option<String>,
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
    /// S3 bucket for the WAL archive (default `spilo-<account>-<region>-<name>`).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Whether `spilo apply` creates the bucket when it is missing: yes or no.
    #[arg(long)]
    pub create_bucket: Option<String>,
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
    /// Data volume type: gp3, gp2, io1, io2 or standard.
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
    /// Databases to create, comma separated: each owned by a login role of the same name
    /// whose password the target generates and keeps (empty: none).
    #[arg(long)]
    pub databases: Option<String>,
    /// Extensions created in each of those databases, comma separated.
    #[arg(long)]
    pub extensions: Option<String>,
    /// Where to write the file (default: clusters/<name>.yaml).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Do not ask: take the default for every question not answered by a flag.
    #[arg(long, short)]
    pub yes: bool,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
    /// AWS endpoint (tests: moto) for looking up the account the bucket is named after.
    #[arg(long, env = "SPILO_AWS_ENDPOINT_URL", hide = true)]
    pub endpoint_url: Option<String>,
}

/// Finds the AWS account id for a region, when credentials allow (`None` otherwise).
pub type AccountLookup<'a> = &'a mut dyn FnMut(&str) -> Option<String>;

/// The default WAL bucket: `spilo-<account>-<region>-<name>`, cut to S3's 63 characters.
pub fn default_bucket(account: &str, region: &str, name: &str) -> String {
    let mut b = format!("spilo-{account}-{region}-{name}");
    b.truncate(63);
    b.trim_end_matches(['-', '.']).to_string()
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
        self.prompt(prompt, default, check)
    }

    /// Like [`Self::ask`] for a value that has no default for the user's account: asked
    /// without one; under `--yes` the placeholder `what` is written instead (quoted), which
    /// `spilo validate` refuses until a person replaces it.
    fn ask_or_placeholder(
        &mut self,
        flag: &Option<String>,
        flag_name: &str,
        prompt: &str,
        what: &str,
    ) -> anyhow::Result<Answer> {
        if let Some(v) = flag {
            not_empty(v).map_err(|e| anyhow::anyhow!("--{flag_name} {v:?}: {e}"))?;
            return Ok(Answer::Given(v.clone()));
        }
        if self.yes {
            return Ok(Answer::Placeholder(crate::spec::placeholder(what)));
        }
        self.prompt(prompt, "", not_empty).map(Answer::Given)
    }

    fn prompt(
        &mut self,
        prompt: &str,
        default: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> anyhow::Result<String> {
        loop {
            if default.is_empty() {
                write!(self.out, "{prompt}: ")?;
            } else {
                write!(self.out, "{prompt} [{default}]: ")?;
            }
            self.out.flush()?;
            let mut line = String::new();
            if self.input.read_line(&mut line)? == 0 {
                bail!("no answer for \"{prompt}\" (input ended); pass its flag or --yes");
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

/// An answer that is either the user's or a placeholder for them to replace.
enum Answer {
    Given(String),
    Placeholder(String),
}

impl Answer {
    /// As a YAML scalar (placeholders quoted).
    fn yaml(&self) -> String {
        match self {
            Answer::Given(v) => v.clone(),
            Answer::Placeholder(p) => format!("\"{p}\""),
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

/// Asks, writes the file, validates it; returns its path. `account` finds the AWS account
/// the default bucket is named after.
pub fn run(
    args: &InitArgs,
    account: AccountLookup<'_>,
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
    let body = if args.kind.as_deref() == Some("etcd") {
        etcd::etcd_body(args, account, &mut a, &name)?
    } else {
        postgres_body(args, account, &mut a, &name)?
    };
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("clusters").join(format!("{name}.yaml")));
    write_checked(&mut a, args, &path, body)?;
    Ok(path)
}

/// The region question, defaulting to the environment's.
fn ask_region(args: &InitArgs, a: &mut Asker<'_>) -> anyhow::Result<String> {
    let region_default = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "eu-central-1".into());
    a.ask(
        &args.region,
        "region",
        "AWS region",
        &region_default,
        not_empty,
    )
}

/// The subnets question: a YAML flow list's items, or a placeholder.
fn ask_subnets(args: &InitArgs, a: &mut Asker<'_>) -> anyhow::Result<String> {
    Ok(
        match a.ask_or_placeholder(
            &args.subnets,
            "subnets",
            "Subnets (comma-separated, one per availability zone)",
            "your subnet ids, one per availability zone, subnet-...",
        )? {
            Answer::Given(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(", "),
            p @ Answer::Placeholder(_) => p.yaml(),
        },
    )
}

/// The questions of a PostgreSQL cluster file.
fn postgres_body(
    args: &InitArgs,
    account: AccountLookup<'_>,
    a: &mut Asker<'_>,
    name: &str,
) -> anyhow::Result<String> {
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
        let region = ask_region(args, a)?;
        // A bucket of the user's own account: its name is derived from the account when the
        // credentials tell it; otherwise there is no safe default.
        let bucket = match (&args.bucket, account(&region)) {
            (Some(_), _) | (None, None) => a.ask_or_placeholder(
                &args.bucket,
                "bucket",
                "S3 bucket for the WAL archive and backups (one of your account)",
                "an S3 bucket of your account for the WAL archive, e.g. spilo-ACCOUNT-REGION-NAME",
            )?,
            (None, Some(acct)) => Answer::Given(a.ask(
                &args.bucket,
                "bucket",
                "S3 bucket for the WAL archive and backups",
                &default_bucket(&acct, &region, name),
                not_empty,
            )?),
        };
        let create_bucket = a.ask(
            &args.create_bucket,
            "create-bucket",
            "Let spilo apply create the bucket when it is missing (kept when the cluster is deleted: it holds the backups)",
            "yes",
            one_of(&["yes", "no"]),
        )? == "yes";
        let instance_type = a.ask(
            &args.instance_type,
            "instance-type",
            "EC2 instance type",
            spilo_model::spec::DEFAULT_INSTANCE_TYPE,
            not_empty,
        )?;
        let zone = a.ask_or_placeholder(
            &args.hosted_zone,
            "hosted-zone",
            "Route53 hosted zone (e.g. db.example.com)",
            "your Route53 hosted zone, e.g. db.example.com",
        )?;
        let vpc = a.ask_or_placeholder(&args.vpc, "vpc", "VPC id", "your VPC id, vpc-...")?;
        let subnets = ask_subnets(args, a)?;
        let discovery = a.ask_or_placeholder(
            &args.discovery_domain,
            "discovery-domain",
            "etcd discovery domain (SRV records _etcd-server._tcp.<domain>)",
            "the DNS domain of your etcd SRV records, e.g. etcd.example.com",
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
            "Database volume type (gp3, gp2, io1, io2 or standard)",
            "gp3",
            one_of(&["gp3", "gp2", "io1", "io2", "standard"]),
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
            "noatime,nodiratime",
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
             \x20 backup:\n    bucket: {bucket}\n    createBucket: {create_bucket}\n    verify: {{schedule: \"0 3 * * 0\", maxAge: 8d}}  # a weekly restore drill\n\
             \x20 secrets:\n    superuser: {{ssm: /spilo/{name}/superuser}}\n    replication: {{ssm: /spilo/{name}/replication}}\n    restapi: {{ssm: /spilo/{name}/restapi-token}}\n    \
             ca: {{ssm: /spilo/{name}/ca}}  # the CA certificate and key, one PEM bundle (SecureString)\n",
            discovery = discovery.yaml(),
            zone = zone.yaml(),
            vpc = vpc.yaml(),
            bucket = bucket.yaml(),
        ));
    }
    body.push_str(&catalog_body(args, a, &target)?);
    Ok(body)
}

/// A comma-separated answer as its items.
fn items(answer: &str) -> Vec<&str> {
    answer
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Each item a name PostgreSQL takes unquoted, and none of the roles spilo runs as.
fn plain_names(answer: &str) -> Result<(), String> {
    for name in items(answer) {
        crate::spec::plain_name(name)?;
        if name.starts_with("pg_") || crate::spec::RESERVED_ROLES.contains(&name) {
            return Err(format!(
                "{name}: reserved (pg_ names, and the roles spilo runs as)"
            ));
        }
    }
    Ok(())
}

/// The databases and extensions questions: `spec.roles` and `spec.databases`, each database
/// owned by a login role of its name with a generated password.
fn catalog_body(args: &InitArgs, a: &mut Asker<'_>, target: &str) -> anyhow::Result<String> {
    let where_kept = if target == "aws" {
        "in SSM under /spilo/<cluster>/roles/"
    } else {
        "in the state directory"
    };
    let databases = a.ask(
        &args.databases,
        "databases",
        &format!(
            "Databases to create, each owned by a login role of its name with a generated password kept {where_kept} (comma-separated, empty for none)"
        ),
        "",
        plain_names,
    )?;
    let databases = items(&databases);
    if databases.is_empty() {
        return Ok(String::new());
    }
    let extensions = a.ask(
        &args.extensions,
        "extensions",
        "Extensions in each of them (comma-separated, e.g. pg_stat_statements, pgcrypto)",
        "",
        |answer: &str| {
            items(answer)
                .into_iter()
                .try_for_each(crate::spec::plain_name)
        },
    )?;
    let extensions = items(&extensions);
    let mut out = String::from("  roles:\n");
    for d in &databases {
        out.push_str(&format!("    {d}: {{password: {{generated: true}}}}\n"));
    }
    out.push_str("  databases:\n");
    for d in &databases {
        if extensions.is_empty() {
            out.push_str(&format!("    {d}: {{owner: {d}}}\n"));
        } else {
            out.push_str(&format!(
                "    {d}: {{owner: {d}, extensions: [{}]}}\n",
                extensions.join(", ")
            ));
        }
    }
    Ok(out)
}

/// Validates `body`, then writes it to `path` unless answers (not placeholders) are wrong.
fn write_checked(
    a: &mut Asker<'_>,
    args: &InitArgs,
    path: &Path,
    body: String,
) -> anyhow::Result<()> {
    let checked = validate_files(&[(path.display().to_string(), body.clone())]);
    let errors: Vec<&crate::spec::Diagnostic> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == crate::spec::Severity::Error)
        .collect();
    // Placeholders are errors on purpose; anything else means the answers do not fit.
    let placeholders = errors.iter().filter(|d| d.placeholder).count();
    if errors.len() > placeholders {
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
    std::fs::write(path, body).with_context(|| format!("write {}", path.display()))?;
    writeln!(a.out, " OK")?;
    if placeholders > 0 {
        writeln!(
            a.out,
            "Replace the {placeholders} placeholder(s) before `spilo plan` accepts the file:\n{}",
            crate::spec::render_text(&checked.diagnostics)
        )?;
    } else if !checked.diagnostics.is_empty() {
        write!(a.out, "{}", crate::spec::render_text(&checked.diagnostics))?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests;
