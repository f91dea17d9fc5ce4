//! The endpoints a client connects to in the failover and switchover benchmarks, beside the
//! members themselves: one HAProxy with a port per way of finding the primary, so one run
//! measures the same failover through each of them.
//!
//! - Patroni's documented HAProxy configuration (`haproxy.cfg` in Patroni's repository:
//!   `inter 3s fall 3 rise 2 on-marked-down shutdown-sessions`), checking `GET /primary`,
//!   which both systems answer 200 only on the primary;
//! - the AWS template's classic load balancer check (`routing: healthCheck`: `GET /primary`
//!   every 5 s, the fastest an ELB allows, 2 failures to take an instance out and 2 successes
//!   to put one in), as the AWS-in-a-box tier's stand-in (`aws_box/balancer.rs`) runs it;
//! - spilo up's configuration with `routing: healthCheck` (its check, rendered by
//!   `spilo::local::haproxy`, against `GET /primary`);
//! - spilo up's default, `routing: proxy`: every member's primary proxy, checked on `/proxy`
//!   (only where the members run one: Patroni has no such thing).

use crate::cluster::Cluster;
use crate::patroni::PatroniCluster;
use crate::proc::{RunAs, Spawned};
use spilo::local::haproxy::{self, Check, Server};
use std::path::Path;

/// How a member is reached: PostgreSQL, the REST API and, for spilo, the primary proxy.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// PostgreSQL's port.
    pub pg: u16,
    /// The REST API's port.
    pub api: u16,
    /// The primary proxy's port, when the member runs one.
    pub proxy: Option<u16>,
}

/// One way through HAProxy to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Patroni's documented check timing on `GET /primary`.
    PatroniCheck,
    /// The AWS template's ELB check on `GET /primary`.
    ElbCheck,
    /// spilo up's check timing on `GET /primary` (`routing: healthCheck`).
    SpiloCheck,
    /// spilo up's default: the members' primary proxies (`routing: proxy`).
    SpiloProxy,
}

impl Route {
    /// Every route, in the order of the table's columns.
    pub const ALL: [Route; 4] = [
        Route::PatroniCheck,
        Route::ElbCheck,
        Route::SpiloCheck,
        Route::SpiloProxy,
    ];

    /// The column heading.
    pub fn label(self) -> &'static str {
        match self {
            Route::PatroniCheck => "HAProxy, Patroni's haproxy.cfg (inter 3s fall 3 rise 2)",
            Route::ElbCheck => "HAProxy as the AWS template's ELB check (5 s, 2 out, 2 in)",
            Route::SpiloCheck => "HAProxy, spilo up's check (routing: healthCheck)",
            Route::SpiloProxy => "HAProxy -> primary proxies (spilo up's default)",
        }
    }

    /// The prober's label for writes through this route.
    pub fn key(self) -> &'static str {
        match self {
            Route::PatroniCheck => "lb-patroni-check",
            Route::ElbCheck => "lb-elb-check",
            Route::SpiloCheck => "lb-spilo-check",
            Route::SpiloProxy => "lb-spilo-proxy",
        }
    }
}

/// A running HAProxy with one port per route the members allow.
pub struct Endpoints {
    /// The routes and their ports on 127.0.0.1.
    pub routes: Vec<(Route, u16)>,
    /// HAProxy's runtime API.
    socket: std::path::PathBuf,
    _haproxy: Spawned,
}

impl Endpoints {
    /// Starts HAProxy in `dir` for `members`, checking their REST APIs over TLS against `ca`
    /// when given.
    pub fn start(
        dir: &Path,
        members: &[Backend],
        ca: Option<&Path>,
        run_as: RunAs,
    ) -> anyhow::Result<Self> {
        let servers = |port: &dyn Fn(&Backend) -> Option<u16>| -> Option<Vec<Server>> {
            members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Some(Server {
                        name: format!("m{}", i + 1),
                        port: port(m)?,
                        check_port: m.api,
                    })
                })
                .collect()
        };
        let spilo_up = Check {
            interval_s: spilo_model::spec::HealthCheck::default().interval,
            ca: ca.map(Path::to_path_buf),
        };
        // HAProxy runs as the servers' user: its socket goes in a directory of that user's.
        let own = dir.join("bench-haproxy");
        std::fs::create_dir_all(&own)?;
        run_as.own(&own)?;
        let socket = own.join("haproxy.sock");
        // The runtime API, to see what each route's checks concluded.
        let mut cfg = haproxy::header("the failover and switchover benchmarks").replacen(
            "global\n",
            &format!("global\n    stats socket {} mode 666\n", socket.display()),
            1,
        );
        let mut routes = Vec::new();
        for route in Route::ALL {
            let port = crate::ports::free();
            let section = match route {
                Route::PatroniCheck => servers(&|m| Some(m.pg)).map(|s| {
                    checked(
                        route,
                        port,
                        "inter 3s fall 3 rise 2 on-marked-down shutdown-sessions",
                        &s,
                        ca,
                    )
                }),
                Route::ElbCheck => servers(&|m| Some(m.pg)).map(|s| {
                    checked(
                        route,
                        port,
                        "inter 5s fall 2 rise 2 on-marked-down shutdown-sessions",
                        &s,
                        ca,
                    )
                }),
                Route::SpiloCheck => servers(&|m| Some(m.pg))
                    .map(|s| spilo_up.listen(route.key(), port, "/primary", "first", &s, false)),
                Route::SpiloProxy => servers(&|m| m.proxy)
                    .map(|s| spilo_up.listen(route.key(), port, "/proxy", "first", &s, true)),
            };
            if let Some(section) = section {
                cfg += &section;
                routes.push((route, port));
            }
        }
        let path = dir.join("bench-haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let mut cmd = run_as.command(Path::new("haproxy"));
        cmd.arg("-db").arg("-f").arg(&path);
        let haproxy = Spawned::start(cmd, &dir.join("bench-haproxy.log"))?;
        Ok(Self {
            routes,
            socket,
            _haproxy: haproxy,
        })
    }

    /// Waits until every route's checks have settled on the cluster as it is: a route that
    /// checks `/primary` has exactly one server up, the proxies' route at least one. (HAProxy
    /// starts every server up; until the checks took the replicas out, a client reaches them
    /// in turn and a failover measured then would find the new primary already in service.)
    pub async fn settled(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        crate::wait::until("the load balancers' checks to settle", timeout, || async {
            let state = self.servers_up().ok()?;
            self.routes
                .iter()
                .all(|(route, _)| {
                    let up = state.get(route.key()).copied().unwrap_or(0);
                    match route {
                        Route::SpiloProxy => up >= 1,
                        _ => up == 1,
                    }
                })
                .then_some(())
        })
        .await
    }

    /// How many servers each `listen` section has up (`show servers state`).
    fn servers_up(&self) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
        use std::io::{Read, Write};
        let mut sock = std::os::unix::net::UnixStream::connect(&self.socket)?;
        sock.write_all(b"show servers state\n")?;
        let mut out = String::new();
        sock.read_to_string(&mut out)?;
        let mut up = std::collections::BTreeMap::new();
        // `be_id be_name srv_id srv_name srv_addr srv_op_state ...`; 2 is running.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(backend), Some(state)) = (f.get(1), f.get(5)) {
                let n: &mut usize = up.entry(backend.to_string()).or_default();
                *n += usize::from(*state == "2");
            }
        }
        Ok(up)
    }

    /// For a spilo cluster whose members run primary proxies ([`run_proxies`]).
    pub fn of_spilo(c: &Cluster) -> anyhow::Result<Self> {
        let backends = c.members.iter().map(|m| Backend {
            pg: m.pg_port,
            api: m.api_port,
            proxy: proxy_port(&m.extra_yaml),
        });
        Self::start(
            c.dir(),
            &backends.collect::<Vec<_>>(),
            c.ca_cert(),
            c.run_as(),
        )
    }

    /// For a Patroni cluster (no primary proxies).
    pub fn of_patroni(c: &PatroniCluster) -> anyhow::Result<Self> {
        let backends = c.members.iter().map(|m| Backend {
            pg: m.pg_port,
            api: m.api_port,
            proxy: None,
        });
        Self::start(
            c.dir(),
            &backends.collect::<Vec<_>>(),
            None,
            RunAs::detect()?,
        )
    }

    /// The table's heading cells, one per route: ` through <route> |`.
    pub fn headings() -> String {
        Route::ALL
            .iter()
            .map(|r| format!(" through {} |", r.label()))
            .collect()
    }

    /// A row's cells, one per route, from `cell(label)`.
    pub fn cells(cell: impl Fn(&str) -> String) -> String {
        Route::ALL
            .iter()
            .map(|r| format!(" {} |", cell(r.key())))
            .collect()
    }

    /// `(label, connection string)` for a prober: [`DIRECT`] with `direct`, then one per route.
    pub fn targets(&self, direct: String) -> Vec<(String, String)> {
        let mut v = vec![(DIRECT.to_string(), direct)];
        v.extend(
            self.routes
                .iter()
                .map(|(r, port)| (r.key().to_string(), crate::sql::read_write_dsn(&[*port]))),
        );
        v
    }
}

/// The prober's label for writes to the members themselves (a multi-host connection string).
pub const DIRECT: &str = "direct";

/// Gives every member of `c` a primary proxy on a free port (before the governors start).
pub fn run_proxies(c: &mut Cluster) {
    for m in &mut c.members {
        m.extra_yaml += &format!(
            "proxy: {{listen: \"127.0.0.1:{}\"}}\n",
            crate::ports::free()
        );
    }
}

/// The primary proxy's port in a member's extra configuration.
fn proxy_port(extra_yaml: &str) -> Option<u16> {
    let rest = extra_yaml.split("proxy: {listen: \"127.0.0.1:").nth(1)?;
    rest.split('"').next()?.parse().ok()
}

/// A `listen` section as Patroni's `haproxy.cfg` writes it, with `default-server` options
/// `timing` and `GET /primary` as the check (Patroni's `option httpchk` alone sends
/// `OPTIONS /`, which Patroni answers like `/primary` and spilo does not serve).
fn checked(route: Route, port: u16, timing: &str, servers: &[Server], ca: Option<&Path>) -> String {
    let tls = ca
        .map(|c| format!(" check-ssl verify required ca-file {}", c.display()))
        .unwrap_or_default();
    let mut s = format!(
        "listen {}\n    bind 127.0.0.1:{port}\n    option httpchk\n    \
         http-check send meth GET uri /primary\n    http-check expect status 200\n    \
         default-server {timing}\n",
        route.key()
    );
    for v in servers {
        s += &format!(
            "    server {} 127.0.0.1:{} maxconn 100 check port {}{tls}\n",
            v.name, v.port, v.check_port
        );
    }
    s.push('\n');
    s
}
