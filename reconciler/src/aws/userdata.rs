//! The instances' user data: a short script the spilo image runs at every boot
//! (`spilo-boot.service` fetches it from the instance metadata). It checks that the image
//! carries the same spilo version as the CLI that rendered it, mounts the EBS data volume,
//! writes the governor configuration (the same renderer as the local target; the instance
//! adds its id and address when it starts the governor) and starts the governor under the
//! image's supervision. The functions it calls live in the image (`image/rootfs/usr/lib/spilo/
//! boot-lib.sh`); the governor reads the passwords from SSM or Secrets Manager itself, so
//! the script holds no secret and needs no AWS CLI. Pure: the same file renders the same
//! script.

use crate::member_config::{self, Placement, Store};
use spilo_model::governor::{
    AwsSettings, EtcdConfig, GovernorConfig, S3Config, SecretRef, StackSignal, TlsConfig,
};
use spilo_model::spec::{ClusterFile, Filesystem};
use std::net::{Ipv4Addr, SocketAddr};

/// The device name of the data volume in the launch template.
pub const DATA_DEVICE: &str = "/dev/xvdk";
/// Where the data volume is mounted.
pub const DATA_MOUNT: &str = "/home/postgres/pgdata";
/// The boot functions the image provides.
pub const BOOT_LIB: &str = "/usr/lib/spilo/boot-lib.sh";
/// The version of spilo the image must carry: this CLI's.
pub use super::image::VERSION;
/// The resource whose `CreationPolicy` waits for the members' signals.
pub const SIGNALLED_RESOURCE: &str = "AutoScalingGroup";

/// `s` as one shell word: single-quoted, with embedded quotes closed and escaped. Every value
/// from the cluster file goes into the script this way (validation also limits their
/// characters: this is the second fence).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A secret reference of a cluster file as the governor (or the etcd keeper) reads it.
pub(super) fn secret(r: &spilo_model::spec::SecretRef) -> SecretRef {
    SecretRef {
        env: r.env.clone(),
        file: r.file.as_ref().map(Into::into),
        ssm: r.ssm.clone(),
        secrets_manager: r.secrets_manager.clone(),
    }
}

/// The governor configuration every member of `file` runs with (without a name: each
/// instance gives its own at start).
pub fn config(file: &ClusterFile) -> Result<GovernorConfig, String> {
    member_config::build(file, &placement(file))
}

fn placement(file: &ClusterFile) -> Placement {
    let spec = &file.spec;
    let region = spec
        .aws
        .as_ref()
        .map(|a| a.region.clone())
        .unwrap_or_default();
    let etcd = match &spec.dcs {
        Some(d) if !d.hosts.is_empty() => EtcdConfig {
            hosts: d.hosts.clone(),
            ..EtcdConfig::default()
        },
        Some(d) => EtcdConfig {
            discovery_domain: d.discovery_domain.clone(),
            ..EtcdConfig::default()
        },
        None => EtcdConfig::default(),
    };
    let bucket = spec.backup.as_ref().map_or("", |b| b.bucket.as_str());
    // The source of a clone archives into the same bucket under its own prefix.
    let s3 = Store::S3(S3Config {
        bucket: bucket.to_string(),
        region: region.clone(),
        endpoint: None,
        path_style: false,
        sse: Some("AES256".into()),
    });
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let secrets = &spec.secrets;
    // With the cluster CA: PostgreSQL and the REST API over TLS, each member's certificate
    // also naming the cluster's DNS record. etcd on AWS has no TLS yet (the etcd clusters of
    // issue #18 bring it), so it stays plaintext.
    let tls = secrets.ca.as_ref().map(|ca| {
        let mut t = TlsConfig::new(format!("{DATA_MOUNT}/tls/ca.crt").into(), secret(ca));
        t.names = super::names::dns_name(file)
            .map(|n| n.trim_end_matches('.').to_string())
            .into_iter()
            .collect();
        t
    });
    // An etcd cluster of the repository speaks only TLS (with certificates of the cluster's
    // CA, which validation made the same); other etcd on AWS stays plaintext.
    let on_etcd_cluster = spec.dcs.as_ref().is_some_and(|d| d.etcd_cluster.is_some());
    let etcd = EtcdConfig {
        plaintext: tls.is_some() && !on_etcd_cluster,
        ..etcd
    };
    Placement {
        tls,
        header: "# Written at boot from the user data spilo rendered from the cluster file.",
        name: None,
        etcd,
        zookeeper: None,
        data_dir: format!("{DATA_MOUNT}/data").into(),
        postgres_listen: SocketAddr::new(any.ip(), super::names::POSTGRES_PORT),
        api_listen: SocketAddr::new(any.ip(), super::names::API_PORT),
        proxy_listen: (spec.routing() == spilo_model::spec::Routing::Proxy)
            .then(|| SocketAddr::new(any.ip(), super::names::PROXY_PORT)),
        superuser: secrets.superuser.as_ref().map(secret).unwrap_or_default(),
        replication: secrets.replication.as_ref().map(secret).unwrap_or_default(),
        api_token: secrets.restapi.as_ref().map(secret),
        archive_store: s3.clone(),
        clone_store: spec.bootstrap.clone.as_ref().map(|_| s3),
        parameters_in_file: false,
        // A standby cluster's source lives in its `config` only, which `spilo apply` writes
        // before the stack of a new cluster: a switchover between clusters then changes
        // etcd and the instance role, never the launch template (which would replace every
        // instance of both clusters).
        standby: None,
        bin_dir: file.spec.postgresql.bin_dir.as_ref().map_or_else(
            || spilo_model::spec::debian_bin_dir(file.spec.postgresql.version),
            std::path::PathBuf::from,
        ),
        aws: Some(AwsSettings {
            region,
            signal: Some(StackSignal {
                stack: super::names::stack_name(file.metadata.name.as_str()),
                resource: SIGNALLED_RESOURCE.into(),
            }),
            scale_in_protection: true,
        }),
    }
}

/// `spec.standby` as the members follow it: the source's endpoints (with `from`, its DNS name,
/// filled in by [`crate::desired::resolve_standby_sources`]) and its archive in S3, read with
/// the instance role (which [`super::policies`] lets read it).
pub fn standby_source(file: &ClusterFile) -> Option<spilo_model::StandbySource> {
    let sb = file.spec.standby.as_ref()?;
    let region = file.spec.aws.as_ref().map_or("", |a| a.region.as_str());
    Some(spilo_model::StandbySource {
        cluster: sb.from.as_ref().map(|c| c.to_string()),
        hosts: sb.hosts.clone(),
        archive: sb.archive.as_ref().map(|a| {
            crate::member_config::source_archive(
                a.prefix.clone(),
                &Store::S3(S3Config {
                    bucket: a.bucket.clone(),
                    region: a.region.clone().unwrap_or_else(|| region.to_string()),
                    endpoint: None,
                    path_style: false,
                    sse: None,
                }),
            )
        }),
    })
}

/// The governor configuration every member of `file` runs with, as the user data writes it
/// (a major upgrade sends the new version's to the leader).
pub fn config_text(file: &ClusterFile) -> Result<String, String> {
    member_config::render(file, &placement(file)).map_err(|e| e.to_string())
}

/// The user data script.
pub fn render(file: &ClusterFile) -> String {
    let storage = file
        .spec
        .aws
        .as_ref()
        .map(|a| a.storage.clone())
        .unwrap_or_default();
    let fs = match storage.filesystem {
        Filesystem::Ext4 => "ext4",
        Filesystem::Xfs => "xfs",
    };
    // Validation refuses what cannot be rendered; should such a file get here, its instances
    // fail at boot, saying why, rather than run with a guess.
    let config = match member_config::render(file, &placement(file)) {
        Ok(c) => c,
        Err(e) => {
            return format!(
                "#!/bin/bash\necho {} >&2\nexit 1\n",
                quote(&format!("spilo: cannot configure this member: {e}"))
            );
        }
    };
    let install = match (&file.spec.backup, super::image::from_bucket(file)) {
        (Some(b), true) => install_image(file, &b.bucket),
        _ => String::new(),
    };
    format!(
        "#!/bin/bash\n\
         # spilo member of cluster {name}, rendered by spilo {VERSION} from the cluster file.\n\
         # The spilo image runs this at every boot; the functions come from the image.\n\
         set -euo pipefail\n\
         {install}\
         . {BOOT_LIB}\n\
         spilo_write_config <<'SPILO_CONFIG'\n{config}SPILO_CONFIG\n\
         spilo_require_version {VERSION}\n\
         spilo_mount_data {DATA_DEVICE} {fs} {opts} {DATA_MOUNT}\n\
         spilo_run_governor\n",
        name = file.metadata.name,
        opts = quote(&storage.mount_options.join(",")),
    )
}

/// On a plain Debian instance (the default image): the part that installs the spilo image of
/// this version from the cluster's bucket (with the instance role; Debian's AMI carries the AWS
/// CLI) and has systemd run it at every boot. A failure here is signalled to the stack with the
/// same CLI (nothing of spilo is installed yet to do it). Inside the image this script runs
/// again and skips the part, since the image's functions are there.
fn install_image(file: &ClusterFile, bucket: &str) -> String {
    let arch = super::image::architecture(file);
    install_image_from(
        file.spec.aws.as_ref().map_or("", |a| a.region.as_str()),
        &super::names::stack_name(file.metadata.name.as_str()),
        &format!("s3://{bucket}/{}", super::image::key(arch)),
    )
}

/// The install part for an instance of `stack` in `region`, the image at `source` (`s3://`).
pub fn install_image_from(region: &str, stack: &str, source: &str) -> String {
    format!(
        "if [ ! -e {BOOT_LIB} ]; then\n  \
           spilo_install_failed() {{\n    \
             t=$(curl -sf -m 5 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')\n    \
             id=$(curl -sf -m 5 -H \"X-aws-ec2-metadata-token: $t\" http://169.254.169.254/latest/meta-data/instance-id)\n    \
             aws --region {region} cloudformation signal-resource --stack-name {stack} \
         --logical-resource-id {SIGNALLED_RESOURCE} --unique-id \"$id\" --status FAILURE\n  \
           }}\n  \
           trap spilo_install_failed ERR\n  \
           image=/var/lib/spilo/image\n  \
           if [ \"$(cat \"$image/usr/lib/spilo/VERSION\" 2>/dev/null)\" != {VERSION} ]; then\n    \
             mkdir -p /var/lib/spilo\n    \
             aws --region {region} s3 cp --only-show-errors {source} /var/lib/spilo/image.tar.gz\n    \
             rm -rf \"$image.new\"; mkdir -p \"$image.new\"\n    \
             tar -xzf /var/lib/spilo/image.tar.gz -C \"$image.new\"\n    \
             rm -rf \"$image\"; mv \"$image.new\" \"$image\"; rm -f /var/lib/spilo/image.tar.gz\n  \
           fi\n  \
           trap - ERR\n  \
           exec \"$image/usr/lib/spilo/host-run\" --install \"$image\"\n\
         fi\n",
        region = quote(region),
        stack = quote(stack),
        source = quote(source),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> ClusterFile {
        serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: orders}\nspec:\n  target: aws\n  dcs: {discoveryDomain: etcd.example.com}\n  aws: {region: eu-west-1, vpc: v, subnets: [s]}\n  backup: {bucket: wal-bucket}\n  bootstrap: {clone: {from: src}}\n  secrets: {superuser: {ssm: /db/su}, replication: {secretsManager: 'arn:aws:secretsmanager:eu-west-1:1:secret:repl'}, restapi: {ssm: /db/api}}\n",
        )
        .expect("valid")
    }

    #[test]
    fn a_standby_of_a_cluster_in_the_repository_follows_its_dns_name_and_reads_its_archive() {
        let mut source = orders();
        source.spec.bootstrap.clone = None;
        source.spec.aws.as_mut().expect("aws").hosted_zone = Some("db.example.com.".into());
        source.spec.aws.as_mut().expect("aws").region = "us-east-1".into();
        let mut standby = orders();
        standby.metadata.name = spilo_model::ClusterName::new("orders-dr").expect("name");
        standby.spec.bootstrap.clone = None;
        standby.spec.standby = Some(spilo_model::spec::StandbySpec {
            from: Some(source.metadata.name.clone()),
            ..Default::default()
        });
        let mut files = vec![
            ("clusters/orders.yaml".to_string(), source),
            ("clusters/orders-dr.yaml".to_string(), standby),
        ];
        crate::desired::resolve_standby_sources(&mut files);
        // The source is in the cluster's `config`, not in its instances' user data.
        assert_eq!(
            config(&files[1].1).expect("renders").ha.standby_cluster,
            None
        );
        let desired = |f| crate::aws::plan::config::desired_config(f).standby_cluster;
        assert_eq!(desired(&files[0].1), None);
        let follows = desired(&files[1].1).expect("a standby");
        assert_eq!(follows.cluster.as_deref(), Some("orders"));
        assert_eq!(follows.hosts, ["orders.db.example.com:5432"]);
        let archive = follows.archive.expect("the source's archive");
        assert_eq!(archive.prefix, "spilo/orders/wal/15/");
        let s3 = archive.s3.expect("in S3");
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("wal-bucket", "us-east-1")
        );
        let stack = super::super::template::render(&files[1].1).expect("aws");
        let roles = stack.template["Resources"].to_string();
        assert!(
            roles.contains("standby-source-archive")
                && roles.contains("arn:aws:s3:::wal-bucket/spilo/orders/wal/15/*"),
            "{roles}"
        );
    }

    #[test]
    fn with_the_cluster_ca_members_speak_tls_except_to_etcd() {
        let plain = config(&orders()).expect("renders");
        assert_eq!(plain.tls, None);
        assert!(!plain.etcd.plaintext);
        let mut f = orders();
        f.spec.aws.as_mut().expect("aws").hosted_zone = Some("db.example.com".into());
        f.spec.secrets.ca = Some(spilo_model::spec::SecretRef {
            ssm: Some("/db/ca".into()),
            ..Default::default()
        });
        let c = config(&f).expect("renders");
        let tls = c.tls.clone().expect("tls");
        assert_eq!(
            tls.ca_file,
            std::path::PathBuf::from("/home/postgres/pgdata/tls/ca.crt")
        );
        assert_eq!(tls.ca_key.ssm.as_deref(), Some("/db/ca"));
        assert_eq!(tls.names, ["orders.db.example.com"]);
        assert!(c.etcd.plaintext, "etcd on AWS has no TLS yet");
        assert!(c.api_url().starts_with("https://"));
    }

    #[test]
    fn on_an_etcd_cluster_members_find_it_by_its_tls_records_and_join_its_clients_group() {
        let etcd: spilo_model::spec::EtcdClusterFile = serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {name: etcd-main}\nspec:\n  \
             aws: {region: eu-west-1, hostedZone: db.example.com}\n  secrets: {ca: {ssm: /db/ca}}\n",
        )
        .expect("etcd file");
        let mut f = orders();
        f.spec.dcs = Some(spilo_model::spec::DcsSpec {
            etcd_cluster: Some(spilo_model::ClusterName::new("etcd-main").expect("name")),
            ..Default::default()
        });
        f.spec.secrets.ca = Some(etcd.spec.secrets.ca.clone());
        let mut files = vec![("clusters/orders.yaml".to_string(), f)];
        crate::desired::resolve_etcd_clusters(
            &mut files,
            &[("clusters/etcd-main.yaml".to_string(), etcd)],
        );
        let c = config(&files[0].1).expect("renders");
        assert_eq!(
            c.etcd.discovery_domain.as_deref(),
            Some("etcd-main.db.example.com")
        );
        assert!(!c.etcd.plaintext, "TLS to the etcd cluster");
        assert!(c.etcd_over_tls());
        let stack = super::super::template::render(&files[0].1).expect("aws");
        let groups = &stack.template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
            ["SecurityGroupIds"];
        assert_eq!(
            groups[1],
            serde_json::json!({"Fn::ImportValue": "spilo-etcd-main-clients"})
        );
    }

    #[test]
    fn the_script_runs_the_image_steps_in_order_with_the_configuration_inline() {
        let script = render(&orders());
        let steps: Vec<&str> = script
            .lines()
            .filter(|l| l.starts_with("spilo_") || l.starts_with(". "))
            .collect();
        assert_eq!(
            steps,
            [
                ". /usr/lib/spilo/boot-lib.sh",
                "spilo_write_config <<'SPILO_CONFIG'",
                &format!("spilo_require_version {VERSION}"),
                "spilo_mount_data /dev/xvdk ext4 'noatime,nodiratime' /home/postgres/pgdata",
                "spilo_run_governor",
            ]
        );
        let inside = script
            .split_once(&format!("fi\n. {BOOT_LIB}"))
            .map(|(_, after)| after)
            .expect("the image part follows the install part");
        assert!(
            !inside.contains("aws "),
            "no AWS CLI inside the image: {script}"
        );
        assert!(
            script.contains(&format!(
                "aws --region 'eu-west-1' s3 cp --only-show-errors 's3://wal-bucket/spilo/images/{VERSION}/spilo-{VERSION}-amd64.rootfs.tar.gz'"
            )),
            "a plain Debian instance installs the image of this version: {script}"
        );
        assert!(
            script.contains("/usr/lib/spilo/host-run\" --install"),
            "{script}"
        );
        let body = script
            .split("<<'SPILO_CONFIG'\n")
            .nth(1)
            .and_then(|s| s.split("SPILO_CONFIG\n").next())
            .expect("the configuration");
        assert_eq!(
            Ok(GovernorConfig::parse(body).expect("the governor reads it")),
            config(&orders())
        );
    }

    #[test]
    fn bash_reads_the_whole_script() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("user-data");
        std::fs::write(&path, render(&orders())).expect("write");
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn values_from_the_file_stay_one_shell_word() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("x'; rm -rf /; '"), r"'x'\''; rm -rf /; '\'''");
        let mut f = orders();
        if let Some(a) = f.spec.aws.as_mut() {
            a.storage.mount_options = vec!["noatime'; touch /pwned; echo '".into()];
        }
        let script = render(&f);
        let line = script
            .lines()
            .find(|l| l.starts_with("spilo_mount_data"))
            .expect("the mount step");
        assert_eq!(
            line,
            r"spilo_mount_data /dev/xvdk ext4 'noatime'\''; touch /pwned; echo '\''' /home/postgres/pgdata"
        );
    }

    #[test]
    fn members_read_their_passwords_from_aws_and_signal_their_stack() {
        let c = config(&orders()).expect("renders");
        assert_eq!(c.name, None, "each instance names itself");
        assert_eq!(c.postgresql.listen.to_string(), "0.0.0.0:5432");
        assert_eq!(c.restapi.listen.to_string(), "0.0.0.0:8008");
        assert_eq!(c.etcd.discovery_domain.as_deref(), Some("etcd.example.com"));
        let auth = &c.postgresql.authentication;
        assert_eq!(auth.superuser.password.ssm.as_deref(), Some("/db/su"));
        assert_eq!(
            auth.replication.password.secrets_manager.as_deref(),
            Some("arn:aws:secretsmanager:eu-west-1:1:secret:repl")
        );
        assert!(c.restapi.auth.is_some());
        let aws = c.aws.expect("aws settings");
        assert_eq!(aws.region, "eu-west-1");
        assert_eq!(
            aws.signal,
            Some(StackSignal {
                stack: "spilo-orders".into(),
                resource: "AutoScalingGroup".into()
            })
        );
        let archive = c.archive.expect("archive");
        assert_eq!(archive.s3.map(|s| s.bucket), Some("wal-bucket".into()));
        let clone = c.bootstrap.expect("clone").clone.archive;
        assert_eq!(clone.prefix, "spilo/src/wal/15/");
    }
}
