//! Validation of one or many cluster files, from text to diagnostics.

use super::diagnostic::{Diagnostic, Severity};
use super::position::{Path, Positions};
use super::schema::{allowed_keys, etcd_schema, schema};
use super::{catalog_rules, installed_rules, rules};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;
use spilo_model::spec::{ClusterFile, EtcdClusterFile};
use std::collections::BTreeSet;

/// What validating a set of files produced.
#[derive(Debug, Default)]
pub struct Validated {
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// The PostgreSQL cluster files that passed, by name.
    pub files: Vec<(String, ClusterFile)>,
    /// The etcd cluster files (`kind: EtcdCluster`) that passed, by name.
    pub etcd_clusters: Vec<(String, EtcdClusterFile)>,
}

impl Validated {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// A place-aware reporter for one file.
pub(super) struct Reporter<'a> {
    file: &'a str,
    pos: &'a Positions,
    out: &'a mut Vec<Diagnostic>,
    /// Paths holding a placeholder of `spilo init`: reported once as such, nothing else is
    /// reported there (a placeholder is no VPC id, but saying so would only add noise).
    placeholders: BTreeSet<String>,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(file: &'a str, pos: &'a Positions, out: &'a mut Vec<Diagnostic>) -> Self {
        Reporter {
            file,
            pos,
            out,
            placeholders: BTreeSet::new(),
        }
    }

    /// Reports the placeholder `value` at `path`, the only diagnostic that path gets.
    fn placeholder(&mut self, path: &Path, value: &str) {
        let (line, column) = self.pos.value(path);
        self.push(
            path,
            line,
            column,
            Severity::Error,
            format!(
                "{value} is a placeholder written by spilo init: replace it with the real value"
            ),
        );
        if let Some(d) = self.out.last_mut() {
            d.placeholder = true;
        }
        self.placeholders.insert(path.to_string());
    }

    /// Reports at the value of `path`.
    pub(super) fn at(&mut self, path: &Path, severity: Severity, message: impl Into<String>) {
        let (line, column) = self.pos.value(path);
        self.push(path, line, column, severity, message.into());
    }

    /// Reports at the key of `path`.
    pub(super) fn at_key(&mut self, path: &Path, severity: Severity, message: impl Into<String>) {
        let (line, column) = self.pos.key(path);
        self.push(path, line, column, severity, message.into());
    }

    fn push_raw(&mut self, path: &str, line: usize, column: usize, message: String) {
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            path: path.to_string(),
            severity: Severity::Error,
            message,
            placeholder: false,
        });
    }

    fn push(
        &mut self,
        path: &Path,
        line: usize,
        column: usize,
        severity: Severity,
        message: String,
    ) {
        let path = path.to_string();
        if self.placeholders.contains(&path) {
            return;
        }
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            path,
            severity,
            message,
            placeholder: false,
        });
    }
}

/// The two schemas, compiled.
struct Schemas {
    cluster: (Value, jsonschema::Validator),
    etcd: (Value, jsonschema::Validator),
}

fn compile() -> Result<Schemas, String> {
    let compile = |v: Value| {
        jsonschema::validator_for(&v)
            .map(|c| (v, c))
            .map_err(|e| format!("the built-in schema does not compile: {e}"))
    };
    Ok(Schemas {
        cluster: compile(schema())?,
        etcd: compile(etcd_schema())?,
    })
}

/// One file that passed its schema.
enum Parsed {
    Cluster(Box<ClusterFile>),
    Etcd(Box<EtcdClusterFile>),
}

/// Validates `(name, text)` files together.
pub fn validate_files(files: &[(String, String)]) -> Validated {
    let schemas = match compile() {
        Ok(s) => s,
        Err(message) => {
            return Validated {
                diagnostics: vec![Diagnostic {
                    file: "(schema)".into(),
                    line: 1,
                    column: 1,
                    path: "(schema)".into(),
                    severity: Severity::Error,
                    message,
                    placeholder: false,
                }],
                ..Validated::default()
            };
        }
    };
    let mut out = Validated::default();
    let mut parsed: Vec<(String, ClusterFile, Positions)> = Vec::new();
    let mut etcd: Vec<(String, EtcdClusterFile, Positions)> = Vec::new();
    for (name, text) in files {
        let pos = Positions::of(text);
        let mut diags = Vec::new();
        let file = validate_one(name, text, &pos, &schemas, &mut diags);
        out.diagnostics.extend(diags);
        match file {
            Some(Parsed::Cluster(f)) => parsed.push((name.clone(), *f, pos)),
            Some(Parsed::Etcd(f)) => etcd.push((name.clone(), *f, pos)),
            None => {}
        }
    }
    rules::across_files(&parsed, &etcd, &mut out.diagnostics, |name, pos, out| {
        Reporter::new(name, pos, out)
    });
    let failed: Vec<String> = out
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.file.clone())
        .collect();
    out.files = parsed
        .into_iter()
        .filter(|(name, _, _)| !failed.contains(name))
        .map(|(name, f, _)| (name, f))
        .collect();
    out.etcd_clusters = etcd
        .into_iter()
        .filter(|(name, _, _)| !failed.contains(name))
        .map(|(name, f, _)| (name, f))
        .collect();
    out.diagnostics
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    out
}

fn validate_one(
    name: &str,
    text: &str,
    pos: &Positions,
    schemas: &Schemas,
    out: &mut Vec<Diagnostic>,
) -> Option<Parsed> {
    let mut r = Reporter::new(name, pos, out);
    let yaml: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let message = e.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            r.push_raw("(yaml)", line, column, format!("not valid YAML: {message}"));
            return None;
        }
    };
    if yaml.is_null() {
        r.at(
            &Path::default(),
            Severity::Error,
            "the file is empty; expected a PostgresCluster or an EtcdCluster",
        );
        return None;
    }
    let mut json = match serde_json::to_value(&yaml) {
        Ok(v) => v,
        Err(e) => {
            r.at(
                &Path::default(),
                Severity::Error,
                format!("cannot be read as data: {e}"),
            );
            return None;
        }
    };
    let is_etcd = json.get("kind").and_then(Value::as_str) == Some("EtcdCluster");
    let (schema, validator) = if is_etcd {
        (&schemas.etcd.0, &schemas.etcd.1)
    } else {
        (&schemas.cluster.0, &schemas.cluster.1)
    };
    // Literal passwords get one clear message, and are left out of the schema check so the
    // same mistake is not reported twice.
    let literal = take_literal_secrets(&mut json, &Path::default());
    for path in &literal {
        r.at(
            path,
            Severity::Error,
            "a literal password is not allowed in the file; reference it instead: \
             {env: NAME}, {file: PATH}, {ssm: PARAMETER} or {secretsManager: ARN}",
        );
    }
    for (path, value) in placeholders(&json, &Path::default()) {
        r.placeholder(&path, &value);
    }
    let before = r.out.len();
    for e in validator.iter_errors(&json) {
        report_schema_error(&mut r, schema, &json, &e);
    }
    if r.out.len() > before || !literal.is_empty() {
        return None;
    }
    if is_etcd {
        return match serde_json::from_value::<EtcdClusterFile>(json) {
            Ok(file) => {
                rules::etcd_file(&file, &mut r);
                Some(Parsed::Etcd(Box::new(file)))
            }
            Err(e) => {
                r.at(&Path::default(), Severity::Error, e.to_string());
                None
            }
        };
    }
    match serde_json::from_value::<ClusterFile>(json) {
        Ok(file) => {
            rules::one_file(&file, &mut r);
            installed_rules::unlisted_settings(&file, &mut r);
            catalog_rules::check(&file, &mut r);
            Some(Parsed::Cluster(Box::new(file)))
        }
        Err(e) => {
            r.at(&Path::default(), Severity::Error, e.to_string());
            None
        }
    }
}

/// Removes string values that are passwords written in the clear: `spec.secrets.<name>` and
/// any key called `password`. Returns their paths.
fn take_literal_secrets(v: &mut Value, at: &Path) -> Vec<Path> {
    let mut found = Vec::new();
    if let Value::Object(o) = v {
        let in_secrets = at.to_string() == "spec.secrets";
        let keys: Vec<String> = o.keys().cloned().collect();
        for k in keys {
            let here = at.key(&k);
            // `kmsKey` names a key, it holds no secret.
            let is_literal = o.get(&k).is_some_and(|x| x.is_string() || x.is_number())
                && ((in_secrets && k != "kmsKey") || k.eq_ignore_ascii_case("password"));
            if is_literal {
                o.remove(&k);
                found.push(here);
            } else if let Some(child) = o.get_mut(&k) {
                found.extend(take_literal_secrets(child, &here));
            }
        }
    }
    found
}

/// Every placeholder value (see [`super::PLACEHOLDER`]) with its path.
fn placeholders(v: &Value, at: &Path) -> Vec<(Path, String)> {
    match v {
        Value::String(s) if super::is_placeholder(s) => vec![(at.clone(), s.clone())],
        Value::Object(o) => o
            .iter()
            .flat_map(|(k, x)| placeholders(x, &at.key(k)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .flat_map(|(i, x)| placeholders(x, &at.index(i)))
            .collect(),
        _ => Vec::new(),
    }
}

fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn expected(kind: &TypeKind) -> String {
    let name = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "object" => "a mapping".to_string(),
        "array" => "a list".to_string(),
        "integer" => "an integer".to_string(),
        other => format!("a {other}"),
    };
    match kind {
        TypeKind::Single(t) => name(t),
        TypeKind::Multiple(ts) => ts.iter().map(|t| name(&t)).collect::<Vec<_>>().join(" or "),
    }
}

fn report_schema_error(
    r: &mut Reporter<'_>,
    schema: &Value,
    doc: &Value,
    e: &jsonschema::ValidationError<'_>,
) {
    let path = Path::from_pointer(&e.instance_path().to_string());
    let found = doc
        .pointer(&e.instance_path().to_string())
        .cloned()
        .unwrap_or(Value::Null);
    match e.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_keys(schema, &path);
            for key in unexpected {
                let msg = match suggest(key, &allowed) {
                    Some(s) => format!("unknown field `{key}`; did you mean `{s}`?"),
                    None if allowed.is_empty() => format!("unknown field `{key}`"),
                    None => format!(
                        "unknown field `{key}`; expected one of: {}",
                        allowed.join(", ")
                    ),
                };
                r.at_key(&path.key(key), Severity::Error, msg);
            }
        }
        ValidationErrorKind::Required { property } => {
            let p = property.as_str().unwrap_or_default();
            r.at_key(
                &path,
                Severity::Error,
                format!("missing required field `{p}`"),
            );
        }
        ValidationErrorKind::Type { kind } => {
            r.at(
                &path,
                Severity::Error,
                format!("expected {}, found {}", expected(kind), type_name(&found)),
            );
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.as_str().map_or(o.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            r.at(
                &path,
                Severity::Error,
                format!(
                    "must be one of: {} (found {})",
                    opts.join(", "),
                    type_name(&found)
                ),
            );
        }
        ValidationErrorKind::Constant { expected_value } => {
            let want = expected_value
                .as_str()
                .map_or(expected_value.to_string(), str::to_string);
            r.at(
                &path,
                Severity::Error,
                format!("must be {want} (found {})", type_name(&found)),
            );
        }
        ValidationErrorKind::Minimum { limit } => {
            r.at(
                &path,
                Severity::Error,
                format!("must be at least {limit} (found {})", type_name(&found)),
            );
        }
        ValidationErrorKind::Maximum { limit } => {
            r.at(
                &path,
                Severity::Error,
                format!("must be at most {limit} (found {})", type_name(&found)),
            );
        }
        ValidationErrorKind::Pattern { .. } => {
            r.at(
                &path,
                Severity::Error,
                format!(
                    "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (found {})",
                    type_name(&found)
                ),
            );
        }
        ValidationErrorKind::AnyOf { .. } => {
            r.at(
                &path,
                Severity::Error,
                format!(
                    "must be a string, a number or a boolean (found {})",
                    type_name(&found)
                ),
            );
        }
        _ => r.at(&path, Severity::Error, e.to_string()),
    }
}

/// The allowed key closest to `key`, when it is close enough to be a typo.
fn suggest(key: &str, allowed: &[String]) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| {
            (
                strsim::damerau_levenshtein(&lower, &a.to_ascii_lowercase()),
                a,
            )
        })
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        let allowed: Vec<String> = ["instances", "target", "postgresql"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(suggest("instance", &allowed), Some("instances".into()));
        assert_eq!(suggest("postgres", &allowed), Some("postgresql".into()));
        assert_eq!(suggest("Target", &allowed), Some("target".into()));
        assert_eq!(suggest("flavour", &allowed), None);
    }

    #[test]
    fn versions_other_than_15_and_18_and_18_on_the_image_are_warnings() {
        let warn = |spec: &str| {
            let text = format!(
                "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: v}}\nspec:\n{spec}"
            );
            validate_files(&[("v.yaml".into(), text)])
                .diagnostics
                .iter()
                .filter(|d| d.path == "spec.postgresql.version")
                .map(|d| (d.severity, d.message.clone()))
                .collect::<Vec<_>>()
        };
        assert!(warn("  postgresql: {version: 15}\n").is_empty());
        assert!(warn("  postgresql: {version: 18}\n").is_empty());
        let sixteen = warn("  postgresql: {version: 16}\n");
        assert_eq!(sixteen.len(), 1);
        assert_eq!(sixteen[0].0, Severity::Warning);
        assert!(sixteen[0].1.contains("16 is untested"), "{sixteen:?}");
        let aws = "  target: aws\n  postgresql: {version: 18}\n  dcs: {hosts: [\"10.0.0.1:2379\"]}\n  aws: {region: eu-west-1, vpc: vpc-1, subnets: [subnet-1]}\n";
        assert!(warn(aws).is_empty(), "the image carries 18");
        let with_ca = warn(&format!(
            "{aws}  secrets: {{ca: {{secretsManager: \"arn:aws:secretsmanager:eu-west-1:1:secret:ca\"}}}}\n"
        ));
        assert!(
            with_ca
                .iter()
                .any(|(s, m)| *s == Severity::Warning && m.contains("has no SSL")),
            "{with_ca:?}"
        );
    }
}
