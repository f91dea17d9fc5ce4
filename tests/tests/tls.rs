//! TLS with authentication on every connection (the default of `spilo up` and of this
//! harness): what a client without the cluster CA, a plaintext client and an etcd client
//! without a certificate get, and a member certificate that expires while the cluster runs.

use spilo_e2e::{Cluster, ClusterOptions, wait};
use std::time::{Duration, SystemTime};

const BOOT: Duration = Duration::from_secs(90);
/// The harness's lease length (the default `ha.ttl`).
const TTL: Duration = Duration::from_secs(4);

/// Expected: every network connection of a running cluster is TLS. Replication streams over
/// TLS; a plaintext PostgreSQL connection over TCP matches no `pg_hba` line; a client that
/// does not trust the cluster CA gets no connection to PostgreSQL, the REST API or etcd; an
/// etcd client that trusts the CA but has no certificate is refused by etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_tls_and_clients_without_the_ca_are_refused() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "tls".into(),
        ..Default::default()
    })
    .await?;
    let result = refusals(&mut c).await;
    c.finish(result)
}

async fn refusals(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, _) = c.start_streaming(BOOT).await?;
    let sql = c.sql(&primary).await?;
    let mine = sql
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    assert!(mine.get::<_, bool>(0), "the harness's own session is TLS");
    let streams = spilo_e2e::sql::streams_over_tls(&sql).await?;
    assert_eq!(streams.len(), 2, "two replicas stream: {streams:?}");
    assert!(
        streams.iter().all(|(_, tls)| *tls),
        "replication over TLS: {streams:?}"
    );

    let port = c.member(&primary).pg_port;
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres connect_timeout=2",
        spilo_e2e::cluster::SUPERUSER_PASSWORD
    );
    let err = spilo_e2e::sql::plaintext_refusal(
        "127.0.0.1",
        port,
        spilo_e2e::cluster::SUPERUSER_PASSWORD,
    )
    .await?;
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "plaintext over TCP must be refused: {err}"
    );

    let stranger = spilo_e2e::tls::TestCa::create(&c.dir().join("stranger"), c.run_as())?;
    let foreign = spilo_e2e::tls::client_config_for(std::slice::from_ref(&stranger.cert))?;
    let err = spilo_e2e::sql::connect_with(&format!("{dsn} sslmode=require"), foreign)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "a server the client cannot verify is not spoken to: {err}"
    );

    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let api = untrusting
        .get(format!("{}/primary", c.api_url(&primary)))
        .send()
        .await;
    assert!(api.is_err(), "the REST API without the CA: {api:?}");
    assert_eq!(c.http_code(&primary, "/primary").await, Some(200));

    let (ca, _, _) = c
        .etcd
        .client_files
        .clone()
        .ok_or_else(|| anyhow::anyhow!("etcd speaks TLS"))?;
    let no_cert = etcd_client::ConnectOptions::new()
        .with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&ca)?)),
        )
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2));
    let refused = async {
        let mut client = etcd_client::Client::connect([c.etcd.url()], Some(no_cert)).await?;
        client.put("/service/tls/leader", "intruder", None).await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        refused.is_err(),
        "an etcd client without a certificate wrote the leader key"
    );
    let (leader, _) = c
        .etcd
        .get("/service/tls/leader")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no leader key"))?;
    assert_eq!(leader, primary);
    let plain_etcd = etcd_client::Client::connect(
        [format!("http://{}", c.etcd.client_addr)],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2))),
    )
    .await;
    let plain_put = match plain_etcd {
        Ok(mut client) => client
            .put("/service/tls/leader", "intruder", None)
            .await
            .err(),
        Err(e) => Some(e),
    };
    assert!(
        plain_put.is_some(),
        "plaintext etcd must not accept a write"
    );
    Ok(())
}

/// Expected: members renew their certificates while they run (a third of the lifetime before
/// the end): once the first certificates have expired, new TLS connections to PostgreSQL and
/// the REST API still verify; every member's etcd connection, cut and made again, presents the
/// renewed certificate; the primary is the same, nothing failed over. A member whose
/// certificate expired while its governor was stopped issues a new one at start and streams
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_member_certificate_is_renewed_without_a_failover() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "renew".into(),
        tls_lifetime: Some(20),
        ..Default::default()
    })
    .await?;
    let result = renewal(&mut c).await;
    c.finish(result)
}

fn member_cert(c: &Cluster, name: &str) -> anyhow::Result<spilo_pki::Facts> {
    let mut run = c.member(name).data_dir().into_os_string();
    run.push(".run");
    let pem = std::fs::read_to_string(std::path::Path::new(&run).join("tls/member.crt"))?;
    Ok(spilo_pki::facts(&pem)?)
}

async fn renewal(c: &mut Cluster) -> anyhow::Result<()> {
    // Every member reaches etcd through a proxy the test can cut.
    let proxy = spilo_e2e::proxy::Proxy::start(c.etcd.client_addr.clone()).await?;
    for m in &mut c.members {
        m.store_hosts = vec![proxy.addr.clone()];
    }
    let (primary, _) = c.start_streaming(BOOT).await?;
    let history = c.etcd.get("/service/renew/history").await?;
    let first = member_cert(c, &primary)?;
    let replica = c
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|n| *n != primary)
        .ok_or_else(|| anyhow::anyhow!("a replica"))?;
    c.stop(&replica)?;
    let stopped_cert = member_cert(c, &replica)?;

    wait::until(
        "the first certificates to expire",
        Duration::from_secs(60),
        || async {
            (SystemTime::now() > first.not_after + Duration::from_secs(1)
                && SystemTime::now() > stopped_cert.not_after + Duration::from_secs(1))
            .then_some(())
        },
    )
    .await?;
    let renewed = member_cert(c, &primary)?;
    assert_ne!(renewed.serial, first.serial, "the primary renewed");
    // Every etcd connection is closed: the members connect again, and etcd accepts only a
    // certificate that has not expired.
    assert!(renewed.not_after > SystemTime::now());
    proxy.reset();
    let healed = SystemTime::now();
    let (leader_before, lease_before) = c
        .etcd
        .get("/service/renew/leader")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no leader key"))?;
    wait::until(
        "three lease lengths after the cut",
        Duration::from_secs(30),
        || async { (SystemTime::now() > healed + 3 * TTL).then_some(()) },
    )
    .await?;
    let (leader, lease) = c
        .etcd
        .get("/service/renew/leader")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the leader key expired: the primary lost etcd"))?;
    assert_eq!(
        (leader.as_str(), lease),
        (leader_before.as_str(), lease_before),
        "the primary kept its lease through the reconnect"
    );
    // New handshakes verify only against a certificate that has not expired.
    let sql = c.sql(&primary).await?;
    sql.batch_execute("CREATE TABLE IF NOT EXISTS renewed (x int); INSERT INTO renewed VALUES (1)")
        .await?;
    assert_eq!(c.http_code(&primary, "/primary").await, Some(200));
    assert_eq!(c.primaries().await, vec![primary.clone()]);
    assert_eq!(
        c.etcd.get("/service/renew/history").await?,
        history,
        "no failover"
    );

    c.start(&replica)?;
    c.wait_streaming(&replica, BOOT).await?;
    let restarted = member_cert(c, &replica)?;
    assert_ne!(
        restarted.serial, stopped_cert.serial,
        "the stopped member issued a new certificate at start"
    );
    assert!(restarted.not_after > SystemTime::now());
    assert_eq!(c.primaries().await, vec![primary]);
    Ok(())
}
