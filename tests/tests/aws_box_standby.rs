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

/// A switchover between AWS clusters declared in one commit: `orders` (the primary cluster)
/// gets `standby: {from: orders-dr}` and `orders-dr` loses its `standby`. Under a write load on
/// `orders`' primary, `spilo apply` steps `orders` down, promotes `orders-dr` once it has
/// received `orders`' last position, and `orders` follows `orders-dr` by its DNS name (its own
/// load balancer stand-in): every acknowledged write is on `orders-dr`, and the time without
/// writes is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_swaps_the_standby_is_a_switchover_between_aws_clusters() -> anyhow::Result<()>
{
    if let Some(as_root) =
        rerun_as_root("a_commit_that_swaps_the_standby_is_a_switchover_between_aws_clusters")
    {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = switchover(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

/// `orders`, and `orders-dr` as a standby of `from` (or none), sharing `orders`' secrets.
fn pair_files(b: &AwsBox, orders_from: Option<&str>, dr_from: Option<&str>) -> (String, String) {
    let with = |text: String, from: Option<&str>| match from {
        Some(from) => text.replace(
            "  backup: {bucket: spilo-wal}\n",
            &format!("  standby: {{from: {from}}}\n  backup: {{bucket: spilo-wal}}\n"),
        ),
        None => text,
    };
    let orders = with(b.cluster_file("orders", 1), orders_from);
    let dr = with(
        b.cluster_file("orders-dr", 1)
            .replace("/spilo/orders-dr/", "/spilo/orders/"),
        dr_from,
    );
    (orders, dr)
}

async fn switchover(b: &mut AwsBox) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    b.serve_zone()?;
    let (orders, dr) = pair_files(b, None, Some("orders"));
    b.repo
        .commit_files(&[("orders", Some(&orders)), ("orders-dr", Some(&dr))])?;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    let (orders_ip, dr_ip) = boot_pair(b).await?;

    // A client writes to orders' primary, one row per commit, until told to stop.
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop, dsn) = (acked.clone(), stop.clone(), b.dsn(&orders_ip));
        tokio::spawn(async move {
            let mut next = 1000;
            let mut conn = None;
            let mut pace = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pace.tick().await;
                if conn.is_none() {
                    conn = connect_dsn(&dsn).await.ok();
                }
                let Some(c) = &conn else { continue };
                match c.execute("INSERT INTO t VALUES ($1)", &[&next]).await {
                    Ok(_) => {
                        if let Ok(mut a) = acked.lock() {
                            a.push(next);
                        }
                        next += 1;
                    }
                    Err(_) => conn = None,
                }
            }
        })
    };
    wait::until("the writer's first commits", BOOT, || async {
        (acked.lock().ok()?.len() >= 10).then_some(())
    })
    .await?;

    // One commit swaps them; the plan says so, the apply does it.
    let (orders, dr) = pair_files(b, Some("orders-dr"), None);
    b.repo
        .commit_files(&[("orders", Some(&orders)), ("orders-dr", Some(&dr))])?;
    let plan = b.spilo(&["plan"]);
    assert!(
        plan.stdout
            .contains("switchover between clusters: orders-dr is promoted once its leader has received the end of the WAL of orders"),
        "{plan}"
    );
    let apply = b.spilo(&["apply", "--auto-approve"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await?;
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    eprintln!("{}", apply.stdout);
    assert!(
        apply.stdout.contains(
            "~ switchover from cluster orders to cluster orders-dr: orders stepped down at "
        ) && apply.stdout.contains("no writes for "),
        "{apply}"
    );

    // The next plan of the same commit changes nothing: what the switchover wrote is what the
    // files say.
    let again = b.spilo(&["plan"]);
    assert_eq!(again.code, 0, "no changes: {again}");

    // orders-dr is the primary cluster with every acknowledged write.
    let on_dr = wait::until("orders-dr's leader to take writes", BOOT, || async {
        let dr = connect_dsn(&b.dsn(&dr_ip)).await.ok()?;
        dr.batch_execute("INSERT INTO t VALUES (-1)").await.ok()?;
        Some(dr)
    })
    .await?;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let present: Vec<i32> = on_dr
        .query("SELECT n FROM t WHERE n >= 1000 ORDER BY n", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|n| !present.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged on orders, missing on orders-dr: {lost:?}"
    );
    assert!(acked.len() >= 10, "{} writes acknowledged", acked.len());

    // orders follows orders-dr by its name, takes no writes, and receives its commits.
    wait::until(
        "orders: a standby leader streaming from orders-dr",
        BOOT,
        || async {
            let all = b.statuses().await;
            let me = all.first()?.as_ref()?;
            (me.is_leader && me.member.running_as(spilo_model::MemberRole::Replica) && me.streaming)
                .then_some(())
        },
    )
    .await?;
    let c = connect_dsn(&b.dsn(&orders_ip)).await?;
    let upstream: String = c
        .query_one("SELECT sender_host FROM pg_stat_wal_receiver", &[])
        .await?
        .get(0);
    assert_eq!(upstream, "orders-dr.db.example.com");
    assert!(
        c.batch_execute("INSERT INTO t VALUES (-2)").await.is_err(),
        "orders is a standby cluster now"
    );
    on_dr.batch_execute("INSERT INTO t VALUES (-3)").await?;
    wait::until("orders receives orders-dr's commit", BOOT, || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM t WHERE n = -3", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await?;
    Ok(())
}

/// `spilo promote-standby --source-unreachable` on AWS: `orders-dr` (on an etcd of its own) is
/// promoted while `orders`' etcd does not answer. `orders`' config lists `orders-dr` as its
/// standby cluster, reached through its load balancer (written by `spilo apply` from the
/// files), so when its etcd answers again, `orders` finds `orders-dr` running as primary and
/// follows it: no member of `orders` is seen as primary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_promoted_over_an_unreachable_source_on_aws_fences_it() -> anyhow::Result<()> {
    if let Some(as_root) =
        rerun_as_root("a_standby_promoted_over_an_unreachable_source_on_aws_fences_it")
    {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = fenced(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

async fn fenced(b: &mut AwsBox) -> anyhow::Result<()> {
    b.serve_zone()?;
    let dir = b.dir.path().join("etcd-dr");
    std::fs::create_dir_all(&dir)?;
    let dr_etcd = spilo_e2e::etcd::Etcd::start_on(&dir, &b.host).await?;
    let (orders, dr) = pair_files(b, None, Some("orders"));
    let dr = dr.replace(&b.etcd.client_addr, &dr_etcd.client_addr);
    anyhow::ensure!(dr.contains(&dr_etcd.client_addr), "{dr}");
    b.repo
        .commit_files(&[("orders", Some(&orders)), ("orders-dr", Some(&dr))])?;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    let (orders_ip, dr_ip) = boot_pair(b).await?;

    // orders' governors ask orders-dr through its load balancer's name.
    let (config, _) = b
        .etcd
        .get("/service/orders/config")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no config of orders"))?;
    let config: spilo_model::ClusterConfig = serde_json::from_str(&config)?;
    assert_eq!(config.downstream.len(), 1, "{config:?}");
    assert_eq!(
        config.downstream[0].primary,
        ["orders-dr.db.example.com:5432"]
    );

    // orders' region is gone, as far as etcd is concerned: its primary stops taking writes
    // within its TTL.
    b.etcd.freeze(true);
    let orders_dsn = b.dsn(&orders_ip);
    let r = wait::until("orders' primary to stop taking writes", BOOT, || async {
        // Stopped, or running read-only: no writes either way.
        let writable = async {
            let c = connect_dsn(&orders_dsn).await.ok()?;
            let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
            Some(!row.get::<_, bool>(0))
        };
        (writable.await != Some(true)).then_some(())
    })
    .await;
    if let Err(e) = r {
        b.etcd.freeze(false);
        return Err(e);
    }
    let spilo = spilo_e2e::proc::target_dir()?.join("spilo");
    let promote = std::process::Command::new(&spilo)
        .args(["promote-standby", "orders-dr", "--source-unreachable"])
        .args(["--etcd", &dr_etcd.url(), "--source-etcd", &b.etcd.url()])
        .args(["--source-ttl", "30s", "--timeout", "240s"])
        .output()?;
    let said = String::from_utf8_lossy(&promote.stdout).into_owned()
        + &String::from_utf8_lossy(&promote.stderr);
    if !promote.status.success() {
        b.etcd.freeze(false);
        anyhow::bail!("spilo promote-standby: {said}");
    }
    assert!(said.contains("~ cluster orders-dr: promoted"), "{said}");
    // The region comes back once orders-dr's load balancer routes to its new primary (its
    // health check's interval times its healthy threshold after the promotion): asked before,
    // it answers nothing, and orders would take writes again (measured: it did).
    let dr_id = b.instances[1].id.clone();
    let routed = wait::until("orders-dr's load balancer to route to it", BOOT, || async {
        (b.in_service_of("spilo-orders-dr").ok()? == [dr_id.clone()]).then_some(())
    })
    .await;
    b.etcd.freeze(false);
    routed?;
    let dr = connect_dsn(&b.dsn(&dr_ip)).await?;
    dr.batch_execute("INSERT INTO t VALUES (-11)").await?;

    // orders' etcd answers again: its members find orders-dr running as primary through its
    // load balancer and follow it; none of them runs as primary meanwhile.
    let c = wait::until(
        "orders: a standby leader with orders-dr's commit",
        BOOT,
        || async {
            let all = b.statuses().await;
            let me = all.first()?.as_ref()?;
            assert!(
                !me.member.running_as(spilo_model::MemberRole::Primary),
                "orders runs as primary again: {me:?}"
            );
            let c = connect_dsn(&orders_dsn).await.ok()?;
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(), count(*) FROM t WHERE n = -11",
                    &[],
                )
                .await
                .ok()?;
            assert!(
                row.get::<_, bool>(0),
                "orders' PostgreSQL takes writes again"
            );
            let n: i64 = row.get(1);
            (me.is_leader && me.streaming && n == 1).then_some(c)
        },
    )
    .await?;
    let upstream: String = c
        .query_one("SELECT sender_host FROM pg_stat_wal_receiver", &[])
        .await?
        .get(0);
    assert_eq!(upstream, "orders-dr.db.example.com");
    Ok(())
}

/// Boots `orders` (a primary with 100 rows in `t`), then `orders-dr`, until it is a standby
/// leader streaming them; their instances' addresses.
async fn boot_pair(b: &mut AwsBox) -> anyhow::Result<(String, String)> {
    b.launch("spilo-orders").await?;
    let at = wait::until("orders: a primary", BOOT, || async {
        primary(&b.statuses().await)
    })
    .await?;
    // Each member publishes its data directory's major version (what a plan compares with
    // the file's postgresql.version).
    let version = b.statuses().await[at]
        .as_ref()
        .and_then(|s| s.member.postgres_version);
    assert_eq!(version, Some(15));
    let orders_ip = b.instances[0].ip.clone();
    let c = connect_dsn(&b.dsn(&orders_ip)).await?;
    c.batch_execute(
        "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    )
    .await?;
    b.launch("spilo-orders-dr").await?;
    let dr_ip = b.instances[1].ip.clone();
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
            let me = all.get(1)?.as_ref()?;
            let standby_leader = me.is_leader
                && me.member.running_as(spilo_model::MemberRole::Replica)
                && me.streaming;
            (standby_leader && count(b.dsn(&dr_ip)).await? == 100).then_some(())
        },
    )
    .await?;

    Ok((orders_ip, dr_ip))
}
