//! The primary proxy (`proxy:` in the configuration): a TCP port on every member that forwards
//! each connection to the PostgreSQL of the member that holds the leader key. A load balancer then keeps every instance in service (`GET /proxy`) and clients
//! reach a new primary as soon as it runs, whatever the load balancer's check interval.
//!
//! [`follow`] keeps the target from etcd with its own reads, woken by the watch task, apart
//! from the HA loop (which may be busy for minutes, rewinding or cloning). [`serve`] accepts
//! and forwards. A session ends when the target changes, so no client stays on a demoted
//! primary. Without a successful etcd read for a TTL there is no target: a partitioned member
//! stops forwarding, closes new connections at once and fails `/proxy`.

use crate::dcs::{Coordination, Store};
use crate::ha::ClusterView;
use spilo_model::MemberName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where the proxy forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The leader.
    pub member: MemberName,
    /// Its PostgreSQL, `host:port`.
    pub address: String,
}

/// The target a view names: the leader key's holder, at the address its member key gives.
/// Only the holder may run as a writable primary; one that is still promoting answers
/// read-only for those few hundred milliseconds and its sessions become writable with the
/// promotion, so clients reach it without waiting for its next member key.
pub fn target_of(view: &ClusterView) -> Option<Target> {
    let leader = view.leader.as_ref()?;
    let member = view.members.get(&leader.name)?;
    let (host, port) = member.host_port()?;
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Some(Target {
        member: leader.name.clone(),
        address,
    })
}

/// What the proxy forwards to after a read: the view's target when the read succeeded, the
/// last one while the last success is younger than `ttl`, else none. A leader whose lease
/// ended has fenced itself by then, so forwarding to it for a TTL cannot split the writes.
pub fn after_read(
    read: Option<&ClusterView>,
    last: Option<Target>,
    last_success: Instant,
    ttl: Duration,
    now: Instant,
) -> Option<Target> {
    match read {
        Some(view) => target_of(view),
        None if now.saturating_duration_since(last_success) < ttl => last,
        None => None,
    }
}

/// Keeps `route` equal to the cluster's target until `cancel` fires: reads the cluster's keys
/// whenever `wake` fires and at least every second.
pub async fn follow(
    dcs: Store,
    ttl: Duration,
    wake: Arc<Notify>,
    route: watch::Sender<Option<Target>>,
    cancel: CancellationToken,
) {
    let mut last_success = Instant::now();
    loop {
        let read = dcs.read_view().await;
        let now = Instant::now();
        if read.is_ok() {
            last_success = now;
        }
        let last = route.borrow().clone();
        let next = after_read(read.as_ref().ok(), last, last_success, ttl, now);
        route.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            match &next {
                Some(t) => tracing::info!(leader = %t.member, address = t.address, "the proxy forwards to the primary"),
                None => tracing::warn!("the proxy has no primary to forward to"),
            }
            *current = next;
            true
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Accepts connections on `listener` until `cancel` fires and forwards each to the target of
/// the moment; without one, closes it at once (the client tries again, through another
/// instance or later).
pub async fn serve(
    listener: TcpListener,
    route: watch::Receiver<Option<Target>>,
    cancel: CancellationToken,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let target = route.borrow().clone();
                    if let Some(target) = target {
                        sessions.spawn(forward(client, target, route.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the proxy could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// How long connecting to the primary may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Copies between `client` and `target` until either side closes or the target changes.
async fn forward(
    mut client: TcpStream,
    target: Target,
    mut route: watch::Receiver<Option<Target>>,
) {
    let server = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.address)).await;
    let mut server = match server {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(address = target.address, error = %e, "the proxy could not reach the primary");
            return;
        }
        Err(_) => {
            tracing::debug!(
                address = target.address,
                "the proxy timed out reaching the primary"
            );
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = route.wait_for(|r| r.as_ref() != Some(&target)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::LeaderKey;
    use spilo_model::{MemberRole, MemberState, MemberStatus};

    fn member(role: MemberRole, state: MemberState, url: &str) -> MemberStatus {
        MemberStatus {
            conn_url: url.into(),
            api_url: "http://10.0.0.1:8008".into(),
            role,
            state,
            timeline: None,
            wal: Default::default(),
            tags: Default::default(),
            pending_restart: false,
            error: None,
            postgres_version: None,
        }
    }

    fn view(leader: Option<&str>, members: &[(&str, MemberStatus)]) -> ClusterView {
        ClusterView {
            leader: leader.map(|l| LeaderKey {
                name: MemberName::new(l).expect("a test value"),
                lease: 1,
            }),
            members: members
                .iter()
                .map(|(n, m)| (MemberName::new(*n).expect("a test value"), m.clone()))
                .collect(),
            ..ClusterView::default()
        }
    }

    #[test]
    fn the_target_is_the_leader_key_holder() {
        let a = member(
            MemberRole::Primary,
            MemberState::Running,
            "postgres://10.0.0.1:5432/postgres",
        );
        let b = member(
            MemberRole::Replica,
            MemberState::Running,
            "postgres://10.0.0.2:5432/postgres",
        );
        let v = view(Some("a"), &[("a", a.clone()), ("b", b.clone())]);
        assert_eq!(
            target_of(&v),
            Some(Target {
                member: MemberName::new("a").expect("a test value"),
                address: "10.0.0.1:5432".into()
            })
        );
        // No leader key: nobody.
        assert_eq!(target_of(&view(None, &[("a", a.clone())])), None);
        // The key moved to a member still promoting: its sessions become writable with it.
        assert_eq!(
            target_of(&view(Some("b"), &[("a", a), ("b", b)])).map(|t| t.address),
            Some("10.0.0.2:5432".to_string())
        );
        // A holder without a member key.
        assert_eq!(target_of(&view(Some("c"), &[])), None);
    }

    #[test]
    fn an_ipv6_address_is_bracketed() {
        let a = member(
            MemberRole::Primary,
            MemberState::Running,
            "postgres://fd00::1:5432/postgres",
        );
        let t = target_of(&view(Some("a"), &[("a", a)])).expect("a test value");
        assert_eq!(t.address, "[fd00::1]:5432");
    }

    #[test]
    fn a_failed_read_keeps_the_target_for_a_ttl_only() {
        let t = Target {
            member: MemberName::new("a").expect("a test value"),
            address: "10.0.0.1:5432".into(),
        };
        let ttl = Duration::from_secs(10);
        let ok = Instant::now();
        let kept = after_read(None, Some(t.clone()), ok, ttl, ok + Duration::from_secs(9));
        assert_eq!(kept, Some(t.clone()));
        let gone = after_read(None, Some(t.clone()), ok, ttl, ok + ttl);
        assert_eq!(gone, None);
        // A successful read replaces it, even with nothing.
        let empty = ClusterView::default();
        assert_eq!(after_read(Some(&empty), Some(t), ok, ttl, ok), None);
    }

    /// A server that answers every connection with its own name.
    async fn named_server(name: &'static str) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncWriteExt;
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a test value");
        let addr = l.local_addr().expect("a test value").to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
                held.push(s);
            }
        });
        (addr, task)
    }

    async fn read_some(s: &mut TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer or the end within 5 s")
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn sessions_follow_the_target_and_end_when_it_changes() {
        let (a, _a) = named_server("a").await;
        let (b, _b) = named_server("b").await;
        let target = |m: &str, address: &str| Target {
            member: MemberName::new(m).expect("a test value"),
            address: address.into(),
        };
        let (tx, rx) = watch::channel(None);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a test value");
        let proxy = listener.local_addr().expect("a test value");
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve(listener, rx, cancel.clone()));

        // No target: the connection ends at once, with nothing.
        let mut none = TcpStream::connect(proxy).await.expect("a test value");
        assert_eq!(read_some(&mut none).await, "");

        tx.send_replace(Some(target("a", &a)));
        let mut on_a = TcpStream::connect(proxy).await.expect("a test value");
        assert_eq!(read_some(&mut on_a).await, "a");
        // The primary changes: the session on the old one ends, a new one reaches b.
        tx.send_replace(Some(target("b", &b)));
        assert_eq!(read_some(&mut on_a).await, "");
        let mut on_b = TcpStream::connect(proxy).await.expect("a test value");
        assert_eq!(read_some(&mut on_b).await, "b");
        cancel.cancel();
        served.await.expect("a test value");
    }
}
