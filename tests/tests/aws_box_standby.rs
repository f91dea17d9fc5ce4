//! The "AWS in a box" tier for standby clusters: `orders-dr`, a standby of `orders` declared
//! with `standby: {from: orders}`, boots from the image on its own stack, copies `orders`
//! through its DNS name (the record, the load balancer, the primary), streams from it, and
//! while it cannot reach `orders` at all replays `orders`' archive with its own instance role
//! (moto enforces the role's policies). Both declare a role with a generated password and its
//! database: `orders`' leader stores the password in SSM and creates both; `orders-dr` has
//! them through replication, with the same password. The box itself: `spilo_e2e::aws_box`.

use spilo_e2e::aws_box::{AwsBox, REGION, primary, streaming};
use spilo_e2e::privileged::rerun_as_root;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::wait;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cluster_on_aws_follows_its_source_by_name_and_by_archive() -> anyhow::Result<()>
{
    if let Some(as_root) =
        rerun_as_root("a_standby_cluster_on_aws_follows_its_source_by_name_and_by_archive")
    {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = standby(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

async fn standby(b: &mut AwsBox) -> anyhow::Result<()> {
    // The instances resolve names through the zone (the source's record to its load balancer).
    b.serve_zone()?;
    // A role with a generated password and its database: the leader of orders stores the
    // password in SSM (its instance role may write that parameter only); orders-dr, declaring
    // the same roles, has them through replication and reads the same parameter.
    let roles = "  roles:\n    app: {password: {generated: true}, flags: [createdb]}\n  \
                 databases:\n    app: {owner: app, extensions: [pgcrypto]}\n";
    let source = b.cluster_file("orders", 2) + roles;
    // The standby shares its source's replication secret and CA (validation insists), and
    // here its other secrets too (the box made those of `orders` only).
    let dr = b
        .cluster_file("orders-dr", 1)
        .replace("/spilo/orders-dr/", "/spilo/orders/")
        .replace(
            "  backup: {bucket: spilo-wal}\n",
            "  standby: {from: orders}\n  backup: {bucket: spilo-wal}\n",
        )
        + roles;
    anyhow::ensure!(dr.contains("standby: {from: orders}"), "{dr}");
    b.repo.commit("orders", Some(&source))?;
    b.repo.commit("orders-dr", Some(&dr))?;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");

    b.launch("spilo-orders").await?;
    wait::until(
        "orders: a primary and a streaming replica",
        BOOT,
        || async {
            let all = b.statuses().await;
            (primary(&all).is_some() && streaming(&all) == 1).then_some(())
        },
    )
    .await?;
    let source_ids: Vec<String> = b.instances.iter().map(|i| i.id.clone()).collect();
    let leader = primary(&b.statuses().await).ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let source_dsn = b.dsn(&b.instances[leader].ip);
    let c = connect_dsn(&source_dsn).await?;

    // The generated password, from SSM as the admin reads it; app logs in to its database
    // with it, where pgcrypto was created.
    let password = wait::until(
        "the leader to store app's generated password in SSM",
        BOOT,
        || async {
            let out = b
                .python(&["ssmget", REGION, "/spilo/orders/roles/app"])
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let value = v["value"].as_str()?.to_string();
            assert_eq!(v["type"], "SecureString", "{v}");
            Some(value)
        },
    )
    .await?;
    assert_eq!(password.len(), 36, "36 hexadecimal characters");
    let template = b
        .dsn("{ip}")
        .replace("user=postgres", "user=app")
        .replace("dbname=postgres", "dbname=app")
        .replace(
            &format!("password={}", b.setup.passwords["superuser"]),
            &format!("password={password}"),
        );
    let as_app = move |ip: &str| template.replace("{ip}", ip);
    let app = wait::until("app to log in to its database", BOOT, || async {
        let app = connect_dsn(&as_app(&b.instances[leader].ip)).await.ok()?;
        let n: i64 = app
            .query_one(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(app)
    })
    .await?;
    let createdb: bool = app
        .query_one(
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    assert!(createdb, "flags: [createdb]");

    c.batch_execute(
        "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .await?;

    b.launch("spilo-orders-dr").await?;
    let dr_ip = b
        .instances
        .iter()
        .find(|i| !source_ids.contains(&i.id))
        .map(|i| i.ip.clone())
        .ok_or_else(|| anyhow::anyhow!("no instance of orders-dr"))?;
    let dr_index = b.instances.iter().position(|i| i.ip == dr_ip).unwrap_or(0);
    let dr_dsn = b.dsn(&dr_ip);
    let count = |dsn: String| async move {
        let c = connect_dsn(&dsn).await.ok()?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .ok()?
            .get(0);
        Some(n)
    };
    wait::until(
        "orders-dr: a standby leader with the rows of orders",
        BOOT,
        || async {
            let all = b.statuses().await;
            let me = all.get(dr_index)?.as_ref()?;
            let standby_leader = me.is_leader
                && me.member.running_as(spilo_model::MemberRole::Replica)
                && me.streaming;
            (standby_leader && count(dr_dsn.clone()).await? == 1000).then_some(())
        },
    )
    .await?;
    let dr = connect_dsn(&dr_dsn).await?;
    // The same role with the same password on the standby cluster.
    let on_dr = connect_dsn(&as_app(&dr_ip)).await?;
    let me: String = on_dr.query_one("SELECT current_user", &[]).await?.get(0);
    assert_eq!(me, "app");
    let writable = dr.batch_execute("INSERT INTO t VALUES (0)").await;
    assert!(writable.is_err(), "a standby cluster takes no writes");
    let upstream: String = dr
        .query_one("SELECT sender_host FROM pg_stat_wal_receiver", &[])
        .await?
        .get(0);
    assert_eq!(
        upstream, "orders.db.example.com",
        "it follows the source by name"
    );

    // Streaming: a commit on orders reaches orders-dr.
    c.batch_execute("INSERT INTO t SELECT generate_series(1001, 1100)")
        .await?;
    wait::until("orders-dr streams the next commit", BOOT, || async {
        (count(dr_dsn.clone()).await? == 1100).then_some(())
    })
    .await?;

    // orders cannot be reached (its instances out of the load balancer, the only way to it
    // orders-dr has): the next commits reach orders-dr through orders' archive only, read with
    // orders-dr's instance role.
    for id in &source_ids {
        b.deregister(id)?;
    }
    c.batch_execute("INSERT INTO t SELECT generate_series(1101, 1200)")
        .await?;
    spilo_e2e::sql::archive_everything(&c, BOOT).await?;
    wait::until("orders-dr replays orders' archive", BOOT, || async {
        (count(dr_dsn.clone()).await? == 1200).then_some(())
    })
    .await?;
    let receiving: i64 = dr
        .query_one(
            "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(receiving, 0, "not streaming while orders is out of reach");
    Ok(())
}
