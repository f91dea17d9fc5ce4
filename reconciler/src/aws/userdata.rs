//! The instances' user data: a boot script that mounts the EBS data volume, fetches the
//! passwords the cluster file references, writes the governor configuration (the same
//! renderer as the local target, with the instance id as the member name) and starts the
//! governor as the `postgres` user. Pure: the same file renders the same script.

use crate::member_config::{self, Placement};
use spilo_model::spec::{ClusterFile, Filesystem, SecretRef};
use std::fmt::Write;

/// The device name of the data volume in the launch template.
pub const DATA_DEVICE: &str = "/dev/xvdk";
/// Where the data volume is mounted.
pub const DATA_MOUNT: &str = "/home/postgres/pgdata";

/// The shell commands that put one password into `/etc/spilo/<name>`.
fn fetch_secret(out: &mut String, name: &str, r: Option<&SecretRef>, region: &str) {
    let dest = format!("/etc/spilo/{name}");
    match r {
        Some(SecretRef { ssm: Some(p), .. }) => {
            let _ = writeln!(
                out,
                "aws --region {region} ssm get-parameter --with-decryption --name '{p}' --query Parameter.Value --output text > {dest}"
            );
        }
        Some(SecretRef {
            secrets_manager: Some(arn),
            ..
        }) => {
            let _ = writeln!(
                out,
                "aws --region {region} secretsmanager get-secret-value --secret-id '{arn}' --query SecretString --output text > {dest}"
            );
        }
        Some(SecretRef { file: Some(f), .. }) => {
            let _ = writeln!(out, "install -m 600 '{f}' {dest}");
        }
        Some(SecretRef { env: Some(v), .. }) => {
            let _ = writeln!(out, "printf '%s' \"${{{v}}}\" > {dest}");
        }
        _ => {
            // No reference: a random password, the same on every member is not needed for
            // the superuser; replication needs one shared secret, so refuse to guess.
            let _ = writeln!(
                out,
                "test -s {dest} || {{ echo 'spilo: spec.secrets.{name} is not set' >&2; exit 1; }}"
            );
        }
    }
}

/// The user data script.
pub fn render(file: &ClusterFile) -> String {
    let spec = &file.spec;
    let region = spec.aws.as_ref().map(|a| a.region.as_str()).unwrap_or("");
    let storage = spec
        .aws
        .as_ref()
        .map(|a| a.storage.clone())
        .unwrap_or_default();
    let fs = match storage.filesystem {
        Filesystem::Ext4 => "ext4",
        Filesystem::Xfs => "xfs",
    };
    let etcd = match &spec.dcs {
        Some(d) if !d.hosts.is_empty() => {
            let hosts: Vec<String> = d.hosts.iter().map(|h| format!("\"{h}\"")).collect();
            format!("{{hosts: [{}]}}", hosts.join(", "))
        }
        Some(d) => format!(
            "{{discovery_domain: {}}}",
            d.discovery_domain.clone().unwrap_or_default()
        ),
        None => "{}".into(),
    };
    let config = member_config::render(
        file,
        &Placement {
            header: "# Written at boot from the user data spilo rendered from the cluster file.",
            name: "${INSTANCE_ID}".into(),
            etcd,
            data_dir: format!("{DATA_MOUNT}/data"),
            postgres_listen: "${LOCAL_IP}:5432".into(),
            api_listen: "${LOCAL_IP}:8008".into(),
            superuser: "{file: /etc/spilo/superuser}".into(),
            replication: "{file: /etc/spilo/replication}".into(),
            archive_store: format!(
                "s3: {{bucket: \"{}\", region: {region}}}",
                spec.backup.as_ref().map_or("", |b| b.bucket.as_str())
            ),
            api_token: spec
                .secrets
                .restapi
                .as_ref()
                .map(|_| "{file: /etc/spilo/restapi}".into()),
            // The source archives into the same bucket under its own prefix.
            clone_store: spec.bootstrap.clone.as_ref().map(|_| {
                format!(
                    "s3: {{bucket: \"{}\", region: {region}}}",
                    spec.backup.as_ref().map_or("", |b| b.bucket.as_str())
                )
            }),
            parameters_in_file: false,
        },
    );
    let mut out = format!(
        "#!/bin/bash\n\
         # spilo member of cluster {name}: rendered by spilo from the cluster file.\n\
         set -euo pipefail\n\
         TOKEN=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')\n\
         md() {{ curl -sf -H \"X-aws-ec2-metadata-token: $TOKEN\" \"http://169.254.169.254/latest/meta-data/$1\"; }}\n\
         INSTANCE_ID=$(md instance-id)\n\
         LOCAL_IP=$(md local-ipv4)\n\
         DEV={DATA_DEVICE}; [ -e \"$DEV\" ] || DEV=/dev/nvme1n1\n\
         blkid \"$DEV\" >/dev/null || mkfs -t {fs} \"$DEV\"\n\
         mkdir -p {DATA_MOUNT}\n\
         mount -o {opts} \"$DEV\" {DATA_MOUNT}\n\
         chown postgres:postgres {DATA_MOUNT}\n\
         install -d -m 700 -o postgres -g postgres /etc/spilo\n",
        name = file.metadata.name,
        opts = storage.mount_options.join(","),
    );
    fetch_secret(
        &mut out,
        "superuser",
        spec.secrets.superuser.as_ref(),
        region,
    );
    fetch_secret(
        &mut out,
        "replication",
        spec.secrets.replication.as_ref(),
        region,
    );
    let mut secret_files = "/etc/spilo/superuser /etc/spilo/replication".to_string();
    if let Some(r) = &spec.secrets.restapi {
        fetch_secret(&mut out, "restapi", Some(r), region);
        secret_files.push_str(" /etc/spilo/restapi");
    }
    let _ = write!(
        out,
        "chown postgres:postgres {secret_files}\n\
         chmod 600 {secret_files}\n\
         cat > /etc/spilo/governor.yaml <<SPILO_EOF\n{config}SPILO_EOF\n\
         exec runuser -u postgres -- governor run --config /etc/spilo/governor.yaml\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_is_named_after_its_instance_and_reads_passwords_from_ssm() {
        let f: ClusterFile = serde_yaml::from_str(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: orders}\nspec:\n  target: aws\n  dcs: {discoveryDomain: etcd.example.com}\n  aws: {region: eu-west-1, vpc: v, subnets: [s]}\n  secrets: {superuser: {ssm: /db/su}, replication: {ssm: /db/repl}}\n",
        )
        .expect("valid");
        let script = render(&f);
        assert!(script.starts_with("#!/bin/bash\n"), "{script}");
        assert!(script.contains("name: ${INSTANCE_ID}\n"), "{script}");
        assert!(
            script.contains("etcd: {discovery_domain: etcd.example.com}\n"),
            "{script}"
        );
        assert!(
            script.contains(
                "aws --region eu-west-1 ssm get-parameter --with-decryption --name '/db/su'"
            ),
            "{script}"
        );
        assert!(script.contains("mount -o noatime,nodiratime"), "{script}");
    }
}
