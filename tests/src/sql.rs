//! SQL clients of the tests: libpq-style connection strings over local members, TLS
//! connections checked against the CAs this process trusts ([`crate::tls::trust`]), and the
//! checks of what a server refuses or streams over TLS.

use crate::cluster::SUPERUSER_PASSWORD;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A multi-host libpq string over local `ports` with `target_session_attrs=read-write`.
pub fn read_write_dsn(ports: &[u16]) -> String {
    let hosts: Vec<&str> = ports.iter().map(|_| "127.0.0.1").collect();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "host={} port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres \
         target_session_attrs=read-write connect_timeout=2",
        hosts.join(","),
        ports.join(",")
    )
}

/// Connects to a local PostgreSQL port as the test superuser.
pub async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2"
    );
    connect_dsn(&dsn).await
}

/// Connects with a libpq-style connection string; the connection task ends with the client.
///
/// TLS is used whenever the server offers it (`sslmode=prefer`), and the server must then
/// chain to a CA this process trusts ([`crate::tls::trust`]) and name the host: libpq's
/// `verify-full`. `sslmode=verify-full` (tokio-postgres has no such mode) becomes `require`,
/// and `sslrootcert=<file>` is added to the trusted CAs.
pub async fn connect_dsn(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut kept = Vec::new();
    let mut cas = Vec::new();
    for part in dsn.split_whitespace() {
        match part.split_once('=') {
            Some(("sslrootcert", file)) => {
                crate::tls::trust(Path::new(file))?;
                cas.push(PathBuf::from(file));
            }
            Some(("sslmode", "verify-full" | "verify-ca")) => kept.push("sslmode=require"),
            _ => kept.push(part),
        }
    }
    let tls = if cas.is_empty() {
        crate::tls::client_config()?
    } else {
        crate::tls::client_config_for(&cas)?
    };
    connect_with(&kept.join(" "), tls).await
}

/// Connects to `host:port` as the superuser with `password` without TLS (`sslmode=disable`)
/// and returns PostgreSQL's refusal (its message); an error when it let the session in or did
/// not answer with a message.
pub async fn plaintext_refusal(host: &str, port: u16, password: &str) -> anyhow::Result<String> {
    let dsn = format!(
        "host={host} port={port} user=postgres password={password} dbname=postgres \
         sslmode=disable connect_timeout=2"
    );
    match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
        Ok(_) => anyhow::bail!("a plaintext session to {host}:{port} was let in"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .ok_or_else(|| anyhow::anyhow!("{host}:{port} refused without a message: {e}")),
    }
}

/// The replicas streaming from the primary `c` is connected to, each with whether its
/// stream is TLS (`pg_stat_ssl`).
pub async fn streams_over_tls(c: &tokio_postgres::Client) -> anyhow::Result<Vec<(String, bool)>> {
    let rows = c
        .query(
            "SELECT r.application_name, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Connects with `dsn` over TLS checked by `tls` when the server offers TLS.
pub async fn connect_with(
    dsn: &str,
    tls: rustls::ClientConfig,
) -> anyhow::Result<tokio_postgres::Client> {
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(dsn, connector),
    )
    .await??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Switches the primary `c` to a new WAL file and waits until the file holding everything
/// committed so far is archived.
pub async fn archive_everything(
    c: &tokio_postgres::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    let last: String = c
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await?
        .get(0);
    c.batch_execute("SELECT pg_switch_wal()").await?;
    crate::wait::until("the last commits to be archived", timeout, || async {
        let done: Option<String> = c
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .ok()?
            .get(0);
        done.filter(|d| *d >= last).map(|_| ())
    })
    .await
}
