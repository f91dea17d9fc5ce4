//! What the last plan recorded of each stack: its template and resource list, kept on this
//! machine under the stack's id and the time of its last change. CloudFormation changes a
//! stack's template and resources only through an update, and every update sets a new
//! `LastUpdatedTime`, so a record whose id, status and time all match what `DescribeStacks`
//! says now is the stack's template and resources: the plan need not fetch them again.
//! Only settled stacks (`*_COMPLETE`) are recorded. A record that cannot be read or written
//! is a miss, never an error: the plan then asks CloudFormation, as it always could.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The records' directory: `SPILO_STACK_CACHE` when set (empty: no records at all), else
/// `$XDG_CACHE_HOME/spilo/stacks` or `~/.cache/spilo/stacks`.
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SPILO_STACK_CACHE") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("spilo").join("stacks"))
}

/// Which version of a stack a record describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The stack id (an ARN).
    pub stack_id: String,
    /// Its status.
    pub status: String,
    /// Its last change (RFC 3339): `LastUpdatedTime`, or `CreationTime` when never updated.
    pub last_changed: String,
    /// Whether `LastUpdatedTime` was given. A stand-in for AWS that never sets it (stock
    /// moto, LocalStack) would otherwise key every update of a stack by its creation time.
    #[serde(default)]
    pub updated: bool,
}

impl Version {
    /// Whether a record of this version may be kept: the stack is settled, its time known,
    /// and that time is the time of its last change (a stack that was only created, or one
    /// whose `LastUpdatedTime` is given).
    pub fn recordable(&self) -> bool {
        self.status.ends_with("_COMPLETE")
            && !self.status.contains("IN_PROGRESS")
            && !self.last_changed.is_empty()
            && (self.updated || self.status == "CREATE_COMPLETE")
    }
}

/// A stack's template and resources at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The version described.
    pub version: Version,
    /// The template as last applied.
    pub template: Value,
    /// Resources: logical id -> (type, physical id).
    pub resources: BTreeMap<String, (String, Option<String>)>,
}

fn file(dir: &Path, stack_id: &str) -> PathBuf {
    let digest = sha2::Sha256::digest(stack_id.as_bytes());
    let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.json"))
}

/// The record of `version` in `dir`, if one is there.
pub fn read(dir: &Path, version: &Version) -> Option<Record> {
    if !version.recordable() {
        return None;
    }
    let text = std::fs::read(file(dir, &version.stack_id)).ok()?;
    let record: Record = serde_json::from_slice(&text).ok()?;
    (record.version == *version).then_some(record)
}

/// Keeps `record` in `dir` (written whole, then renamed into place); a failure only means the
/// next plan fetches the template again.
pub fn write(dir: &Path, record: &Record) {
    if !record.version.recordable() {
        return;
    }
    let path = file(dir, &record.version.stack_id);
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut tmp, record)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    })();
    // Not recorded: the next plan asks CloudFormation again, which is all this costs.
    drop(written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(status: &str, at: &str) -> Version {
        Version {
            stack_id: "arn:aws:cloudformation:eu-central-1:1:stack/spilo-db/abc".into(),
            status: status.into(),
            last_changed: at.into(),
            updated: status != "CREATE_COMPLETE",
        }
    }

    fn record(v: Version) -> Record {
        Record {
            version: v,
            template: serde_json::json!({"Resources": {"A": {}}}),
            resources: BTreeMap::from([(
                "AutoScalingGroup".into(),
                (
                    "AWS::AutoScaling::AutoScalingGroup".into(),
                    Some("g".into()),
                ),
            )]),
        }
    }

    #[test]
    fn a_record_answers_only_the_version_it_was_made_for() {
        let dir = tempfile::tempdir().expect("test fixture");
        let v1 = version("CREATE_COMPLETE", "2026-12-06T06:00:00Z");
        write(dir.path(), &record(v1.clone()));
        assert_eq!(read(dir.path(), &v1), Some(record(v1.clone())));
        // An update (new time), a rollback (new status), another stack of the same name.
        let updated = version("UPDATE_COMPLETE", "2026-12-06T06:05:00.123Z");
        assert_eq!(read(dir.path(), &updated), None);
        let rolled_back = version("UPDATE_ROLLBACK_COMPLETE", "2026-12-06T06:00:00Z");
        assert_eq!(read(dir.path(), &rolled_back), None);
        let other = Version {
            stack_id: "arn:aws:cloudformation:eu-central-1:1:stack/spilo-db/def".into(),
            ..v1.clone()
        };
        assert_eq!(read(dir.path(), &other), None);
        // The newer record replaces the older one.
        write(dir.path(), &record(updated.clone()));
        assert_eq!(read(dir.path(), &updated), Some(record(updated)));
        assert_eq!(read(dir.path(), &v1), None);
    }

    #[test]
    fn stacks_in_progress_or_without_their_time_of_change_are_never_recorded() {
        let dir = tempfile::tempdir().expect("test fixture");
        for v in [
            version("UPDATE_IN_PROGRESS", "2026-12-06T06:00:00Z"),
            version(
                "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
                "2026-12-06T06:00:00Z",
            ),
            version("CREATE_COMPLETE", ""),
            // Updated, but no LastUpdatedTime given: the time would be the creation's.
            Version {
                updated: false,
                ..version("UPDATE_COMPLETE", "2026-12-06T06:00:00Z")
            },
        ] {
            write(dir.path(), &record(v.clone()));
            assert_eq!(read(dir.path(), &v), None, "{v:?}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("test fixture").count(),
            0
        );
    }

    #[test]
    fn an_unreadable_record_is_a_miss() {
        let dir = tempfile::tempdir().expect("test fixture");
        let v = version("CREATE_COMPLETE", "2026-12-06T06:00:00Z");
        std::fs::write(file(dir.path(), &v.stack_id), b"{not json").expect("test fixture");
        assert_eq!(read(dir.path(), &v), None);
    }
}
