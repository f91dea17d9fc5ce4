//! What the governor's AWS calls share (secrets at start, the stack signal): the SDK
//! configuration of a region with a deadline on every call, credentials from the default
//! chain (IMDSv2 on EC2), and errors as one line. The WAL archive's S3 client has its own
//! (`archive::store`): uploads have no fixed deadline.

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use std::time::Duration;

/// How long one call may take, retries included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The SDK configuration for `region` (the default chain's region when empty).
pub async fn sdk_config(region: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .operation_timeout(CALL_TIMEOUT)
            .build(),
    );
    if !region.is_empty() {
        loader = loader.region(Region::new(region.to_string()));
    }
    loader.load().await
}

/// `Code: message` when the service answered, else the chain of causes, in one line.
pub fn describe<E>(e: &E) -> String
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut parts = vec![e.to_string()];
            let mut source = e.source();
            while let Some(s) = source {
                parts.push(s.to_string());
                source = s.source();
            }
            parts.join(": ")
        }
    }
}
