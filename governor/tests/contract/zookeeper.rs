//! A real ZooKeeper for tests: Debian's `zookeeper` (3.8), standalone or a three-server
//! ensemble, on free loopback ports, with its data in a temporary directory; and a TCP proxy
//! in front of it that a test can cut, as a network partition of one member. The contract
//! tests (`governor/tests/contract`) and the end-to-end tests (`spilo_e2e::zookeeper`)
//! include this one file.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Where Debian's package puts the server's start script.
const SERVER: &str = "/usr/share/zookeeper/bin/zkServer.sh";

/// A ZooKeeper server, killed on drop.
pub struct RealZooKeeper {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl RealZooKeeper {
    /// The server's process id (the script execs the JVM).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RealZooKeeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts ZooKeeper and waits until it answers (20 s at most). Sessions of 1 s to 120 s are
/// granted as asked (`tickTime` 500 ms: expiry is checked every tick).
pub async fn start() -> RealZooKeeper {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    let child = server(dir.path(), port, "");
    let host = format!("127.0.0.1:{port}");
    listening(&host).await;
    RealZooKeeper {
        child,
        host,
        _dir: dir,
    }
}

/// Waits until `host` accepts connections (20 s at most).
async fn listening(host: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(host).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "ZooKeeper did not listen on {host} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a ZooKeeper server with `cfg` (the lines after `dataDir` and `clientPort`) in `dir`.
fn server(dir: &std::path::Path, port: u16, cfg: &str) -> Child {
    let file = dir.join("zoo.cfg");
    std::fs::write(
        &file,
        format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\nmaxSessionTimeout=120000\nadmin.enableServer=false\n\
             4lw.commands.whitelist=srvr\n{cfg}",
            dir.join("data").display()
        ),
    )
    .expect("write zoo.cfg");
    Command::new(SERVER)
        .arg("start-foreground")
        .arg(&file)
        .env("ZOO_LOG_DIR", dir)
        .env("JMXDISABLE", "true")
        .env("JVMFLAGS", "-Xmx128m")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ZooKeeper (Debian's zookeeper; ./scripts/install-deps installs it) starts")
}

/// A three-server ensemble on loopback ports, each server killed on drop.
pub async fn start_ensemble() -> Vec<RealZooKeeper> {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("a temporary directory"))
        .collect();
    let ports: Vec<(u16, u16, u16)> = (0..3)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, (_, quorum, election))| {
            format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1)
        })
        .collect();
    let cfg = format!("initLimit=10\nsyncLimit=5\n{peers}");
    let mut out = Vec::new();
    for (i, dir) in dirs.into_iter().enumerate() {
        std::fs::create_dir_all(dir.path().join("data")).expect("data directory");
        std::fs::write(dir.path().join("data/myid"), format!("{}\n", i + 1)).expect("myid");
        let child = server(dir.path(), ports[i].0, &cfg);
        out.push(RealZooKeeper {
            child,
            host: format!("127.0.0.1:{}", ports[i].0),
            _dir: dir,
        });
    }
    for z in &out {
        listening(&z.host).await;
    }
    out
}

/// Which of `servers` leads the ensemble now (`srvr` says `Mode: leader`), once one does
/// (30 s at most).
pub async fn leader_of(servers: &[RealZooKeeper]) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, z) in servers.iter().enumerate() {
            if let Ok(mut s) = TcpStream::connect(&z.host).await {
                let _ = s.write_all(b"srvr").await;
                let mut answer = String::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut answer))
                    .await;
                if answer.contains("Mode: leader") {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ZooKeeper server led within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP proxy to one address that can be cut: its connections dropped, new ones refused.
pub struct Proxy {
    /// `127.0.0.1:<port>`.
    pub host: String,
    cut: Arc<AtomicBool>,
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// A proxy to `to` on a free loopback port.
    pub async fn to(to: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let (to, cut2, tasks2) = (to.to_string(), cut.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue;
                }
                let to = to.clone();
                tasks2.lock().await.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            host,
            cut,
            tasks,
            accept,
        }
    }

    /// Drops every connection and refuses new ones until [`Self::heal`].
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.tasks.lock().await.abort_all();
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
