//! Free loopback ports for the servers a test starts, never handed out twice in one process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port nothing listens on right now and this process has not handed out before.
pub fn free() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port == 0 {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// The first port of `n` consecutive ports that are all free right now, none handed out before.
pub fn free_block(n: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let pid = std::process::id();
    loop {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Below the kernel's ephemeral range (32768 and up), where outgoing connections take
        // their local ports; spread processes apart so parallel test binaries rarely meet.
        let base = 20_000 + ((pid.wrapping_mul(7919) + step * 211) % 12_000);
        let Ok(base) = u16::try_from(base) else {
            continue;
        };
        let Some(end) = base.checked_add(n) else {
            continue;
        };
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        let set = given.get_or_insert_with(HashSet::new);
        if (base..end).any(|p| set.contains(&p)) {
            continue;
        }
        if (base..end).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            set.extend(base..end);
            return base;
        }
    }
}
