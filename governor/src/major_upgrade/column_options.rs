//! Column options (`pg_attribute.attoptions`) the new version does not take. `pg_upgrade
//! --check` does not look at them, and the real run fails restoring the schema at the first
//! one, after the old server stopped: Debian's PostgreSQL 15.20 sets `pg_attver` on every
//! column it creates, which the PostgreSQL 18.6 build here does not know (measured: "ERROR:
//! unrecognized parameter \"pg_attver\"" restoring a table made on 15.20). The check asks the
//! running old server, in every database that takes connections.

use super::UpgradeError;
use crate::config::Loaded;
use std::time::Duration;
use tokio_postgres::NoTls;

/// The column options PostgreSQL 15 to 18 take (`ALTER TABLE ... ALTER COLUMN ... SET`).
pub const TAKEN: [&str; 2] = ["n_distinct", "n_distinct_inherited"];

async fn client(loaded: &Loaded, db: &str) -> Result<tokio_postgres::Client, UpgradeError> {
    let cfg = &loaded.config;
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(cfg.run_dir())
        .port(cfg.postgresql.listen.port())
        .user(&cfg.postgresql.authentication.superuser.username)
        .password(&loaded.superuser_password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10))
        .options("-c statement_timeout=300s")
        .connect(NoTls)
        .await
        .map_err(|e| UpgradeError::State(format!("ask the running server (database {db}): {e}")))?;
    tokio::spawn(conn);
    Ok(client)
}

fn sql(db: &str) -> impl FnOnce(tokio_postgres::Error) -> UpgradeError + '_ {
    move |e| UpgradeError::State(format!("ask the running server (database {db}): {e}"))
}

/// One line per database and option the new version (`version`, as `pg_config` names it)
/// would not take.
pub async fn blockers(loaded: &Loaded, version: &str) -> Result<Vec<String>, UpgradeError> {
    let databases: Vec<String> = client(loaded, "postgres")
        .await?
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY 1",
            &[],
        )
        .await
        .map_err(sql("postgres"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for db in &databases {
        let rows = client(loaded, db)
            .await?
            .query(
                "SELECT split_part(o, '=', 1), count(*) FROM pg_attribute, \
                 unnest(attoptions) AS o GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .map_err(sql(db))?;
        for r in rows {
            let (option, columns): (String, i64) = (r.get(0), r.get(1));
            if !TAKEN.contains(&option.as_str()) {
                out.push(unknown(db, &option, columns, version));
            }
        }
    }
    Ok(out)
}

fn unknown(db: &str, option: &str, columns: i64, version: &str) -> String {
    format!(
        "database {db}: {columns} column(s) carry the option {option}, which {version} does \
         not take: pg_upgrade would fail restoring the schema after the old server stopped \
         (the old server's build set it; an old version's release that does not, or a new \
         version's that takes it, is needed)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_the_new_version_does_not_take_is_named_with_its_database() {
        assert_eq!(
            unknown("orders", "pg_attver", 12, "PostgreSQL 18.6"),
            "database orders: 12 column(s) carry the option pg_attver, which PostgreSQL 18.6 \
             does not take: pg_upgrade would fail restoring the schema after the old server \
             stopped (the old server's build set it; an old version's release that does not, \
             or a new version's that takes it, is needed)"
        );
        assert!(TAKEN.contains(&"n_distinct") && !TAKEN.contains(&"pg_attver"));
    }
}
