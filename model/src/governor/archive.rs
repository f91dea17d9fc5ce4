//! `archive:` of the governor configuration: where WAL and base backups go (a directory or
//! an S3 bucket), how they are compressed, and the leader's backup schedule.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `archive:` in the governor configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Key prefix, e.g. `spilo/demo/wal/15/` (as in Spilo); `wal_005/` goes under it.
    pub prefix: String,
    /// Compression of new files (both are read).
    #[serde(default)]
    pub compression: Compression,
    /// A directory as the store (the local target's bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
    /// An S3 bucket as the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    /// Base backups the leader takes on a schedule, with retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupSchedule>,
    /// Restore drills on a schedule, run by the first running replica (by name), else the
    /// leader; the result goes to etcd `drill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySchedule>,
    /// New replicas restore the latest base backup and recover with the archive's WAL
    /// before streaming, instead of copying the primary with pg_basebackup (which is the
    /// fallback when there is no backup yet or the restore fails).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicas_from_backup: bool,
    /// Files `wal-push` uploads at once: the one PostgreSQL asks for and others already
    /// ready. Default 4 (`bench/archive`: 1.5 s -> 1.1 s for 32 segments into a local
    /// directory; more where each upload waits on the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_concurrency: Option<usize>,
    /// Segments `wal-fetch` fetches ahead while a server recovers; 0 turns prefetching off.
    #[serde(default = "d_prefetch")]
    pub prefetch: usize,
    /// Seconds without a leader and without any member holding data after which a member
    /// with an empty data directory recovers the cluster from this archive (the latest base
    /// backup and every archived WAL file); absent: never (the members wait for a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_after: Option<u64>,
}

fn d_prefetch() -> usize {
    8
}

/// `archive.backups`: when the leader takes base backups and how many it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSchedule {
    /// Cron: five fields, or six with seconds first (UTC).
    pub schedule: String,
    /// Finished backups to keep (at least 1); older ones and the WAL only they need go.
    pub retain: usize,
}

/// `archive.verify`: when restore drills run, and the query they check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySchedule {
    /// Cron: five fields, or six with seconds first (UTC).
    pub schedule: String,
    /// A query that must return `true` on the restored database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// An S3 store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Its region.
    pub region: String,
    /// Another endpoint (an S3-compatible server, a test server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Path-style addressing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_style: bool,
    /// Server-side encryption: `AES256` or `aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
}

/// The compression method of archived files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4 frames with a content checksum, the default: fast.
    #[default]
    Lz4,
    /// Zstandard frames with a checksum: smaller.
    Zstd,
}

impl Compression {
    /// The file extension WAL-G uses.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zst",
        }
    }

    /// The method of a stored name's extension.
    pub fn of(name: &str) -> Option<Compression> {
        match name.rsplit_once('.')?.1 {
            "lz4" => Some(Compression::Lz4),
            "zst" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl ArchiveConfig {
    /// How many files `wal-push` uploads at once (see `upload_concurrency`).
    pub fn upload_concurrency(&self) -> usize {
        self.upload_concurrency.unwrap_or(4).max(1)
    }

    /// Exactly one store, an absolute directory, a retention of at least one. (The
    /// schedule's cron syntax is the governor's to check: it is the one that runs it.)
    pub fn check(&self) -> Result<(), String> {
        match (&self.directory, &self.s3) {
            (Some(_), Some(_)) | (None, None) => {
                Err::<(), String>("set exactly one of directory or s3".into())
            }
            (Some(d), None) if !d.is_absolute() => Err("directory must be an absolute path".into()),
            _ => Ok(()),
        }?;
        if let Some(b) = &self.backups
            && b.retain == 0
        {
            return Err("backups.retain must be at least 1".into());
        }
        Ok(())
    }
}
