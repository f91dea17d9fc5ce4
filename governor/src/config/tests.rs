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
    GovernorConfig::parse(text, Path::new("g.yaml"))
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
        "g.yaml: postgresql.authentication.superuser.password: set exactly one of env or file"
    );
}

#[test]
fn secrets_resolve_from_files_and_report_missing_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pw");
    std::fs::write(&f, "s3cret\n").expect("write");
    let secret = SecretRef {
        file: Some(f),
        env: None,
    };
    let got = resolve(&secret, Path::new("g.yaml"), "x").expect("reads");
    assert_eq!(got, "s3cret");
    let missing = resolve(
        &SecretRef {
            env: Some("SPILO_TEST_SURELY_UNSET".into()),
            file: None,
        },
        Path::new("g.yaml"),
        "a.b",
    )
    .expect_err("unset")
    .to_string();
    assert_eq!(
        missing,
        "g.yaml: a.b: environment variable SPILO_TEST_SURELY_UNSET is not set"
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
        ("{token: {env: T, file: /t}}", "exactly one of env or file"),
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
