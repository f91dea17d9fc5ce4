//! Alert sinks: a structured log line on stderr, always; webhooks from `alerts.yaml` beside
//! `clusters/` (a JSON body, or Slack's `{"text": ...}`). Each webhook has its own queue and
//! task that retries with exponential backoff while the receiver is down, so a reconcile never
//! waits on it and no alert is dropped or reordered.

use super::alerts::AlertEvent;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// The file's name, beside `clusters/`.
pub const CONFIG_FILE: &str = "alerts.yaml";

/// `alerts.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where to post alerts.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL to POST to.
    pub url: String,
    /// The body's format.
    #[serde(default)]
    pub format: WebhookFormat,
}

/// Body formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": "drift"|"resolved", "cluster", "kind", "subject", "detail", "at"}`.
    #[default]
    Json,
    /// `{"text": "..."}`, for Slack-compatible incoming webhooks.
    Slack,
}

/// Reads `path`; an absent file means no webhooks.
pub fn load(path: &Path) -> anyhow::Result<AlertsConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AlertsConfig::default()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The JSON body of an event.
pub fn json_body(ev: &AlertEvent) -> serde_json::Value {
    let (event, d) = match ev {
        AlertEvent::Drift(d) => ("drift", d),
        AlertEvent::Resolved(d) => ("resolved", d),
    };
    serde_json::json!({
        "event": event,
        "cluster": d.cluster,
        "kind": d.kind.as_str(),
        "subject": d.subject,
        "detail": d.detail,
        "at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

/// The Slack body of an event.
pub fn slack_body(ev: &AlertEvent) -> serde_json::Value {
    let text = match ev {
        AlertEvent::Drift(d) => format!(
            ":warning: spilo: cluster `{}` drifted ({}): {}",
            d.cluster,
            d.kind.as_str(),
            d.detail
        ),
        AlertEvent::Resolved(d) => format!(
            ":white_check_mark: spilo: cluster `{}` resolved ({})",
            d.cluster,
            d.kind.as_str()
        ),
    };
    serde_json::json!({ "text": text })
}

/// Sends events to the log and every webhook.
pub struct Notifier {
    queues: Vec<(WebhookFormat, mpsc::UnboundedSender<serde_json::Value>)>,
}

impl Notifier {
    /// Starts one delivery task per webhook.
    pub fn start(config: &AlertsConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let queues = config
            .webhooks
            .iter()
            .map(|w| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(deliver(client.clone(), w.clone(), rx));
                (w.format, tx)
            })
            .collect();
        Notifier { queues }
    }

    /// Logs `ev` and queues it for every webhook.
    pub fn send(&self, ev: &AlertEvent) {
        eprintln!(
            "{}",
            serde_json::json!({"level": "warn", "msg": "alert", "alert": json_body(ev)})
        );
        for (f, q) in &self.queues {
            let body = match f {
                WebhookFormat::Json => json_body(ev),
                WebhookFormat::Slack => slack_body(ev),
            };
            let _ = q.send(body);
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    hook: WebhookConfig,
    mut rx: mpsc::UnboundedReceiver<serde_json::Value>,
) {
    while let Some(body) = rx.recv().await {
        let mut pause = Duration::from_millis(500);
        loop {
            match client.post(&hook.url).json(&body).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => eprintln!(
                    "{}",
                    serde_json::json!({"level": "warn", "msg": "webhook refused the alert; retrying", "url": hook.url, "status": r.status().as_u16(), "retry_in_ms": pause.as_millis() as u64})
                ),
                Err(e) => eprintln!(
                    "{}",
                    serde_json::json!({"level": "warn", "msg": "webhook unreachable; retrying", "url": hook.url, "error": e.to_string(), "retry_in_ms": pause.as_millis() as u64})
                ),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::detect::{Drift, DriftKind};

    fn ev() -> AlertEvent {
        AlertEvent::Drift(Drift {
            cluster: "orders".into(),
            kind: DriftKind::StackParameters,
            subject: None,
            detail: "Instances is 5 in AWS, 3 in git".into(),
        })
    }

    #[test]
    fn bodies_name_the_cluster_kind_and_detail() {
        let j = json_body(&ev());
        assert_eq!(j["event"], "drift");
        assert_eq!(j["kind"], "stack_parameters");
        assert_eq!(j["detail"], "Instances is 5 in AWS, 3 in git");
        let s = slack_body(&ev());
        assert_eq!(
            s["text"],
            ":warning: spilo: cluster `orders` drifted (stack_parameters): Instances is 5 in AWS, 3 in git"
        );
    }

    #[test]
    fn the_config_refuses_unknown_keys_and_an_absent_file_means_no_hooks() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            load(&dir.path().join("alerts.yaml"))
                .expect("absent")
                .webhooks
                .is_empty()
        );
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, "webhooks:\n  - {url: http://x, fromat: slack}\n").expect("write");
        let e = load(&p).expect_err("unknown key").to_string();
        assert!(e.contains("bad.yaml") && e.contains("fromat"), "{e}");
    }
}
