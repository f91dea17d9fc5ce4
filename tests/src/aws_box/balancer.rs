//! The load balancer stand-ins: per PostgreSQL stack, an HAProxy on an address of its own,
//! configured from the stack template's primary load balancer (listener, instance port, health
//! check and its interval), and the parts of an ELB's life an auto-scaling group drives:
//! registering the group's new instances and taking a terminating one out first.

use super::{AwsBox, Fleet};
use crate::proc::Spawned;
use std::path::PathBuf;
use std::process::Command;

/// One stack's load balancer stand-in.
pub(super) struct Balancer {
    /// The stack.
    pub stack: String,
    /// The address it listens on.
    pub addr: String,
    /// Its runtime API socket.
    sock: PathBuf,
    _process: Spawned,
}

impl AwsBox {
    /// The template's load balancer as HAProxy needs it: (instance port, health check port,
    /// path, ` check-ssl ...` or nothing, interval in seconds).
    fn check_of(template: &serde_json::Value) -> (String, String, String, String, String) {
        let lb = &template["Resources"]["PrimaryLoadBalancer"]["Properties"];
        let instance_port = lb["Listeners"][0]["InstancePort"]
            .as_str()
            .unwrap_or("5432")
            .to_string();
        let target = lb["HealthCheck"]["Target"]
            .as_str()
            .unwrap_or("HTTP:8008/primary");
        // An ELB's HTTPS health check does not verify the backend's certificate.
        let (ssl, target) = match target.strip_prefix("HTTPS:") {
            Some(t) => (" check-ssl verify none", t),
            None => ("", target.trim_start_matches("HTTP:")),
        };
        let (check_port, path) = target.split_once('/').unwrap_or(("8008", "primary"));
        let interval = lb["HealthCheck"]["Interval"]
            .as_str()
            .unwrap_or("5")
            .to_string();
        (
            instance_port,
            check_port.to_string(),
            path.to_string(),
            ssl.to_string(),
            interval,
        )
    }

    /// Adds the group's instances HAProxy does not know yet (an ELB registers an
    /// auto-scaling group's new instances), through its runtime API.
    pub(super) fn register(
        &mut self,
        n: usize,
        template: &serde_json::Value,
        fleet: &Fleet,
    ) -> anyhow::Result<()> {
        let ask = |cmd: &str| self.haproxy_command(n, cmd);
        let known = ask("show servers state primary")?;
        let (port, check_port, _, ssl, interval) = Self::check_of(template);
        for m in &fleet.instances {
            if known.contains(&format!(" {} ", m.id)) {
                continue;
            }
            let out = ask(&format!(
                "add server primary/{} {}:{port} check port {check_port}{ssl} inter {interval}s fall 2 rise 2 on-marked-down shutdown-sessions",
                m.id, m.ip
            ))?;
            anyhow::ensure!(
                out.contains("New server registered"),
                "add server {}: {out}",
                m.id
            );
            ask(&format!("enable health primary/{}", m.id))?;
            ask(&format!("enable server primary/{}", m.id))?;
        }
        Ok(())
    }

    /// One command on the runtime API of balancer `n`; its answer.
    fn haproxy_command(&self, n: usize, cmd: &str) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let b = self
            .balancers
            .get(n)
            .ok_or_else(|| anyhow::anyhow!("no load balancer stand-in {n}"))?;
        let mut sock = std::os::unix::net::UnixStream::connect(&b.sock)?;
        sock.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = String::new();
        sock.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Takes instance `id` out of the load balancer stand-in, as an auto-scaling group
    /// deregisters an instance from its ELB before terminating it (connection draining is
    /// off: its sessions end).
    pub fn deregister(&self, id: &str) -> anyhow::Result<()> {
        for n in 0..self.balancers.len() {
            self.haproxy_command(n, &format!("set server primary/{id} state maint"))?;
            self.haproxy_command(n, &format!("shutdown sessions server primary/{id}"))?;
            let out = self.haproxy_command(n, &format!("del server primary/{id}"))?;
            anyhow::ensure!(
                out.contains("Server deleted") || out.contains("No such server"),
                "del server {id}: {out}"
            );
        }
        Ok(())
    }

    /// HAProxy as the primary load balancer: the template's listener port and health check,
    /// the instances as servers.
    pub(super) fn balance(
        &mut self,
        stack: &str,
        template: &serde_json::Value,
        fleet: &Fleet,
    ) -> anyhow::Result<()> {
        // The first on the box's `elb` address, the next ones beside it.
        let n = self.balancers.len();
        let addr = if n == 0 {
            self.elb.clone()
        } else {
            let (net, _) = self
                .elb
                .rsplit_once('.')
                .ok_or_else(|| anyhow::anyhow!("elb {}", self.elb))?;
            let addr = format!("{net}.{}", 2 + n);
            crate::privileged::run(
                "ip",
                &["addr", "add", &format!("{addr}/16"), "dev", &self.bridge.0],
            )?;
            addr
        };
        let file = if n == 0 {
            "haproxy".to_string()
        } else {
            format!("haproxy-{n}")
        };
        let sock = self.dir.path().join(format!("{file}.sock"));
        let lb = &template["Resources"]["PrimaryLoadBalancer"]["Properties"];
        let port = lb["Listeners"][0]["LoadBalancerPort"]
            .as_str()
            .unwrap_or("5432");
        let (instance_port, check_port, path, ssl, interval) = Self::check_of(template);
        let idle = lb["ConnectionSettings"]["IdleTimeout"]
            .as_u64()
            .unwrap_or(60);
        let mut cfg = format!(
            "global\n  maxconn 200\n  stats socket {sock} mode 600 level admin\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client {idle}s\n  timeout server {idle}s\n\
             listen primary\n  bind {addr}:{port}\n  option httpchk GET /{path}\n  http-check expect status 200\n  \
             default-server inter {interval}s fall 2 rise 2 on-marked-down shutdown-sessions\n",
            sock = sock.display(),
        );
        for m in &fleet.instances {
            cfg.push_str(&format!(
                "  server {} {}:{instance_port} check port {check_port}{ssl}\n",
                m.id, m.ip
            ));
        }
        let path = self.dir.path().join(format!("{file}.cfg"));
        std::fs::write(&path, cfg)?;
        let mut cmd = Command::new(crate::etcd::which("haproxy")?);
        cmd.arg("-db").arg("-f").arg(&path);
        let process = Spawned::start(cmd, &self.dir.path().join(format!("{file}.log")))?;
        self.balancers.push(Balancer {
            stack: stack.to_string(),
            addr,
            sock,
            _process: process,
        });
        Ok(())
    }

    /// The instances the load balancer stand-in routes to (HAProxy's servers that passed their
    /// health checks), as an ELB's `InService`. HAProxy counts a server as up before its first
    /// check, an ELB does not: wait on this before writing through the load balancer.
    pub fn in_service(&self) -> anyhow::Result<Vec<String>> {
        let first = self.balancers.first().map(|b| b.stack.clone());
        self.in_service_of(first.as_deref().unwrap_or_default())
    }

    /// [`Self::in_service`] for the load balancer of `stack`.
    pub fn in_service_of(&self, stack: &str) -> anyhow::Result<Vec<String>> {
        let n = self
            .balancers
            .iter()
            .position(|b| b.stack == stack)
            .ok_or_else(|| anyhow::anyhow!("no load balancer stand-in for {stack}"))?;
        let out = self.haproxy_command(n, "show stat")?;
        // CSV: pxname, svname, ..., status is the 18th column; checks that ran show in
        // check_status (the 37th).
        Ok(out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let checked = f.get(36).is_some_and(|c| c.starts_with("L7OK"));
                (f.first() == Some(&"primary")
                    && !matches!(f.get(1), Some(&"FRONTEND") | Some(&"BACKEND"))
                    && f.get(17) == Some(&"UP")
                    && checked)
                    .then(|| f[1].to_string())
            })
            .collect())
    }
}
