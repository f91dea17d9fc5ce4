//! What a failed pg_upgrade says: the blockers of a check (its output and the reports it
//! left in the scratch cluster), and the errors of the logs a failed run names, read before
//! a roll back removes them with the new cluster.

use crate::postgres::tools::ToolError;
use std::path::{Path, PathBuf};

/// The blockers in a failed check's output and the reports pg_upgrade left in the scratch
/// cluster's `pg_upgrade_output.d` (each names the objects in the way).
pub(super) fn blockers(output: &str, scratch: &Path) -> Vec<String> {
    // A failed tool's output comes as its last lines joined with " | ".
    let mut out: Vec<String> = output
        .split(['\n', '|'])
        .map(str::trim)
        .filter(|l| {
            l.ends_with("fatal")
                || l.starts_with("Your installation")
                || l.starts_with("There were problems")
                || l.contains("could not")
                || l.contains("failure")
        })
        .map(str::to_string)
        .collect();
    let mut reports = Vec::new();
    collect_reports(&scratch.join("pg_upgrade_output.d"), &mut reports);
    reports.sort();
    for r in reports {
        if let Ok(text) = std::fs::read_to_string(&r) {
            let name = r.file_name().map(|n| n.to_string_lossy().to_string());
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                out.push(format!("{}: {l}", name.clone().unwrap_or_default()));
            }
        }
    }
    if out.is_empty() {
        out.push(
            output
                .lines()
                .last()
                .unwrap_or("pg_upgrade --check failed")
                .to_string(),
        );
    }
    out
}

fn collect_reports(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_reports(&p, into);
        } else if p.extension().is_some_and(|x| x == "txt") {
            into.push(p);
        }
    }
}

/// A failed pg_upgrade's output with the end of the log it says to consult (`Consult the
/// last few lines of "<path>"`), which a roll back removes with the new cluster.
pub(super) fn with_consulted_log(e: ToolError) -> ToolError {
    let ToolError::Failed {
        tool,
        status,
        output,
    } = e
    else {
        return e;
    };
    // Its errors, and the last lines (what it was doing); the server's log beside it too.
    let tell = |path: &Path| {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let errors = lines.iter().filter(|l| {
            l.contains("ERROR")
                || l.contains("FATAL")
                || l.contains("PANIC")
                || l.contains("error:")
        });
        let last = lines[lines.len().saturating_sub(3)..].iter();
        Some(errors.chain(last).copied().collect::<Vec<_>>().join(" | "))
    };
    let consulted = output
        .split("the last few lines of \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(PathBuf::from)
        .and_then(|path| {
            let server = path.with_file_name("pg_upgrade_server.log");
            let mine = tell(&path)?;
            Some(match tell(&server) {
                Some(s) if !s.is_empty() => format!("{mine} | the server's log: {s}"),
                _ => mine,
            })
        });
    ToolError::Failed {
        tool,
        status,
        output: match consulted {
            Some(end) => format!("{output} | its log ends: {end}"),
            None => output,
        },
    }
}
