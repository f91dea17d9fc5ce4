//! A switchover between AWS clusters, as `spilo apply` carries it out: the sequence of
//! [`crate::handover`] on two clusters' etcd keys. Each cluster's planned `config` is written
//! by compare-and-swap at the revision the plan saw (X's when it steps down, Y's when it is
//! promoted); the leaders are watched through their member keys, which the governors rewrite
//! every loop (their REST APIs are inside the VPC).

use super::{Log, write_config};
use crate::aws::plan::{ClusterPlan, ConfigChange};
use crate::handover::{Side, Watch, switch_between};
use spilo_model::{ClusterName, Keyspace, MemberName, MemberStatus};
use std::time::Duration;

/// One cluster of the switchover: its plan and a client of its etcd.
struct EtcdSide<'a> {
    plan: &'a ClusterPlan,
    config: &'a ConfigChange,
    client: etcd_client::Client,
    keys: Keyspace,
    log: &'a Log,
}

impl<'a> EtcdSide<'a> {
    async fn of(plan: &'a ClusterPlan, log: &'a Log) -> Result<Self, String> {
        let (Some(dcs), Some(config)) = (&plan.dcs, &plan.config) else {
            return Err(format!(
                "the plan of {} has no etcd config change for its switchover",
                plan.name
            ));
        };
        let scope = ClusterName::new(plan.name.clone()).map_err(|e| e.to_string())?;
        Ok(EtcdSide {
            plan,
            config,
            client: crate::etcd::connect_dcs(dcs).await?,
            keys: Keyspace::new(&scope),
            log,
        })
    }

    async fn read(&self, key: String) -> Option<Vec<u8>> {
        let mut client = self.client.clone();
        let resp = tokio::time::timeout(crate::etcd::TIMEOUT, client.get(key, None))
            .await
            .ok()?
            .ok()?;
        resp.kvs().first().map(|kv| kv.value().to_vec())
    }
}

impl Watch for EtcdSide<'_> {
    fn name(&self) -> &str {
        &self.plan.name
    }

    async fn leader(&self) -> Option<(String, MemberStatus)> {
        let leader = self.read(self.keys.leader()).await?;
        let name = MemberName::new(String::from_utf8(leader).ok()?).ok()?;
        let status = serde_json::from_slice(&self.read(self.keys.member(&name)).await?).ok()?;
        Some((name.to_string(), status))
    }
}

impl Side for EtcdSide<'_> {
    async fn step_down(&mut self) -> anyhow::Result<()> {
        write_config(self.plan, self.config, self.log)
            .await
            .map_err(anyhow::Error::msg)?;
        self.log.line(
            &self.plan.name,
            "its primary steps down: a standby cluster from now on",
        );
        Ok(())
    }

    async fn step_up_again(&mut self) -> anyhow::Result<()> {
        // Back to what the plan saw of who it follows and who follows it; anything else written
        // since is kept (read, changed, compare-and-swap on the revision read).
        let before = self.config.before.clone().ok_or_else(|| {
            anyhow::anyhow!("the plan did not see {}'s config before", self.plan.name)
        })?;
        let mut client = self.client.clone();
        let restore = crate::list::update_config_key(
            &mut client,
            &self.plan.name,
            self.keys.config(),
            |now| {
                now.standby_cluster = before.standby_cluster.clone();
                now.downstream = before.downstream.clone();
            },
        );
        tokio::time::timeout(3 * crate::etcd::TIMEOUT, restore)
            .await
            .map_err(|_| anyhow::anyhow!("etcd did not answer in time"))??;
        self.log.line(&self.plan.name, "a primary cluster again");
        Ok(())
    }

    async fn take_over(&mut self) -> anyhow::Result<()> {
        write_config(self.plan, self.config, self.log)
            .await
            .map_err(anyhow::Error::msg)
    }
}

/// Switches from `x` (stepping down) to `y` (promoted); the line that reports it.
pub async fn run(
    x: &ClusterPlan,
    y: &ClusterPlan,
    step: Duration,
    log: &Log,
) -> Result<String, String> {
    let mut sx = EtcdSide::of(x, log).await?;
    let mut sy = EtcdSide::of(y, log).await?;
    switch_between(&mut sx, &mut sy, step)
        .await
        .map(|done| done.describe(&x.name, &y.name))
        .map_err(|e| format!("{e:#}"))
}
