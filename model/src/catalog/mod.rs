//! What a cluster holds inside PostgreSQL: its roles and its databases (with their extensions
//! and schemas), as a cluster file declares them (`spec.roles`, `spec.databases`) and the
//! cluster's `config` carries them to the leader, whose governor converges the catalog to
//! them. Passwords are never here: a role names where its password is read.

use crate::governor::SecretRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod changes;
pub use changes::{describe_changes, password_source};

/// The roles and databases of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Hand-made changes are undone (the file's `reconcile.drift: revert`); otherwise they
    /// are only reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert: bool,
    /// Roles by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, Role>,
    /// Databases by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, Database>,
}

impl Catalog {
    /// Nothing declared.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.databases.is_empty()
    }
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Role {
    /// It may log in (default true; false for a group role).
    #[serde(default = "yes")]
    pub login: bool,
    /// Attributes beyond login.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<RoleFlag>,
    /// Roles it is a member of (declared in the same file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_of: Vec<String>,
    /// How many connections it may hold at once (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<i32>,
    /// Where its password is read; `{generated: true}` has the target make one and keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<RolePassword>,
    /// `absent` drops the role (only then is a role dropped).
    #[serde(default, skip_serializing_if = "Presence::is_present")]
    pub state: Presence,
}

fn yes() -> bool {
    true
}

/// Role attributes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RoleFlag {
    /// May create databases.
    Createdb,
    /// May create roles.
    Createrole,
    /// Bypasses row-level security.
    Bypassrls,
    /// Does not inherit the privileges of the roles it is a member of.
    Noinherit,
}

impl RoleFlag {
    /// Every flag, in order.
    pub const ALL: [RoleFlag; 4] = [
        RoleFlag::Createdb,
        RoleFlag::Createrole,
        RoleFlag::Bypassrls,
        RoleFlag::Noinherit,
    ];

    /// As the file spells it.
    pub fn word(self) -> &'static str {
        match self {
            RoleFlag::Createdb => "createdb",
            RoleFlag::Createrole => "createrole",
            RoleFlag::Bypassrls => "bypassrls",
            RoleFlag::Noinherit => "noinherit",
        }
    }

    /// The SQL keyword when set, and when not.
    pub fn keywords(self) -> (&'static str, &'static str) {
        match self {
            RoleFlag::Createdb => ("CREATEDB", "NOCREATEDB"),
            RoleFlag::Createrole => ("CREATEROLE", "NOCREATEROLE"),
            RoleFlag::Bypassrls => ("BYPASSRLS", "NOBYPASSRLS"),
            RoleFlag::Noinherit => ("NOINHERIT", "INHERIT"),
        }
    }
}

/// Where a role's password comes from: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolePassword {
    /// The target generates one and keeps it: locally in the state directory, on AWS the
    /// leader's governor into the SSM parameter `/spilo/<cluster>/roles/<role>` (set in
    /// `ssm` by the plan; created when absent, never overwritten).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generated: bool,
    /// An environment variable of `spilo up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An SSM Parameter Store parameter (AWS; name or ARN, SecureString decrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm: Option<String>,
    /// A Secrets Manager secret (AWS; name or ARN, its `SecretString`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_manager: Option<String>,
    /// Set by the target in `config`, never in a file: a digest of the password with a
    /// secret salt of the target's, so that a changed password changes `config` (and the
    /// leader sets it) without the password or a plain hash of it leaving the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub fingerprint: Option<String>,
}

impl RolePassword {
    /// How many sources are set (valid: exactly one).
    pub fn sources(&self) -> usize {
        usize::from(self.generated)
            + usize::from(self.env.is_some())
            + usize::from(self.file.is_some())
            + usize::from(self.ssm.is_some())
            + usize::from(self.secrets_manager.is_some())
    }

    /// Where the governor reads it: a file (locally a generated or an environment's password
    /// was written to one by the target), an SSM parameter or a Secrets Manager secret.
    /// `None` for a source not resolved yet.
    pub fn as_secret(&self) -> Option<SecretRef> {
        if let Some(f) = &self.file {
            return Some(SecretRef::file(f));
        }
        Some(SecretRef {
            ssm: self.ssm.clone(),
            secrets_manager: self.secrets_manager.clone(),
            ..SecretRef::default()
        })
        .filter(|r| r.sources() == 1)
    }
}

/// Present or absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Created and kept as declared.
    #[default]
    Present,
    /// Dropped.
    Absent,
}

impl Presence {
    /// The default.
    pub fn is_present(&self) -> bool {
        *self == Presence::Present
    }
}

/// A database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Database {
    /// Its owner: a role of the same file, or the superuser.
    pub owner: String,
    /// Extensions created in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// Schemas created in it, owned by the database's owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
}

/// The etcd key `catalog`: how the catalog stands against `config.catalog`, written by the
/// leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogStatus {
    /// The member that wrote it.
    pub member: String,
    /// When (Unix seconds).
    pub unix: u64,
    /// Why the last convergence failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What differs from the file after the last convergence (changed by hand), each as the
    /// step that would undo it says it; empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}
