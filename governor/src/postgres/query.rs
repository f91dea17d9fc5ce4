//! SQL against PostgreSQL: the local instance through its private Unix socket, and the
//! leader over TCP when a rejoin needs it. Every call is bounded by the operation timeout, so
//! a hung server costs the HA loop at most that long; a `CHECKPOINT` by its own, longer one.

use spilo_model::{Lsn, TimelineId, WalPositions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, Config, NoTls};

/// How long a `CHECKPOINT` may take (a switchover's, a rewind's) before the step fails.
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);

/// A PostgreSQL failure.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The server did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    /// A `CHECKPOINT` did not finish within its own deadline.
    #[error("CHECKPOINT did not finish within {0:?} (its own deadline)")]
    CheckpointTimeout(Duration),
    /// Connecting or the query failed.
    #[error("PostgreSQL: {0}")]
    Pg(#[from] tokio_postgres::Error),
    /// The server answered something unexpected.
    #[error("unexpected answer from PostgreSQL: {0}")]
    Unexpected(String),
}

/// What the status query reports about a running server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStatus {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The current timeline.
    pub timeline: Option<TimelineId>,
    /// WAL positions.
    pub wal: WalPositions,
    /// Whether the WAL receiver is streaming.
    pub streaming: bool,
    /// Whether a changed setting waits for a restart.
    pub pending_restart: bool,
}

/// A lazily (re)connected session.
pub struct Session {
    config: Config,
    timeout: Duration,
    client: Option<Client>,
    connection: Option<tokio::task::JoinHandle<()>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Session {
    /// A session to the local server through the socket in `socket_dir`.
    pub fn local(socket_dir: PathBuf, port: u16, user: &str, timeout: Duration) -> Self {
        let mut config = Config::new();
        config
            .host_path(socket_dir)
            .port(port)
            .user(user)
            .dbname("postgres")
            .application_name("spilo-governor")
            .connect_timeout(timeout);
        Self::new(config, timeout)
    }

    /// A session to a remote server over TCP with a password (with `read_write`, the first of
    /// `endpoints` that accepts writes); over TLS (required, the server checked against the CA)
    /// with `tls`.
    pub fn remote(
        endpoints: &[(String, u16)],
        read_write: bool,
        user: &str,
        password: &str,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let mut config = Config::new();
        if tls.is_some() {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        for (host, port) in endpoints {
            config.host(host).port(*port);
        }
        if read_write {
            config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        }
        config
            .user(user)
            .password(password)
            .dbname("postgres")
            .application_name("spilo-governor")
            .connect_timeout(timeout);
        let mut s = Self::new(config, timeout);
        s.tls = tls;
        s
    }

    fn new(config: Config, timeout: Duration) -> Self {
        Self {
            config,
            timeout,
            client: None,
            connection: None,
            tls: None,
        }
    }

    /// Drops the connection; the next call reconnects.
    pub fn reset(&mut self) {
        self.client = None;
        if let Some(c) = self.connection.take() {
            c.abort();
        }
    }

    async fn client(&mut self) -> Result<&Client, SqlError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.reset();
        }
        if self.client.is_none() {
            let (client, handle) = match &self.tls {
                Some(tls) => {
                    let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                    let (client, connection) =
                        bounded(self.timeout, self.config.connect(connector)).await?;
                    (
                        client,
                        tokio::spawn(async move {
                            let _ = connection.await;
                        }),
                    )
                }
                None => {
                    let (client, connection) =
                        bounded(self.timeout, self.config.connect(NoTls)).await?;
                    (
                        client,
                        tokio::spawn(async move {
                            let _ = connection.await;
                        }),
                    )
                }
            };
            self.connection = Some(handle);
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| SqlError::Unexpected("no connection".into()))
    }

    async fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, SqlError> {
        let timeout = self.timeout;
        let client = self.client().await?;
        let r = bounded(timeout, f(client)).await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// Runs statements that return nothing.
    pub async fn execute(&mut self, sql: &str) -> Result<(), SqlError> {
        self.run(async |c| c.batch_execute(sql).await).await
    }

    /// `CHECKPOINT`, with a deadline of its own ([`CHECKPOINT_TIMEOUT`]): on a large, busy
    /// primary it writes every dirty buffer, which takes far longer than the operation timeout
    /// (`retry_timeout`) other calls get.
    pub async fn checkpoint(&mut self) -> Result<(), SqlError> {
        let client = self.client().await?;
        let r = bounded(CHECKPOINT_TIMEOUT, client.batch_execute("CHECKPOINT")).await;
        if r.is_err() {
            self.reset();
        }
        r.map_err(|e| match e {
            SqlError::Timeout(t) => SqlError::CheckpointTimeout(t),
            other => other,
        })
    }

    /// Role, timeline and WAL positions.
    ///
    /// A replica's timeline is derived from its WAL position and the newest timeline history
    /// file in its `pg_wal`: PostgreSQL 15 has no SQL function for the replay timeline, and the
    /// checkpoint's timeline lags behind until the next restartpoint.
    pub async fn status(&mut self) -> Result<ServerStatus, SqlError> {
        const Q: &str = "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
             pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
             CASE WHEN pg_is_in_recovery() THEN NULL \
                  ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
             (SELECT status FROM pg_stat_wal_receiver), \
             (SELECT received_tli FROM pg_stat_wal_receiver), \
             CASE WHEN pg_is_in_recovery() THEN \
               (SELECT name || E'\\n' || pg_read_file('pg_wal/' || name) FROM pg_ls_waldir() \
                WHERE name ~ '^[0-9A-F]{8}\\.history$' ORDER BY name DESC LIMIT 1) END, \
             EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart)";
        let row = self.run(async |c| c.query_one(Q, &[]).await).await?;
        let lsn = |i: usize| -> Result<Option<Lsn>, SqlError> {
            let s: Option<String> = row.try_get(i)?;
            s.map(|s| s.parse().map_err(|e| SqlError::Unexpected(format!("{e}"))))
                .transpose()
        };
        let in_recovery: bool = row.try_get(0)?;
        let wal = WalPositions {
            write: lsn(1)?,
            receive: lsn(2)?,
            replay: lsn(3)?,
        };
        let primary_tl: Option<i32> = row.try_get(4)?;
        let receiver: Option<String> = row.try_get(5)?;
        let received_tl: Option<i32> = row.try_get(6)?;
        let history: Option<String> = row.try_get(7)?;
        let pending_restart: bool = row.try_get(8)?;
        let streaming = receiver.as_deref() == Some("streaming");
        let timeline = if in_recovery {
            let from_history = timeline_of(history.as_deref(), wal.best().unwrap_or_default());
            let received = received_tl
                .filter(|_| streaming)
                .and_then(|t| u32::try_from(t).ok())
                .map(TimelineId);
            Some(from_history.max(received.unwrap_or_default()))
        } else {
            primary_tl
                .and_then(|t| u32::try_from(t).ok())
                .map(TimelineId)
        };
        Ok(ServerStatus {
            in_recovery,
            timeline,
            wal,
            streaming,
            pending_restart,
        })
    }

    /// The database system identifier.
    pub async fn system_identifier(&mut self) -> Result<String, SqlError> {
        let row = self
            .run(async |c| {
                c.query_one(
                    "SELECT system_identifier::text FROM pg_control_system()",
                    &[],
                )
                .await
            })
            .await?;
        Ok(row.try_get(0)?)
    }

    /// `pg_promote(wait => false)`, then `pg_is_in_recovery()` every 10 ms (PostgreSQL's own
    /// wait looks every 100 ms, time a switchover's clients wait for); returns whether the
    /// promotion finished within `wait`.
    pub async fn promote(&mut self, wait: Duration) -> Result<bool, SqlError> {
        let deadline = std::time::Instant::now() + wait;
        let row = self
            .run(async |c| c.query_one("SELECT pg_promote(false)", &[]).await)
            .await?;
        if !row.try_get::<_, bool>(0)? {
            return Ok(false);
        }
        loop {
            let row = self
                .run(async |c| c.query_one("SELECT pg_is_in_recovery()", &[]).await)
                .await?;
            if !row.try_get::<_, bool>(0)? {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Physical replication slots and whether each is in use.
    pub async fn physical_slots(&mut self) -> Result<Vec<(String, bool)>, SqlError> {
        let rows = self
            .run(async |c| {
                c.query(
                    "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
                    &[],
                )
                .await
            })
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Creates a physical slot that reserves WAL from now on.
    pub async fn create_physical_slot(&mut self, name: &str) -> Result<(), SqlError> {
        self.run(async |c| {
            c.execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&name],
            )
            .await
        })
        .await?;
        Ok(())
    }

    /// Drops a slot.
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), SqlError> {
        self.run(async |c| {
            c.execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
        })
        .await?;
        Ok(())
    }

    /// Whether the standby `application_name` streams from this primary right now.
    pub async fn streams_to(&mut self, application_name: &str) -> Result<bool, SqlError> {
        let row = self
            .run(async |c| {
                c.query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming')",
                    &[&application_name],
                )
                .await
            })
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Whether a walsender runs as a synchronous one (`sync_state` `sync` or `quorum`).
    pub async fn has_sync_walsender(&mut self) -> Result<bool, SqlError> {
        let row = self
            .run(async |c| {
                c.query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_replication \
                     WHERE sync_state IN ('sync', 'quorum'))",
                    &[],
                )
                .await
            })
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The standbys streaming from this primary (`pg_stat_replication`) and its own flush
    /// position.
    pub async fn replication(&mut self) -> Result<(Vec<crate::ha::sync::Standby>, Lsn), SqlError> {
        let rows = self
            .run(async |c| {
                c.query(
                    "SELECT application_name, state = 'streaming', sync_state = 'sync', \
                     flush_lsn::text, sync_priority > 0 FROM pg_stat_replication",
                    &[],
                )
                .await
            })
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let name: String = r.try_get(0)?;
            let Ok(name) = spilo_model::MemberName::new(&name) else {
                continue;
            };
            let flush: Option<String> = r.try_get(3)?;
            out.push(crate::ha::sync::Standby {
                name,
                streaming: r.try_get::<_, Option<bool>>(1)?.unwrap_or(false),
                sync: r.try_get::<_, Option<bool>>(2)?.unwrap_or(false),
                named: r.try_get::<_, Option<bool>>(4)?.unwrap_or(false),
                flush: flush.and_then(|f| f.parse().ok()),
            });
        }
        let row = self
            .run(async |c| {
                c.query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
                    .await
            })
            .await?;
        let now: String = row.try_get(0)?;
        let now = now
            .parse()
            .map_err(|e| SqlError::Unexpected(format!("{e}")))?;
        Ok((out, now))
    }

    /// On a primary: switches to a new WAL file and returns the position before the switch
    /// and the file holding it. `None` on a replica.
    pub async fn current_lsn_after_switch(&mut self) -> Result<Option<(String, String)>, SqlError> {
        let row = self
            .run(async |c| {
                c.query_one(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
                    &[],
                )
                .await
            })
            .await?;
        let Some(lsn): Option<String> = row.try_get(0)? else {
            return Ok(None);
        };
        let row = self
            .run(async |c| {
                c.query_one(
                    // The file holding the last byte before `lsn`: at a segment's first
                    // byte, the one before (what PostgreSQL 15's pg_walfile_name answers
                    // for the boundary itself, while 16 and later name the next file,
                    // which may never fill).
                    "SELECT pg_walfile_name($1::text::pg_lsn - 1), pg_switch_wal()::text",
                    &[&lsn],
                )
                .await
            })
            .await?;
        Ok(Some((lsn, row.try_get(0)?)))
    }

    /// After a recovery: the last position replayed and the commit time of the last
    /// transaction replayed (both kept after the promotion).
    pub async fn recovered_point(&mut self) -> Result<(Option<String>, Option<String>), SqlError> {
        let row = self
            .run(async |c| {
                c.query_one(
                    "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()::text",
                    &[],
                )
                .await
            })
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// A replica's replay position.
    pub async fn replay_lsn(&mut self) -> Result<Option<String>, SqlError> {
        let row = self
            .run(async |c| {
                c.query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                    .await
            })
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Whether every WAL file up to `file` is archived: none of them waits as `.ready`, and
    /// the archiver got at least that far or marked that segment done. Also returns the last
    /// archived name.
    pub async fn archived_through(
        &mut self,
        file: &str,
    ) -> Result<(bool, Option<String>), SqlError> {
        // The last archived file may be an older segment's `.backup` label (a pg_basebackup
        // that ended meanwhile): the segment's own `.done` status counts as well.
        const Q: &str = "SELECT NOT EXISTS (SELECT 1 FROM pg_ls_archive_statusdir() \
             WHERE name LIKE '%.ready' AND substr(name, 1, 24) <= $1) \
             AND (COALESCE(substr(last_archived_wal, 1, 24) >= $1, false) \
                  OR EXISTS (SELECT 1 FROM pg_ls_archive_statusdir() WHERE name = $1 || '.done')), \
             last_archived_wal FROM pg_stat_archiver";
        let row = self.run(async |c| c.query_one(Q, &[&file]).await).await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// WAL archiving on this primary: backlog, counters and lag.
    pub async fn archive_status(&mut self) -> Result<spilo_model::ArchiveStatus, SqlError> {
        const Q: &str = "SELECT \
             (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), \
             archived_count, failed_count, last_archived_wal, pg_current_wal_lsn()::text, \
             (SELECT max(substr(name, 1, 24)) FROM pg_ls_archive_statusdir() \
              WHERE name ~ '^[0-9A-F]{24}[.]done$') \
             FROM pg_stat_archiver";
        let row = self.run(async |c| c.query_one(Q, &[]).await).await?;
        let last: Option<String> = row.try_get(3)?;
        let current: String = row.try_get(4)?;
        let current: Option<Lsn> = current.parse().ok();
        // The last archived file may be a `.backup` or `.history` file; the newest archived
        // segment still in `pg_wal` then tells how far archiving got.
        let last_done: Option<String> = row.try_get(5)?;
        let archived_through = [last.as_deref(), last_done.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(segment_end)
            .max();
        let lag_bytes = match (archived_through, current) {
            (Some(end), Some(now)) => Some(now.bytes_ahead_of(end)),
            _ => None,
        };
        Ok(spilo_model::ArchiveStatus {
            backlog: u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0),
            archived: u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
            failed: u64::try_from(row.try_get::<_, i64>(2)?).unwrap_or(0),
            last_archived: last,
            lag_bytes,
            backups: None,
        })
    }

    /// A replica's last received and flushed WAL position (kept after its upstream stops).
    pub async fn received_lsn(&mut self) -> Result<Option<Lsn>, SqlError> {
        let row = self
            .run(async |c| {
                c.query_one("SELECT pg_last_wal_receive_lsn()::text", &[])
                    .await
            })
            .await?;
        let s: Option<String> = row.try_get(0)?;
        s.map(|s| s.parse().map_err(|e| SqlError::Unexpected(format!("{e}"))))
            .transpose()
    }

    /// Where timeline `tl` branched off its parent, from its `.history` file.
    pub async fn timeline_switch(&mut self, tl: TimelineId) -> Result<Option<Lsn>, SqlError> {
        let file = format!("pg_wal/{:08X}.history", tl.0);
        let row = self
            .run(async |c| {
                c.query_one("SELECT pg_read_file($1, 0, 1000000, true)", &[&file])
                    .await
            })
            .await?;
        let text: Option<String> = row.try_get(0)?;
        Ok(text.as_deref().and_then(last_switch_point))
    }
}

/// Where a 16 MiB WAL segment named `TTTTTTTTLLLLLLLLSSSSSSSS` ends; `None` for other names.
pub fn segment_end(name: &str) -> Option<Lsn> {
    if name.len() != 24 {
        return None;
    }
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    Some(Lsn((log << 32) + (seg + 1) * (16 << 20)))
}

/// The switch point on the last line of a timeline history file
/// (`<parent tli>\t<switch lsn>\t<reason>`).
pub fn last_switch_point(history: &str) -> Option<Lsn> {
    history
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The timeline holding WAL position `lsn`, given the newest history file in `pg_wal` as
/// `"<file name>\n<contents>"` (none: timeline 1). Each history line names a parent timeline
/// and where it ended; a position at or before a switch point belongs to that parent.
pub fn timeline_of(newest_history: Option<&str>, lsn: Lsn) -> TimelineId {
    let Some(text) = newest_history else {
        return TimelineId(1);
    };
    let mut lines = text.lines();
    let latest = lines
        .next()
        .and_then(|name| u32::from_str_radix(name.get(..8)?, 16).ok())
        .unwrap_or(1);
    for line in lines {
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(switch)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(tli), Ok(switch)) = (tli.parse::<u32>(), switch.parse::<Lsn>()) else {
            continue;
        };
        if lsn <= switch {
            return TimelineId(tli);
        }
    }
    TimelineId(latest)
}

/// Quotes a string literal for SQL (standard_conforming_strings on).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes an identifier for SQL.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, SqlError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(SqlError::from),
        Err(_) => Err(SqlError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_name_gives_where_it_ends() {
        assert_eq!(
            segment_end("000000010000000000000001"),
            Some(Lsn(0x2000000))
        );
        assert_eq!(
            segment_end("0000000200000001000000FF"),
            Some(Lsn(0x2_0000_0000))
        );
        assert_eq!(segment_end("00000002.history"), None);
    }

    #[test]
    fn reads_the_switch_point_of_the_newest_timeline() {
        let h = "1\t0/3000060\tno recovery target specified\n\n2\t0/5000100\tno recovery target specified\n";
        assert_eq!(last_switch_point(h), Some(Lsn(0x5000100)));
        assert_eq!(last_switch_point(""), None);
    }

    #[test]
    fn a_position_maps_to_the_timeline_that_holds_it() {
        let h = "00000003.history\n1\t0/3000060\tno recovery target specified\n\n2\t0/5000100\tx\n";
        assert_eq!(timeline_of(Some(h), Lsn(0x2000000)), TimelineId(1));
        assert_eq!(timeline_of(Some(h), Lsn(0x3000060)), TimelineId(1));
        assert_eq!(timeline_of(Some(h), Lsn(0x4000000)), TimelineId(2));
        assert_eq!(timeline_of(Some(h), Lsn(0x6000000)), TimelineId(3));
        assert_eq!(timeline_of(None, Lsn(0x6000000)), TimelineId(1));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
