//! The contract's own guarantees: what is serialised parses back to the same value, and the
//! checks that need no I/O.

use super::*;

fn minimal() -> GovernorConfig {
    GovernorConfig::parse(
        "scope: demo\nname: demo-0\netcd: {hosts: [\"127.0.0.1:2379\"]}\npostgresql:\n  \
         bin_dir: /usr/lib/postgresql/15/bin\n  data_dir: /var/lib/spilo/demo-0\n  \
         listen: 127.0.0.1:5432\n  authentication:\n    \
         superuser: {username: postgres, password: {env: SU}}\n    \
         replication: {username: replicator, password: {file: /etc/spilo/repl}}\n",
    )
    .expect("valid")
}

#[test]
fn a_serialised_configuration_parses_back_to_the_same_value() {
    let mut c = minimal();
    c.postgresql
        .parameters
        .insert("log_line_prefix".into(), "%m [%p] '%q' #: {x}".into());
    c.postgresql.pg_hba = Some(vec![
        "host all all 10.0.0.0/8 scram-sha-256".into(),
        "host \"quoted db\" all 0.0.0.0/0 md5 # \"x\": y".into(),
    ]);
    c.archive = Some(ArchiveConfig {
        prefix: "spilo/demo/wal/15/".into(),
        compression: Compression::Zstd,
        directory: None,
        s3: Some(S3Config {
            bucket: "b".into(),
            region: "eu-west-1".into(),
            endpoint: None,
            path_style: false,
            sse: Some("AES256".into()),
        }),
        verify: None,
        backups: Some(BackupSchedule {
            schedule: "0 1 * * *".into(),
            retain: 3,
        }),
        replicas_from_backup: true,
        upload_concurrency: None,
        prefetch: 8,
        recover_after: None,
    });
    c.aws = Some(AwsSettings {
        scale_in_protection: true,
        region: "eu-west-1".into(),
        signal: Some(StackSignal {
            stack: "spilo-demo".into(),
            resource: "AutoScalingGroup".into(),
        }),
    });
    c.postgresql.authentication.superuser.password = SecretRef {
        ssm: Some("/spilo/demo/superuser".into()),
        ..SecretRef::default()
    };
    let mut tls = TlsConfig::new(
        "/etc/spilo/ca.crt".into(),
        SecretRef::file("/etc/spilo/ca.key"),
    );
    tls.names = vec!["demo.db.example.org".into()];
    c.tls = Some(tls);
    let yaml = c.to_yaml();
    assert_eq!(GovernorConfig::parse(&yaml), Ok(c), "{yaml}");
}

#[test]
fn defaults_are_left_out_of_the_rendering() {
    let yaml = minimal().to_yaml();
    assert!(!yaml.contains("namespace"), "{yaml}");
    assert!(!yaml.contains("synchronous_mode"), "{yaml}");
    assert!(!yaml.contains("archive"), "{yaml}");
}

#[test]
fn remote_secrets_need_a_region_and_every_secret_one_source() {
    let mut c = minimal();
    c.postgresql.authentication.replication.password = SecretRef {
        secrets_manager: Some("arn:aws:secretsmanager:eu-west-1:1:secret:x".into()),
        ..SecretRef::default()
    };
    assert_eq!(
        c.check().map_err(|e| e.to_string()),
        Err("postgresql.authentication.replication.password: ssm and secrets_manager references need aws.region".into())
    );
    c.postgresql.authentication.replication.password.env = Some("X".into());
    assert_eq!(
        c.check().map_err(|e| e.field),
        Err("postgresql.authentication.replication.password".into())
    );
}

#[test]
fn with_tls_a_member_serves_https_names_its_addresses_and_needs_etcd_over_tls() {
    let mut c = minimal();
    assert_eq!(c.api_url(), "http://127.0.0.1:8008");
    assert_eq!(c.api_tls(), None);
    let mut tls = TlsConfig::new(
        "/etc/spilo/ca.crt".into(),
        SecretRef::file("/etc/spilo/ca.key"),
    );
    assert_eq!(tls.lifetime, 30 * 86_400, "30 days by default");
    tls.names = vec!["demo.db.example.org".into(), "127.0.0.1".into()];
    c.tls = Some(tls);
    c.postgresql.connect_address = Some("10.0.0.7:5432".into());
    assert_eq!(c.check(), Ok(()));
    assert_eq!(c.api_url(), "https://127.0.0.1:8008");
    let api = c.api_tls().expect("derived from tls");
    assert_eq!(
        api.certfile,
        PathBuf::from("/var/lib/spilo/demo-0.run/tls/member.crt")
    );
    assert_eq!(api.cafile, Some(PathBuf::from("/etc/spilo/ca.crt")));
    assert_eq!(
        c.cert_names(),
        ["10.0.0.7", "127.0.0.1", "demo.db.example.org"]
    );

    let mut plain_etcd = c.clone();
    plain_etcd.etcd.hosts = vec!["http://10.0.0.1:2379".into()];
    assert_eq!(
        plain_etcd.check().map_err(|e| e.field),
        Err("etcd.hosts".to_string())
    );
    let mut short = c.clone();
    if let Some(t) = short.tls.as_mut() {
        t.lifetime = MIN_LIFETIME - 1;
    }
    assert_eq!(
        short.check().map_err(|e| e.field),
        Err("tls.lifetime".to_string())
    );
    let mut two_sources = c;
    if let Some(t) = two_sources.tls.as_mut() {
        t.ca_key.env = Some("CA_KEY".into());
    }
    assert_eq!(
        two_sources.check().map_err(|e| e.field),
        Err("tls.ca_key".to_string())
    );
}

#[test]
fn the_proxy_needs_a_port_of_its_own() {
    let mut c = minimal();
    c.proxy = Some(ProxyConfig {
        listen: "0.0.0.0:5433".parse().expect("an address"),
    });
    assert_eq!(c.check(), Ok(()));
    let parsed = GovernorConfig::parse(&c.to_yaml()).expect("parses back");
    assert_eq!(parsed.proxy, c.proxy);
    for taken in ["0.0.0.0:5432", "127.0.0.1:8008", "0.0.0.0:0"] {
        c.proxy = Some(ProxyConfig {
            listen: taken.parse().expect("an address"),
        });
        assert_eq!(
            c.check().map_err(|e| e.field),
            Err("proxy.listen".to_string()),
            "{taken}"
        );
    }
}

#[test]
fn a_zookeeper_store_replaces_etcd_and_round_trips() {
    let mut c = minimal();
    c.etcd = EtcdConfig::default();
    c.zookeeper = Some(ZooKeeperConfig {
        hosts: vec!["127.0.0.1:2181".into(), "zk-2.example.com:2181".into()],
    });
    assert_eq!(c.check(), Ok(()));
    let text = serde_yaml::to_string(&c).expect("serialises");
    assert!(!text.contains("etcd"), "no empty etcd section: {text}");
    assert_eq!(GovernorConfig::parse(&text).expect("parses"), c);
    // TLS for PostgreSQL and the API does not mean TLS to ZooKeeper.
    c.tls = Some(TlsConfig {
        ca_file: "/etc/spilo/ca.crt".into(),
        ca_key: SecretRef::file("/etc/spilo/ca.key"),
        dir: None,
        names: Vec::new(),
        lifetime: MIN_LIFETIME,
    });
    assert!(!c.etcd_over_tls());
}

#[test]
fn the_store_is_etcd_or_zookeeper_and_well_formed() {
    let field = |c: &GovernorConfig| c.check().map_err(|e| e.field);
    let mut both = minimal();
    both.zookeeper = Some(ZooKeeperConfig {
        hosts: vec!["127.0.0.1:2181".into()],
    });
    assert_eq!(field(&both), Err("zookeeper".to_string()));
    let mut neither = minimal();
    neither.etcd = EtcdConfig::default();
    assert_eq!(field(&neither), Err("etcd".to_string()));
    for hosts in [
        vec![],
        vec!["127.0.0.1".to_string()],
        vec![":2181".to_string()],
    ] {
        let mut zk = neither.clone();
        zk.zookeeper = Some(ZooKeeperConfig { hosts });
        assert_eq!(field(&zk), Err("zookeeper.hosts".to_string()));
    }
    let unknown = GovernorConfig::parse(
        "scope: demo\nzookeeper: {hosts: [\"a:1\"], chroot: /x}\npostgresql: {}\n",
    );
    assert!(unknown.is_err(), "unknown zookeeper fields are refused");
}
