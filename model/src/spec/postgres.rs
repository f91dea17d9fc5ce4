//! `spec.postgresql`: the major version and where its programs are, the server parameters
//! and `pg_hba` lines of every member; and what the versions spilo supports need to be told
//! apart (Debian's directory for a version, whether a build has SSL).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// PostgreSQL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Major version: 15 (Debian's) or 18.
    #[serde(default = "d_pg_version")]
    #[schemars(range(min = 13, max = 18))]
    pub version: u32,
    /// Where this version's programs are (`postgres`, `initdb`, `pg_ctl`, `pg_rewind`, ...);
    /// by default Debian's `/usr/lib/postgresql/<version>/bin`, and on the local target
    /// `/usr/local/lib/postgresql/<version>/bin` when Debian has none (where
    /// `scripts/install-deps` puts PostgreSQL 18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<String>,
    /// Server parameters for every member (`shared_buffers: 1GB`, `max_connections: 200`).
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamValue>,
    /// pg_hba.conf lines; the default allows password logins from anywhere.
    #[serde(default, rename = "pg_hba", skip_serializing_if = "Vec::is_empty")]
    pub pg_hba: Vec<String>,
}

fn d_pg_version() -> u32 {
    15
}

/// Where Debian's packages put PostgreSQL `version`'s programs.
pub fn debian_bin_dir(version: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

/// Whether a PostgreSQL build lacks SSL, from what its `pg_config --configure` printed:
/// `Some(true)` when its options name neither `--with-ssl=openssl` nor `--with-openssl`,
/// `None` when there are no options to tell by (a meson build prints "not recorded").
pub fn built_without_ssl(configure: &str) -> Option<bool> {
    configure
        .contains("--")
        .then(|| !configure.contains("--with-ssl=openssl") && !configure.contains("--with-openssl"))
}

/// The major versions spilo runs and tests: Debian 12's and the newest.
pub const SUPPORTED_VERSIONS: [u32; 2] = [15, 18];

impl Default for PostgresSpec {
    fn default() -> Self {
        Self {
            version: d_pg_version(),
            bin_dir: None,
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
        }
    }
}

/// A PostgreSQL parameter value as written in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    /// `on`, `1GB`, `'replica'`.
    Text(String),
    /// `200`.
    Integer(i64),
    /// `0.9`.
    Float(f64),
    /// `true`.
    Bool(bool),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Text(s) => f.write_str(s),
            ParamValue::Integer(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Bool(true) => f.write_str("on"),
            ParamValue::Bool(false) => f.write_str("off"),
        }
    }
}
