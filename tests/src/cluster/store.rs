//! The test cluster's coordination store, whichever it is: where members reach it and what a
//! key holds now.

use super::Cluster;
use std::time::Duration;
use zookeeper_client as zk;

impl Cluster {
    /// The address members reach the store at (etcd's client address, or the first
    /// ZooKeeper server's).
    pub fn store_addr(&self) -> String {
        match self.zookeeper.first() {
            Some(z) => z.host.clone(),
            None => self.etcd.client_addr.clone(),
        }
    }

    /// The value of `key` in the store now (`None`: absent).
    pub async fn store_get(&self, key: &str) -> anyhow::Result<Option<String>> {
        if self.zookeeper.is_empty() {
            return Ok(self.etcd.get(key).await?.map(|(value, _)| value));
        }
        let hosts: Vec<&str> = self.zookeeper.iter().map(|z| z.host.as_str()).collect();
        let client = tokio::time::timeout(
            Duration::from_secs(5),
            zk::Client::connector().connect(&hosts.join(",")),
        )
        .await??;
        match client.get_data(key).await {
            Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
