//! The planner against hand-made catalogs.

use super::*;
use spilo_model::catalog::{Database, Role, RolePassword};

fn catalog(yaml: &str) -> Catalog {
    serde_yaml::from_str(yaml).expect("catalog")
}

fn sql(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match &s.database {
            Some(d) => format!("[{d}] {}", s.sql),
            None => s.sql.clone(),
        })
        .collect()
}

#[test]
fn an_empty_cluster_gets_everything_in_order_and_passwords_only_as_verifiers() {
    let desired = catalog(
        "roles:\n  app: {flags: [createdb], memberOf: [readers], password: {file: /x}}\n  \
         readers: {login: false}\n  old: {state: absent}\n\
         databases:\n  app: {owner: app, extensions: [pgcrypto], schemas: [billing]}\n",
    );
    let passwords = BTreeMap::from([("app".to_string(), "SCRAM-SHA-256$4096:abc".to_string())]);
    let steps = plan(&desired, &Observed::default(), &passwords);
    assert_eq!(
        sql(&steps),
        [
            "CREATE ROLE \"app\" WITH LOGIN CREATEDB NOCREATEROLE NOBYPASSRLS INHERIT NOSUPERUSER NOREPLICATION CONNECTION LIMIT -1",
            "CREATE ROLE \"readers\" WITH NOLOGIN NOCREATEDB NOCREATEROLE NOBYPASSRLS INHERIT NOSUPERUSER NOREPLICATION CONNECTION LIMIT -1",
            "GRANT \"readers\" TO \"app\"",
            "ALTER ROLE \"app\" PASSWORD 'SCRAM-SHA-256$4096:abc'",
            "CREATE DATABASE \"app\" OWNER \"app\"",
            "[app] CREATE SCHEMA IF NOT EXISTS \"billing\" AUTHORIZATION \"app\"",
            "[app] CREATE EXTENSION IF NOT EXISTS \"pgcrypto\"",
        ]
    );
    assert!(steps.iter().all(|s| !s.why.contains("SCRAM")), "{steps:?}");
    // An absent role that does not exist is nothing to do.
    assert!(!sql(&steps).iter().any(|s| s.contains("DROP")));
}

#[test]
fn only_what_differs_is_altered_and_nothing_is_dropped_but_absent_roles() {
    let desired = catalog(
        "roles:\n  app: {flags: [createdb], connectionLimit: 10, memberOf: [readers]}\n  \
         readers: {login: false}\n  old: {state: absent}\n\
         databases:\n  app: {owner: app, extensions: [pgcrypto]}\n",
    );
    let mut observed = Observed::default();
    observed.roles.insert(
        "app".into(),
        ObservedRole {
            login: true,
            flags: [RoleFlag::Createdb].into(),
            connection_limit: -1,
            privileged: false,
            member_of: ["readers".to_string(), "someone_elses".to_string()].into(),
        },
    );
    observed.roles.insert(
        "readers".into(),
        ObservedRole {
            login: false,
            connection_limit: -1,
            ..Default::default()
        },
    );
    observed.roles.insert("old".into(), ObservedRole::default());
    observed.databases.insert(
        "app".into(),
        ObservedDatabase {
            owner: "postgres".into(),
            extensions: ["plpgsql".to_string(), "pgcrypto".to_string()].into(),
            schemas: Default::default(),
        },
    );
    let steps = plan(&desired, &observed, &BTreeMap::new());
    assert_eq!(
        sql(&steps),
        [
            "ALTER ROLE \"app\" WITH LOGIN CREATEDB NOCREATEROLE NOBYPASSRLS INHERIT NOSUPERUSER NOREPLICATION CONNECTION LIMIT 10",
            "ALTER DATABASE \"app\" OWNER TO \"app\"",
            "DROP ROLE \"old\"",
        ]
    );
    assert_eq!(steps[0].why, "role app: connection limit -1 -> 10");
    assert_eq!(steps[1].why, "database app: owner postgres -> app");

    // Converged: nothing to do. A membership in a role the file declares is taken away.
    let mut now = observed.clone();
    now.roles.get_mut("app").expect("app").connection_limit = 10;
    now.databases.get_mut("app").expect("app").owner = "app".into();
    now.roles.remove("old");
    assert_eq!(plan(&desired, &now, &BTreeMap::new()), Vec::new());
    let mut fewer = desired.clone();
    fewer.roles.get_mut("app").expect("app").member_of.clear();
    assert_eq!(
        sql(&plan(&fewer, &now, &BTreeMap::new())),
        ["REVOKE \"readers\" FROM \"app\""]
    );
}

#[test]
fn superuser_or_replication_given_by_hand_is_taken_away() {
    let desired = catalog("roles:\n  app: {}\n");
    let mut observed = Observed::default();
    observed.roles.insert(
        "app".into(),
        ObservedRole {
            login: true,
            connection_limit: -1,
            privileged: true,
            ..Default::default()
        },
    );
    let steps = plan(&desired, &observed, &BTreeMap::new());
    assert_eq!(
        sql(&steps),
        [
            "ALTER ROLE \"app\" WITH LOGIN NOCREATEDB NOCREATEROLE NOBYPASSRLS INHERIT NOSUPERUSER NOREPLICATION CONNECTION LIMIT -1"
        ]
    );
    assert_eq!(steps[0].why, "role app: -superuser/replication");
}

#[test]
fn names_are_quoted() {
    let mut desired = Catalog::default();
    desired.roles.insert(
        "we\"ird".into(),
        Role {
            login: true,
            flags: vec![],
            member_of: vec![],
            connection_limit: None,
            password: Some(RolePassword::default()),
            state: Default::default(),
        },
    );
    desired.databases.insert(
        "d".into(),
        Database {
            owner: "we\"ird".into(),
            extensions: vec![],
            schemas: vec![],
        },
    );
    let steps = plan(&desired, &Observed::default(), &BTreeMap::new());
    assert!(
        steps[0].sql.starts_with("CREATE ROLE \"we\"\"ird\""),
        "{steps:?}"
    );
    assert_eq!(steps[1].sql, "CREATE DATABASE \"d\" OWNER \"we\"\"ird\"");
}
