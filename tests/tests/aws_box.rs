//! The "AWS in a box" tier: one cluster file followed from `spilo apply` to a working
//! database on instances booted from the spilo image (see `spilo_e2e::aws_box`). Runs as root;
//! as a normal user each test runs itself again through `sudo -n`.

use spilo_e2e::aws_box::{AwsBox, REGION, primary, streaming};
use spilo_e2e::etcd::{leader_name, voters};
use spilo_e2e::privileged::rerun_as_root;
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::wait;
use spilo_model::MemberRole;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
/// The cluster file's `ha.ttl` (the default).
const TTL: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_file_runs_on_instances_booted_from_the_image() -> anyhow::Result<()> {
    if let Some(as_root) = rerun_as_root("a_cluster_file_runs_on_instances_booted_from_the_image") {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = scenario(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

async fn scenario(b: &mut AwsBox) -> anyhow::Result<()> {
    b.repo
        .commit("orders", Some(&b.cluster_file("orders", 3)))?;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    // The spilo image of this version went to the bucket, for plain Debian instances.
    let key = spilo::aws::image::key(spilo_model::spec::Architecture::Amd64);
    assert!(
        apply.stdout.contains(&format!(
            "orders: + spilo image uploaded to s3://spilo-wal/{key}"
        )),
        "{apply}"
    );
    assert_eq!(
        b.python(&["s3head", REGION, "spilo-wal", &key])?.trim(),
        "ok"
    );
    b.launch("spilo-orders").await?;

    // One primary and two streaming replicas, and every member signalled its stack.
    wait::until("a primary and two streaming replicas", BOOT, || async {
        let all = b.statuses().await;
        (primary(&all).is_some() && streaming(&all) == 2).then_some(())
    })
    .await?;
    wait::until(
        "every member to signal the stack",
        Duration::from_secs(60),
        || async {
            let signals = b.signals.signals();
            b.instances
                .iter()
                .all(|i| {
                    signals.iter().any(|s| {
                        s.id == i.id
                            && s.status == "SUCCESS"
                            && s.stack == "spilo-orders"
                            && s.resource == "AutoScalingGroup"
                    })
                })
                .then_some(())
        },
    )
    .await?;

    // Writes through the DNS name (the load balancer stand-in routes to the primary).
    let lb = b.resolve("orders.db.example.com").await?;
    assert_eq!(lb, b.elb, "the record points at the load balancer");
    // Over TLS, checked against the cluster CA for the cluster's DNS name (in every member's
    // certificate), connected at the address it resolves to.
    let dsn = format!(
        "host=orders.db.example.com hostaddr={lb} port=5432 user=postgres password={} \
         dbname=postgres connect_timeout=2 sslmode=verify-full sslrootcert={}",
        b.setup.passwords["superuser"],
        b.ca.display()
    );
    // As an ELB, the stand-in routes only to the primary once its health checks ran.
    let leader = primary(&b.statuses().await).ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let leader_id = b.instances[leader].id.clone();
    wait::until(
        "the load balancer to route to the primary only",
        Duration::from_secs(60),
        || async { (b.in_service().ok()? == [leader_id.clone()]).then_some(()) },
    )
    .await?;
    let c = wait::until("a connection through the DNS name", BOOT, || async {
        connect_dsn(&dsn).await.ok()
    })
    .await?;
    c.batch_execute(probe::TABLE_DDL).await?;
    let streams = spilo_e2e::sql::streams_over_tls(&c).await?;
    assert_eq!(streams.len(), 2, "two replicas stream: {streams:?}");
    assert!(
        streams.iter().all(|(_, tls)| *tls),
        "replication over TLS: {streams:?}"
    );
    // pg_hba admits TLS connections from the VPC's range only (from the metadata service).
    let rules = c
        .query(
            "SELECT type, address || '/' || netmask FROM pg_hba_file_rules WHERE type LIKE 'host%'",
            &[],
        )
        .await?;
    let vpc = b.cidr.replace(".0.0/16", ".0.0/255.255.0.0");
    assert!(!rules.is_empty());
    for r in &rules {
        let (kind, net): (String, String) = (r.get(0), r.get(1));
        assert_eq!((kind.as_str(), net.as_str()), ("hostssl", vpc.as_str()));
    }
    let refusal = spilo_e2e::sql::plaintext_refusal(
        &b.instances[leader].ip,
        5432,
        &b.setup.passwords["superuser"],
    )
    .await?;
    assert!(refusal.contains("no encryption"), "{refusal}");
    let prober = Prober::start(vec![("lb".into(), dsn.clone())], Duration::from_millis(50));
    prober.wait_write("lb", None, BOOT).await?;

    // kill -9 of every process of the primary's instance: a new primary within TTL + 2 s,
    // and (synchronous mode) every acknowledged write is still there.
    let all = b.statuses().await;
    let old = primary(&all).ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let killed = Instant::now();
    b.instances[old].kill_all()?;
    let took = wait::until("a new primary", Duration::from_secs(60), || async {
        let all = b.statuses().await;
        primary(&all)
            .filter(|p| *p != old)
            .map(|_| killed.elapsed())
    })
    .await?;
    assert!(
        took <= TTL + Duration::from_secs(2),
        "a new primary after {took:?}, more than TTL + 2 s"
    );
    prober
        .wait_write("lb", Some(Instant::now()), Duration::from_secs(60))
        .await?;
    let (acks, _) = prober.stop().await;
    let c = connect_dsn(&dsn).await?;
    let present = probe::ids_on(&c).await?;
    let lost = probe::lost(&acks, &present);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // A reboot of the old primary: its boot runs again on the same volume and the member
    // comes back from its own data, without a new copy.
    b.instances[old].boot()?;
    let old_id = b.instances[old].id.clone();
    wait::until("the rebooted member to stream again", BOOT, || async {
        let all = b.statuses().await;
        all[old]
            .as_ref()
            .is_some_and(|s| s.member.running_as(MemberRole::Replica) && s.streaming)
            .then_some(())
    })
    .await?;
    let console = b.instances[old].console_text();
    assert!(
        console.contains("is mounted already") || console.contains("mounted /dev/xvdk"),
        "{console}"
    );
    assert!(
        !console.contains("making a ext4 filesystem"),
        "{old_id} formatted its volume again:\n{console}"
    );
    for copy in [
        "pg_basebackup",
        "decision=\"clone\"",
        "restored the archive's latest base backup",
        "creating_replica",
    ] {
        assert!(
            !console.contains(copy),
            "{old_id} copied its data again ({copy}) instead of using its own:\n{console}"
        );
    }

    // The role cannot read another cluster's archive.
    let fleet: serde_json::Value =
        serde_json::from_str(&b.python(&["instances", REGION, "spilo-orders"])?)?;
    let role_arn = fleet["role_arn"].as_str().unwrap_or_default().to_string();
    let creds: serde_json::Value =
        serde_json::from_str(&b.python(&["assume", REGION, &role_arn, "probe"])?)?;
    let as_role = |k: &str| creds[k].as_str().unwrap_or_default().to_string();
    let (key, secret, token) = (
        as_role("AccessKeyId"),
        as_role("SecretAccessKey"),
        as_role("Token"),
    );
    let env = [
        ("MOTO_KEY", key.as_str()),
        ("MOTO_SECRET", secret.as_str()),
        ("MOTO_TOKEN", token.as_str()),
    ];
    let other = b.python_as(
        &[
            "s3get",
            REGION,
            "spilo-wal",
            "spilo/billing/wal/15/wal_005/000000010000000000000001.lz4",
        ],
        &env,
    )?;
    assert_eq!(other.trim(), "AccessDenied");
    Ok(())
}

/// A member that cannot read its password says so: the boot layer reports the failure as a
/// FAILURE signal to the stack and with its boot log in etcd, which `spilo instances` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_start_reports_why_with_its_boot_log() -> anyhow::Result<()> {
    if let Some(as_root) =
        rerun_as_root("an_instance_that_cannot_start_reports_why_with_its_boot_log")
    {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = failing_boot(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

async fn failing_boot(b: &mut AwsBox) -> anyhow::Result<()> {
    // The box made passwords for `orders` only: `broken`'s parameters do not exist.
    b.repo
        .commit("broken", Some(&b.cluster_file("broken", 1)))?;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    b.launch("spilo-broken").await?;
    let id = b.instances[0].id.clone();
    wait::until("a FAILURE signal", BOOT, || async {
        b.signals
            .signals()
            .iter()
            .any(|s| s.id == id && s.status == "FAILURE" && s.stack == "spilo-broken")
            .then_some(())
    })
    .await?;
    let shown = wait::until("spilo instances to show the failed boot", BOOT, || async {
        let out = b.spilo(&["instances", "broken"]);
        out.stdout.contains("boot failed").then_some(out.stdout)
    })
    .await?;
    assert!(shown.contains(&format!("{id}: boot failed at ")), "{shown}");
    assert!(
        shown.contains("the governor failed 3 times in a row")
            && shown.contains("SSM parameter /spilo/broken/superuser"),
        "the reason names the parameter: {shown}"
    );
    assert!(
        shown.contains("spilo boot: starting the governor"),
        "the boot log follows: {shown}"
    );
    Ok(())
}

/// Both SRV records' targets and the A records of an etcd cluster, as moto's Route53 holds
/// them.
#[derive(serde::Deserialize, Debug)]
struct EtcdRecords {
    client: Vec<String>,
    server: Vec<String>,
    addresses: std::collections::BTreeMap<String, String>,
}

/// etcd-main's drift as `spilo drift` reports it, `(kind, detail)`; `None` while it cannot be
/// told (etcd unreachable through the records for now).
fn etcd_drift(b: &AwsBox, env: &[(&str, String)]) -> Option<Vec<(String, String)>> {
    let out = b.spilo_env(&["drift", "--format", "json"], env);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let unknown = report["unknown"].as_array()?;
    if unknown.iter().any(|u| u[0] == "etcd-main") {
        return None;
    }
    Some(
        report["drift"]
            .as_array()?
            .iter()
            .filter(|d| d["cluster"] == "etcd-main")
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or_default().to_string(),
                    d["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_cluster_and_a_postgres_cluster_on_it_run_from_one_commit() -> anyhow::Result<()> {
    if let Some(as_root) =
        rerun_as_root("an_etcd_cluster_and_a_postgres_cluster_on_it_run_from_one_commit")
    {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = etcd_scenario(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

async fn etcd_scenario(b: &mut AwsBox) -> anyhow::Result<()> {
    // One commit: the etcd cluster, and a PostgreSQL cluster on it with the same CA.
    let etcd_file = format!(
        "apiVersion: spilo/v1\nkind: EtcdCluster\nmetadata: {{name: etcd-main, team: platform}}\nspec:\n  \
         members: 3\n  aws:\n    region: {REGION}\n    instanceType: t3.small\n    image: /spilo/box/debian-12/amd64\n    \
         vpc: {vpc}\n    subnets: [{subnet}]\n    hostedZone: db.example.com\n    hostedZoneId: {zone}\n    storage: {{size: 10}}\n  \
         imageBucket: spilo-wal\n  secrets: {{ca: {{secretsManager: \"{ca}\"}}}}\n",
        vpc = b.setup.vpc,
        subnet = b.setup.subnet,
        zone = b.setup.zone_id,
        ca = b.ca_arn,
    );
    let host_etcd = format!("dcs: {{hosts: [\"{}\"]}}", b.etcd.client_addr);
    let orders = b
        .cluster_file("orders", 3)
        .replace(&host_etcd, "dcs: {etcdCluster: etcd-main}");
    anyhow::ensure!(orders.contains("etcdCluster"), "{orders}");
    b.repo.commit("etcd-main", Some(&etcd_file))?;
    b.repo.commit("orders", Some(&orders))?;
    let nameserver = b.serve_zone()?;

    // spilo speaks TLS to the etcd cluster with a client certificate of its CA, and finds it
    // through the VPC's resolver.
    let dir = tempfile::tempdir()?;
    let ca = spilo_pki::CertAndKey {
        cert: std::fs::read_to_string(&b.ca)?,
        key: std::fs::read_to_string(b.dir.path().join("ca.key"))?,
    };
    let issued = spilo_pki::issue(
        &ca,
        &["spilo-box-client".to_string()],
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )?;
    let (cert, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
    std::fs::write(&cert, &issued.cert)?;
    std::fs::write(&key, &issued.key)?;
    let tls = spilo_discovery::EtcdTls::read(&b.ca, &cert, &key)?;
    let env = [
        ("SPILO_ETCD_CACERT", b.ca.display().to_string()),
        ("SPILO_ETCD_CERT", cert.display().to_string()),
        ("SPILO_ETCD_KEY", key.display().to_string()),
        ("SPILO_ETCD_NAMESERVER", nameserver),
    ];

    // The first apply creates the etcd stack; the PostgreSQL cluster waits for its etcd
    // (unknown is never created on).
    let first = b.spilo_env(&["apply", "--auto-approve"], &env);
    assert!(first.stdout.contains("etcd-main: applied"), "{first}");
    assert!(
        first.stdout.contains("cannot plan orders: etcd"),
        "orders waits for its etcd: {first}"
    );
    b.launch("spilo-etcd-main").await?;
    let etcd_ids: Vec<String> = b.instances.iter().map(|i| i.id.clone()).collect();
    anyhow::ensure!(etcd_ids.len() == 3, "three members: {etcd_ids:?}");
    let zone = b.setup.zone_id.clone();
    let records = wait::until(
        "both SRV records and the A records to name the three members",
        BOOT,
        || async {
            let out = b
                .python(&["records", REGION, &zone, "etcd-main.db.example.com"])
                .ok()?;
            let r: EtcdRecords = serde_json::from_str(&out).ok()?;
            let mut want = etcd_ids.clone();
            want.sort();
            (r.client == want && r.server == want && r.addresses.len() == 3).then_some(r)
        },
    )
    .await?;
    for i in &b.instances {
        assert_eq!(
            records.addresses.get(&i.id),
            Some(&i.ip),
            "A record of {}",
            i.id
        );
    }
    // `spilo drift` reads the members over TLS and the records from Route53: they agree.
    let healthy = wait::until("spilo drift to read etcd-main's members", BOOT, || async {
        etcd_drift(b, &env)
    })
    .await?;
    assert_eq!(
        healthy,
        Vec::<(String, String)>::new(),
        "no drift of etcd-main"
    );
    let etcd_urls = |b: &AwsBox, ids: &[String]| -> Vec<String> {
        b.instances
            .iter()
            .filter(|i| ids.contains(&i.id))
            .map(|i| format!("https://{}:2379", i.ip))
            .collect()
    };
    let connect = |urls: Vec<String>| {
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls.options())
            .with_timeout(Duration::from_secs(3));
        async move { etcd_client::Client::connect(urls, Some(options)).await }
    };
    let mut c = connect(etcd_urls(b, &etcd_ids)).await?;
    let mut want = etcd_ids.clone();
    want.sort();
    assert_eq!(voters(&mut c).await?, want, "every instance votes");
    // Without a certificate of the CA, etcd refuses.
    let plain = etcd_client::Client::connect(
        [format!("http://{}:2379", b.instances[0].ip)],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2))),
    )
    .await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut p) => p.get("/service/orders/leader", None).await.is_err(),
    };
    assert!(refused, "a plaintext client is refused");

    // The second apply finds etcd through its records: the PostgreSQL cluster is created,
    // its members join the etcd clients' group and elect a primary in the etcd cluster.
    let second = b.spilo_env(&["apply", "--auto-approve"], &env);
    anyhow::ensure!(second.code == 0, "second apply: {second}");
    assert!(second.stdout.contains("orders: applied"), "{second}");
    b.launch("spilo-orders").await?;
    wait::until("a primary and two streaming replicas", BOOT, || async {
        let all = b.statuses().await;
        (primary(&all).is_some() && streaming(&all) == 2).then_some(())
    })
    .await?;
    let leader_key = c.get("/service/orders/leader", None).await?;
    let pg_leader = leader_key
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .ok_or_else(|| anyhow::anyhow!("no leader key in the etcd cluster"))?;
    let pg_ids: Vec<String> = b
        .instances
        .iter()
        .map(|i| i.id.clone())
        .filter(|i| !etcd_ids.contains(i))
        .collect();
    assert!(
        pg_ids.contains(&pg_leader),
        "{pg_leader} leads orders: {pg_ids:?}"
    );

    // Terminating the etcd leader's instance: the group's replacement boots, joins, the
    // departed member and its records go, and orders keeps its primary throughout.
    let etcd_leader = leader_name(&mut c).await?;
    b.terminate(&etcd_leader)?;
    // Until the replacement boots, two members vote: drift says so (once the departed one
    // is removed, the records name the two).
    let short = wait::until(
        "spilo drift to report a missing etcd member",
        BOOT,
        || async { etcd_drift(b, &env).filter(|d| d.iter().any(|(k, _)| k == "missing_members")) },
    )
    .await?;
    let missing = &short
        .iter()
        .find(|(k, _)| k == "missing_members")
        .expect("found")
        .1;
    assert!(
        missing.starts_with("2 of 3 etcd members started and voting")
            && !missing.contains(&etcd_leader),
        "{missing}"
    );
    b.launch("spilo-etcd-main").await?;
    let now: Vec<String> = b
        .instances
        .iter()
        .map(|i| i.id.clone())
        .filter(|i| !pg_ids.contains(i))
        .collect();
    anyhow::ensure!(
        now.len() == 3 && !now.contains(&etcd_leader),
        "the group replaced {etcd_leader}: {now:?}"
    );
    let mut want = now.clone();
    want.sort();
    let primaries = std::sync::Mutex::new(std::collections::BTreeSet::new());
    wait::until(
        "the replacement voting and named by the records",
        BOOT,
        || async {
            if let Some(p) = primary(&b.statuses().await)
                && let Ok(mut seen) = primaries.lock()
            {
                seen.insert(b.instances[p].id.clone());
            }
            let out = b
                .python(&["records", REGION, &zone, "etcd-main.db.example.com"])
                .ok()?;
            let r: EtcdRecords = serde_json::from_str(&out).ok()?;
            let mut c = connect(etcd_urls(b, &now)).await.ok()?;
            (voters(&mut c).await.ok()? == want
                && r.client == want
                && r.server == want
                && r.addresses.len() == 3)
                .then_some(())
        },
    )
    .await?;
    let healed = wait::until("spilo drift to read etcd-main's members", BOOT, || async {
        etcd_drift(b, &env)
    })
    .await?;
    assert_eq!(
        healed,
        Vec::<(String, String)>::new(),
        "no drift of etcd-main once replaced"
    );
    let mut c = connect(etcd_urls(b, &now)).await?;
    let after = c.get("/service/orders/leader", None).await?;
    assert_eq!(
        after
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        Some(pg_leader.clone()),
        "orders kept its leader"
    );
    let primaries = primaries
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert!(
        !primaries.is_empty() && primaries.iter().all(|p| *p == pg_leader),
        "no other primary while etcd replaced a member: {primaries:?}"
    );
    Ok(())
}

/// PostgreSQL 18 from the image: a cluster file with `postgresql.version: 18` (and no CA: the
/// image's 18 is built without SSL) boots a primary and a streaming replica running 18.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_postgresql_18_boots_from_the_image() -> anyhow::Result<()> {
    if let Some(as_root) = rerun_as_root("a_cluster_on_postgresql_18_boots_from_the_image") {
        return as_root;
    }
    let mut b = AwsBox::new().await?;
    let r = on_18(&mut b).await;
    if r.is_err() {
        b.print_logs();
    }
    r
}

async fn on_18(b: &mut AwsBox) -> anyhow::Result<()> {
    b.repo
        .commit("orders", Some(&b.cluster_file_18("orders", 2)))?;
    b.plain_api = true;
    let apply = b.spilo(&["apply", "--auto-approve"]);
    anyhow::ensure!(apply.code == 0, "spilo apply: {apply}");
    b.launch("spilo-orders").await?;
    let leader = wait::until("a primary and a streaming replica", BOOT, || async {
        let all = b.statuses().await;
        (streaming(&all) == 1).then(|| primary(&all)).flatten()
    })
    .await?;
    let c = wait::until("a session on the primary", BOOT, || async {
        connect_dsn(&b.plain_dsn(&b.instances[leader].ip))
            .await
            .ok()
    })
    .await?;
    let version: String = c.query_one("SHOW server_version_num", &[]).await?.get(0);
    assert!(version.starts_with("18"), "the primary runs {version}");
    c.batch_execute("CREATE TABLE t AS SELECT generate_series(1, 100) AS n")
        .await?;
    let replica = 1 - leader;
    let r = wait::until("the replica to replay the table", BOOT, || async {
        let r = connect_dsn(&b.plain_dsn(&b.instances[replica].ip))
            .await
            .ok()?;
        let n: i64 = r
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .ok()?
            .get(0);
        (n == 100).then_some(r)
    })
    .await?;
    let version: String = r.query_one("SHOW server_version_num", &[]).await?.get(0);
    assert!(version.starts_with("18"), "the replica runs {version}");
    Ok(())
}
