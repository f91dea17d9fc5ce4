//! Who local clusters run as: PostgreSQL refuses root, so when `spilo up` runs as root every
//! process it starts runs as the `postgres` user; otherwise as the invoking user. Also checks
//! that this user can reach the state directory.

use nix::unistd::{Gid, Uid, User};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The unprivileged user local clusters run as.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// User id.
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Its name.
    pub name: String,
    /// Whether `spilo up` itself runs as root (and so switches user for its children).
    pub switching: bool,
}

impl RunAs {
    /// `postgres` when running as root, otherwise the current user.
    pub fn detect() -> anyhow::Result<Self> {
        if Uid::effective().is_root() {
            let u = User::from_name("postgres")?.ok_or_else(|| {
                anyhow::anyhow!("running as root needs a `postgres` user to run PostgreSQL as (install postgresql-15)")
            })?;
            Ok(Self {
                uid: u.uid,
                gid: u.gid,
                name: u.name,
                switching: true,
            })
        } else {
            let uid = Uid::effective();
            let name = User::from_uid(uid)?
                .map(|u| u.name)
                .unwrap_or_else(|| uid.to_string());
            Ok(Self {
                uid,
                gid: Gid::effective(),
                name,
                switching: false,
            })
        }
    }

    /// Makes `path` belong to this user (a no-op when not switching users).
    pub fn own(&self, path: &Path) -> std::io::Result<()> {
        if self.switching {
            nix::unistd::chown(path, Some(self.uid), Some(self.gid))
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    }

    /// Configures `cmd` to run as this user.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        if self.switching {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
    }

    /// The first ancestor of `path` (an existing directory) this user cannot enter, if any.
    pub fn unreachable_ancestor(&self, path: &Path) -> Option<std::path::PathBuf> {
        if !self.switching {
            return None;
        }
        let groups: Vec<u32> = User::from_uid(self.uid)
            .ok()
            .flatten()
            .and_then(|u| {
                nix::unistd::getgrouplist(&std::ffi::CString::new(u.name).ok()?, u.gid).ok()
            })
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![self.gid.as_raw()]);
        let mut existing = path.to_path_buf();
        while !existing.exists() {
            if !existing.pop() {
                return None;
            }
        }
        for dir in existing.ancestors() {
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let mode = meta.mode();
            let ok = if meta.uid() == self.uid.as_raw() {
                mode & 0o100 != 0
            } else if groups.contains(&meta.gid()) {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Some(dir.to_path_buf());
            }
        }
        None
    }
}
