//! One problem found in a cluster file, and the ways to print a list of them: text, JSON, and
//! the two forms code review shows on the changed lines (GitHub Actions workflow commands,
//! a GitLab Code Quality report).

use serde::Serialize;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is rejected.
    Error,
    /// The file is accepted; someone should look.
    Warning,
}

/// A problem at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file as named by the caller.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The dotted field path (`spec.aws.storage.size`), or `(yaml)` for syntax errors.
    pub path: String,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, and how to fix it when that is not obvious.
    pub message: String,
    /// Whether it is a placeholder `spilo init` wrote for the user to replace.
    #[serde(skip)]
    pub placeholder: bool,
}

/// `file:line:column: path: message` lines, warnings marked as such.
pub fn render_text(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| {
            let sev = match d.severity {
                Severity::Error => "",
                Severity::Warning => "warning: ",
            };
            format!(
                "{}:{}:{}: {}: {sev}{}\n",
                d.file, d.line, d.column, d.path, d.message
            )
        })
        .collect()
}

/// A JSON array of diagnostics.
pub fn render_json(diags: &[Diagnostic]) -> String {
    serde_json::to_string_pretty(diags).unwrap_or_else(|_| "[]".into())
}

/// GitHub Actions workflow commands, one per diagnostic (`::error file=F,line=L,col=C,title=T::M`),
/// which GitHub shows on that line of the pull request. Values are escaped as the runner
/// expects (`%`, CR and LF everywhere; `:` and `,` in properties too).
pub fn render_github(diags: &[Diagnostic]) -> String {
    fn data(s: &str) -> String {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    }
    fn property(s: &str) -> String {
        data(s).replace(':', "%3A").replace(',', "%2C")
    }
    diags
        .iter()
        .map(|d| {
            let command = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            format!(
                "::{command} file={},line={},col={},title={}::{}\n",
                property(&d.file),
                d.line,
                d.column,
                property(&format!("spilo validate: {}", d.path)),
                data(&d.message)
            )
        })
        .collect()
}

/// A GitLab Code Quality report (a JSON array), which GitLab shows in the merge request's
/// changes: errors are `major`, warnings `minor`; each issue has a fingerprint stable across
/// pipelines (file, field, message and which occurrence of those it is, not the line), so
/// GitLab tells new from fixed ones and keeps two identical findings apart.
pub fn render_gitlab(diags: &[Diagnostic]) -> String {
    use sha2::Digest;
    let mut seen: std::collections::BTreeMap<(&str, &str, &str), usize> = Default::default();
    let issues: Vec<serde_json::Value> = diags
        .iter()
        .map(|d| {
            let n = seen
                .entry((d.file.as_str(), d.path.as_str(), d.message.as_str()))
                .or_default();
            *n += 1;
            let digest =
                sha2::Sha256::digest(format!("{}\0{}\0{}\0{n}", d.file, d.path, d.message));
            let fingerprint: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            serde_json::json!({
                "description": format!("{}: {}", d.path, d.message),
                "check_name": format!("spilo-validate/{}", d.path),
                "fingerprint": fingerprint,
                "severity": match d.severity {
                    Severity::Error => "major",
                    Severity::Warning => "minor",
                },
                "location": {"path": d.file, "lines": {"begin": d.line}},
            })
        })
        .collect();
    serde_json::to_string_pretty(&issues).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(severity: Severity, message: &str) -> Diagnostic {
        Diagnostic {
            file: "clusters/orders.yaml".into(),
            line: 7,
            column: 14,
            path: "spec.instances".into(),
            severity,
            message: message.into(),
            placeholder: false,
        }
    }

    #[test]
    fn github_commands_name_file_line_and_column_and_escape_what_the_runner_parses() {
        let out = render_github(&[
            diag(Severity::Error, "must be at least 1, got 0"),
            diag(Severity::Warning, "100% sure:\nuse 3"),
        ]);
        assert_eq!(
            out,
            "::error file=clusters/orders.yaml,line=7,col=14,title=spilo validate%3A spec.instances::must be at least 1, got 0\n\
             ::warning file=clusters/orders.yaml,line=7,col=14,title=spilo validate%3A spec.instances::100%25 sure:%0Ause 3\n"
        );
    }

    #[test]
    fn gitlab_issues_carry_severity_location_and_a_fingerprint_that_ignores_the_line() {
        let a = diag(Severity::Error, "must be at least 1, got 0");
        let moved = Diagnostic {
            line: 9,
            ..a.clone()
        };
        let parse = |d: &[Diagnostic]| -> Vec<serde_json::Value> {
            serde_json::from_str(&render_gitlab(d)).expect("test fixture")
        };
        let issues = parse(&[a.clone(), diag(Severity::Warning, "w")]);
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0]["severity"], "major");
        assert_eq!(issues[1]["severity"], "minor");
        assert_eq!(issues[0]["location"]["path"], "clusters/orders.yaml");
        assert_eq!(issues[0]["location"]["lines"]["begin"], 7);
        assert_ne!(issues[0]["fingerprint"], issues[1]["fingerprint"]);
        assert_eq!(
            issues[0]["description"],
            "spec.instances: must be at least 1, got 0"
        );
        // The same finding after an edit above it moved it: the same fingerprint.
        let after_edit = parse(std::slice::from_ref(&moved));
        assert_eq!(after_edit[0]["location"]["lines"]["begin"], 9);
        assert_eq!(issues[0]["fingerprint"], after_edit[0]["fingerprint"]);
        // Two identical findings stay two.
        let twice = parse(&[a, moved]);
        assert_ne!(twice[0]["fingerprint"], twice[1]["fingerprint"]);
    }
}
