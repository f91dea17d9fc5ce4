//! What changing a cluster's declared roles and databases from one [`Catalog`] to another
//! does, in words, one line per role or database: `+ database orders owned by orders_app`,
//! `~ role reporting: +createdb`. The plans of both targets print these lines; they describe
//! the files, not PostgreSQL (which the leader converges, reporting what it did).

use super::{Catalog, Database, Presence, Role, RolePassword};

/// The lines saying how `after` differs from `before` (`None`: nothing declared before).
pub fn describe_changes(before: Option<&Catalog>, after: &Catalog) -> Vec<String> {
    let empty = Catalog::default();
    let before = before.unwrap_or(&empty);
    let mut out = Vec::new();
    if before.revert != after.revert && !before.is_empty() && !after.is_empty() {
        out.push(format!(
            "~ roles and databases changed by hand: {} -> {}",
            drift_word(before.revert),
            drift_word(after.revert)
        ));
    }
    for (name, role) in &after.roles {
        match (before.roles.get(name), role.state) {
            (None, Presence::Present) => {
                out.push(format!("+ role {name} ({})", role_summary(role)))
            }
            (None, Presence::Absent) => out.push(format!(
                "- role {name} (state: absent: dropped if it exists)"
            )),
            (Some(old), _) if old == role => {}
            // Dropped before and still: nothing to say of its other fields.
            (Some(old), Presence::Absent) if old.state == Presence::Absent => {}
            (Some(old), Presence::Absent) if old.state == Presence::Present => {
                out.push(format!("- role {name} (state: absent: dropped)"))
            }
            (Some(old), Presence::Present) if old.state == Presence::Absent => {
                out.push(format!("+ role {name} ({})", role_summary(role)))
            }
            (Some(old), _) => {
                let parts = role_differences(old, role);
                if !parts.is_empty() {
                    out.push(format!("~ role {name}: {}", parts.join(", ")));
                }
            }
        }
    }
    for (name, old) in &before.roles {
        if !after.roles.contains_key(name) && old.state == Presence::Present {
            out.push(format!(
                "  role {name} is no longer declared: kept as it is (only state: absent drops a role)"
            ));
        }
    }
    for (name, db) in &after.databases {
        match before.databases.get(name) {
            None => out.push(format!("+ database {name} {}", database_summary(db))),
            Some(old) if old == db => {}
            Some(old) => out.push(format!(
                "~ database {name}: {}",
                database_differences(old, db).join(", ")
            )),
        }
    }
    for name in before.databases.keys() {
        if !after.databases.contains_key(name) {
            out.push(format!(
                "  database {name} is no longer declared: kept with its data (spilo never drops a database)"
            ));
        }
    }
    out
}

fn drift_word(revert: bool) -> &'static str {
    if revert { "reverted" } else { "reported" }
}

fn role_summary(r: &Role) -> String {
    let mut parts = vec![if r.login { "login" } else { "no login" }.to_string()];
    parts.extend(r.flags.iter().map(|f| flag_word(*f).to_string()));
    if !r.member_of.is_empty() {
        parts.push(format!("member of {}", r.member_of.join(", ")));
    }
    if let Some(n) = r.connection_limit.filter(|n| *n >= 0) {
        parts.push(format!("at most {n} connections"));
    }
    if let Some(p) = &r.password {
        parts.push(format!("password {}", password_source(p)));
    }
    parts.join(", ")
}

fn flag_word(f: super::RoleFlag) -> &'static str {
    f.word()
}

/// Where a password is read, in words.
pub fn password_source(p: &RolePassword) -> String {
    match p {
        RolePassword {
            generated: true,
            ssm: Some(at),
            ..
        } => format!("generated into SSM parameter {at}"),
        RolePassword {
            generated: true, ..
        } => "generated".into(),
        RolePassword { env: Some(v), .. } => format!("from environment variable {v}"),
        RolePassword { file: Some(f), .. } => format!("from file {f}"),
        RolePassword { ssm: Some(s), .. } => format!("from SSM parameter {s}"),
        RolePassword {
            secrets_manager: Some(s),
            ..
        } => format!("from Secrets Manager secret {s}"),
        _ => "(no source)".into(),
    }
}

fn role_differences(old: &Role, new: &Role) -> Vec<String> {
    let mut parts = Vec::new();
    if old.login != new.login {
        parts.push(if new.login { "+login" } else { "-login" }.to_string());
    }
    for f in super::RoleFlag::ALL {
        match (old.flags.contains(&f), new.flags.contains(&f)) {
            (false, true) => parts.push(format!("+{}", flag_word(f))),
            (true, false) => parts.push(format!("-{}", flag_word(f))),
            _ => {}
        }
    }
    for m in &new.member_of {
        if !old.member_of.contains(m) {
            parts.push(format!("+member of {m}"));
        }
    }
    for m in &old.member_of {
        if !new.member_of.contains(m) {
            parts.push(format!("-member of {m}"));
        }
    }
    if old.connection_limit != new.connection_limit {
        let limit = |n: Option<i32>| match n {
            Some(n) if n >= 0 => n.to_string(),
            _ => "no limit".to_string(),
        };
        parts.push(format!(
            "connection limit {} -> {}",
            limit(old.connection_limit),
            limit(new.connection_limit)
        ));
    }
    match (&old.password, &new.password) {
        (None, Some(p)) => parts.push(format!("+password {}", password_source(p))),
        (Some(_), None) => parts.push("-password (the role keeps the one it has)".into()),
        (Some(a), Some(b)) if a != b => {
            let (was, now) = (password_source(a), password_source(b));
            if was == now {
                parts.push(format!("password changed ({now})"));
            } else {
                parts.push(format!("password {was} -> {now}"));
            }
        }
        _ => {}
    }
    parts
}

fn database_summary(d: &Database) -> String {
    let mut s = format!("owned by {}", d.owner);
    if !d.extensions.is_empty() {
        s.push_str(&format!(", extensions {}", d.extensions.join(", ")));
    }
    if !d.schemas.is_empty() {
        s.push_str(&format!(", schemas {}", d.schemas.join(", ")));
    }
    s
}

fn database_differences(old: &Database, new: &Database) -> Vec<String> {
    let mut parts = Vec::new();
    if old.owner != new.owner {
        parts.push(format!("owner {} -> {}", old.owner, new.owner));
    }
    let added = |kind: &str, old: &[String], new: &[String], parts: &mut Vec<String>| {
        for x in new.iter().filter(|x| !old.contains(x)) {
            parts.push(format!("+{kind} {x}"));
        }
        for x in old.iter().filter(|x| !new.contains(x)) {
            parts.push(format!("{kind} {x} no longer declared (kept)"));
        }
    };
    added("extension", &old.extensions, &new.extensions, &mut parts);
    added("schema", &old.schemas, &new.schemas, &mut parts);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::RoleFlag;

    fn role(login: bool, flags: &[RoleFlag], member_of: &[&str]) -> Role {
        Role {
            login,
            flags: flags.to_vec(),
            member_of: member_of.iter().map(|s| s.to_string()).collect(),
            connection_limit: None,
            password: None,
            state: Presence::Present,
        }
    }

    fn db(owner: &str, extensions: &[&str]) -> Database {
        Database {
            owner: owner.into(),
            extensions: extensions.iter().map(|s| s.to_string()).collect(),
            schemas: vec![],
        }
    }

    fn catalog(roles: Vec<(&str, Role)>, dbs: Vec<(&str, Database)>) -> Catalog {
        Catalog {
            revert: true,
            roles: roles.into_iter().map(|(n, r)| (n.to_string(), r)).collect(),
            databases: dbs.into_iter().map(|(n, d)| (n.to_string(), d)).collect(),
        }
    }

    #[test]
    fn a_new_cluster_lists_every_role_and_database() {
        let mut app = role(true, &[], &["readers"]);
        app.password = Some(RolePassword {
            generated: true,
            ..RolePassword::default()
        });
        app.connection_limit = Some(20);
        let after = catalog(
            vec![("orders_app", app), ("readers", role(false, &[], &[]))],
            vec![("orders", db("orders_app", &["pgcrypto"]))],
        );
        assert_eq!(
            describe_changes(None, &after),
            vec![
                "+ role orders_app (login, member of readers, at most 20 connections, password generated)",
                "+ role readers (no login)",
                "+ database orders owned by orders_app, extensions pgcrypto",
            ]
        );
    }

    #[test]
    fn changed_flags_memberships_owners_and_extensions_are_named_one_by_one() {
        let before = catalog(
            vec![
                ("reporting", role(true, &[RoleFlag::Createrole], &["a"])),
                ("a", role(false, &[], &[])),
                ("b", role(false, &[], &[])),
            ],
            vec![("orders", db("a", &["pgcrypto"]))],
        );
        let after = catalog(
            vec![
                ("reporting", role(true, &[RoleFlag::Createdb], &["b"])),
                ("a", role(false, &[], &[])),
                ("b", role(false, &[], &[])),
            ],
            vec![("orders", db("b", &["pg_stat_statements"]))],
        );
        assert_eq!(
            describe_changes(Some(&before), &after),
            vec![
                "~ role reporting: +createdb, -createrole, +member of b, -member of a",
                "~ database orders: owner a -> b, +extension pg_stat_statements, extension pgcrypto no longer declared (kept)",
            ]
        );
    }

    #[test]
    fn nothing_is_dropped_unless_a_role_says_absent() {
        let before = catalog(
            vec![
                ("old", role(true, &[], &[])),
                ("gone", role(true, &[], &[])),
            ],
            vec![("orders", db("old", &[]))],
        );
        let mut absent = role(true, &[], &[]);
        absent.state = Presence::Absent;
        let mut after = catalog(vec![("old", absent)], vec![]);
        after.revert = false;
        assert_eq!(
            describe_changes(Some(&before), &after),
            vec![
                "~ roles and databases changed by hand: reverted -> reported",
                "- role old (state: absent: dropped)",
                "  role gone is no longer declared: kept as it is (only state: absent drops a role)",
                "  database orders is no longer declared: kept with its data (spilo never drops a database)",
            ]
        );
    }

    #[test]
    fn a_dropped_role_stays_quiet_until_it_comes_back() {
        let mut absent = role(true, &[RoleFlag::Createdb], &[]);
        absent.state = Presence::Absent;
        let mut absent_edited = absent.clone();
        absent_edited.flags.clear();
        let before = catalog(vec![("old", absent.clone())], vec![]);
        let quiet = catalog(vec![("old", absent_edited)], vec![]);
        assert!(describe_changes(Some(&before), &quiet).is_empty());
        let gone = catalog(vec![], vec![]);
        assert!(describe_changes(Some(&before), &gone).is_empty());
        let back = catalog(vec![("old", role(true, &[], &[]))], vec![]);
        assert_eq!(
            describe_changes(Some(&before), &back),
            vec!["+ role old (login)"]
        );
    }

    #[test]
    fn a_changed_password_says_so_without_saying_it() {
        let with = |fingerprint: &str| {
            let mut r = role(true, &[], &[]);
            r.password = Some(RolePassword {
                file: Some("/state/secrets/roles/app".into()),
                fingerprint: Some(fingerprint.into()),
                ..RolePassword::default()
            });
            r
        };
        let before = catalog(vec![("app", with("aaaa"))], vec![]);
        let after = catalog(vec![("app", with("bbbb"))], vec![]);
        let lines = describe_changes(Some(&before), &after);
        assert_eq!(
            lines,
            vec!["~ role app: password changed (from file /state/secrets/roles/app)"]
        );
        assert!(!lines[0].contains("bbbb"));
    }

    #[test]
    fn the_same_catalog_is_no_lines() {
        let c = catalog(vec![("a", role(true, &[], &[]))], vec![("d", db("a", &[]))]);
        assert!(describe_changes(Some(&c), &c).is_empty());
        assert!(describe_changes(None, &Catalog::default()).is_empty());
    }
}
