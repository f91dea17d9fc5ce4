//! Clients for tests that run two clusters side by side (a source and its standby cluster):
//! a writer that inserts ids into whichever member runs as primary and records what was
//! acknowledged, and a watcher recording which members run as primary, when.

use crate::local::LocalRepo;
use crate::sql::connect_dsn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client inserting ids one after another into table `w (id bigint PRIMARY KEY)`, each
/// acknowledged one recorded with when.
pub struct Writer {
    acked: Arc<Mutex<Vec<(i64, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing through `dsn` (ids from 1, one every 20 ms).
    pub fn start(dsn: String) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next = 1i64;
            let mut client = None;
            while !s.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = connect_dsn(&dsn).await.ok();
                }
                let ok = match &client {
                    Some(c) => c
                        .execute("INSERT INTO w VALUES ($1)", &[&next])
                        .await
                        .is_ok(),
                    None => false,
                };
                if ok {
                    a.lock().expect("lock").push((next, Instant::now()));
                    next += 1;
                } else {
                    client = None;
                    // An id whose INSERT failed may still have committed: never reused.
                    next += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Writer { acked, stop, task }
    }

    /// The last acknowledged id (0 before any).
    pub fn last(&self) -> i64 {
        self.acked
            .lock()
            .expect("lock")
            .last()
            .map_or(0, |(id, _)| *id)
    }

    /// The writes acknowledged so far, with when.
    pub fn acked(&self) -> Vec<(i64, Instant)> {
        self.acked.lock().expect("lock").clone()
    }

    /// Stops writing; every acknowledged write, with when.
    pub async fn stop(self) -> Vec<(i64, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let acked = self.acked.lock().expect("lock");
        acked.clone()
    }
}

/// Polls every member's PostgreSQL with a fresh session every 100 ms and records each time
/// one runs as a primary: (cluster, port, when).
pub struct Primaries {
    seen: Arc<Mutex<Vec<(String, u16, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Primaries {
    /// Starts watching `members` (cluster, PostgreSQL port).
    pub fn watch(repo: &LocalRepo, members: Vec<(String, u16)>) -> anyhow::Result<Self> {
        let dsns: Vec<(String, u16, String)> = members
            .into_iter()
            .map(|(c, p)| Ok((c.clone(), p, repo.dsn(&c, p)?)))
            .collect::<anyhow::Result<_>>()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (out, s) = (seen.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                for (cluster, port, dsn) in &dsns {
                    let primary = tokio::time::timeout(Duration::from_secs(1), async {
                        let c = connect_dsn(dsn).await.ok()?;
                        let r: bool = c
                            .query_one("SELECT pg_is_in_recovery()", &[])
                            .await
                            .ok()?
                            .get(0);
                        Some(!r)
                    })
                    .await;
                    if let Ok(Some(true)) = primary {
                        out.lock()
                            .expect("lock")
                            .push((cluster.clone(), *port, Instant::now()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Primaries { seen, stop, task })
    }

    /// Every sighting of a primary so far.
    pub fn sightings(&self) -> Vec<(String, u16, Instant)> {
        self.seen.lock().expect("lock").clone()
    }

    /// Stops; every sighting of a primary.
    pub async fn stop(self) -> Vec<(String, u16, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let seen = self.seen.lock().expect("lock");
        seen.clone()
    }
}
