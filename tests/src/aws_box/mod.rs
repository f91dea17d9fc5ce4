//! "AWS in a box": a cluster file followed from `spilo apply` to a database on instances
//! booted from the spilo image, on this machine.
//!
//! - moto is the control plane, with IAM enforced: its three free calls make an admin user
//!   (`INITIAL_NO_AUTH_ACTION_COUNT=3`), and every later call is checked against the caller's
//!   policies (`fixtures/moto_box_server.py` works around two moto bugs of that check: it
//!   skips signatures it cannot match, and reads the inline policies of roles CloudFormation
//!   made). The passwords are SSM SecureString parameters and a Secrets Manager secret.
//! - For every instance moto's auto-scaling group reports, [`instance::Instance`] makes a
//!   network namespace on a bridge with the instance's private address, serves IMDSv2 in it
//!   (instance id, address, region, user data from the launch template, the role's credentials
//!   from moto's STS), attaches a loop device as the EBS data volume, and runs the image's own
//!   boot in a chroot of the image's root filesystem.
//! - etcd runs on the bridge (the next AWS issue provisions it); per PostgreSQL stack, an
//!   HAProxy on an address of its own, configured from the template's load balancer
//!   (listener port, health check), stands in for the ELB, and dnsmasq resolves the Route53
//!   record's name to it; [`signals::Recorder`] takes the
//!   `SignalResource` calls moto does not implement.
//!
//! Needs root (CI runs as root); everything is removed on drop.

mod apply;
mod balancer;
mod cluster_files;
pub mod instance;
pub mod signals;
mod zone;

use crate::aws::{Moto, Repo};
use crate::dns::Dns;
use crate::etcd::Etcd;
use crate::privileged::run;
use instance::{Instance, Launch};
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The region of the box.
pub const REGION: &str = "eu-west-1";

/// The admin user's keys (made from moto's free calls).
#[derive(Debug, Clone, Deserialize)]
pub struct Admin {
    /// Access key id.
    pub key: String,
    /// Secret key.
    pub secret: String,
    /// The user's ARN.
    pub arn: String,
}

/// What `moto_box.py setup` made.
#[derive(Debug, Clone, Deserialize)]
pub struct Setup {
    /// The VPC.
    pub vpc: String,
    /// The subnet the instances get their addresses from.
    pub subnet: String,
    /// The hosted zone's id.
    pub zone_id: String,
    /// The replication password's secret.
    pub replication_arn: String,
    /// The passwords, by name.
    pub passwords: std::collections::BTreeMap<String, String>,
}

/// The instances of a stack and their role, as moto reports them.
#[derive(Debug, Clone, Deserialize)]
pub struct Fleet {
    /// Instances (id, private address).
    pub instances: Vec<Machine>,
    /// The role's name.
    pub role: String,
    /// The role's ARN.
    pub role_arn: String,
    /// The group's instances in its own order (a scale-in terminates the first unprotected).
    #[serde(default)]
    pub order: Vec<String>,
    /// The instances protected from scale-in.
    #[serde(default)]
    pub protected: Vec<String>,
}

/// One instance as moto reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Machine {
    /// The instance id.
    pub id: String,
    /// Its private address.
    pub ip: String,
}

/// A `spilo` run.
pub use crate::aws_world::Run;

/// The box.
pub struct AwsBox {
    /// The scratch directory.
    pub dir: tempfile::TempDir,
    /// The host's address on the bridge (moto, etcd, the signal stand-in).
    pub host: String,
    /// The load balancer stand-in's address.
    pub elb: String,
    /// The VPC's range.
    pub cidr: String,
    bridge: Bridge,
    /// moto.
    pub moto: Moto,
    /// The admin user.
    pub admin: Admin,
    /// What the setup made.
    pub setup: Setup,
    /// The etcd the cluster file names.
    pub etcd: Etcd,
    /// The `SignalResource` stand-in.
    pub signals: signals::Recorder,
    /// The repository of cluster files.
    pub repo: Repo,
    image: PathBuf,
    /// The booted instances.
    pub instances: Vec<Instance>,
    /// The load balancer stand-ins, one per PostgreSQL stack launched.
    balancers: Vec<balancer::Balancer>,
    /// The DNS server resolving the cluster's name to the load balancer stand-in.
    pub dns: Option<Dns>,
    /// The cluster CA's certificate (its certificate and key are the Secrets Manager secret
    /// `ca_arn` the cluster file names as `secrets.ca`).
    pub ca: PathBuf,
    /// The CA secret's ARN.
    pub ca_arn: String,
    /// Whether the cluster's REST API is plain HTTP (a cluster without a CA:
    /// [`Self::cluster_file_18`]); else [`Self::statuses`] asks over TLS.
    pub plain_api: bool,
    /// The VPC's resolver: the hosted zone's records as moto's Route53 holds them, on port 53
    /// of the host's address ([`Self::serve_zone`]).
    zone: Option<zone::ZoneDns>,
    /// This box's turn on the machine ([`take_turn`]), released last.
    _turn: nix::fcntl::Flock<std::fs::File>,
}

/// What the image is made of here: the recipe, the boot layer, the binaries and the
/// PostgreSQL 18 it copies.
fn image_inputs(root: &Path, bin: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut files = vec![
        root.join("scripts/image"),
        bin.join("governor"),
        bin.join("spilo"),
        PathBuf::from("/usr/local/lib/postgresql/18/bin/postgres"),
    ];
    for dir in [
        "image/rootfs/usr/lib/spilo",
        "image/rootfs/etc/systemd/system",
    ] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    files.sort();
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(&f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// The image's root filesystem, built by `scripts/image --debug` into a directory named by
/// its inputs, under a lock: test processes side by side share it, none rebuilds one in use.
fn image() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let bin = crate::proc::target_dir().map_err(|e| e.to_string())?;
            let dir = bin.join("aws-box");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let rootfs = dir.join(format!("rootfs-{:016x}", image_inputs(&root, &bin)));
            let script = r#"set -e
[ -e "$1/.complete" ] && exit 0
rm -rf "$1.tmp"
"$2/scripts/image" --debug --no-oci --rootfs-dir "$1.tmp"
rm -rf "$1"; mv "$1.tmp" "$1"; touch "$1/.complete"
# Roots of earlier inputs, unused for an hour.
find "$(dirname "$1")" -maxdepth 1 -name 'rootfs-*' ! -path "$1" -mmin +60 -exec rm -rf {} +"#;
            let out = Command::new("flock")
                .arg(dir.join("lock"))
                .args(["bash", "-c", script, "image"])
                .arg(&rootfs)
                .arg(&root)
                .output()
                .map_err(|e| format!("scripts/image: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/image failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(rootfs)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The box's bridge, deleted on drop.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

/// A bridge and its `10.<k>.0.0/16` range of its own: names and ranges another box or the
/// machine itself uses are skipped (creating the bridge is what claims it), never taken over.
fn claim_bridge() -> anyhow::Result<(u8, Bridge)> {
    let used = run("ip", &["-o", "addr", "show"])?;
    let start = std::process::id() % 100;
    for i in 0..100 {
        let k = u8::try_from((start + i) % 100 + 100).unwrap_or(100);
        if used.contains(&format!(" 10.{k}.")) {
            continue;
        }
        let bridge = format!("spbox{k}");
        if run("ip", &["link", "add", &bridge, "type", "bridge"]).is_ok() {
            return Ok((k, Bridge(bridge)));
        }
    }
    anyhow::bail!("no free bridge and address range for the box")
}

/// Boxes share the machine (`--test-threads`, and processes of their own when re-run as
/// root), except one that measures time: it runs alone. A lock file on the host says whose
/// turn it is.
fn take_turn(alone: bool) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("spilo-box.lock"))?;
    let arg = if alone {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    Flock::lock(file, arg).map_err(|(_, e)| anyhow::anyhow!("lock spilo-box.lock: {e}"))
}

impl AwsBox {
    /// The bridge, moto with IAM enforced and its admin, the network, passwords and image
    /// parameter, etcd, the signal stand-in and a repository.
    pub async fn new() -> anyhow::Result<Self> {
        Self::start(false).await
    }

    /// [`Self::new`] once no other box runs, and none starts until this one is dropped: for
    /// a test that measures time on this 2-core machine.
    pub async fn alone() -> anyhow::Result<Self> {
        Self::start(true).await
    }

    async fn start(alone: bool) -> anyhow::Result<Self> {
        let turn = tokio::task::spawn_blocking(move || take_turn(alone)).await??;
        let image = tokio::task::spawn_blocking(image).await??;
        let dir = tempfile::Builder::new().prefix("spilo-box-").tempdir()?;
        let dir_path = dir.path().to_path_buf();
        let (k, bridge) = claim_bridge()?;
        let (host, elb, cidr) = (
            format!("10.{k}.0.1"),
            format!("10.{k}.0.2"),
            format!("10.{k}.0.0/16"),
        );
        run(
            "ip",
            &["addr", "add", &format!("{host}/16"), "dev", &bridge.0],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{elb}/16"), "dev", &bridge.0],
        )?;
        run("ip", &["link", "set", &bridge.0, "up"])?;
        let moto = Moto::start_with(
            dir.path(),
            &host,
            &[("INITIAL_NO_AUTH_ACTION_COUNT", "3")],
            Some("moto_box_server.py"),
        )
        .await?;
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_box.py");
        let admin: Admin = serde_json::from_str(&moto.python(&fixture, &["bootstrap"])?)?;
        let signals = signals::Recorder::start(&host).await?;
        let etcd = Etcd::start_on(dir.path(), &host).await?;
        let repo = Repo::init(&dir.path().join("repo"))?;
        let mut b = Self {
            _turn: turn,
            dir,
            host,
            elb,
            cidr,
            bridge,
            moto,
            admin,
            setup: Setup {
                vpc: String::new(),
                subnet: String::new(),
                zone_id: String::new(),
                replication_arn: String::new(),
                passwords: Default::default(),
            },
            etcd,
            signals,
            repo,
            image,
            instances: Vec::new(),
            balancers: Vec::new(),
            dns: None,
            ca: dir_path.join("ca.crt"),
            ca_arn: String::new(),
            plain_api: false,
            zone: None,
        };
        let version = spilo::aws::userdata::VERSION;
        let cidr = b.cidr.clone();
        b.setup = serde_json::from_str(
            &b.python(&["setup", REGION, &cidr, "orders", version, "amd64"])?,
        )?;
        // The cluster CA: certificate and key in one Secrets Manager secret, as an operator
        // keeps it; clients trust its certificate.
        let ca = spilo_pki::new_ca(
            "spilo box CA",
            std::time::Duration::from_secs(86_400),
            std::time::SystemTime::now(),
        )?;
        std::fs::write(&b.ca, &ca.cert)?;
        // The key stays with the test (0600, the box's directory): it issues client
        // certificates, as an operator would.
        let key = b.dir.path().join("ca.key");
        std::fs::write(&key, &ca.key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let bundle = b.dir.path().join("ca.bundle");
        std::fs::write(&bundle, format!("{}{}", ca.cert, ca.key))?;
        let bundle_arg = bundle.display().to_string();
        b.ca_arn = b
            .python(&["secret", REGION, "spilo/orders/ca", &bundle_arg])?
            .trim()
            .to_string();
        std::fs::remove_file(&bundle)?;
        crate::tls::trust(&b.ca)?;
        Ok(b)
    }

    /// Runs `moto_box.py ARGS` as the admin.
    pub fn python(&self, args: &[&str]) -> anyhow::Result<String> {
        self.python_as(
            args,
            &[
                ("MOTO_KEY", &self.admin.key),
                ("MOTO_SECRET", &self.admin.secret),
            ],
        )
    }

    /// Runs `moto_box.py ARGS` with `env` (keys of a role's session).
    pub fn python_as(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
        let out = Command::new(crate::aws::venv()?.join("bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_box.py"))
            .args(args)
            .env("MOTO_ENDPOINT", &self.moto.endpoint)
            .envs(env.iter().copied())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "moto_box.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `spilo ARGS --repo <repo>` as the admin, against moto.
    pub fn spilo(&self, args: &[&str]) -> Run {
        self.spilo_env(args, &[])
    }

    /// [`Self::spilo`] with the cluster's REST API credentials (a plan of a major upgrade
    /// asks the leader's check).
    pub fn spilo_with_api(&self, args: &[&str]) -> Run {
        self.spilo_env(
            args,
            &[
                ("SPILO_API_TOKEN", self.setup.passwords["restapi"].clone()),
                ("SPILO_API_CACERT", self.ca.display().to_string()),
            ],
        )
    }

    /// [`Self::spilo`] with more environment.
    pub fn spilo_env(&self, args: &[&str], extra: &[(&str, String)]) -> Run {
        let mut env = vec![
            ("SPILO_AWS_ENDPOINT_URL", self.moto.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.admin.key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.admin.secret.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ];
        env.extend(extra.iter().cloned());
        crate::aws_world::run_spilo(&self.repo.path, args, &env)
    }

    /// Plays EC2 for `stack`: every instance moto's auto-scaling group launched gets its
    /// namespace, metadata (the role's credentials from moto's STS), volume and root, and
    /// boots; then the load balancer stand-in and the DNS name are set up from the template
    /// (for the first PostgreSQL stack launched).
    pub async fn launch(&mut self, stack: &str) -> anyhow::Result<()> {
        let fleet: Fleet = serde_json::from_str(&self.python(&["instances", REGION, stack])?)?;
        let admin_arn = self.admin.arn.clone();
        self.python(&["trust", REGION, &fleet.role, &admin_arn])?;
        let template: serde_json::Value =
            serde_json::from_str(&self.python(&["template", REGION, stack])?)?;
        let lt = &template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"];
        let user_data = lt["UserData"]["Fn::Base64"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no user data in the launch template"))?
            .to_string();
        let device = lt["BlockDeviceMappings"][0]["DeviceName"]
            .as_str()
            .unwrap_or("/dev/xvdk")
            .to_string();
        let size = lt["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"]
            .as_u64()
            .unwrap_or(10) as u32;
        let imds = crate::proc::target_dir()?.join("imds");
        let defaults = format!(
            "AWS_ENDPOINT_URL={}\nAWS_ENDPOINT_URL_CLOUDFORMATION={}\n",
            self.moto.endpoint, self.signals.endpoint
        );
        for m in &fleet.instances {
            // Booted before: a second launch boots only the group's new instances.
            if self.instances.iter().any(|i| i.id == m.id) {
                continue;
            }
            let creds = self.python(&["assume", REGION, &fleet.role_arn, &m.id])?;
            let mut i = Instance::launch(
                self.dir.path(),
                &self.image,
                &imds,
                &Launch {
                    id: &m.id,
                    ip: &m.ip,
                    prefix: 16,
                    vpc_cidr: &self.cidr,
                    bridge: &self.bridge.0,
                    region: REGION,
                    role: (&fleet.role, creds.trim()),
                    user_data: &user_data,
                    defaults: &defaults,
                    volume: (size, &device),
                    nameserver: self.zone.as_ref().map(|_| self.host.as_str()),
                },
            )?;
            i.boot()?;
            self.instances.push(i);
        }
        // A PostgreSQL stack's load balancer and DNS name; an etcd stack has neither. Each
        // PostgreSQL stack gets a load balancer stand-in of its own; the zone resolves each
        // balancer's DNS name to its stand-in.
        if template["Resources"]["PrimaryLoadBalancer"].is_object() {
            match self.balancers.iter().position(|b| b.stack == stack) {
                Some(n) => self.register(n, &template, &fleet)?,
                None => {
                    self.balance(stack, &template, &fleet)?;
                    let dns = self.python(&["balancer", REGION, stack])?;
                    let mut map: serde_json::Map<String, serde_json::Value> =
                        std::fs::read_to_string(self.dir.path().join("balancers.json"))
                            .ok()
                            .and_then(|t| serde_json::from_str(&t).ok())
                            .unwrap_or_default();
                    let addr = self.balancers.last().map(|b| b.addr.clone());
                    map.insert(dns.trim().to_string(), addr.into());
                    std::fs::write(
                        self.dir.path().join("balancers.json"),
                        serde_json::Value::Object(map).to_string(),
                    )?;
                }
            }
        }
        // The test host resolves the first PostgreSQL stack's name (to the first stand-in).
        if let (Some(record), None) = (template["Outputs"]["DnsName"]["Value"].as_str(), &self.dns)
            && self.balancers.first().is_some_and(|b| b.stack == stack)
        {
            let record = record.trim_end_matches('.').to_string();
            let elb = self.elb.clone();
            self.dns = Some(Dns::start_host(self.dir.path(), &record, &elb)?);
        }
        Ok(())
    }

    /// Serves the hosted zone's records (as Route53 holds them at each moment) to the
    /// instances launched from now on, as the VPC's resolver; returns its `address:port`.
    pub fn serve_zone(&mut self) -> anyhow::Result<String> {
        let python = crate::aws::venv()?.join("bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_box.py");
        let z = zone::ZoneDns::start(
            self.dir.path(),
            &self.host,
            zone::Source {
                python,
                script,
                env: vec![
                    ("MOTO_ENDPOINT".into(), self.moto.endpoint.clone()),
                    ("MOTO_KEY".into(), self.admin.key.clone()),
                    ("MOTO_SECRET".into(), self.admin.secret.clone()),
                ],
                region: REGION.into(),
                zone_id: self.setup.zone_id.clone(),
                balancers: self.dir.path().join("balancers.json"),
            },
        )?;
        let addr = format!("{}:53", self.host);
        self.zone = Some(z);
        Ok(addr)
    }

    /// The group of `stack` as moto has it now.
    pub fn fleet(&self, stack: &str) -> anyhow::Result<Fleet> {
        Ok(serde_json::from_str(&self.python(&[
            "instances",
            REGION,
            stack,
        ])?)?)
    }

    /// Stops those of `members` (instances of `stack`) the group no longer has (its scale-in
    /// terminated them): what the group and EC2 do to a terminated instance, taking it out of
    /// the load balancer, then shutting it down ([`Instance::shut_down`]). Returns their ids.
    pub fn reap(&mut self, stack: &str, members: &[String]) -> anyhow::Result<Vec<String>> {
        let fleet = self.fleet(stack)?;
        let kept: Vec<&str> = fleet.instances.iter().map(|m| m.id.as_str()).collect();
        let gone: Vec<String> = members
            .iter()
            .filter(|id| !kept.contains(&id.as_str()))
            .cloned()
            .collect();
        for id in &gone {
            if let Some(i) = self.instances.iter().position(|i| i.id == *id) {
                self.deregister(id)?;
                self.instances[i].shut_down(std::time::Duration::from_secs(90))?;
            }
        }
        self.instances.retain(|i| !gone.contains(&i.id));
        Ok(gone)
    }

    /// Terminates instance `id` as its auto-scaling group would (moto launches the group's
    /// replacement, which the next [`Self::launch`] boots): the instance and everything on it
    /// stop at once.
    pub fn terminate(&mut self, id: &str) -> anyhow::Result<()> {
        self.python(&["terminate", REGION, id])?;
        self.instances.retain(|i| i.id != id);
        Ok(())
    }

    /// The address the cluster's DNS name resolves to, through the box's DNS server.
    pub async fn resolve(&self, name: &str) -> anyhow::Result<String> {
        use hickory_resolver::Resolver;
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let addr: std::net::SocketAddr = self
            .dns
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no DNS server"))?
            .addr
            .parse()?;
        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
        for c in &mut ns.connections {
            c.port = addr.port();
        }
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .build()?;
        let found = resolver.lookup_ip(format!("{name}.")).await?;
        found
            .iter()
            .next()
            .map(|ip| ip.to_string())
            .ok_or_else(|| anyhow::anyhow!("{name} resolves to nothing"))
    }

    /// Each instance's `/status`, in launch order (`None`: no answer); over TLS, or plain
    /// when [`Self::plain_api`] says the cluster has no CA.
    pub async fn statuses(&self) -> Vec<Option<spilo_model::NodeStatus>> {
        let ca = std::fs::read(&self.ca)
            .ok()
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok());
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .tls_certs_only(ca)
            .build()
            .unwrap_or_default();
        let mut out = Vec::new();
        let scheme = if self.plain_api { "http" } else { "https" };
        for i in &self.instances {
            let s = match http
                .get(format!("{scheme}://{}:8008/status", i.ip))
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            out.push(s);
        }
        out
    }

    /// Prints every instance's console and the box's logs (for a failed test).
    pub fn print_logs(&self) {
        for i in &self.instances {
            for n in 1..=i.boots() {
                eprintln!(
                    "===== {} console {n} =====\n{}",
                    i.id,
                    std::fs::read_to_string(i.console(n)).unwrap_or_default()
                );
            }
        }
        let mut logs: Vec<String> = (1..self.balancers.len())
            .map(|n| format!("haproxy-{n}.log"))
            .collect();
        logs.extend(["haproxy.log".to_string(), "moto.log".to_string()]);
        for f in &logs {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "===== {f} =====\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

impl Drop for AwsBox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        self.instances.clear();
        self.balancers.clear();
        // The bridge goes with the box (`Bridge` drops after the instances).
    }
}

/// The index of the member that leads and runs a writable primary, in [`AwsBox::statuses`].
pub fn primary(all: &[Option<spilo_model::NodeStatus>]) -> Option<usize> {
    all.iter().position(|s| {
        s.as_ref()
            .is_some_and(|s| s.is_leader && s.member.running_as(spilo_model::MemberRole::Primary))
    })
}

/// How many members run as replicas that stream, in [`AwsBox::statuses`].
pub fn streaming(all: &[Option<spilo_model::NodeStatus>]) -> usize {
    all.iter()
        .flatten()
        .filter(|s| s.member.running_as(spilo_model::MemberRole::Replica) && s.streaming)
        .count()
}
