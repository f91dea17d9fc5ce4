//! A reference to a secret in the governor configuration: where the governor reads a password
//! or token at start. Values never appear in the file.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A reference to a secret: exactly one of `env`, `file`, `ssm` or `secrets_manager`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The name of an environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file holding the value (a trailing newline is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An SSM Parameter Store parameter (name or ARN; SecureString is decrypted), read in
    /// `aws.region` with the instance's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm: Option<String>,
    /// A Secrets Manager secret (name or ARN; its `SecretString`), read in `aws.region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_manager: Option<String>,
}

impl SecretRef {
    /// From an environment variable.
    pub fn env(name: &str) -> Self {
        Self {
            env: Some(name.to_string()),
            ..Self::default()
        }
    }

    /// From a file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            file: Some(path.into()),
            ..Self::default()
        }
    }

    /// How many sources are set (exactly one is valid).
    pub fn sources(&self) -> usize {
        usize::from(self.env.is_some())
            + usize::from(self.file.is_some())
            + usize::from(self.ssm.is_some())
            + usize::from(self.secrets_manager.is_some())
    }

    /// Whether it is read from an AWS service.
    pub fn is_remote(&self) -> bool {
        self.ssm.is_some() || self.secrets_manager.is_some()
    }
}
