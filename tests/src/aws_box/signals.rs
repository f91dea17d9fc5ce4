//! A stand-in for CloudFormation's `SignalResource`, the one CloudFormation call instances
//! make (moto does not implement it and ignores `CreationPolicy`). Instances reach it through
//! `AWS_ENDPOINT_URL_CLOUDFORMATION`; it records each signal and answers as CloudFormation does.

use axum::Router;
use axum::extract::{Form, State};
use axum::routing::post;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One signal received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// `StackName`.
    pub stack: String,
    /// `LogicalResourceId`.
    pub resource: String,
    /// `UniqueId` (the instance id).
    pub id: String,
    /// `SUCCESS` or `FAILURE`.
    pub status: String,
}

/// The running stand-in.
pub struct Recorder {
    /// `http://<host>:<port>`.
    pub endpoint: String,
    signals: Arc<Mutex<Vec<Signal>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(
    State(signals): State<Arc<Mutex<Vec<Signal>>>>,
    Form(f): Form<HashMap<String, String>>,
) -> ([(&'static str, &'static str); 1], String) {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if get("Action") == "SignalResource"
        && let Ok(mut all) = signals.lock()
    {
        all.push(Signal {
            stack: get("StackName"),
            resource: get("LogicalResourceId"),
            id: get("UniqueId"),
            status: get("Status"),
        });
    }
    (
        [("content-type", "text/xml")],
        "<SignalResourceResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\">\
         <ResponseMetadata><RequestId>spilo-box</RequestId></ResponseMetadata>\
         </SignalResourceResponse>"
            .to_string(),
    )
}

impl Recorder {
    /// Listens on `host` (a free port).
    pub async fn start(host: &str) -> anyhow::Result<Self> {
        let signals = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/", post(handle))
            .with_state(signals.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            endpoint,
            signals,
            task,
        })
    }

    /// Every signal so far.
    pub fn signals(&self) -> Vec<Signal> {
        self.signals.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
