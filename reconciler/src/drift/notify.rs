//! Alert sinks: a structured log line on stderr, always; webhooks from `alerts.yaml` beside
//! `clusters/` (a JSON body, or Slack's `{"text": ...}`). Each webhook has its own queue and
//! task that retries with exponential backoff while the receiver is down or busy (no answer,
//! 408, 429, 5xx), so a reconcile never waits on it and alerts keep their order. A refusal
//! (another 4xx) is final for that alert: retrying cannot change it, and it must not hold back
//! the alerts after it. The queue holds [`QUEUE`] alerts; one that finds it full is dropped and
//! counted (`spilo_alerts_dropped_total`).

use super::alerts::AlertEvent;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Alerts a webhook's queue holds while its receiver is down.
pub const QUEUE: usize = 1000;

/// Sends events to the log and every webhook.
pub struct Notifier {
    queues: Vec<(WebhookFormat, mpsc::Sender<serde_json::Value>)>,
    dropped: Arc<AtomicU64>,
    deliveries: tokio::task::JoinSet<()>,
}

/// What to do with an alert after a delivery attempt (`None`: no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Done,
    /// Try again after a pause: the receiver is down or busy.
    Retry,
    /// Refused: give it up (logged) and go on with the next.
    GiveUp,
}

/// The verdict on an answer's status.
pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Done,
        None | Some(408 | 429) | Some(500..) => Verdict::Retry,
        Some(_) => Verdict::GiveUp,
    }
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
                let (tx, rx) = mpsc::channel(QUEUE);
                (w, tx, rx)
            })
            .collect::<Vec<_>>();
        let mut deliveries = tokio::task::JoinSet::new();
        let queues = queues
            .into_iter()
            .map(|(w, tx, rx)| {
                deliveries.spawn(deliver(client.clone(), w.clone(), rx));
                (w.format, tx)
            })
            .collect();
        Notifier {
            queues,
            dropped: Arc::new(AtomicU64::new(0)),
            deliveries,
        }
    }

    /// Alerts dropped because a webhook's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until a delivery task ends (they end only when their queue closes, or panic):
    /// pending while all run.
    pub async fn delivery_ended(&mut self) -> String {
        match self.deliveries.join_next().await {
            Some(Ok(())) => "a webhook delivery task ended".into(),
            Some(Err(e)) => format!("a webhook delivery task failed: {e}"),
            None => std::future::pending().await,
        }
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
            if q.try_send(body).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!(
                    "{}",
                    serde_json::json!({"level": "error", "msg": "webhook queue full; alert dropped", "queue": QUEUE, "dropped_total": n})
                );
            }
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    hook: WebhookConfig,
    mut rx: mpsc::Receiver<serde_json::Value>,
) {
    while let Some(body) = rx.recv().await {
        let mut pause = Duration::from_millis(500);
        loop {
            let sent = client.post(&hook.url).json(&body).send().await;
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            match (verdict(status), sent) {
                (Verdict::Done, _) => break,
                (Verdict::GiveUp, _) => {
                    eprintln!(
                        "{}",
                        serde_json::json!({"level": "error", "msg": "webhook refused the alert; not retried", "url": hook.url, "status": status, "alert": body})
                    );
                    break;
                }
                (Verdict::Retry, Ok(r)) => eprintln!(
                    "{}",
                    serde_json::json!({"level": "warn", "msg": "webhook busy; retrying", "url": hook.url, "status": r.status().as_u16(), "retry_in_ms": pause.as_millis() as u64})
                ),
                (Verdict::Retry, Err(e)) => eprintln!(
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
    fn refusals_are_final_and_outages_are_retried() {
        assert_eq!(verdict(Some(200)), Verdict::Done);
        assert_eq!(verdict(Some(204)), Verdict::Done);
        for busy in [None, Some(408), Some(429), Some(500), Some(503)] {
            assert_eq!(verdict(busy), Verdict::Retry, "{busy:?}");
        }
        for refused in [Some(400), Some(401), Some(404), Some(410)] {
            assert_eq!(verdict(refused), Verdict::GiveUp, "{refused:?}");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        // A receiver that never answers: the delivery task holds the first alert, the queue
        // takes QUEUE more, the rest are dropped.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let n = Notifier::start(&AlertsConfig {
            webhooks: vec![WebhookConfig {
                url,
                format: WebhookFormat::Json,
            }],
        });
        for _ in 0..QUEUE + 5 {
            n.send(&ev());
        }
        assert!(n.dropped() >= 4 && n.dropped() <= 5, "{}", n.dropped());
        drop(listener);
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
