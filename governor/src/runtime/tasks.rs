//! The governor's background tasks, each with a name: the lease, the watch, the fence, the
//! failsafe confirmations, the REST API, the primary proxy, certificates, backups, scale-in
//! protection. They run until shutdown; one that ends before (or panics) leaves the governor
//! unable to do its job unnoticed (a load balancer that never hears `/primary`, a lease never
//! renewed), so its end is fatal: the governor stops PostgreSQL and exits with an error naming
//! the task, and what supervises it (the image's boot layer, `spilo up`) starts it again.
//! Tasks that finish by design (the stack signal, sent once) are spawned as such.

use std::collections::HashMap;
use std::future::Future;
use tokio::task::{Id, JoinSet};

/// The set of tasks.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    finite: Vec<Id>,
}

impl Tasks {
    /// A task that runs until shutdown.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = match ended_by_fault(name) {
            Some(after) => self.set.spawn(async move {
                tokio::select! {
                    () = task => {}
                    () = tokio::time::sleep(after) => {}
                }
            }),
            None => self.set.spawn(task),
        }
        .id();
        self.names.insert(id, name);
    }

    /// A task that may finish by itself.
    pub fn spawn_finite(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
        self.finite.push(id);
    }

    /// Waits until a task that should run until shutdown ends; says which and how. Pending
    /// forever while they all run.
    pub async fn unexpected_end(&mut self) -> String {
        loop {
            let Some(done) = self.set.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let (id, how) = match done {
                Ok((id, ())) => (id, "ended"),
                Err(e) if e.is_panic() => (e.id(), "panicked"),
                Err(e) => (e.id(), "was cancelled"),
            };
            if self.finite.contains(&id) && how == "ended" {
                continue;
            }
            let name = self.names.get(&id).copied().unwrap_or("unnamed");
            return format!("the {name} task {how}");
        }
    }

    /// Waits for every task to end (after the cancellation token they share fired).
    pub async fn join_all(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

/// A test-only fault: `SPILO_FAULT_END_TASK=<name>` ends that task 3 s after it started, as
/// a bug or a panic in it would.
pub const FAULT_END_TASK: &str = "SPILO_FAULT_END_TASK";

fn ended_by_fault(name: &str) -> Option<std::time::Duration> {
    (std::env::var(FAULT_END_TASK).ok()? == name).then_some(std::time::Duration::from_secs(3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_named_one_that_may_finish_is_not() {
        let mut t = Tasks::default();
        t.spawn_finite("signal", async {});
        t.spawn("forever", std::future::pending());
        t.spawn("api", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        assert_eq!(t.unexpected_end().await, "the api task ended");
        t.spawn("proxy", async {
            panic!("injected");
        });
        assert_eq!(t.unexpected_end().await, "the proxy task panicked");
        // Only the task that runs forever is left: nothing ends.
        let waited = tokio::time::timeout(Duration::from_millis(50), t.unexpected_end()).await;
        assert!(waited.is_err(), "{waited:?}");
    }
}
