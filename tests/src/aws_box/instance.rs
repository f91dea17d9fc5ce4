//! One EC2 instance of the box: a network namespace on the box's bridge with the private
//! address moto gave the instance, an IMDSv2 stand-in at 169.254.169.254 inside it, a sparse
//! file on a loop device as its EBS data volume at the launch template's device path, and the
//! spilo image's root filesystem as an overlay (its own writable layer, kept across reboots
//! like a root volume). Booting runs the image's own boot entry (`/usr/lib/spilo/boot`, what
//! `spilo-boot.service` runs) chrooted into that root, in a private mount namespace.

use crate::netns::nsenter;
use crate::privileged::run;
use crate::proc::Spawned;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What an instance is given by "EC2".
pub struct Launch<'a> {
    /// The instance id.
    pub id: &'a str,
    /// Its private address.
    pub ip: &'a str,
    /// The bridge's prefix length (the subnet of the box).
    pub prefix: u8,
    /// The VPC's range, as the metadata service names it for the instance's interface.
    pub vpc_cidr: &'a str,
    /// The bridge to attach to.
    pub bridge: &'a str,
    /// The region.
    pub region: &'a str,
    /// The instance role's name and its credentials (the JSON IMDS serves).
    pub role: (&'a str, &'a str),
    /// The user data.
    pub user_data: &'a str,
    /// Lines of `/etc/default/spilo` (the site's settings: here the AWS endpoint overrides).
    pub defaults: &'a str,
    /// The data volume's size in GiB and device path.
    pub volume: (u32, &'a str),
    /// The DNS server the instance resolves with (the VPC's resolver), if any.
    pub nameserver: Option<&'a str>,
}

/// A running (or stopped) instance.
pub struct Instance {
    /// The instance id.
    pub id: String,
    /// Its private address.
    pub ip: String,
    /// Its network namespace.
    pub ns: String,
    dir: PathBuf,
    image: PathBuf,
    device: String,
    loop_dev: String,
    imds: Option<Spawned>,
    boot: Option<Spawned>,
    boots: u32,
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

impl Instance {
    /// Creates the namespace, the metadata, the volume and the root's writable layer, and
    /// starts the metadata service; does not boot.
    pub fn launch(
        dir: &Path,
        image: &Path,
        imds_bin: &Path,
        l: &Launch<'_>,
    ) -> anyhow::Result<Self> {
        let dir = dir.join(l.id);
        std::fs::create_dir_all(&dir)?;
        // Claimed by creating it; names in use are skipped, never removed.
        let short: String = l.id.chars().rev().take(6).collect();
        let (ns, veth) = (0..50)
            .map(|n| (format!("spbox-{short}-{n}"), format!("spv{short}{n}")))
            .find(|(ns, _)| run("ip", &["netns", "add", ns]).is_ok())
            .ok_or_else(|| anyhow::anyhow!("no free network namespace name for {}", l.id))?;
        // Removes the namespace (and with it the veth) if the launch fails half-way.
        let guard = NsGuard(Some(ns.clone()));
        crate::netns::attach(&ns, &veth, l.bridge, &format!("{}/{}", l.ip, l.prefix))?;
        run(
            "ip",
            &["-n", &ns, "addr", "add", "169.254.169.254/32", "dev", "lo"],
        )?;

        // The metadata tree, as EC2 serves it for this instance.
        let md = dir.join("imds");
        write(&md.join("meta-data/instance-id"), l.id)?;
        write(&md.join("meta-data/local-ipv4"), l.ip)?;
        write(&md.join("meta-data/placement/region"), l.region)?;
        let mac = "0a:00:00:00:00:01";
        write(&md.join("meta-data/mac"), mac)?;
        write(
            &md.join(format!(
                "meta-data/network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks"
            )),
            l.vpc_cidr,
        )?;
        write(
            &md.join("meta-data/iam/security-credentials/index"),
            l.role.0,
        )?;
        write(
            &md.join("meta-data/iam/security-credentials").join(l.role.0),
            l.role.1,
        )?;
        write(&md.join("user-data"), l.user_data)?;
        let mut imds = nsenter(&ns);
        imds.arg("--")
            .arg(imds_bin)
            .arg("--listen")
            .arg("169.254.169.254:80")
            .arg("--dir")
            .arg(&md);
        let imds = Spawned::start(imds, &dir.join("imds.log"))?;

        // The EBS data volume: a sparse file on a loop device.
        let file = dir.join("volume.img");
        Command::new("truncate")
            .arg("-s")
            .arg(format!("{}G", l.volume.0))
            .arg(&file)
            .status()?;
        let loop_dev = run("losetup", &["-f", "--show", &file.display().to_string()])?
            .trim()
            .to_string();
        guard.disarm();

        // The root volume's writable layer, with the site's settings.
        write(&dir.join("upper/etc/default/spilo"), l.defaults)?;
        if let Some(ns) = l.nameserver {
            write(
                &dir.join("upper/etc/resolv.conf"),
                &format!("nameserver {ns}\n"),
            )?;
        }
        std::fs::create_dir_all(dir.join("work"))?;
        std::fs::create_dir_all(dir.join("root"))?;
        Ok(Self {
            id: l.id.to_string(),
            ip: l.ip.to_string(),
            ns,
            dir,
            image: image.to_path_buf(),
            device: l.volume.1.to_string(),
            loop_dev,
            imds: Some(imds),
            boot: None,
            boots: 0,
        })
    }

    /// Boots: a private mount namespace with the overlay root, `/proc`, `/sys`, a private
    /// `/dev` holding the data volume at its device path, fresh `/run` and `/tmp`, then the
    /// image's boot entry. Its output is the instance's console (`console-<n>.log`).
    pub fn boot(&mut self) -> anyhow::Result<()> {
        self.boots += 1;
        let (major, minor) = device_numbers(&self.loop_dev)?;
        let d = &self.dir;
        let script = format!(
            r#"set -euo pipefail
r={root}
mount -t overlay overlay -o lowerdir={image},upperdir={upper},workdir={work} "$r"
mount -t proc proc "$r/proc"
mount -t sysfs sys "$r/sys"
mount -t tmpfs -o mode=755 dev "$r/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name ma mi <<<"$n"; mknod -m 666 "$r/dev/$name" c "$ma" "$mi"
done
ln -s /proc/self/fd "$r/dev/fd"; ln -s /proc/self/fd/0 "$r/dev/stdin"
ln -s /proc/self/fd/1 "$r/dev/stdout"; ln -s /proc/self/fd/2 "$r/dev/stderr"
mkdir -p "$r/dev/shm" "$r/dev/pts"; mount -t tmpfs -o mode=1777 shm "$r/dev/shm"
mknod -m 660 "$r{device}" b {major} {minor}
mount -t tmpfs -o mode=755 run "$r/run"
mount -t tmpfs -o mode=1777 tmp "$r/tmp"
exec chroot "$r" /usr/lib/spilo/boot"#,
            root = d.join("root").display(),
            image = self.image.display(),
            upper = d.join("upper").display(),
            work = d.join("work").display(),
            device = self.device,
        );
        let mut cmd = nsenter(&self.ns);
        cmd.args([
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "bash",
            "-c",
        ])
        .arg(script);
        self.boot = Some(Spawned::start(cmd, &self.console(self.boots))?);
        Ok(())
    }

    /// The console log of boot `n` (1-based).
    pub fn console(&self, n: u32) -> PathBuf {
        self.dir.join(format!("console-{n}.log"))
    }

    /// The console of the current boot.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(self.console(self.boots)).unwrap_or_default()
    }

    /// How many times it booted.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Shuts the instance down as EC2 does when it terminates one: systemd stops the boot
    /// service (`KillMode=mixed`: SIGTERM to its main process, the boot, which stops the
    /// governor, which stops PostgreSQL and gives up its lease), then what is left after
    /// `grace` is killed.
    pub fn shut_down(&mut self, grace: std::time::Duration) -> anyhow::Result<()> {
        if let Some(b) = self.boot.as_mut() {
            // The boot runs as the child of `unshare --fork`, the spawned process.
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", b.pid()))
                .unwrap_or_default();
            for c in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = std::time::Instant::now() + grace;
            while !b.exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.kill_all()
    }

    /// Every process of the instance, `kill -9` (the metadata service is EC2's, not the
    /// instance's, and stays); returns once none is left.
    pub fn kill_all(&mut self) -> anyhow::Result<()> {
        let keep = self.imds.as_ref().map(Spawned::pid);
        for _ in 0..200 {
            let pids: Vec<u32> = run("ip", &["netns", "pids", &self.ns])?
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|p| Some(*p) != keep)
                .collect();
            if pids.is_empty() {
                if let Some(b) = self.boot.as_mut() {
                    b.exited();
                }
                return Ok(());
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("processes of {} survived kill -9", self.id)
    }
}

/// Deletes a network namespace on drop unless disarmed.
struct NsGuard(Option<String>);

impl NsGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(ns) = &self.0 {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// The major and minor numbers of a block device.
fn device_numbers(dev: &str) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(dev)?.rdev();
    Ok((nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)))
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.kill_all();
        self.imds.take();
        let _ = run("losetup", &["-d", &self.loop_dev]);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}
