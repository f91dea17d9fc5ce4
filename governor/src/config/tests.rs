//! Parsing, defaults, refusals and secret resolution of governor configuration files.

use super::*;

const MINIMAL: &str = r#"
scope: demo
name: demo-0
etcd: {hosts: ["127.0.0.1:2379"]}
postgresql:
  bin_dir: /usr/lib/postgresql/15/bin
  data_dir: /var/lib/spilo/demo-0
  listen: 127.0.0.1:5432
  authentication:
    superuser: {username: postgres, password: {env: PGPASS_SU}}
    replication: {username: replicator, password: {file: /etc/spilo/repl}}
"#;

fn parse(text: &str) -> Result<GovernorConfig, ConfigError> {
    super::parse(text, Path::new("g.yaml"))
}

#[test]
fn a_minimal_file_gets_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.ha, HaSettings::default());
    assert_eq!(c.restapi.listen.to_string(), "127.0.0.1:8008");
    assert_eq!(c.run_dir(), PathBuf::from("/var/lib/spilo/demo-0.run"));
    assert_eq!(c.pg_connect_address(), "127.0.0.1:5432");
    assert_eq!(c.namespace, "/service");
}

#[test]
fn unknown_keys_are_refused_with_their_location() {
    let text = MINIMAL.replace("scope: demo", "scope: demo\nttl: 30");
    let err = parse(&text).expect_err("unknown key").to_string();
    assert!(err.starts_with("g.yaml: unknown field `ttl`"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn a_misspelt_nested_key_is_refused() {
    let text = MINIMAL.replace("data_dir:", "datadir:");
    let err = parse(&text).expect_err("unknown key").to_string();
    assert!(err.contains("unknown field `datadir`"), "{err}");
}

#[test]
fn etcd_needs_exactly_one_source() {
    let none = MINIMAL.replace(r#"etcd: {hosts: ["127.0.0.1:2379"]}"#, "etcd: {}");
    assert_eq!(
        parse(&none).expect_err("no etcd").to_string(),
        "g.yaml: etcd: set either hosts or discovery_domain"
    );
    let both = MINIMAL.replace(
        r#"etcd: {hosts: ["127.0.0.1:2379"]}"#,
        r#"etcd: {hosts: ["a:1"], discovery_domain: example.org}"#,
    );
    assert!(parse(&both).is_err());
}

#[test]
fn timing_must_be_consistent() {
    let text = format!("{MINIMAL}ha: {{ttl: 4, retry_timeout: 4}}\n");
    assert_eq!(
        parse(&text).expect_err("inconsistent").to_string(),
        "g.yaml: ha.retry_timeout: must be at least 1 and below the ttl (4s), got 4: a primary must learn that etcd is gone before its lease ends"
    );
    let text = format!("{MINIMAL}ha: {{ttl: 1}}\n");
    assert!(
        parse(&text)
            .expect_err("too short")
            .to_string()
            .contains("ha.ttl")
    );
}

#[test]
fn names_are_validated() {
    let text = MINIMAL.replace("name: demo-0", "name: Demo_0");
    let err = parse(&text).expect_err("bad name").to_string();
    assert!(err.contains("\"Demo_0\" is not a valid name"), "{err}");
}

#[test]
fn literal_passwords_are_not_accepted() {
    let text = MINIMAL.replace("{env: PGPASS_SU}", "secret");
    assert!(parse(&text).is_err());
    let text = MINIMAL.replace("{env: PGPASS_SU}", "{}");
    assert_eq!(
        parse(&text).expect_err("empty ref").to_string(),
        "g.yaml: postgresql.authentication.superuser.password: set exactly one of env, file, ssm or secrets_manager"
    );
}

#[tokio::test]
async fn secrets_resolve_from_files_and_report_missing_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pw");
    std::fs::write(&f, "s3cret\n").expect("write");
    let cfg = dir.path().join("g.yaml");
    std::fs::write(
        &cfg,
        MINIMAL.replace(
            "{file: /etc/spilo/repl}",
            &format!("{{file: {}}}", f.display()),
        ),
    )
    .expect("write");
    let missing = load(&cfg, &Identity::default())
        .await
        .expect_err("PGPASS_SU is unset")
        .to_string();
    assert!(
        missing.ends_with(
            "g.yaml: postgresql.authentication.superuser.password: environment variable PGPASS_SU is not set"
        ),
        "{missing}"
    );
    std::fs::write(
        &cfg,
        MINIMAL
            .replace(
                "{file: /etc/spilo/repl}",
                &format!("{{file: {}}}", f.display()),
            )
            .replace("{env: PGPASS_SU}", &format!("{{file: {}}}", f.display())),
    )
    .expect("write");
    let loaded = load(&cfg, &Identity::default()).await.expect("loads");
    assert_eq!(loaded.replication_password, "s3cret");
    assert_eq!(loaded.name.as_str(), "demo-0");
}

#[tokio::test]
async fn the_identity_given_at_start_names_the_member_and_its_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pw");
    std::fs::write(&f, "s3cret").expect("write");
    let cfg = dir.path().join("g.yaml");
    let shared = MINIMAL
        .replace("name: demo-0\n", "")
        .replace("listen: 127.0.0.1:5432", "listen: 0.0.0.0:5432")
        .replace("{env: PGPASS_SU}", &format!("{{file: {}}}", f.display()))
        .replace(
            "{file: /etc/spilo/repl}",
            &format!("{{file: {}}}", f.display()),
        );
    std::fs::write(&cfg, format!("{shared}restapi: {{listen: 0.0.0.0:8008}}\n")).expect("write");
    let nameless = load(&cfg, &Identity::default())
        .await
        .expect_err("no name")
        .to_string();
    assert!(
        nameless.ends_with("g.yaml: name: set it in the file or give it with --name"),
        "{nameless}"
    );
    let loaded = load(
        &cfg,
        &Identity {
            name: MemberName::new("i-0abc123").ok(),
            connect_host: Some("10.77.1.4".into()),
            networks: vec!["10.77.0.0/16".into()],
        },
    )
    .await
    .expect("loads");
    assert_eq!(loaded.name.as_str(), "i-0abc123");
    assert_eq!(loaded.config.pg_connect_address(), "10.77.1.4:5432");
    assert_eq!(loaded.config.api_url(), "http://10.77.1.4:8008");
    assert_eq!(loaded.config.postgresql.networks, ["10.77.0.0/16"]);
    let refused = load(
        &cfg,
        &Identity {
            name: MemberName::new("i-0abc123").ok(),
            networks: vec!["10.77.0.0".into()],
            ..Identity::default()
        },
    )
    .await
    .expect_err("not a network")
    .to_string();
    assert!(
        refused.contains("--allowed-network: \"10.77.0.0\" is not a network"),
        "{refused}"
    );
}

#[test]
fn keepalive_and_fence_fit_inside_the_lease() {
    let ha = HaSettings::default();
    assert!(ha.keepalive_interval() * 3 + ha.fence_margin() < ha.ttl());
}

#[test]
fn restapi_auth_needs_a_token_or_a_full_basic_pair() {
    let with = |auth: &str| parse(&format!("{MINIMAL}restapi: {{auth: {auth}}}\n"));
    let ok = with("{token: {env: T}}").expect("token");
    assert!(ok.restapi.auth.is_some_and(|a| a.token.is_some()));
    with("{username: admin, password: {file: /p}}").expect("basic");
    for (bad, why) in [
        ("{}", "set token, or username and password"),
        ("{username: admin}", "go together"),
        (
            "{token: {env: T, file: /t}}",
            "exactly one of env, file, ssm or secrets_manager",
        ),
        ("{username: 'a:b', password: {env: P}}", "contain no ':'"),
    ] {
        let e = with(bad).expect_err(bad).to_string();
        assert!(e.contains("restapi.auth") && e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_clone_target_time_is_parsed_at_load_and_an_unparsable_one_names_the_field() {
    let clone = |t: &str| {
        format!(
            "{MINIMAL}bootstrap: {{clone: {{archive: {{prefix: spilo/src/wal/15/, directory: /b}}, target_time: \"{t}\"}}}}\n"
        )
    };
    let c = parse(&clone("2026-11-27T13:24:03.5+02:00")).expect("valid");
    let t = c
        .bootstrap
        .and_then(|b| b.clone.target_time)
        .expect("target");
    assert_eq!(t.to_postgres(), "2026-11-27 11:24:03.500000+00");
    let err = parse(&clone("2026-11-27T11:24:03"))
        .expect_err("no zone")
        .to_string();
    assert!(
        err.starts_with("g.yaml: bootstrap.clone: target_time: must be an RFC 3339 time"),
        "{err}"
    );
    assert!(err.contains("line 12"), "{err}");
}
