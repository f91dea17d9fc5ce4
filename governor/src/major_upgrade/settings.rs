//! Whether the new version's server takes the member's settings: `pg_upgrade --check`
//! starts the new cluster with initdb's `postgresql.conf`, so a setting the new version
//! removed (`old_snapshot_threshold` is gone in 17, `vacuum_defer_cleanup_age` in 16), a
//! value it no longer accepts or a preloaded library it lacks would pass it and stop the
//! upgraded primary from starting, past the point of no return. This asks the new server
//! itself, before anything changes: it parses the settings as its configuration file
//! (`postgres -C`, which reads the file and exits; a second time without the settings it
//! does not have, whose names stop it before it checks values), and its library directory
//! (`pg_config --pkglibdir`) must hold the preloaded libraries.
//!
//! The settings checked are those the new server starts with: the governor's defaults, the
//! cluster's parameters from etcd's `config` (where the AWS target puts the file's; the
//! caller passes those its PostgreSQL runs with) and the configuration's own `parameters`
//! (where the local target puts them), later ones winning.

use super::{UpgradeError, io};
use crate::config::Loaded;
use crate::postgres::conf;
use crate::postgres::tools::{self, ToolError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings (`cluster`'s, then `loaded`'s) the new version's server in `new_bin` would
/// not start with, one line each, naming the setting; `data` is a data directory of the new
/// version (the parse needs one) and `run_dir` where the file parsed is written for the
/// moment.
pub async fn blockers(
    loaded: &Loaded,
    cluster: &BTreeMap<String, String>,
    new_bin: &Path,
    (data, run_dir): (&Path, &Path),
) -> Result<Vec<String>, UpgradeError> {
    let mut params = conf::defaults();
    params.extend(cluster.iter().map(|(k, v)| (k.clone(), v.clone())));
    params.extend(
        loaded
            .config
            .postgresql
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let version = tools::run(
        new_bin,
        "pg_config",
        &["--version".into()],
        &[],
        TOOL_TIMEOUT,
    )
    .await?
    .trim()
    .to_string();
    let pkglibdir = tools::run(
        new_bin,
        "pg_config",
        &["--pkglibdir".into()],
        &[],
        TOOL_TIMEOUT,
    )
    .await?;
    let mut found = missing_libraries(&params, Path::new(pkglibdir.trim()), &version);
    let file = run_dir.join("upgrade-settings-check.conf");
    let first = parse(new_bin, data, &file, &params).await;
    let Some(output) = first? else {
        return Ok(found);
    };
    let refused = refused(&output);
    if refused.unknown.is_empty() {
        found.extend(messages(&refused, &output, &version));
        return Ok(found);
    }
    // The names stopped the parse before the values: again without them.
    params.retain(|k, _| !refused.unknown.contains(k));
    let again = match parse(new_bin, data, &file, &params).await? {
        Some(output) => refused_and(refused, &output),
        None => refused,
    };
    found.extend(messages(&again, &output, &version));
    Ok(found)
}

/// `postgres -C` of `params` written to `file` for the data directory `data`: `None` when
/// the server takes them, else its output.
async fn parse(
    new_bin: &Path,
    data: &Path,
    file: &Path,
    params: &BTreeMap<String, String>,
) -> Result<Option<String>, UpgradeError> {
    let text: String = params
        .iter()
        .map(|(k, v)| format!("{k} = '{}'\n", v.replace('\'', "''")))
        .collect();
    std::fs::write(file, text).map_err(io(format!("write {}", file.display())))?;
    let parsed = tools::run(
        new_bin,
        "postgres",
        &[
            "-D".into(),
            data.display().to_string(),
            "-c".into(),
            format!("config_file={}", file.display()),
            "-C".into(),
            "max_connections".into(),
        ],
        &[],
        TOOL_TIMEOUT,
    )
    .await;
    let _ = std::fs::remove_file(file);
    match parsed {
        Ok(_) => Ok(None),
        Err(ToolError::Failed { output, .. }) => Ok(Some(output)),
        Err(e) => Err(e.into()),
    }
}

/// What the server refused in one parse.
#[derive(Debug, Default, PartialEq)]
struct Refused {
    /// Settings it does not have.
    unknown: Vec<String>,
    /// Settings whose values it refused, with its words.
    values: Vec<(String, String)>,
}

/// The settings `postgres -C` refused, from its log lines (`unrecognized configuration
/// parameter "x" in file ...`, `invalid value for parameter "work_mem": "zz"`).
fn refused(output: &str) -> Refused {
    refused_and(Refused::default(), output)
}

fn refused_and(mut r: Refused, output: &str) -> Refused {
    for l in output.split(" | ").flat_map(str::lines) {
        let Some(at) = l.find("parameter \"") else {
            continue;
        };
        let Some(name) = l[at + "parameter \"".len()..].split('"').next() else {
            continue;
        };
        let msg = l.split_once("LOG:").map_or(l, |(_, m)| m).trim();
        if msg.starts_with("unrecognized configuration parameter") {
            r.unknown.push(name.to_string());
        } else {
            r.values.push((name.to_string(), msg.to_string()));
        }
    }
    r
}

/// One line per refused setting; the server's last line when it named none.
fn messages(r: &Refused, output: &str, version: &str) -> Vec<String> {
    let mut out: Vec<String> = r
        .unknown
        .iter()
        .map(|k| {
            format!(
                "setting {k}: {version} does not have it (removed or renamed); remove it from \
                 the cluster's parameters"
            )
        })
        .chain(
            r.values
                .iter()
                .map(|(k, msg)| format!("setting {k}: {version} refuses it: {msg}")),
        )
        .collect();
    if out.is_empty() {
        let last = output.split(" | ").last().map_or("", str::trim);
        out.push(format!(
            "the settings: {version} does not start with them: {last}"
        ));
    }
    out
}

/// Preloaded libraries the new version's library directory does not hold.
fn missing_libraries(
    params: &BTreeMap<String, String>,
    pkglibdir: &Path,
    version: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for setting in [
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
    ] {
        let Some(value) = params.get(setting) else {
            continue;
        };
        for lib in value
            .split(',')
            .map(|l| l.trim().trim_matches('"'))
            .filter(|l| !l.is_empty())
        {
            if library_path(lib, pkglibdir).iter().all(|p| !p.is_file()) {
                out.push(format!(
                    "setting {setting}: {version} has no library {lib} (looked in {})",
                    pkglibdir.display()
                ));
            }
        }
    }
    out
}

/// Where the server looks for `lib`: a path as given (`$libdir` being the library
/// directory), or a name in the library directory, with or without `.so`.
fn library_path(lib: &str, pkglibdir: &Path) -> Vec<PathBuf> {
    let named = lib.replace("$libdir", &pkglibdir.display().to_string());
    let base = if named.contains('/') {
        PathBuf::from(&named)
    } else {
        pkglibdir.join(&named)
    };
    let mut with_suffix = base.clone().into_os_string();
    with_suffix.push(".so");
    vec![base, PathBuf::from(with_suffix)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_preloaded_library_missing_from_the_library_directory_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pg_stat_statements.so"), b"").expect("write");
        std::fs::write(dir.path().join("auto_explain.so"), b"").expect("write");
        let found = missing_libraries(
            &params(&[
                (
                    "shared_preload_libraries",
                    "pg_stat_statements, \"$libdir/auto_explain\", timescaledb",
                ),
                ("session_preload_libraries", ""),
            ]),
            dir.path(),
            "PostgreSQL 18.6",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "setting shared_preload_libraries: PostgreSQL 18.6 has no library timescaledb"
            ),
            "{found:?}"
        );
    }

    // The server's own words, as PostgreSQL 18 wrote them here.
    const NAMES: &str = "2026-12-07 10:34:19.630 GMT [3169] LOG:  unrecognized configuration \
        parameter \"old_snapshot_threshold\" in file \"/u.conf\" line 1 | 2026-12-07 \
        10:34:19.630 GMT [3169] FATAL:  configuration file \"/u.conf\" contains errors";
    const VALUES: &str = "2026-12-07 10:29:07.735 GMT [21640] LOG:  invalid value for \
        parameter \"work_mem\": \"zz\" | 2026-12-07 10:29:07.735 GMT [21640] FATAL:  \
        configuration file \"/v.conf\" contains errors";

    #[test]
    fn the_settings_the_server_refused_are_named_from_its_log() {
        let r = refused_and(refused(NAMES), VALUES);
        assert_eq!(r.unknown, vec!["old_snapshot_threshold"]);
        assert_eq!(
            r.values,
            vec![(
                "work_mem".to_string(),
                "invalid value for parameter \"work_mem\": \"zz\"".to_string()
            )]
        );
        assert_eq!(
            messages(&r, NAMES, "PostgreSQL 18.6"),
            vec![
                "setting old_snapshot_threshold: PostgreSQL 18.6 does not have it (removed or \
                 renamed); remove it from the cluster's parameters",
                "setting work_mem: PostgreSQL 18.6 refuses it: invalid value for parameter \
                 \"work_mem\": \"zz\"",
            ]
        );
        assert_eq!(
            messages(
                &refused("FATAL:  something else"),
                "FATAL:  something else",
                "PG"
            ),
            vec!["the settings: PG does not start with them: FATAL:  something else"]
        );
    }
}
