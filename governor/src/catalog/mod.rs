//! Converging PostgreSQL's catalog to the roles and databases in the cluster's `config`
//! ([`spilo_model::Catalog`]). [`plan`] is pure: the catalog as read ([`Observed`]) and the
//! passwords to set turn into SQL [`Step`]s, each with its reason, in the order that works:
//! roles (create, then alter what differs), memberships, passwords, databases (create, owner),
//! schemas and extensions inside each database, and last the roles declared `absent`. A
//! database is never dropped. [`converge`](run::converge) reads and runs them as the leader.

pub mod run;

use postgres_protocol::escape::{escape_identifier as ident, escape_literal as literal};
use spilo_model::catalog::{Catalog, Presence, RoleFlag};
use std::collections::{BTreeMap, BTreeSet};

/// A role as PostgreSQL has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedRole {
    /// `rolcanlogin`.
    pub login: bool,
    /// The flags set.
    pub flags: BTreeSet<RoleFlag>,
    /// `rolconnlimit` (-1: none).
    pub connection_limit: i32,
    /// `rolsuper` or `rolreplication`: powers a declared role never has (only the roles
    /// spilo runs as do).
    pub privileged: bool,
    /// The roles it is a member of.
    pub member_of: BTreeSet<String>,
}

/// A database as PostgreSQL has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDatabase {
    /// Its owner.
    pub owner: String,
    /// Its extensions.
    pub extensions: BTreeSet<String>,
    /// Its schemas.
    pub schemas: BTreeSet<String>,
}

/// The declared roles and databases as PostgreSQL has them (absent: not in the maps).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Roles by name.
    pub roles: BTreeMap<String, ObservedRole>,
    /// Databases by name.
    pub databases: BTreeMap<String, ObservedDatabase>,
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The database it runs in (`None`: the maintenance database).
    pub database: Option<String>,
    /// The statement.
    pub sql: String,
    /// Why, for the log (never a password).
    pub why: String,
}

fn step(database: Option<&str>, sql: String, why: String) -> Step {
    Step {
        database: database.map(str::to_string),
        sql,
        why,
    }
}

/// The attributes clause of a role's CREATE or ALTER.
fn attributes(login: bool, flags: &[RoleFlag], limit: i32) -> String {
    let mut words = vec![if login { "LOGIN" } else { "NOLOGIN" }.to_string()];
    for f in RoleFlag::ALL {
        let (on, off) = f.keywords();
        words.push(if flags.contains(&f) { on } else { off }.to_string());
    }
    words.push(format!(
        "NOSUPERUSER NOREPLICATION CONNECTION LIMIT {limit}"
    ));
    words.join(" ")
}

/// What to run so that PostgreSQL holds `desired`. `passwords`: role -> SCRAM verifier of the
/// passwords to set now (a new role's, a changed one's, or every one on a new leader's first
/// pass).
pub fn plan(
    desired: &Catalog,
    observed: &Observed,
    passwords: &BTreeMap<String, String>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let present: Vec<(&String, &spilo_model::catalog::Role)> = desired
        .roles
        .iter()
        .filter(|(_, r)| r.state == Presence::Present)
        .collect();
    for (name, role) in &present {
        let limit = role.connection_limit.unwrap_or(-1);
        let attrs = attributes(role.login, &role.flags, limit);
        match observed.roles.get(*name) {
            None => steps.push(step(
                None,
                format!("CREATE ROLE {} WITH {attrs}", ident(name)),
                format!("role {name} does not exist"),
            )),
            Some(o) => {
                let flags: BTreeSet<RoleFlag> = role.flags.iter().copied().collect();
                let mut differs = Vec::new();
                if o.login != role.login {
                    differs.push(format!("login {} -> {}", o.login, role.login));
                }
                for f in RoleFlag::ALL {
                    let (on, _) = f.keywords();
                    match (o.flags.contains(&f), flags.contains(&f)) {
                        (false, true) => differs.push(format!("+{}", on.to_lowercase())),
                        (true, false) => differs.push(format!("-{}", on.to_lowercase())),
                        _ => {}
                    }
                }
                if o.privileged {
                    differs.push("-superuser/replication".to_string());
                }
                if o.connection_limit != limit {
                    differs.push(format!(
                        "connection limit {} -> {limit}",
                        o.connection_limit
                    ));
                }
                if !differs.is_empty() {
                    steps.push(step(
                        None,
                        format!("ALTER ROLE {} WITH {attrs}", ident(name)),
                        format!("role {name}: {}", differs.join(", ")),
                    ));
                }
            }
        }
    }
    for (name, role) in &present {
        let have = observed
            .roles
            .get(*name)
            .map(|o| o.member_of.clone())
            .unwrap_or_default();
        for parent in &role.member_of {
            if !have.contains(parent) {
                steps.push(step(
                    None,
                    format!("GRANT {} TO {}", ident(parent), ident(name)),
                    format!("role {name}: +member of {parent}"),
                ));
            }
        }
        // Only memberships in roles the file declares are taken away.
        for parent in have
            .iter()
            .filter(|p| desired.roles.contains_key(*p) && !role.member_of.contains(p))
        {
            steps.push(step(
                None,
                format!("REVOKE {} FROM {}", ident(parent), ident(name)),
                format!("role {name}: -member of {parent}"),
            ));
        }
        if let Some(verifier) = passwords.get(*name) {
            steps.push(step(
                None,
                format!("ALTER ROLE {} PASSWORD {}", ident(name), literal(verifier)),
                format!("role {name}: password set"),
            ));
        }
    }
    for (name, db) in &desired.databases {
        let (owner, extensions, schemas) = match observed.databases.get(name) {
            None => {
                steps.push(step(
                    None,
                    format!("CREATE DATABASE {} OWNER {}", ident(name), ident(&db.owner)),
                    format!("database {name} does not exist"),
                ));
                (db.owner.clone(), BTreeSet::new(), BTreeSet::new())
            }
            Some(o) => (o.owner.clone(), o.extensions.clone(), o.schemas.clone()),
        };
        if owner != db.owner {
            steps.push(step(
                None,
                format!(
                    "ALTER DATABASE {} OWNER TO {}",
                    ident(name),
                    ident(&db.owner)
                ),
                format!("database {name}: owner {owner} -> {}", db.owner),
            ));
        }
        for schema in db.schemas.iter().filter(|s| !schemas.contains(*s)) {
            steps.push(step(
                Some(name),
                format!(
                    "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}",
                    ident(schema),
                    ident(&db.owner)
                ),
                format!("database {name}: schema {schema} does not exist"),
            ));
        }
        for ext in db.extensions.iter().filter(|e| !extensions.contains(*e)) {
            steps.push(step(
                Some(name),
                format!("CREATE EXTENSION IF NOT EXISTS {}", ident(ext)),
                format!("database {name}: extension {ext} does not exist"),
            ));
        }
    }
    for name in desired
        .roles
        .iter()
        .filter(|(n, r)| r.state == Presence::Absent && observed.roles.contains_key(*n))
        .map(|(n, _)| n)
    {
        steps.push(step(
            None,
            format!("DROP ROLE {}", ident(name)),
            format!("role {name} is declared absent"),
        ));
    }
    steps
}

#[cfg(test)]
mod tests;
