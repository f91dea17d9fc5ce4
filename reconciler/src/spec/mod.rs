//! Cluster files: the JSON Schema generated from `spilo_model::spec`, and `validate`, which
//! checks files and reports every problem as `file:line:column: field.path: message`.
//!
//! Validation is pure: it takes file names and contents and returns diagnostics, so the CLI
//! reads files and tests feed text. Stages, per file: YAML syntax, the schema (shapes, types,
//! ranges, unknown keys with "did you mean"), then rules the schema cannot express; across
//! files: unique names and clone sources that exist.

mod aws_rules;
mod catalog_rules;
mod diagnostic;
mod installed_rules;
mod position;
mod rules;
mod schema;
mod validate;
mod zookeeper_rules;

pub use catalog_rules::{RESERVED_ROLES, plain_name};
pub use diagnostic::{
    Diagnostic, Severity, render_github, render_gitlab, render_json, render_text,
};
pub use position::{Path, Seg};
pub use rules::describe_secret;
pub use schema::{etcd_schema, etcd_schema_json, schema, schema_json};
pub use validate::{Validated, validate_files};

/// How a value `spilo init --yes` cannot know for the user starts: `"<replace with ...>"`.
/// `spilo validate` reports every such value as an error, so the file cannot be applied
/// before a person fills it in.
pub const PLACEHOLDER: &str = "<replace with ";

/// A placeholder for `what` (e.g. "your VPC id, vpc-...").
pub fn placeholder(what: &str) -> String {
    format!("{PLACEHOLDER}{what}>")
}

/// Whether `s` is a placeholder.
pub fn is_placeholder(s: &str) -> bool {
    s.starts_with(PLACEHOLDER)
}

/// Reads every cluster file under `paths` (directories are searched for `*.yaml` and `*.yml`,
/// sorted) and returns `(display name, contents)` pairs.
pub fn read_files(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    use anyhow::Context;
    let mut found = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("read directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| {
                    e.is_file()
                        && matches!(e.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            entries.sort();
            found.extend(entries);
        } else {
            found.push(p.clone());
        }
    }
    found
        .into_iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}
