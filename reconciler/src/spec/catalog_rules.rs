//! Rules of `spec.roles` and `spec.databases`: names PostgreSQL takes as they are written,
//! no clash with the roles spilo runs, owners and memberships that the file declares, one
//! password source, and extensions the installed PostgreSQL ships (a warning naming what it
//! was checked against).

use super::diagnostic::Severity;
use super::position::Path;
use super::validate::Reporter;
use spilo_model::catalog::Presence;
use spilo_model::spec::{ClusterFile, Target};

/// The roles spilo itself runs with (the superuser and the replication user).
pub const RESERVED_ROLES: [&str; 2] = ["postgres", "replicator"];

/// A name PostgreSQL takes without quoting: lower case letters, digits and `_`, not starting
/// with a digit, at most 63 bytes.
pub fn plain_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a plain name: lower case letters, digits and _, not starting with a digit, at most 63 bytes"
        ))
    }
}

/// A circle of memberships through `start` (PostgreSQL refuses it), as the names along it.
fn membership_cycle(s: &spilo_model::spec::ClusterSpec, start: &str) -> Option<Vec<String>> {
    let mut path = vec![start.to_string()];
    fn walk(s: &spilo_model::spec::ClusterSpec, start: &str, path: &mut Vec<String>) -> bool {
        let Some(role) = path.last().and_then(|n| s.roles.get(n)) else {
            return false;
        };
        for parent in role.member_of.clone() {
            if parent == start && path.len() > 1 {
                path.push(parent);
                return true;
            }
            if path.contains(&parent) {
                continue;
            }
            path.push(parent);
            if walk(s, start, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    walk(s, start, &mut path).then_some(path)
}

pub(super) fn check(f: &ClusterFile, r: &mut Reporter<'_>) {
    let s = &f.spec;
    if s.roles.is_empty() && s.databases.is_empty() {
        return;
    }
    for (name, role) in &s.roles {
        let here = |field: &str| Path::parse(&format!("spec.roles.{name}{field}"));
        if let Err(e) = plain_name(name) {
            r.at_key(&here(""), Severity::Error, e);
        } else if name.starts_with("pg_") {
            r.at_key(
                &here(""),
                Severity::Error,
                "role names starting with pg_ are reserved by PostgreSQL",
            );
        } else if RESERVED_ROLES.contains(&name.as_str()) {
            r.at_key(
                &here(""),
                Severity::Error,
                format!(
                    "{name} is the role spilo runs as (superuser or replication); declare another"
                ),
            );
        }
        for (i, parent) in role.member_of.iter().enumerate() {
            let declared = s.roles.get(parent);
            if parent == name {
                r.at(
                    &here(&format!(".memberOf[{i}]")),
                    Severity::Error,
                    "a role cannot be a member of itself",
                );
            } else if declared.is_none_or(|p| p.state == Presence::Absent) {
                r.at(
                    &here(&format!(".memberOf[{i}]")),
                    Severity::Error,
                    format!("no role {parent} is declared present in spec.roles"),
                );
            }
        }
        if role.connection_limit.is_some_and(|l| l < -1) {
            r.at(
                &here(".connectionLimit"),
                Severity::Error,
                "must be -1 (no limit) or more",
            );
        }
        if let Some(cycle) = membership_cycle(s, name) {
            r.at(
                &here(".memberOf"),
                Severity::Error,
                format!("memberships go round in a circle: {}", cycle.join(" -> ")),
            );
        }
        if let Some(p) = &role.password {
            let aws = s.target == Target::Aws;
            // On AWS `ssm` beside `generated: true` names where the generated one is kept.
            let sources = p.sources() - usize::from(aws && p.generated && p.ssm.is_some());
            let named = [p.ssm.as_deref(), p.secrets_manager.as_deref()];
            if let Some(bad) = named.iter().flatten().find(|n| n.contains(['*', '?'])) {
                r.at(
                    &here(".password"),
                    Severity::Error,
                    format!("{bad} is a pattern: a password names one SSM parameter or Secrets Manager secret (the instance role is granted exactly what is named)"),
                );
            } else if sources != 1 {
                r.at(
                    &here(".password"),
                    Severity::Error,
                    if aws {
                        "set exactly one of generated: true, ssm or secretsManager"
                    } else {
                        "set exactly one of generated: true, env or file"
                    },
                );
            } else if aws && (p.env.is_some() || p.file.is_some()) {
                r.at(
                    &here(".password"),
                    Severity::Error,
                    "on AWS a password is generated: true (kept in SSM under /spilo/<cluster>/roles/), or read from ssm or secretsManager; env and file are of the machine running spilo up",
                );
            } else if !aws && (p.ssm.is_some() || p.secrets_manager.is_some()) {
                r.at(
                    &here(".password"),
                    Severity::Error,
                    "ssm and secretsManager are read by the instances of an AWS cluster; on the local target use generated: true, env or file",
                );
            }
        }
        if role.password.is_some() && !role.login {
            r.at(
                &here(".password"),
                Severity::Warning,
                "a role without login cannot use its password",
            );
        }
    }
    let controls = crate::installed::extension_dir(&s.postgresql);
    for (name, db) in &s.databases {
        let here = |field: &str| Path::parse(&format!("spec.databases.{name}{field}"));
        if let Err(e) = plain_name(name) {
            r.at_key(&here(""), Severity::Error, e);
        } else if ["postgres", "template0", "template1"].contains(&name.as_str()) {
            r.at_key(
                &here(""),
                Severity::Error,
                format!("{name} is PostgreSQL's own database"),
            );
        }
        let owner = s.roles.get(&db.owner);
        if db.owner != "postgres" && owner.is_none_or(|o| o.state == Presence::Absent) {
            r.at(
                &here(".owner"),
                Severity::Error,
                format!(
                    "no role {} is declared present in spec.roles (or use postgres)",
                    db.owner
                ),
            );
        }
        for (i, schema) in db.schemas.iter().enumerate() {
            if let Err(e) = plain_name(schema) {
                r.at(&here(&format!(".schemas[{i}]")), Severity::Error, e);
            }
        }
        for (i, ext) in db.extensions.iter().enumerate() {
            if let Err(e) = plain_name(ext) {
                r.at(&here(&format!(".extensions[{i}]")), Severity::Error, e);
            } else if controls.is_dir() && !controls.join(format!("{ext}.control")).exists() {
                r.at(
                    &here(&format!(".extensions[{i}]")),
                    Severity::Warning,
                    format!(
                        "PostgreSQL {} here does not ship {ext} (checked in {})",
                        s.postgresql.version,
                        controls.display()
                    ),
                );
            }
        }
    }
}
