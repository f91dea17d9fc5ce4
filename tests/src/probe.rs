//! Write probers and the checks made on what they recorded.
//!
//! A prober writes a numbered row every interval and records, for each write PostgreSQL
//! acknowledged, when it was sent and when the acknowledgement arrived. Two checks follow:
//! every acknowledged row exists on the final primary (nothing acknowledged was lost), and, for
//! per-member probers, no two members accepted writes at the same time.

use crate::sql::connect_dsn;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The table probers write into.
pub const TABLE_DDL: &str =
    "CREATE TABLE IF NOT EXISTS probe_writes (id bigint PRIMARY KEY, member text NOT NULL)";

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Who accepted it (the prober's label).
    pub member: String,
    /// The row id.
    pub id: i64,
    /// When the INSERT was sent.
    pub sent: Instant,
    /// When the acknowledgement arrived.
    pub acked: Instant,
}

/// Running probers.
pub struct Prober {
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

static NEXT_ID: AtomicI64 = AtomicI64::new(1);

impl Prober {
    /// One prober per `(label, dsn)`, each writing every `interval`.
    pub fn start(targets: Vec<(String, String)>, interval: Duration) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = targets
            .into_iter()
            .map(|(label, dsn)| {
                let acks = acks.clone();
                let failures = failures.clone();
                let stop = stop.clone();
                tokio::spawn(async move { run(label, dsn, interval, acks, failures, stop).await })
            })
            .collect();
        Self {
            acks,
            failures,
            stop,
            tasks,
        }
    }

    /// Acknowledged writes so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first acknowledgement after `t`, if any.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acks().iter().map(|a| a.acked).filter(|a| *a > t).min()
    }

    /// Waits until `member` has acknowledged a write (sent after `after`, when given).
    pub async fn wait_write(
        &self,
        member: &str,
        after: Option<Instant>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = match after {
            Some(_) => format!("{member} to acknowledge a write sent after the fault"),
            None => format!("{member} to acknowledge a probe write"),
        };
        crate::wait::until(&what, timeout, || async {
            self.acks()
                .iter()
                .any(|a| a.member == member && after.is_none_or(|t| a.sent > t))
                .then_some(())
        })
        .await
    }

    /// Stops every prober and returns all acknowledged writes and the times writes failed.
    pub async fn stop(self) -> (Vec<Ack>, Vec<Instant>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (acks, failures)
    }
}

async fn run(
    label: String,
    dsn: String,
    interval: Duration,
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect_dsn(&dsn).await.ok();
        }
        if let Some(c) = &client {
            let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
            let sent = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                c.execute(
                    "INSERT INTO probe_writes (id, member) VALUES ($1, $2)",
                    &[&id, &label],
                ),
            )
            .await;
            match r {
                Ok(Ok(_)) => acks.lock().unwrap_or_else(|e| e.into_inner()).push(Ack {
                    member: label.clone(),
                    id,
                    sent,
                    acked: Instant::now(),
                }),
                _ => {
                    failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sent);
                    client = None;
                }
            }
        }
        let next = tick + interval;
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Waits until the replicas on `ports` have replicated the probe table, so a measurement
/// starts only once every member could take over with it.
pub async fn wait_replicated(ports: &[u16]) -> anyhow::Result<()> {
    for &port in ports {
        crate::wait::until(
            &format!("the replica on port {port} to replicate the probe table"),
            Duration::from_secs(60),
            || async move {
                let c = crate::sql::connect(port).await.ok()?;
                let row = c
                    .query_one("SELECT to_regclass('probe_writes') IS NOT NULL", &[])
                    .await
                    .ok()?;
                row.get::<_, bool>(0).then_some(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Checks that the members accepted writes one after another, never two at once, by the
/// strict rule: once a new primary has acknowledged a write, a superseded primary never
/// acknowledges another one. Members take over in the order of their first acknowledgement;
/// every member's last acknowledgement must come before the first one of the member that took
/// over from it, and before that member's first write was even sent (so the two were never
/// writable at the same time). A member that leads twice (A, B, A) fails it too: the tests
/// that use it make one change of primary.
pub fn check_single_writer(acks: &[Ack]) -> Result<(), String> {
    // Per member: first acknowledgement, the send time of that write, last acknowledgement.
    let mut members: Vec<(String, Instant, Instant, Instant)> = Vec::new();
    for a in acks {
        match members.iter_mut().find(|m| m.0 == a.member) {
            Some(m) => {
                if a.acked < m.1 {
                    m.1 = a.acked;
                    m.2 = a.sent;
                }
                m.3 = m.3.max(a.acked);
            }
            None => members.push((a.member.clone(), a.acked, a.sent, a.acked)),
        }
    }
    members.sort_by_key(|m| m.1);
    for pair in members.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        if old.3 >= new.2 {
            return Err(format!(
                "{} acknowledged a write {:?} after {} had been sent the write it acknowledged first: two writable members",
                old.0,
                old.3.saturating_duration_since(new.2),
                new.0
            ));
        }
    }
    Ok(())
}

/// When `member` last acknowledged a write, if ever.
pub fn last_acked(acks: &[Ack], member: &str) -> Option<Instant> {
    acks.iter()
        .filter(|a| a.member == member)
        .map(|a| a.acked)
        .max()
}

/// The longest time between consecutive instants of `times` (in any order).
pub fn longest_pause(times: impl IntoIterator<Item = Instant>) -> Duration {
    let mut times: Vec<Instant> = times.into_iter().collect();
    times.sort();
    times
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// The acknowledged ids missing from `present`.
pub fn lost(acks: &[Ack], present: &HashSet<i64>) -> Vec<i64> {
    let mut missing: Vec<i64> = acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect();
    missing.sort_unstable();
    missing
}

/// The ids in `probe_writes` on a server.
pub async fn ids_on(client: &tokio_postgres::Client) -> anyhow::Result<HashSet<i64>> {
    let rows = client.query("SELECT id FROM probe_writes", &[]).await?;
    rows.iter().map(|r| Ok(r.try_get::<_, i64>(0)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(member: &str, sent_ms: u64, acked_ms: u64, base: Instant) -> Ack {
        Ack {
            member: member.into(),
            id: 0,
            sent: base + Duration::from_millis(sent_ms),
            acked: base + Duration::from_millis(acked_ms),
        }
    }

    #[test]
    fn one_writer_after_another_passes() {
        let t = Instant::now();
        let acks = vec![
            ack("a", 0, 5, t),
            ack("a", 50, 55, t),
            ack("b", 900, 905, t),
        ];
        assert!(check_single_writer(&acks).is_ok());
    }

    #[test]
    fn a_superseded_primary_acknowledging_again_fails() {
        // b took over at 55; a acknowledged at 65, even though that write was sent after b's
        // acknowledgement: two writable members.
        let t = Instant::now();
        let acks = vec![ack("a", 0, 5, t), ack("b", 50, 55, t), ack("a", 60, 65, t)];
        assert!(check_single_writer(&acks).is_err());
        let acks = vec![ack("a", 0, 5, t), ack("b", 50, 55, t), ack("a", 58, 200, t)];
        assert!(check_single_writer(&acks).is_err());
    }

    #[test]
    fn a_write_accepted_while_another_member_was_writable_fails() {
        let t = Instant::now();
        let acks = vec![ack("a", 0, 5, t), ack("b", 50, 70, t), ack("a", 60, 65, t)];
        assert!(check_single_writer(&acks).is_err());
    }

    #[test]
    fn overlapping_writes_fail() {
        let t = Instant::now();
        let acks = vec![ack("a", 0, 100, t), ack("b", 50, 60, t)];
        assert!(check_single_writer(&acks).is_err());
    }
}
