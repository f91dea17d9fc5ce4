//! The helpers of the local major upgrade's tests (`tests/tests/major_upgrade.rs`): a
//! cluster on a version, on 15 with data, the plan of a proposal, what a member runs and
//! streams, the rows, the WAL archived under a version's prefix, a restore drill of 15's
//! archive.

use crate::local::LocalRepo;
use crate::sql::connect_dsn;
use crate::{Etcd, ports, wait};
use std::path::Path;
use std::time::Duration;

/// How long a cluster may take to be ready.
pub const READY: Duration = Duration::from_secs(180);
/// How long an upgrade may take.
pub const UPGRADE: Duration = Duration::from_secs(300);

/// Cluster `name`'s file on PostgreSQL `version`, on `etcd`, archiving into a directory.
pub fn on_version(name: &str, instances: u32, base: u16, version: u32, etcd: &Etcd) -> String {
    format!(
        "{}  dcs: {{hosts: [\"{}\"]}}\n  backup: {{bucket: wal}}\n",
        LocalRepo::cluster_yaml_on(name, instances, base, version),
        etcd.client_addr
    )
}

/// `spilo plan --local` of `yaml` as cluster `name`'s file in a checkout of its own (not the
/// directory `spilo up` watches), against the clusters `repo`'s `spilo up` runs: (exit code,
/// stdout, stderr).
pub fn plan_local(
    repo: &LocalRepo,
    name: &str,
    yaml: &str,
) -> anyhow::Result<(i32, String, String)> {
    let proposal = repo.path().join("proposal");
    std::fs::create_dir_all(&proposal)?;
    std::fs::write(proposal.join(format!("{name}.yaml")), yaml)?;
    let path = proposal.to_string_lossy().into_owned();
    repo.spilo(&["plan", "--local", &path])
}

/// A restore drill of the archive `config` names (`governor verify-backup`, as the cluster's
/// user): the newest base backup and all the WAL after it, checked to hold every id of
/// `ids` in table `w`. Its report; an error when it failed.
pub fn restore_15(repo: &LocalRepo, config: &Path, ids: &[String]) -> anyhow::Result<String> {
    let run_as = crate::proc::RunAs::detect()?;
    run_as.own(config)?;
    let scratch = repo.state().join("alpha/drill-15");
    std::fs::create_dir_all(&scratch)?;
    run_as.own(&scratch)?;
    let sql = format!(
        "SELECT count(*) = {} FROM w WHERE id IN ({})",
        ids.len(),
        ids.join(",")
    );
    let out = run_as
        .command(&repo.state().join("alpha/bin/governor"))
        .arg("verify-backup")
        .arg("--config")
        .arg(config)
        .arg("--scratch")
        .arg(&scratch)
        .arg("--sql")
        .arg(&sql)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "verify-backup failed:\n{text}");
    Ok(text)
}

/// Cluster `name` of `instances` members on 15 (`spilo up` started with `env`), ready and
/// streaming, with `sql` run on its primary: (its port block, the primary's connection
/// string, its system identifier).
pub async fn on_15(
    repo: &mut LocalRepo,
    etcd: &Etcd,
    (name, instances): (&str, u32),
    env: &[(&str, &str)],
    sql: &str,
) -> anyhow::Result<(u16, String, i64)> {
    on_15_with(repo, etcd, (name, instances), env, sql, |f| f).await
}

/// [`on_15`] with the cluster file edited by `edit`.
pub async fn on_15_with(
    repo: &mut LocalRepo,
    etcd: &Etcd,
    (name, instances): (&str, u32),
    env: &[(&str, &str)],
    sql: &str,
    edit: fn(String) -> String,
) -> anyhow::Result<(u16, String, i64)> {
    let base = ports::free_block(30);
    repo.write(
        &format!("{name}.yaml"),
        &edit(on_version(name, instances, base, 15, etcd)),
    )?;
    repo.up_env(&[], env)?;
    repo.wait_printed(&format!("cluster {name} is ready"), READY)
        .await?;
    let primary = repo.plain_dsn(name, base)?;
    streaming(&primary, 15, i64::from(instances) - 1).await?;
    connect_dsn(&primary).await?.batch_execute(sql).await?;
    let sysid = system_id(&primary).await?;
    Ok((base, primary, sysid))
}

/// The system identifier of the server `dsn` reaches.
pub async fn system_id(dsn: &str) -> anyhow::Result<i64> {
    let c = connect_dsn(dsn).await?;
    Ok(
        c.query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await?
            .get(0),
    )
}

/// Waits until pg_upgrade runs on one of cluster `name`'s two members (its output directory
/// in the new cluster).
pub async fn pg_upgrade_running(repo: &LocalRepo, name: &str) -> anyhow::Result<()> {
    let running = |i: usize| {
        repo.state().join(format!(
            "{name}/members/{name}-{i}/data.upgrade/pg_upgrade_output.d"
        ))
    };
    wait::until("pg_upgrade to run", UPGRADE, || async {
        (running(0).exists() || running(1).exists()).then_some(())
    })
    .await
}

/// `server_version_num`'s major version through `dsn`, once a session opens.
pub async fn major(dsn: &str) -> anyhow::Result<u32> {
    let c = wait::until("a session", READY, || async { connect_dsn(dsn).await.ok() }).await?;
    let v: String = c.query_one("SHOW server_version_num", &[]).await?.get(0);
    Ok(v.parse::<u32>()? / 10_000)
}

/// Waits until the primary behind `dsn` runs `version` with `replicas` streaming replicas.
pub async fn streaming(dsn: &str, version: u32, replicas: i64) -> anyhow::Result<()> {
    wait::until(
        &format!("PostgreSQL {version} with {replicas} streaming replicas"),
        READY,
        || async {
            let c = connect_dsn(dsn).await.ok()?;
            let v: String = c
                .query_one("SHOW server_version_num", &[])
                .await
                .ok()?
                .get(0);
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await
                .ok()?
                .get(0);
            (v.parse::<u32>().ok()? / 10_000 == version && n == replicas).then_some(())
        },
    )
    .await
}

/// The number of rows in `t` through `dsn`.
pub async fn rows(dsn: &str) -> anyhow::Result<i64> {
    let c = wait::until("a session", READY, || async { connect_dsn(dsn).await.ok() }).await?;
    Ok(c.query_one("SELECT count(*) FROM t", &[]).await?.get(0))
}

/// Files archived under `.../wal/<version>/` in a local cluster's bucket directory.
pub fn archived(bucket: &Path, version: u32) -> usize {
    fn walk(dir: &Path, inside: bool, version: &str, n: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let under = inside
                || (p.file_name().is_some_and(|f| f == version)
                    && dir.file_name().is_some_and(|f| f == "wal"));
            if p.is_dir() {
                walk(&p, under, version, n);
            } else if inside {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(bucket, false, &version.to_string(), &mut n);
    n
}
