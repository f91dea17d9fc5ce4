//! A private network for partition tests: one network namespace per member, each with a veth
//! into a bridge in the test's namespace (addresses `10.231.<k>.0/24`). The test keeps `.1`,
//! etcd listens on `.2` (still in the test's namespace), member `i` gets `.1<i>`. A partition
//! is a set of blackhole routes inside the namespaces involved, so the test itself still
//! reaches every member: it can see a cut-off primary keep (or stop) accepting writes.
//! Needs root (or passwordless sudo); everything is removed on drop.

use crate::privileged::run;
use std::process::Command;

/// Connects namespace `ns` to `bridge`: a veth pair (`veth` on the bridge, `eth0` inside)
/// with address `cidr` on `eth0`, and the namespace's links up.
pub fn attach(ns: &str, veth: &str, bridge: &str, cidr: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    run("ip", &["link", "set", veth, "master", bridge, "up"])?;
    run("ip", &["-n", ns, "addr", "add", cidr, "dev", "eth0"])?;
    run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// `nsenter` into network namespace `ns` (directly as root, through `sudo -n` otherwise);
/// the caller adds its options, `--` and the program.
pub fn nsenter(ns: &str) -> Command {
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        Command::new("nsenter")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "--preserve-env", "nsenter"]);
        c
    };
    cmd.arg(format!("--net=/run/netns/{ns}"));
    cmd
}

/// The bridge, the namespaces and their addresses.
pub struct NetLab {
    k: u8,
    namespaces: Vec<String>,
}

impl NetLab {
    /// Creates the bridge and `members` namespaces.
    pub fn new(members: usize) -> anyhow::Result<Self> {
        // A subnet per lab, claimed by creating its bridge (two labs of one test process run
        // side by side): one that exists belongs to another lab and is skipped, never removed.
        let start = std::process::id() % 200;
        let mut claimed = None;
        let mut last_error = None;
        for n in 0..200 {
            let k = u8::try_from((start + n) % 200 + 20).unwrap_or(20);
            let bridge = format!("spbr{k}");
            match run("ip", &["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {
                    claimed = Some((k, bridge));
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some((k, bridge)) = claimed else {
            return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free lab bridge")));
        };
        let mut lab = NetLab {
            k,
            namespaces: Vec::new(),
        };
        run(
            "ip",
            &["addr", "add", &format!("10.231.{k}.1/24"), "dev", &bridge],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("10.231.{k}.2/24"), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for i in 1..=members {
            let ns = format!("spilo{k}m{i}");
            let veth = format!("sp{k}v{i}");
            let _ = run("ip", &["netns", "del", &ns]);
            run("ip", &["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            attach(&ns, &veth, &bridge, &format!("{}/24", lab.member_ip(i)))?;
        }
        Ok(lab)
    }

    /// The address etcd listens on.
    pub fn etcd_ip(&self) -> String {
        format!("10.231.{}.2", self.k)
    }

    /// Member `i`'s address (1-based).
    pub fn member_ip(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.k, 10 + i)
    }

    /// Member `i`'s namespace (1-based).
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i - 1]
    }

    /// `program` run inside member `i`'s namespace as `uid`/`gid` (through `nsenter`, which
    /// execs it: the pid is the program's).
    pub fn command(&self, i: usize, uid: u32, gid: u32, program: &std::path::Path) -> Command {
        let mut cmd = nsenter(self.namespace(i));
        cmd.arg(format!("--setuid={uid}"))
            .arg(format!("--setgid={gid}"))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Cuts member `i` off from etcd and from every other member (both directions); the
    /// test's own address stays reachable.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        self.routes("add", i)
    }

    /// Undoes [`Self::isolate`].
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.routes("del", i)
    }

    fn routes(&self, op: &str, i: usize) -> anyhow::Result<()> {
        let me = self.member_ip(i);
        let mut others = vec![self.etcd_ip()];
        for j in 1..=self.namespaces.len() {
            if j != i {
                others.push(self.member_ip(j));
                let host = format!("{me}/32");
                run(
                    "ip",
                    &["-n", self.namespace(j), "route", op, "blackhole", &host],
                )?;
            }
        }
        for other in others {
            let host = format!("{other}/32");
            run(
                "ip",
                &["-n", self.namespace(i), "route", op, "blackhole", &host],
            )?;
        }
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &format!("spbr{}", self.k)]);
    }
}
