//! The load balancer stand-in: HAProxy configured from the stack template's primary load
//! balancer (listener, instance port, health check and its interval), and the parts of an ELB's
//! life an auto-scaling group drives: registering the group's new instances and taking a
//! terminating one out first.

use super::{AwsBox, Fleet};
use crate::proc::Spawned;
use std::process::Command;

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
        template: &serde_json::Value,
        fleet: &Fleet,
    ) -> anyhow::Result<()> {
        let ask = |cmd: &str| self.haproxy_command(cmd);
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

    /// One command on HAProxy's runtime API; its answer.
    fn haproxy_command(&self, cmd: &str) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        let mut sock =
            std::os::unix::net::UnixStream::connect(self.dir.path().join("haproxy.sock"))?;
        sock.write_all(format!("{cmd}\n").as_bytes())?;
        let mut out = String::new();
        sock.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Takes instance `id` out of the load balancer stand-in, as an auto-scaling group
    /// deregisters an instance from its ELB before terminating it (connection draining is
    /// off: its sessions end).
    pub fn deregister(&self, id: &str) -> anyhow::Result<()> {
        if self.haproxy.is_none() {
            return Ok(());
        }
        self.haproxy_command(&format!("set server primary/{id} state maint"))?;
        self.haproxy_command(&format!("shutdown sessions server primary/{id}"))?;
        let out = self.haproxy_command(&format!("del server primary/{id}"))?;
        anyhow::ensure!(
            out.contains("Server deleted") || out.contains("No such server"),
            "del server {id}: {out}"
        );
        Ok(())
    }

    /// HAProxy as the primary load balancer: the template's listener port and health check,
    /// the instances as servers.
    pub(super) fn balance(
        &mut self,
        template: &serde_json::Value,
        fleet: &Fleet,
    ) -> anyhow::Result<()> {
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
             listen primary\n  bind {elb}:{port}\n  option httpchk GET /{path}\n  http-check expect status 200\n  \
             default-server inter {interval}s fall 2 rise 2 on-marked-down shutdown-sessions\n",
            elb = self.elb,
            sock = self.dir.path().join("haproxy.sock").display(),
        );
        for m in &fleet.instances {
            cfg.push_str(&format!(
                "  server {} {}:{instance_port} check port {check_port}{ssl}\n",
                m.id, m.ip
            ));
        }
        let path = self.dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let mut cmd = Command::new(crate::etcd::which("haproxy")?);
        cmd.arg("-db").arg("-f").arg(&path);
        self.haproxy = Some(Spawned::start(cmd, &self.dir.path().join("haproxy.log"))?);
        Ok(())
    }

    /// The instances the load balancer stand-in routes to (HAProxy's servers that passed their
    /// health checks), as an ELB's `InService`. HAProxy counts a server as up before its first
    /// check, an ELB does not: wait on this before writing through the load balancer.
    pub fn in_service(&self) -> anyhow::Result<Vec<String>> {
        let out = self.haproxy_command("show stat")?;
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
