//! The cluster files the box's tests commit, and the connection strings to their members.

use super::{AwsBox, REGION};

impl AwsBox {
    /// A cluster file `name` for the box: its etcd, VPC, subnet, zone, bucket and secrets.
    pub fn cluster_file(&self, name: &str, instances: u32) -> String {
        format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}, team: orders}}\nspec:\n  \
             instances: {instances}\n  target: aws\n  \
             postgresql: {{parameters: {{shared_buffers: 32MB, max_connections: 50}}}}\n  \
             dcs: {{hosts: [\"{etcd}\"]}}\n  \
             aws:\n    region: {REGION}\n    instanceType: t3.medium\n    image: /spilo/box/debian-12/amd64\n    vpc: {vpc}\n    subnets: [{subnet}]\n    \
             hostedZone: db.example.com\n    hostedZoneId: {zone}\n    storage: {{size: 10}}\n  \
             backup: {{bucket: spilo-wal}}\n  {sync}\
             endpoints: {{dns: {{name: {name}}}, healthCheck: {{interval: 5}}}}\n  \
             secrets:\n    superuser: {{ssm: /spilo/{name}/superuser}}\n    \
             replication: {{secretsManager: \"{repl}\"}}\n    restapi: {{ssm: /spilo/{name}/restapi}}\n    \
             ca: {{secretsManager: \"{ca}\"}}\n",
            etcd = self.etcd.client_addr,
            vpc = self.setup.vpc,
            subnet = self.setup.subnet,
            zone = self.setup.zone_id,
            repl = self.setup.replication_arn,
            ca = self.ca_arn,
            // Synchronous replication: a failover loses no acknowledged commit.
            sync = if instances > 1 {
                "ha: {synchronousMode: true}\n  "
            } else {
                ""
            },
        )
    }

    /// [`Self::cluster_file`] on PostgreSQL 18 without a CA (the image's 18 is built without
    /// SSL): its members speak without TLS.
    pub fn cluster_file_18(&self, name: &str, instances: u32) -> String {
        let file = self.cluster_file(name, instances);
        let ca = format!("    ca: {{secretsManager: \"{}\"}}\n", self.ca_arn);
        assert!(
            file.contains("postgresql: {parameters:") && file.contains(&ca),
            "{file}"
        );
        file.replace(
            "postgresql: {parameters:",
            "postgresql: {version: 18, parameters:",
        )
        .replace(&ca, "")
    }

    /// The superuser's connection string to the PostgreSQL of the instance at `ip`, without
    /// TLS (a cluster of [`Self::cluster_file_18`]).
    pub fn plain_dsn(&self, ip: &str) -> String {
        format!(
            "host={ip} port=5432 user=postgres password={} dbname=postgres connect_timeout=2",
            self.setup.passwords["superuser"]
        )
    }

    /// The superuser's connection string to the PostgreSQL of the instance at `ip` (TLS,
    /// checked against the cluster CA).
    pub fn dsn(&self, ip: &str) -> String {
        format!(
            "host={ip} port=5432 user=postgres password={} dbname=postgres connect_timeout=2 \
             sslmode=verify-full sslrootcert={}",
            self.setup.passwords["superuser"],
            self.ca.display()
        )
    }
}
