//! Reading secrets the configuration references in AWS: SSM Parameter Store (SecureString
//! decrypted) and Secrets Manager (`SecretString`), with the instance role's credentials from
//! the SDK's default chain (IMDSv2 on EC2) and a deadline on every call.

use crate::aws::{describe, sdk_config};

/// Why a secret could not be read.
pub(super) struct Unread {
    /// Whether it may work later: the service did not answer (a timeout, no connection),
    /// rather than answering no (not found, access denied).
    pub(super) passing: bool,
    /// What happened.
    pub(super) message: String,
}

fn unread<E>(what: String, e: &aws_sdk_ssm::error::SdkError<E>) -> Unread
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_ssm::error::SdkError;
    Unread {
        passing: !matches!(e, SdkError::ServiceError(_)),
        message: format!("{what}: {}", describe(e)),
    }
}

/// SSM and Secrets Manager clients of one region.
pub(super) struct SecretClients {
    ssm: aws_sdk_ssm::Client,
    secrets: aws_sdk_secretsmanager::Client,
}

impl SecretClients {
    pub(super) async fn new(region: &str) -> Self {
        let conf = sdk_config(region).await;
        Self {
            ssm: aws_sdk_ssm::Client::new(&conf),
            secrets: aws_sdk_secretsmanager::Client::new(&conf),
        }
    }

    /// The value of SSM parameter `name` (a name or an ARN).
    pub(super) async fn parameter(&self, name: &str) -> Result<String, Unread> {
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| unread(format!("SSM parameter {name}"), &e))?;
        out.parameter()
            .and_then(|p| p.value())
            .map(str::to_string)
            .ok_or_else(|| Unread {
                passing: false,
                message: format!("SSM parameter {name} has no value"),
            })
    }

    /// The `SecretString` of Secrets Manager secret `id` (a name or an ARN).
    pub(super) async fn secret(&self, id: &str) -> Result<String, Unread> {
        let out = self
            .secrets
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| unread(format!("Secrets Manager secret {id}"), &e))?;
        out.secret_string()
            .map(str::to_string)
            .ok_or_else(|| Unread {
                passing: false,
                message: format!("Secrets Manager secret {id} has no SecretString"),
            })
    }
}
