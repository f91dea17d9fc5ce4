//! The JSON Schemas of cluster files, generated from `spilo_model::spec::ClusterFile` and
//! `EtcdClusterFile` and committed as `schemas/cluster.schema.json` and
//! `schemas/etcd-cluster.schema.json` (a test fails when either is stale).
//!
//! Optional sub-objects are plain objects in the schema (no `null` alternative), so an error
//! inside one is reported at its own path instead of as "matches no alternative".

use schemars::generate::SchemaSettings;
use serde_json::Value;
use spilo_model::spec::{ClusterFile, EtcdClusterFile};

/// The schema of PostgreSQL cluster files as a JSON value.
pub fn schema() -> Value {
    generate::<ClusterFile>("cluster.schema.json")
}

/// The schema of etcd cluster files (`kind: EtcdCluster`) as a JSON value.
pub fn etcd_schema() -> Value {
    generate::<EtcdClusterFile>("etcd-cluster.schema.json")
}

fn generate<T: schemars::JsonSchema>(file: &str) -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<T>();
    let mut value = serde_json::to_value(schema).unwrap_or(Value::Null);
    strip_null(&mut value);
    if let Value::Object(o) = &mut value {
        o.insert(
            "$id".into(),
            Value::String(format!("https://spilo.invalid/schemas/{file}")),
        );
    }
    value
}

/// The PostgreSQL cluster schema as the committed file's text.
pub fn schema_json() -> String {
    pretty(&schema())
}

/// The etcd cluster schema as the committed file's text.
pub fn etcd_schema_json() -> String {
    pretty(&etcd_schema())
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Removes `null` alternatives (`anyOf: [X, {type: null}]` becomes X, `type: [t, null]`
/// becomes `t`) and turns `oneOf` lists of constants into `enum`s.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(alts)) = o.get("anyOf") {
                let non_null: Vec<Value> = alts
                    .iter()
                    .filter(|a| a.get("type") != Some(&Value::String("null".into())))
                    .cloned()
                    .collect();
                if non_null.len() == 1 && alts.len() == 2 {
                    o.remove("anyOf");
                    if let Value::Object(inner) = &non_null[0] {
                        for (k, val) in inner {
                            o.entry(k.clone()).or_insert(val.clone());
                        }
                    }
                }
            }
            if let Some(Value::Array(types)) = o.get("type") {
                let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                if kept.len() == 1 {
                    o.insert("type".into(), kept[0].clone());
                } else {
                    o.insert("type".into(), Value::Array(kept));
                }
            }
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            // A documented unit enum comes out as `oneOf` of `const`s; an `enum` list gives
            // "must be one of ..." errors instead of "matches no alternative".
            let consts: Option<Vec<Value>> = o.get("oneOf").and_then(|alts| {
                alts.as_array()?
                    .iter()
                    .map(|a| a.get("const").cloned())
                    .collect()
            });
            if let Some(values) = consts {
                o.remove("oneOf");
                o.insert("type".into(), Value::String("string".into()));
                o.insert("enum".into(), Value::Array(values));
            }
            for val in o.values_mut() {
                strip_null(val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// The property names the schema allows at `path` (an object), for "did you mean".
pub fn allowed_keys(root: &Value, path: &super::Path) -> Vec<String> {
    let mut node = resolve(root, root);
    for seg in &path.0 {
        let next = match seg {
            super::Seg::Key(k) => node
                .get("properties")
                .and_then(|p| p.get(k))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object())),
            super::Seg::Index(_) => node.get("items"),
        };
        match next {
            Some(n) => node = resolve(root, n),
            None => return Vec::new(),
        }
    }
    node.get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..8 {
        match node.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => {
                let ptr = r.trim_start_matches('#');
                match root.pointer(ptr) {
                    Some(n) => node = n,
                    None => return node,
                }
            }
            None => return node,
        }
    }
    node
}
