//! The ZooKeeper server a local cluster runs in etcd's place (`spec.dcs.zookeeper` without
//! hosts): Debian's `zookeeper` 3.8, standalone, on the port etcd's client port would have,
//! its data in the cluster's directory, as the unprivileged user. Its sessions may last from
//! 1 s to a day, so any `ha.ttl` is granted as asked (a member refuses a shorter session than
//! its TTL); its tick is 500 ms (a session's end is checked once a tick, and the fence margin
//! covers half a tick); old snapshots and logs are purged every hour (every lease renewal is
//! a write).

use super::process::spawn;
use super::{LocalCluster, mkdir};
use anyhow::bail;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Debian's start script (it `exec`s the JVM, so the process is the server).
const SERVER: &str = "/usr/share/zookeeper/bin/zkServer.sh";

/// The JVM's flags: a small heap, and a class path (the last `-cp` wins over the script's)
/// with a logging backend, which Debian's leaves out (the server would log nothing), so its
/// log goes to standard error, into `zookeeper.log`.
const JVMFLAGS: &str = "-Xmx128m -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar:\
    /usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar";

/// The server's configuration.
fn zoo_cfg(data: &Path, port: u16) -> String {
    format!(
        "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
         clientPortAddress=127.0.0.1\nminSessionTimeout=1000\nmaxSessionTimeout=86400000\n\
         admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr\n\
         autopurge.snapRetainCount=3\nautopurge.purgeInterval=1\n",
        data.display()
    )
}

/// Whether the server on `port` answers `ruok` with `imok`.
async fn answers(port: u16) -> bool {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"ruok").await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        Ok::<bool, std::io::Error>(answer == "imok")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Ok(true))
    )
}

impl LocalCluster {
    /// Starts ZooKeeper on `port` and waits until it answers (30 s at most).
    pub(super) async fn start_zookeeper(&mut self, port: u16) -> anyhow::Result<()> {
        if !Path::new(SERVER).is_file() {
            bail!(
                "cluster {}: spec.dcs.zookeeper asks spilo up to run ZooKeeper, and {SERVER} is \
                 missing (Debian's zookeeper package; ./scripts/install-deps installs it)",
                self.name
            );
        }
        let dir = self.dir.join("zookeeper");
        mkdir(&dir, 0o700, &self.run_as)?;
        let data = dir.join("data");
        mkdir(&data, 0o700, &self.run_as)?;
        let cfg = dir.join("zoo.cfg");
        std::fs::write(&cfg, zoo_cfg(&data, port))?;
        self.run_as.own(&cfg)?;
        let mut cmd = Command::new(SERVER);
        cmd.arg("start-foreground")
            .arg(&cfg)
            .env("JMXDISABLE", "true")
            .env("JVMFLAGS", JVMFLAGS);
        let log = self.dir.join("zookeeper.log");
        self.etcd = Some(spawn(cmd, &log, &self.run_as)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if answers(port).await {
                return Ok(());
            }
            if let Some(p) = self.etcd.as_mut()
                && let Ok(Some(status)) = p.child.try_wait()
            {
                bail!("ZooKeeper exited ({status}); see {}", log.display());
            }
            if Instant::now() >= deadline {
                bail!("ZooKeeper did not answer within 30s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sessions_up_to_a_day_on_loopback_with_a_short_tick() {
        let cfg = super::zoo_cfg(std::path::Path::new("/state/demo/zookeeper/data"), 20002);
        assert!(cfg.contains("clientPort=20002\n"), "{cfg}");
        assert!(cfg.contains("clientPortAddress=127.0.0.1\n"), "{cfg}");
        assert!(cfg.contains("maxSessionTimeout=86400000\n"), "{cfg}");
        // The fence margin covers half a tick; the server opens its client port only.
        assert!(cfg.contains("tickTime=500\n"), "{cfg}");
        assert!(cfg.contains("admin.enableServer=false\n"), "{cfg}");
        assert!(
            cfg.contains("dataDir=/state/demo/zookeeper/data\n"),
            "{cfg}"
        );
    }
}
