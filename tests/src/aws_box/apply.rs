//! `spilo apply` run in the background while the box plays EC2 for the cluster's group,
//! for the tests whose apply replaces instances (a rollout, a major upgrade).

use super::{AwsBox, REGION, primary, streaming};
use std::time::{Duration, Instant};

impl AwsBox {
    /// [`apply_playing_ec2`] on this box.
    pub async fn apply_playing_ec2(
        &mut self,
        seen: &mut Vec<String>,
        samples: &mut Vec<(Instant, Option<String>, usize)>,
        kill_on: Option<&str>,
    ) -> anyhow::Result<(bool, String)> {
        apply_playing_ec2(self, seen, samples, kill_on).await
    }
}

/// Runs `spilo apply --auto-approve` while playing EC2 for the group (stopping what it
/// terminated, booting what it launched, the load balancer registering new instances), and
/// samples the primary and the streaming replicas every second. With `kill_on`, kills the apply once its output
/// has that text. Returns whether it succeeded (false when killed) and its output.
async fn apply_playing_ec2(
    b: &mut AwsBox,
    seen: &mut Vec<String>,
    samples: &mut Vec<(Instant, Option<String>, usize)>,
    kill_on: Option<&str>,
) -> anyhow::Result<(bool, String)> {
    let out = b.dir.path().join(format!("rollout-{}.out", seen.len()));
    let mut apply = tokio::process::Command::new(crate::proc::target_dir()?.join("spilo"));
    apply
        .args(["apply", "--auto-approve", "--repo"])
        .arg(&b.repo.path)
        .env("SPILO_AWS_ENDPOINT_URL", &b.moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", &b.admin.key)
        .env("AWS_SECRET_ACCESS_KEY", &b.admin.secret)
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SPILO_API_TOKEN", &b.setup.passwords["restapi"])
        .env("SPILO_API_CACERT", &b.ca)
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(out.with_extension("err"))?);
    let mut child = apply.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let ok = loop {
        if let Some(s) = child.try_wait()? {
            break s.success();
        }
        let log = std::fs::read_to_string(&out).unwrap_or_default();
        if kill_on.is_some_and(|k| log.contains(k)) {
            child.kill().await?;
            // Its apply lock lives on until its lease ends (30 s), as after a crash.
            let mut etcd =
                etcd_client::Client::connect([format!("http://{}", b.etcd.client_addr)], None)
                    .await?;
            while !etcd
                .get("/service/orders/apply-lock", None)
                .await?
                .kvs()
                .is_empty()
            {
                anyhow::ensure!(Instant::now() < deadline, "the apply lock never ended");
                b.reap("spilo-orders", seen)?;
                b.launch("spilo-orders").await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            break false;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the rollout did not finish in 15 minutes:\n{log}"
        );
        b.reap("spilo-orders", seen)?;
        b.launch("spilo-orders").await?;
        for i in &b.instances {
            if !seen.contains(&i.id) {
                seen.push(i.id.clone());
            }
        }
        let all = b.statuses().await;
        let leader = primary(&all).map(|p| b.instances[p].id.clone());
        samples.push((Instant::now(), leader, streaming(&all)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    Ok((ok, std::fs::read_to_string(&out)?))
}
