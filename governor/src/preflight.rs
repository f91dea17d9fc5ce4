//! Checks before the governor touches anything: not running as root, the PostgreSQL binaries
//! present, the data directory owned by this user. Each failure names the problem and the fix;
//! none of these checks writes a file. (Reaching etcd is checked when connecting.)

use crate::config::GovernorConfig;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A refused start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The governor runs as root.
    #[error(
        "the governor refuses to run as root: PostgreSQL will not run as root, and the data must \
         belong to an unprivileged user; run it as that user (for example `runuser -u postgres -- governor run ...`)"
    )]
    Root,
    /// A PostgreSQL binary is missing.
    #[error(
        "postgresql.bin_dir {dir}: {tool} is missing or not executable; point bin_dir at a PostgreSQL installation such as /usr/lib/postgresql/15/bin"
    )]
    MissingBinary {
        /// The directory.
        dir: String,
        /// The tool.
        tool: &'static str,
    },
    /// TLS is configured, and the PostgreSQL build cannot speak it.
    #[error(
        "postgresql.bin_dir {dir}: this PostgreSQL build has no SSL support (`pg_config --configure` shows neither --with-ssl=openssl nor --with-openssl), but `tls:` asks for TLS on every connection; use a build with OpenSSL (Debian's or apt.postgresql.org's packages), or configure no `tls:`"
    )]
    NoSsl {
        /// The directory.
        dir: String,
    },
    /// The data directory is halfway through a major upgrade: pg_upgrade renamed its control
    /// file, and starting it would look like a member without data.
    #[error(
        "{dir} has global/pg_control.old and no global/pg_control: a major upgrade (pg_upgrade --link) stopped halfway; `spilo up` rolls it back or finishes it (by hand: `governor upgrade rollback`)"
    )]
    UpgradeHalfway {
        /// The data directory.
        dir: String,
    },
    /// The data directory is not this user's.
    #[error(
        "postgresql.data_dir {dir} is owned by uid {owner}, but the governor runs as uid {me}; run the governor as the owner or change the owner"
    )]
    ForeignDataDir {
        /// The directory.
        dir: String,
        /// Its owner.
        owner: u32,
        /// This process's uid.
        me: u32,
    },
    /// The data directory holds something that is not PostgreSQL data.
    #[error(
        "postgresql.data_dir {dir} is not empty and holds no PostgreSQL data (no PG_VERSION); refusing to overwrite it"
    )]
    NotADataDir {
        /// The directory.
        dir: String,
    },
    /// The parent of a missing data directory cannot be written.
    #[error(
        "postgresql.data_dir {dir} does not exist and its parent {parent} is missing or not writable by this user"
    )]
    NoParent {
        /// The directory.
        dir: String,
        /// Its parent.
        parent: String,
    },
    /// Something could not be inspected.
    #[error("cannot inspect {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

const TOOLS: [&str; 6] = [
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// Runs every check.
pub fn check(cfg: &GovernorConfig) -> Result<(), PreflightError> {
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return Err(PreflightError::Root);
    }
    check_binaries(&cfg.postgresql.bin_dir)?;
    if cfg.tls.is_some() && builds_without_ssl(&cfg.postgresql.bin_dir) {
        return Err(PreflightError::NoSsl {
            dir: cfg.postgresql.bin_dir.display().to_string(),
        });
    }
    let global = cfg.postgresql.data_dir.join("global");
    if global.join("pg_control.old").exists() && !global.join("pg_control").exists() {
        return Err(PreflightError::UpgradeHalfway {
            dir: cfg.postgresql.data_dir.display().to_string(),
        });
    }
    check_data_dir(&cfg.postgresql.data_dir, me.as_raw())
}

fn check_binaries(dir: &Path) -> Result<(), PreflightError> {
    for tool in TOOLS {
        let path = dir.join(tool);
        let ok = std::fs::metadata(&path)
            .map(|m| m.is_file() && m.mode() & 0o111 != 0)
            .unwrap_or(false);
        if !ok {
            return Err(PreflightError::MissingBinary {
                dir: dir.display().to_string(),
                tool,
            });
        }
    }
    Ok(())
}

/// Whether the PostgreSQL build in `dir` was configured without SSL, as its `pg_config` says
/// (false when that cannot be told: no `pg_config` there).
pub fn builds_without_ssl(dir: &Path) -> bool {
    std::process::Command::new(dir.join("pg_config"))
        .arg("--configure")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| spilo_model::spec::built_without_ssl(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or(false)
}

fn check_data_dir(dir: &Path, me: u32) -> Result<(), PreflightError> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if meta.uid() != me {
                return Err(PreflightError::ForeignDataDir {
                    dir: shown,
                    owner: meta.uid(),
                    me,
                });
            }
            let has_version = dir.join("PG_VERSION").exists();
            let empty = std::fs::read_dir(dir)
                .map_err(|source| PreflightError::Io {
                    path: shown.clone(),
                    source,
                })?
                .next()
                .is_none();
            if !has_version && !empty {
                return Err(PreflightError::NotADataDir { dir: shown });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            let writable = nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_ok();
            if !writable {
                return Err(PreflightError::NoParent {
                    dir: shown,
                    parent: parent.display().to_string(),
                });
            }
            Ok(())
        }
        Err(source) => Err(PreflightError::Io {
            path: shown,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_postgres_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_binaries(dir.path())
            .expect_err("empty dir")
            .to_string();
        assert!(err.contains("postgres is missing"), "{err}");
    }

    #[test]
    fn a_foreign_data_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = nix::unistd::geteuid().as_raw();
        let err = check_data_dir(dir.path(), me + 1)
            .expect_err("foreign")
            .to_string();
        assert!(err.contains(&format!("owned by uid {me}")), "{err}");
    }

    #[test]
    fn a_non_empty_non_postgres_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("important.txt"), "x").expect("write");
        let me = nix::unistd::geteuid().as_raw();
        let err = check_data_dir(dir.path(), me)
            .expect_err("not pg")
            .to_string();
        assert!(err.contains("holds no PostgreSQL data"), "{err}");
    }

    #[test]
    fn a_missing_data_directory_under_a_writable_parent_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = nix::unistd::geteuid().as_raw();
        assert!(check_data_dir(&dir.path().join("data"), me).is_ok());
    }
}
