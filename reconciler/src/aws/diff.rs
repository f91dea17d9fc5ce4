//! Resource- and property-level differences between two stacks (observed and desired), the
//! replacement rules CloudFormation applies, and the unified diff of the two templates.
//! Pure.
//!
//! Parameters are substituted into `Ref`s before resources are compared, so `instances: 3 -> 5`
//! shows as the auto-scaling group's sizes changing, not only as a parameter.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What happens to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceAction {
    /// Created.
    Add,
    /// Updated in place.
    Modify,
    /// Deleted and created anew (a property that cannot change in place changed).
    Replace,
    /// Deleted.
    Remove,
}

/// One changed property, by path inside `Properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyChange {
    /// `LaunchTemplateData.InstanceType`, `Listeners[0].LoadBalancerPort`.
    pub path: String,
    /// The value before; absent when added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The value after; absent when removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Whether this change forces replacement.
    pub forces_replacement: bool,
}

/// One resource's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceChange {
    /// The logical id in the template.
    pub logical_id: String,
    /// `AWS::EC2::LaunchTemplate`.
    pub resource_type: String,
    /// What happens.
    pub action: ResourceAction,
    /// Changed properties (empty for add and remove).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<PropertyChange>,
}

/// A parameter or tag whose value changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueChange {
    /// Its name.
    pub name: String,
    /// Before; absent when added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// After; absent when removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Properties whose change makes CloudFormation replace the resource, for the resource
/// types spilo renders (from the CloudFormation resource reference, "Update requires:
/// Replacement").
fn forces_replacement(resource_type: &str, property: &str) -> bool {
    let props: &[&str] = match resource_type {
        "AWS::ElasticLoadBalancing::LoadBalancer" => &["LoadBalancerName", "Scheme"],
        "AWS::Route53::RecordSet" => &["Name", "HostedZoneName", "HostedZoneId"],
        "AWS::EC2::SecurityGroup" => &["GroupDescription", "GroupName", "VpcId"],
        "AWS::EC2::SecurityGroupIngress" => &[
            "GroupId",
            "IpProtocol",
            "FromPort",
            "ToPort",
            "CidrIp",
            "SourceSecurityGroupId",
        ],
        "AWS::IAM::Role" => &["RoleName", "Path"],
        "AWS::IAM::InstanceProfile" => &["InstanceProfileName", "Path"],
        "AWS::EC2::LaunchTemplate" => &["LaunchTemplateName"],
        "AWS::AutoScaling::AutoScalingGroup" => &["AutoScalingGroupName"],
        _ => &[],
    };
    props.contains(&property)
}

/// Replaces `{"Ref": P}` for every parameter `P` with its value.
pub fn substitute(v: &Value, params: &BTreeMap<String, String>) -> Value {
    match v {
        Value::Object(m) => {
            if m.len() == 1
                && let Some(Value::String(p)) = m.get("Ref")
                && let Some(value) = params.get(p)
            {
                return Value::String(value.clone());
            }
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), substitute(v, params)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, params)).collect()),
        other => other.clone(),
    }
}

fn walk(
    path: &str,
    a: Option<&Value>,
    b: Option<&Value>,
    out: &mut Vec<(String, Option<Value>, Option<Value>)>,
) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(&p, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), Some(l), Some(r), out);
            }
        }
        (l, r) if l != r => out.push((path.to_string(), l.cloned(), r.cloned())),
        _ => {}
    }
}

/// Leaf-level differences between two JSON values: `(path, before, after)`.
pub fn value_changes(before: &Value, after: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
    let mut out = Vec::new();
    walk("", Some(before), Some(after), &mut out);
    out
}

/// The property changes of one resource present on both sides.
fn property_changes(resource_type: &str, before: &Value, after: &Value) -> Vec<PropertyChange> {
    let mut raw = Vec::new();
    walk(
        "",
        before.get("Properties"),
        after.get("Properties"),
        &mut raw,
    );
    raw.into_iter()
        .map(|(path, before, after)| {
            let top = path.split(['.', '[']).next().unwrap_or("");
            PropertyChange {
                forces_replacement: forces_replacement(resource_type, top),
                path,
                before,
                after,
            }
        })
        .collect()
}

/// Resource changes from `before` (observed, or empty for a create) to `after`.
pub fn resources(
    before: &Value,
    before_params: &BTreeMap<String, String>,
    after: &Value,
    after_params: &BTreeMap<String, String>,
) -> Vec<ResourceChange> {
    let empty = serde_json::Map::new();
    let b = substitute(before, before_params);
    let a = substitute(after, after_params);
    let br = b
        .get("Resources")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let ar = a
        .get("Resources")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let ids: BTreeSet<&String> = br.keys().chain(ar.keys()).collect();
    let type_of = |v: &Value| {
        v.get("Type")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let mut out = Vec::new();
    for id in ids {
        match (br.get(id), ar.get(id)) {
            (None, Some(new)) => out.push(ResourceChange {
                logical_id: id.clone(),
                resource_type: type_of(new),
                action: ResourceAction::Add,
                properties: Vec::new(),
            }),
            (Some(old), None) => out.push(ResourceChange {
                logical_id: id.clone(),
                resource_type: type_of(old),
                action: ResourceAction::Remove,
                properties: Vec::new(),
            }),
            (Some(old), Some(new)) if old != new => {
                let t = type_of(new);
                let properties = property_changes(&t, old, new);
                let action = if type_of(old) != t || properties.iter().any(|p| p.forces_replacement)
                {
                    ResourceAction::Replace
                } else {
                    ResourceAction::Modify
                };
                out.push(ResourceChange {
                    logical_id: id.clone(),
                    resource_type: t,
                    action,
                    properties,
                });
            }
            _ => {}
        }
    }
    out
}

/// Changes between two string maps (parameters, tags).
pub fn values(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<ValueChange> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| ValueChange {
            name: k.clone(),
            before: before.get(k).cloned(),
            after: after.get(k).cloned(),
        })
        .collect()
}

/// A unified diff of the two templates, pretty-printed; empty when equal.
pub fn template_text(before: &Value, after: &Value) -> String {
    let b = serde_json::to_string_pretty(before).unwrap_or_default() + "\n";
    let a = serde_json::to_string_pretty(after).unwrap_or_default() + "\n";
    if a == b {
        return String::new();
    }
    similar::TextDiff::from_lines(&b, &a)
        .unified_diff()
        .context_radius(3)
        .header("observed", "desired")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(n: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("N".to_string(), n.to_string())])
    }

    #[test]
    fn a_parameter_change_shows_on_the_resources_that_use_it() {
        let t = json!({"Resources": {"G": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {"MaxSize": {"Ref": "N"}}}}});
        let c = resources(&t, &params("3"), &t, &params("5"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].action, ResourceAction::Modify);
        assert_eq!(c[0].properties[0].path, "MaxSize");
        assert_eq!(c[0].properties[0].before, Some(json!("3")));
        assert_eq!(c[0].properties[0].after, Some(json!("5")));
    }

    #[test]
    fn a_renamed_dns_record_is_a_replacement() {
        let a = json!({"Resources": {"D": {"Type": "AWS::Route53::RecordSet", "Properties": {"Name": "a.z.", "TTL": "20"}}}});
        let b = json!({"Resources": {"D": {"Type": "AWS::Route53::RecordSet", "Properties": {"Name": "b.z.", "TTL": "20"}}}});
        let c = resources(&a, &BTreeMap::new(), &b, &BTreeMap::new());
        assert_eq!(c[0].action, ResourceAction::Replace);
        assert!(c[0].properties[0].forces_replacement);
        let ttl = json!({"Resources": {"D": {"Type": "AWS::Route53::RecordSet", "Properties": {"Name": "a.z.", "TTL": "60"}}}});
        assert_eq!(
            resources(&a, &BTreeMap::new(), &ttl, &BTreeMap::new())[0].action,
            ResourceAction::Modify
        );
    }

    #[test]
    fn added_and_removed_resources_and_nested_paths() {
        let a = json!({"Resources": {"X": {"Type": "T", "Properties": {"L": [{"P": 1}]}}, "Old": {"Type": "T"}}});
        let b = json!({"Resources": {"X": {"Type": "T", "Properties": {"L": [{"P": 2}]}}, "New": {"Type": "T"}}});
        let c = resources(&a, &BTreeMap::new(), &b, &BTreeMap::new());
        let got: Vec<(&str, ResourceAction)> = c
            .iter()
            .map(|r| (r.logical_id.as_str(), r.action))
            .collect();
        assert_eq!(
            got,
            [
                ("New", ResourceAction::Add),
                ("Old", ResourceAction::Remove),
                ("X", ResourceAction::Modify)
            ]
        );
        assert_eq!(c[2].properties[0].path, "L[0].P");
    }

    #[test]
    fn equal_templates_have_no_text_diff() {
        let t = json!({"a": 1});
        assert_eq!(template_text(&t, &t), "");
        let d = template_text(&t, &json!({"a": 2}));
        assert!(
            d.contains("-  \"a\": 1") && d.contains("+  \"a\": 2"),
            "{d}"
        );
    }
}
