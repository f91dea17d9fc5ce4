//! One problem found in a cluster file, and the two ways to print a list of them.

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
