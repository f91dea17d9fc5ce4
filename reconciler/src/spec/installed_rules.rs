//! Rules against what this machine has installed of PostgreSQL (`crate::installed`): the
//! settings the file's version lists. Nothing is said for a version not installed here.

use super::diagnostic::Severity;
use super::position::Path;
use super::validate::Reporter;
use spilo_model::spec::ClusterFile;

/// Settings the file's PostgreSQL version does not list, as its build installed here does
/// (`postgres --describe-config`): most likely a typo, or one a newer version removed, and
/// PostgreSQL would not start with it. A warning: that list leaves out the developer
/// settings (`zero_damaged_pages`), and the upgrade check asks the server itself. Nothing is
/// said when that version is not installed here; a name with a dot is an extension's.
pub(super) fn unlisted_settings(f: &ClusterFile, r: &mut Reporter<'_>) {
    let pg = &f.spec.postgresql;
    if pg.parameters.keys().all(|k| k.contains('.')) {
        return;
    }
    let dir = crate::installed::postgres_bin_dir(pg);
    let Some(known) = crate::installed::setting_names(&dir) else {
        return;
    };
    for name in pg.parameters.keys() {
        if !name.contains('.') && !known.contains(name.as_str()) {
            r.at(
                &Path::parse("spec.postgresql.parameters").key(name),
                Severity::Warning,
                format!(
                    "PostgreSQL {} does not list a setting {name} (postgres --describe-config \
                     in {}, which leaves out developer settings): a typo, or a setting this \
                     version removed? PostgreSQL does not start with a setting it does not have",
                    pg.version,
                    dir.display()
                ),
            );
        }
    }
}
