//! The instance role's inline policies: exactly what the boot and the governor of a member
//! do, and nothing of another cluster. Pure, so every grant is a unit test (moto checks SSM
//! and Secrets Manager actions only against `*`, so a test against moto could not tell an
//! exact grant from a loose one; S3 it does check by key).
//!
//! - `wal-archive`: list, read, write and delete under the cluster's own WAL prefix; read the
//!   spilo image of this version (what a plain Debian instance installs); read and list under
//!   the clone source's prefix (the source's archive, never written).
//! - `secrets`: `ssm:GetParameter` on exactly the referenced parameters,
//!   `secretsmanager:GetSecretValue` on exactly the referenced secrets, `kms:Decrypt` on the
//!   named key.
//! - `role-passwords`: reading the passwords of the roles the file declares (SSM parameters,
//!   Secrets Manager secrets), and `ssm:PutParameter` on exactly the parameters of its
//!   generated passwords (`/spilo/<cluster>/roles/<role>`), which the leader creates.
//! - `signal`: `cloudformation:SignalResource` on the cluster's own stack.

use serde_json::{Value, json};
use spilo_model::spec::{ClusterFile, SecretRef};

fn sub(s: String) -> Value {
    json!({ "Fn::Sub": s })
}

/// The ARN of an SSM parameter given by name or ARN.
fn parameter_arn(p: &str) -> Value {
    if p.starts_with("arn:") {
        json!(p)
    } else {
        sub(format!(
            "arn:${{AWS::Partition}}:ssm:${{AWS::Region}}:${{AWS::AccountId}}:parameter/{}",
            p.trim_start_matches('/')
        ))
    }
}

/// The ARN of a Secrets Manager secret given by ARN or name (whose ARN ends in `-` and six
/// characters Secrets Manager adds).
fn secret_arn(s: &str) -> Value {
    if s.starts_with("arn:") {
        json!(s)
    } else {
        sub(format!(
            "arn:${{AWS::Partition}}:secretsmanager:${{AWS::Region}}:${{AWS::AccountId}}:secret:{s}-??????"
        ))
    }
}

/// Reading exactly `refs`: `ssm:GetParameter` on the parameters, `secretsmanager:GetSecretValue`
/// on the secrets, `kms:Decrypt` on `kms_key`.
pub fn secret_statements(refs: &[&SecretRef], kms_key: Option<&str>) -> Vec<Value> {
    let parameters: Vec<Value> = refs
        .iter()
        .filter_map(|r| r.ssm.as_deref())
        .map(parameter_arn)
        .collect();
    let secrets: Vec<Value> = refs
        .iter()
        .filter_map(|r| r.secrets_manager.as_deref())
        .map(secret_arn)
        .collect();
    let mut statements = Vec::new();
    if !parameters.is_empty() {
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": parameters,
        }));
    }
    if !secrets.is_empty() {
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": secrets,
        }));
    }
    if let Some(key) = kms_key {
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": key,
        }));
    }
    statements
}

/// The inline policies of the instance role.
pub fn instance_policies(file: &ClusterFile) -> Vec<Value> {
    let spec = &file.spec;
    let mut policies = Vec::new();
    if let Some(backup) = &spec.backup {
        let bucket = &backup.bucket;
        // With the default prefix, every major version's archive of the cluster: a major
        // upgrade's new version archives before the stack moves to it, and the old version's
        // archive (the upgrade's restore point) stays readable after.
        let own = match backup.prefix {
            Some(_) => file.wal_prefix(),
            None => spilo_model::spec::default_archive_root(&file.metadata.name),
        };
        let mut prefixes = vec![format!("{own}*")];
        let mut statements = vec![json!({
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": format!("arn:aws:s3:::{bucket}/{own}*"),
        })];
        // The spilo image a plain Debian instance installs at its first boot.
        if super::image::from_bucket(file) {
            statements.push(json!({
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": format!("arn:aws:s3:::{bucket}/{}*", super::image::prefix()),
            }));
        }
        if let Some(c) = &spec.bootstrap.clone {
            let source = spilo_model::spec::default_wal_prefix(&c.from, spec.postgresql.version);
            statements.push(json!({
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": format!("arn:aws:s3:::{bucket}/{source}*"),
            }));
            prefixes.push(format!("{source}*"));
        }
        statements.insert(
            0,
            json!({
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": format!("arn:aws:s3:::{bucket}"),
                "Condition": {"StringLike": {"s3:prefix": prefixes}},
            }),
        );
        policies.push(json!({
            "PolicyName": "wal-archive",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        }));
    }

    // A standby cluster's leader replays its source's archive while it cannot stream.
    if let Some(a) = spec.standby.as_ref().and_then(|sb| sb.archive.as_ref()) {
        let (bucket, prefix) = (&a.bucket, &a.prefix);
        policies.push(json!({
            "PolicyName": "standby-source-archive",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket"],
                    "Resource": format!("arn:aws:s3:::{bucket}"),
                    "Condition": {"StringLike": {"s3:prefix": [format!("{prefix}*")]}},
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject"],
                    "Resource": format!("arn:aws:s3:::{bucket}/{prefix}*"),
                },
            ]},
        }));
    }

    let refs: Vec<&SecretRef> = spec
        .secrets
        .references()
        .into_iter()
        .filter_map(|(_, r)| r)
        .collect();
    let statements = secret_statements(&refs, spec.secrets.kms_key.as_deref());
    if !statements.is_empty() {
        policies.push(json!({
            "PolicyName": "secrets",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        }));
    }

    let read = super::catalog::references_read(file);
    // The key `spec.secrets.kmsKey` names decrypts role passwords too (already granted in
    // `secrets` when that policy exists; here for a file whose role passwords are its only
    // secrets).
    let mut statements = secret_statements(
        &read.iter().collect::<Vec<_>>(),
        spec.secrets.kms_key.as_deref(),
    );
    let written: Vec<Value> = super::catalog::parameters_written(file)
        .iter()
        .map(|p| parameter_arn(p))
        .collect();
    if !written.is_empty() {
        statements.push(json!({
            "Effect": "Allow",
            "Action": ["ssm:PutParameter"],
            "Resource": written,
        }));
    }
    if !statements.is_empty() {
        policies.push(json!({
            "PolicyName": "role-passwords",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        }));
    }

    // Scale-in protection of its own instance while it runs the primary: only in the
    // cluster's own group (tagged with its name), and finding that group (no resource level).
    policies.push(json!({
        "PolicyName": "scale-in",
        "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            {
                "Effect": "Allow",
                "Action": ["autoscaling:SetInstanceProtection"],
                "Resource": "*",
                "Condition": {"StringEquals": {
                    format!("autoscaling:ResourceTag/{}", super::names::CLUSTER_TAG):
                        file.metadata.name.as_str()
                }},
            },
            {
                "Effect": "Allow",
                "Action": ["autoscaling:DescribeAutoScalingInstances"],
                "Resource": "*",
            },
        ]},
    }));
    policies.push(json!({
        "PolicyName": "signal",
        "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": ["cloudformation:SignalResource"],
            "Resource": sub(format!(
                "arn:${{AWS::Partition}}:cloudformation:${{AWS::Region}}:${{AWS::AccountId}}:stack/{}/*",
                super::names::stack_name(file.metadata.name.as_str())
            )),
        }]},
    }));
    policies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(extra: &str) -> ClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: orders}}\nspec:\n  target: aws\n  aws: {{region: eu-west-1}}\n{extra}"
        ))
        .expect("valid")
    }

    fn policy<'a>(ps: &'a [Value], name: &str) -> &'a Value {
        ps.iter()
            .find(|p| p["PolicyName"] == name)
            .map(|p| &p["PolicyDocument"]["Statement"])
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn secrets_are_granted_one_by_one_and_nothing_else() {
        let ps = instance_policies(&file(
            "  secrets:\n    superuser: {ssm: /spilo/orders/superuser}\n    replication: {secretsManager: 'arn:aws:secretsmanager:eu-west-1:111122223333:secret:orders/repl-AbCdEf'}\n    restapi: {secretsManager: orders/api}\n    kmsKey: arn:aws:kms:eu-west-1:111122223333:key/1234\n",
        ));
        assert_eq!(
            policy(&ps, "secrets"),
            &json!([
                {"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": [
                    {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/spilo/orders/superuser"}]},
                {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [
                    "arn:aws:secretsmanager:eu-west-1:111122223333:secret:orders/repl-AbCdEf",
                    {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:orders/api-??????"}]},
                {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": "arn:aws:kms:eu-west-1:111122223333:key/1234"},
            ])
        );
        let text = serde_json::to_string(policy(&ps, "secrets")).expect("json");
        assert!(!text.contains("\"*\""), "no wildcard resource: {text}");
    }

    #[test]
    fn scale_in_protection_is_set_only_in_the_clusters_own_group() {
        let ps = instance_policies(&file(""));
        assert_eq!(
            policy(&ps, "scale-in"),
            &json!([
                {"Effect": "Allow", "Action": ["autoscaling:SetInstanceProtection"], "Resource": "*",
                 "Condition": {"StringEquals": {"autoscaling:ResourceTag/spilo:cluster": "orders"}}},
                {"Effect": "Allow", "Action": ["autoscaling:DescribeAutoScalingInstances"], "Resource": "*"},
            ])
        );
    }

    #[test]
    fn the_archive_is_the_own_prefix_and_the_clone_source_read_only() {
        let ps = instance_policies(&file(
            "  backup: {bucket: wal}\n  bootstrap: {clone: {from: src}}\n",
        ));
        assert_eq!(
            policy(&ps, "wal-archive"),
            &json!([
                {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::wal",
                 "Condition": {"StringLike": {"s3:prefix": ["spilo/orders/wal/*", "spilo/src/wal/15/*"]}}},
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                 "Resource": "arn:aws:s3:::wal/spilo/orders/wal/*"},
                {"Effect": "Allow", "Action": ["s3:GetObject"],
                 "Resource": format!("arn:aws:s3:::wal/spilo/images/{}/*", super::super::image::VERSION)},
                {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::wal/spilo/src/wal/15/*"},
            ])
        );
    }

    #[test]
    fn a_standby_reads_its_sources_archive_and_writes_nothing_there() {
        let ps = instance_policies(&file(
            "  standby:\n    hosts: [\"src.db.example.com:5432\"]\n    archive: {bucket: src-wal, prefix: spilo/src/wal/15/, region: us-east-1}\n",
        ));
        assert_eq!(
            policy(&ps, "standby-source-archive"),
            &json!([
                {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::src-wal",
                 "Condition": {"StringLike": {"s3:prefix": ["spilo/src/wal/15/*"]}}},
                {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::src-wal/spilo/src/wal/15/*"},
            ])
        );
        assert!(
            ps.iter()
                .all(|p| p["PolicyName"] != "standby-source-archive"
                    || !p.to_string().contains("PutObject"))
        );
        assert_eq!(
            policy(&instance_policies(&file("")), "standby-source-archive"),
            &Value::Null
        );
    }

    #[test]
    fn role_passwords_are_read_one_by_one_and_only_generated_ones_written() {
        let ps = instance_policies(&file(
            "  roles:\n    app: {password: {generated: true}}\n    report: {password: {secretsManager: team/report}}\n    group: {login: false}\n",
        ));
        let param = |n: &str| json!({"Fn::Sub": format!("arn:${{AWS::Partition}}:ssm:${{AWS::Region}}:${{AWS::AccountId}}:parameter/spilo/orders/roles/{n}")});
        assert_eq!(
            policy(&ps, "role-passwords"),
            &json!([
                {"Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": [param("app")]},
                {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [
                    {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:team/report-??????"}]},
                {"Effect": "Allow", "Action": ["ssm:PutParameter"], "Resource": [param("app")]},
            ])
        );
        assert_eq!(
            policy(&instance_policies(&file("")), "role-passwords"),
            &Value::Null,
            "no roles, no grant"
        );
    }

    #[test]
    fn a_member_may_signal_only_its_own_stack() {
        let ps = instance_policies(&file(""));
        assert_eq!(
            policy(&ps, "signal"),
            &json!([{"Effect": "Allow", "Action": ["cloudformation:SignalResource"], "Resource":
                {"Fn::Sub": "arn:${AWS::Partition}:cloudformation:${AWS::Region}:${AWS::AccountId}:stack/spilo-orders/*"}}])
        );
        assert!(
            ps.iter()
                .all(|p| p["PolicyName"] != "secrets" && p["PolicyName"] != "wal-archive")
        );
    }
}
