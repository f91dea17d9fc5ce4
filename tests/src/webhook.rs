//! A webhook receiver on loopback that records every JSON body it is sent; it can refuse the
//! first requests to exercise the sender's retries.

use std::sync::{Arc, Mutex};

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    refusals: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver that answers 503 to the first `refuse` requests.
    pub async fn start(refuse: u32) -> anyhow::Result<Self> {
        use axum::routing::post;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(Mutex::new(refuse));
        let (b, r) = (bodies.clone(), refusals.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let (b, r) = (b.clone(), r.clone());
                async move {
                    if let Ok(mut left) = r.lock()
                        && *left > 0
                    {
                        *left -= 1;
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    if let Ok(mut all) = b.lock() {
                        all.push(body);
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            bodies,
            refusals,
            task,
        })
    }

    /// Every body received so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// How many of the refusals are left.
    pub fn refusals_left(&self) -> u32 {
        self.refusals.lock().map(|r| *r).unwrap_or_default()
    }

    /// Bodies with `event` for `cluster` and `kind`.
    pub fn count(&self, event: &str, cluster: &str, kind: &str) -> usize {
        self.bodies()
            .iter()
            .filter(|b| b["event"] == event && b["cluster"] == cluster && b["kind"] == kind)
            .count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
