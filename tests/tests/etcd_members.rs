//! The etcd keeper (`governor etcd-member`) against real etcd servers and moto's auto-scaling
//! group and Route53: three keepers, one per instance of the group, each on a loopback address
//! of its own, make one etcd cluster over TLS and publish its SRV records; when the leader's
//! instance is terminated, the group's replacement joins, the departed member is removed and
//! the records follow, and the data stays.

use spilo_e2e::aws::Moto;
use spilo_e2e::etcd::which;
use spilo_e2e::proc::{RunAs, Spawned, installed};
use spilo_e2e::tls::TestCa;
use spilo_e2e::{ports, wait};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const REGION: &str = "eu-central-1";
const ZONE: &str = "db.example.com";
const DOMAIN: &str = "etcd-test.db.example.com";

#[derive(serde::Deserialize)]
struct Group {
    group: String,
    zone_id: String,
    ca_arn: String,
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct Records {
    targets: Vec<String>,
    server: Vec<String>,
    addresses: BTreeMap<String, String>,
}

struct World {
    dir: tempfile::TempDir,
    moto: Moto,
    group: Group,
    ca: TestCa,
    run_as: RunAs,
    ports: (u16, u16),
    /// The loopback network the instances' addresses come from: `127.<n>.0.<k>`.
    net: u8,
    keepers: BTreeMap<String, (String, Spawned)>,
    next_host: u8,
}

impl World {
    fn fixture(&self, args: &[&str]) -> anyhow::Result<String> {
        self.moto.python(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_etcd_group.py"),
            args,
        )
    }

    fn live(&self) -> anyhow::Result<Vec<String>> {
        Ok(serde_json::from_str(&self.fixture(&[
            "instances",
            REGION,
            &self.group.group,
        ])?)?)
    }

    fn records(&self) -> anyhow::Result<Records> {
        Ok(serde_json::from_str(&self.fixture(&[
            "records",
            REGION,
            &self.group.zone_id,
            DOMAIN,
        ])?)?)
    }

    /// Starts the keeper of `instance` on the next loopback address.
    fn boot(&mut self, instance: &str) -> anyhow::Result<()> {
        self.next_host += 1;
        let ip = format!("127.{}.0.{}", self.net, self.next_host);
        let home = self.dir.path().join(instance);
        std::fs::create_dir_all(&home)?;
        self.run_as.own(&home)?;
        let config = spilo_model::governor::EtcdMemberConfig {
            cluster: "etcd-test".into(),
            domain: DOMAIN.into(),
            hosted_zone_id: self.group.zone_id.clone(),
            region: REGION.into(),
            data_dir: home.join("data"),
            etcd_bin: which("etcd")?,
            client_port: self.ports.0,
            peer_port: self.ports.1,
            interval: 1,
            learner_start_grace: 3,
            tls: spilo_model::governor::TlsConfig {
                // Connections between loopback addresses leave from 127.0.0.1, and etcd checks
                // a peer's certificate against the address its connection comes from.
                names: vec!["127.0.0.1".into()],
                ..spilo_model::governor::TlsConfig::new(
                    home.join("ca.crt"),
                    spilo_model::governor::SecretRef {
                        secrets_manager: Some(self.group.ca_arn.clone()),
                        ..Default::default()
                    },
                )
            },
        };
        let path = home.join("etcd-member.yaml");
        std::fs::write(&path, config.to_yaml())?;
        let mut cmd = self.run_as.command(&installed("governor")?);
        cmd.args(["etcd-member", "--config"])
            .arg(&path)
            .args(["--name", instance, "--connect-host", &ip])
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", &home)
            .env("SPILO_LOG", "info");
        let keeper = Spawned::start(cmd, &home.join("keeper.log"))?;
        self.keepers.insert(instance.to_string(), (ip, keeper));
        Ok(())
    }

    /// A client of the cluster through every keeper's address, with a certificate of the CA.
    async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let (cert, key) = self
            .ca
            .issue("test-client", &["spilo-test".into()], self.run_as)?;
        let tls = spilo_discovery::EtcdTls::read(&self.ca.cert, &cert, &key)?;
        let urls: Vec<String> = self
            .keepers
            .values()
            .map(|(ip, _)| format!("https://{ip}:{}", self.ports.0))
            .collect();
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls.options())
            .with_timeout(Duration::from_secs(3))
            .with_connect_timeout(Duration::from_secs(3));
        Ok(etcd_client::Client::connect(urls, Some(options)).await?)
    }

    /// The voting members that started, by name.
    async fn voters(&self) -> anyhow::Result<Vec<String>> {
        spilo_e2e::etcd::voters(&mut self.client().await?).await
    }

    fn print_logs(&self) {
        for (id, (_, k)) in &self.keepers {
            let dir = self.dir.path().join(id);
            for log in [k.log.clone(), dir.join("data.log")] {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("===== {} =====", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Waits until the voters, both SRV records and the A records are exactly the group's live
/// instances.
async fn converged(w: &World, what: &str) -> anyhow::Result<Vec<String>> {
    wait::until(what, Duration::from_secs(90), || async {
        let live = w.live().ok()?;
        let voters = w.voters().await.ok()?;
        let records = w.records().ok()?;
        (voters == live
            && records.targets == live
            && records.server == live
            && records.addresses.len() == live.len())
        .then_some(live)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepers_make_one_cluster_and_follow_a_replaced_instance() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("spilo-etcd-members-")
        .tempdir()?;
    let run_as = RunAs::detect()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let moto = Moto::start(dir.path()).await?;
    let ca = TestCa::create(dir.path(), run_as)?;
    let bundle: PathBuf = dir.path().join("ca.bundle");
    std::fs::write(
        &bundle,
        format!(
            "{}{}",
            std::fs::read_to_string(&ca.cert)?,
            std::fs::read_to_string(&ca.key)?
        ),
    )?;
    let group: Group = serde_json::from_str(&moto.python(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_etcd_group.py"),
        &["group", REGION, ZONE, &bundle.display().to_string(), "3"],
    )?)?;
    let client_port = ports::free();
    let mut w = World {
        dir,
        moto,
        group,
        ca,
        run_as,
        ports: (client_port, ports::free()),
        net: u8::try_from(std::process::id() % 200 + 20).unwrap_or(42),
        keepers: BTreeMap::new(),
        next_host: 1,
    };
    let r = scenario(&mut w).await;
    if r.is_err() {
        w.print_logs();
    }
    r
}

async fn scenario(w: &mut World) -> anyhow::Result<()> {
    let first = w.live()?;
    assert_eq!(first.len(), 3, "the group launched its three instances");
    for id in &first {
        w.boot(id)?;
    }
    let members = converged(w, "three voting members named by the SRV records").await?;
    assert_eq!(members, first);
    let records = w.records()?;
    for (id, (ip, _)) in &w.keepers {
        assert_eq!(records.addresses.get(id), Some(ip), "A record of {id}");
    }
    let mut c = w.client().await?;
    c.put("/spilo-test/kept", "before", None).await?;

    // A learner added whose instance died before its etcd started: nothing serves its peer
    // URL, and every later join waits for it until the leader removes it (after the grace).
    // (etcd refuses a member while one joined moments ago: "unhealthy cluster".)
    let url = format!("https://127.{}.0.250:{}", w.net, w.ports.1);
    let stuck = wait::until("etcd to take a learner", Duration::from_secs(60), || {
        let (mut c, url) = (c.clone(), url.clone());
        async move {
            let added = c
                .member_add(
                    [url],
                    Some(etcd_client::MemberAddOptions::new().with_is_learner()),
                )
                .await
                .ok()?;
            added.member().map(|m| m.id())
        }
    })
    .await?;

    // Terminate the leader's instance: its keeper and etcd die with it, the group launches
    // a replacement.
    let leader = spilo_e2e::etcd::leader_name(&mut c).await?;
    w.fixture(&["terminate", REGION, &leader])?;
    if let Some((_, mut keeper)) = w.keepers.remove(&leader) {
        for child in spilo_e2e::proc::children_of(keeper.pid()) {
            spilo_e2e::proc::kill_group(child);
        }
        keeper.kill_group();
    }
    let replacement: Vec<String> = w
        .live()?
        .into_iter()
        .filter(|i| !first.contains(i))
        .collect();
    assert_eq!(replacement.len(), 1, "the group replaced {leader}");
    w.boot(&replacement[0])?;

    let after = converged(w, "the replacement voting and named by the records").await?;
    let listed = w.client().await?.member_list().await?;
    assert!(
        listed.members().iter().all(|m| m.id() != stuck),
        "the learner that never started was removed: {:?}",
        listed.members()
    );
    assert!(!after.contains(&leader), "{leader} was removed");
    assert!(after.contains(&replacement[0]));
    let records = w.records()?;
    assert!(
        !records.addresses.contains_key(&leader),
        "the departed member's A record is gone: {records:?}"
    );
    let mut c = w.client().await?;
    let got = c.get("/spilo-test/kept", None).await?;
    assert_eq!(
        got.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"before".to_vec()),
        "the data outlived the replacement"
    );
    c.put("/spilo-test/kept", "after", None).await?;
    Ok(())
}
