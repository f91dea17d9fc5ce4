//! AWS clients per region. The endpoint can be overridden (`--endpoint-url`, or the SDK's own
//! `AWS_ENDPOINT_URL`): the tests point it at `moto_server`, and every code path stays the
//! production one. Credentials come from the SDK's default chain.

use aws_config::{BehaviorVersion, Region};
use std::collections::BTreeMap;
use tokio::sync::Mutex;

/// The clients of one region.
#[derive(Clone)]
pub struct RegionClients {
    /// CloudFormation.
    pub cfn: aws_sdk_cloudformation::Client,
    /// Route53 (global, but built per region for simplicity).
    pub route53: aws_sdk_route53::Client,
    /// S3 (path-style when the endpoint is overridden).
    pub s3: aws_sdk_s3::Client,
    /// Auto Scaling, for the instances of a cluster.
    pub autoscaling: aws_sdk_autoscaling::Client,
    /// SSM Parameter Store, for the spilo image's parameter.
    pub ssm: aws_sdk_ssm::Client,
    /// STS, for the account the credentials belong to.
    pub sts: aws_sdk_sts::Client,
}

/// Lazily built clients, one set per region.
pub struct Clients {
    endpoint: Option<String>,
    by_region: Mutex<BTreeMap<String, RegionClients>>,
}

impl Clients {
    /// Clients that talk to `endpoint` instead of AWS when given.
    pub fn new(endpoint: Option<String>) -> Self {
        Clients {
            endpoint,
            by_region: Mutex::new(BTreeMap::new()),
        }
    }

    /// The clients of `region`.
    pub async fn region(&self, region: &str) -> RegionClients {
        let mut map = self.by_region.lock().await;
        if let Some(c) = map.get(region) {
            return c.clone();
        }
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.to_string()));
        if let Some(e) = &self.endpoint {
            loader = loader.endpoint_url(e);
        }
        let conf = loader.load().await;
        let s3_conf = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(self.endpoint.is_some())
            .build();
        let clients = RegionClients {
            cfn: aws_sdk_cloudformation::Client::new(&conf),
            route53: aws_sdk_route53::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            autoscaling: aws_sdk_autoscaling::Client::new(&conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
            sts: aws_sdk_sts::Client::new(&conf),
        };
        map.insert(region.to_string(), clients.clone());
        clients
    }
}

/// The AWS account the credentials belong to (STS GetCallerIdentity), or `None` when there
/// are no usable credentials or no answer within 5 s.
pub async fn account_id(endpoint: Option<&str>, region: &str) -> Option<String> {
    let r = Clients::new(endpoint.map(str::to_string))
        .region(region)
        .await;
    let call = r.sts.get_caller_identity().send();
    match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
        Ok(Ok(out)) => out.account().map(str::to_string),
        _ => None,
    }
}

/// An SDK error as `Code: message` when the service sent one, else its chain of causes
/// (`dispatch failure: io error: ... Connection refused`), one line.
pub fn describe<E>(e: &E) -> String
where
    E: aws_sdk_cloudformation::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut parts = vec![e.to_string()];
            let mut source = e.source();
            while let Some(s) = source {
                let text = s.to_string();
                if parts.last() != Some(&text) {
                    parts.push(text);
                }
                source = s.source();
            }
            parts.join(": ")
        }
    }
}
