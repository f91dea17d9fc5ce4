//! The reads behind `GET /status?live=true`: this member's timeline and WAL positions from
//! PostgreSQL at the moment a failover candidate asks, on a session of their own (the HA loop's
//! session may be busy in a long action).

use crate::postgres::query::Session;
use crate::shared::{LiveFuture, LiveWal, LiveWalPositions};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// Reads through the local socket with a short deadline.
pub(super) struct PgLiveWal {
    session: Mutex<Session>,
}

impl PgLiveWal {
    /// A session to the local server; `timeout` bounds each connect and query.
    pub(super) fn new(socket_dir: PathBuf, port: u16, user: &str, timeout: Duration) -> Self {
        PgLiveWal {
            session: Mutex::new(Session::local(socket_dir, port, user, timeout)),
        }
    }
}

impl LiveWal for PgLiveWal {
    fn read(&self) -> LiveFuture<'_> {
        Box::pin(async move {
            let mut session = self.session.lock().await;
            match session.status().await {
                Ok(st) => Some(LiveWalPositions {
                    timeline: st.timeline,
                    wal: st.wal,
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "no live WAL positions for a peer's question");
                    None
                }
            }
        })
    }
}
