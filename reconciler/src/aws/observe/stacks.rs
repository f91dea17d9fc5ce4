//! Reading CloudFormation stacks: one by name, or every stack of a region by pages. A stack's
//! template and resources cost two more calls each; they are taken from what the last plan
//! recorded ([`super::stack_cache`]) when the stack has not changed since.

use super::stack_cache::{self, Record, Version};
use crate::aws::clients::{RegionClients, describe};
use crate::aws::observed::ObservedStack;
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::primitives::DateTimeFormat;
use aws_sdk_cloudformation::types::{Stack, TemplateStage};
use serde_json::Value;
use std::collections::BTreeMap;

/// A stack as `DescribeStacks` tells it: everything but its template and resources.
#[derive(Debug, Clone)]
pub struct StackHead {
    /// The stack's name.
    pub name: String,
    /// Its id, status and last change.
    pub version: Version,
    /// Parameter values.
    pub parameters: BTreeMap<String, String>,
    /// Stack tags.
    pub tags: BTreeMap<String, String>,
    /// Outputs by key.
    pub outputs: BTreeMap<String, String>,
    /// Termination protection is on.
    pub termination_protection: bool,
}

impl StackHead {
    /// The head of a described stack; `None` for a deleted one (`DELETE_COMPLETE`).
    fn of(s: &Stack, asked_for: &str) -> Option<StackHead> {
        let status = s
            .stack_status()
            .map(|x| x.as_str().to_string())
            .unwrap_or_default();
        if status == "DELETE_COMPLETE" {
            return None;
        }
        let when = s.last_updated_time().or(s.creation_time());
        let pairs = |items: Vec<(Option<&str>, Option<&str>)>| -> BTreeMap<String, String> {
            items
                .into_iter()
                .filter_map(|(k, v)| Some((k?.to_string(), v.unwrap_or_default().to_string())))
                .collect()
        };
        Some(StackHead {
            name: s.stack_name().unwrap_or(asked_for).to_string(),
            version: Version {
                stack_id: s.stack_id().unwrap_or(asked_for).to_string(),
                status,
                last_changed: when
                    .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok())
                    .unwrap_or_default(),
                updated: s.last_updated_time().is_some(),
            },
            parameters: pairs(
                s.parameters()
                    .iter()
                    .map(|p| (p.parameter_key(), p.parameter_value()))
                    .collect(),
            ),
            tags: s
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
            outputs: pairs(
                s.outputs()
                    .iter()
                    .map(|o| (o.output_key(), o.output_value()))
                    .collect(),
            ),
            termination_protection: s.enable_termination_protection().unwrap_or(false),
        })
    }
}

fn is_missing_stack<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ValidationError") && e.message().is_some_and(|m| m.contains("does not exist"))
}

/// The stack `id` (name or ARN) with its template and resources; `None` when it does not exist.
pub async fn full_stack(c: &RegionClients, id: &str) -> Result<Option<ObservedStack>, String> {
    let described = match c.cfn.describe_stacks().stack_name(id).send().await {
        Ok(d) => d,
        Err(e) if is_missing_stack(&e) => return Ok(None),
        Err(e) => return Err(format!("describe-stacks: {}", describe(&e))),
    };
    match described
        .stacks()
        .first()
        .and_then(|s| StackHead::of(s, id))
    {
        Some(head) => Ok(Some(complete(c, head).await?)),
        None => Ok(None),
    }
}

/// Every stack of the region that is not deleted, one `DescribeStacks` page at a time.
pub async fn list_stacks(c: &RegionClients) -> Result<Vec<StackHead>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .cfn
            .describe_stacks()
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("describe-stacks: {}", describe(&e)))?;
        out.extend(page.stacks().iter().filter_map(|s| StackHead::of(s, "")));
        token = match super::next_page(&token, page.next_token(), "describe-stacks")? {
            Some(next) => Some(next),
            None => return Ok(out),
        };
    }
}

/// `head` with its template and resources: recorded ones when the stack has not changed
/// since they were recorded, else fetched (and recorded for the next plan).
pub async fn complete(c: &RegionClients, head: StackHead) -> Result<ObservedStack, String> {
    let cache = stack_cache::dir();
    let recorded = cache
        .as_deref()
        .and_then(|d| stack_cache::read(d, &head.version));
    let record = match recorded {
        Some(r) => r,
        None => {
            let record = fetch(c, &head.version).await?;
            if let Some(d) = &cache {
                stack_cache::write(d, &record);
            }
            record
        }
    };
    Ok(ObservedStack {
        stack_id: head.version.stack_id,
        status: head.version.status,
        last_changed: head.version.last_changed,
        template: record.template,
        parameters: head.parameters,
        tags: head.tags,
        termination_protection: head.termination_protection,
        resources: record.resources,
        outputs: head.outputs,
    })
}

/// The template and resources of the stack at `version`, from CloudFormation.
async fn fetch(c: &RegionClients, version: &Version) -> Result<Record, String> {
    let id = &version.stack_id;
    let (body, res) = tokio::join!(
        c.cfn
            .get_template()
            .stack_name(id)
            .template_stage(TemplateStage::Original)
            .send(),
        c.cfn.describe_stack_resources().stack_name(id).send()
    );
    let body = body.map_err(|e| format!("get-template: {}", describe(&e)))?;
    let template: Value = serde_json::from_str(body.template_body().unwrap_or("{}"))
        .map_err(|e| format!("the stack's template is not the JSON spilo writes: {e}"))?;
    let res = res.map_err(|e| format!("describe-stack-resources: {}", describe(&e)))?;
    let resources = res
        .stack_resources()
        .iter()
        .filter_map(|r| {
            Some((
                r.logical_resource_id()?.to_string(),
                (
                    r.resource_type().unwrap_or_default().to_string(),
                    r.physical_resource_id().map(str::to_string),
                ),
            ))
        })
        .collect();
    Ok(Record {
        version: version.clone(),
        template,
        resources,
    })
}
