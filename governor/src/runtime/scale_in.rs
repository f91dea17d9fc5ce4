//! Scale-in protection on AWS: the instance that runs the primary is protected from scale-in
//! and the others are not, so lowering the group's size (or its zone rebalancing) terminates
//! replicas only. Follows leadership: a new primary protects itself, a former one drops its
//! protection. Every change is retried until it is accepted.

use crate::shared::Shared;
use spilo_model::MemberRole;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the wanted protection is compared with the last one set.
const ROUND: Duration = Duration::from_millis(500);

/// Whether this member's instance should be protected: it leads and runs as primary.
pub fn wanted(is_leader: bool, runs_primary: bool) -> bool {
    is_leader && runs_primary
}

/// Keeps the protection of instance `id` equal to [`wanted`].
pub async fn run(region: String, id: String, shared: Arc<Shared>, cancel: CancellationToken) {
    let client = aws_sdk_autoscaling::Client::new(&crate::aws::sdk_config(&region).await);
    let mut group: Option<String> = None;
    let mut set: Option<bool> = None;
    loop {
        let want = {
            let n = shared.node.read().await;
            wanted(n.is_leader, n.member.running_as(MemberRole::Primary))
        };
        if set != Some(want) {
            match protect(&client, &mut group, &id, want).await {
                Ok(()) => {
                    tracing::info!(instance = id, protected = want, "set scale-in protection");
                    set = Some(want);
                }
                Err(e) => {
                    tracing::warn!(
                        instance = id,
                        protected = want,
                        error = e,
                        "cannot set scale-in protection; trying again"
                    );
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(ROUND) => {}
        }
    }
}

async fn protect(
    client: &aws_sdk_autoscaling::Client,
    group: &mut Option<String>,
    id: &str,
    protected: bool,
) -> Result<(), String> {
    let name = match group {
        Some(g) => g.clone(),
        None => {
            let found = client
                .describe_auto_scaling_instances()
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| crate::aws::describe(&e))?;
            let name = found
                .auto_scaling_instances()
                .first()
                .and_then(|i| i.auto_scaling_group_name())
                .ok_or_else(|| format!("{id} is in no auto-scaling group"))?
                .to_string();
            *group = Some(name.clone());
            name
        }
    };
    client
        .set_instance_protection()
        .auto_scaling_group_name(&name)
        .instance_ids(id)
        .protected_from_scale_in(protected)
        .send()
        .await
        .map_err(|e| crate::aws::describe(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leader_running_as_primary_is_protected() {
        assert!(wanted(true, true));
        assert!(!wanted(true, false), "a leader still starting");
        assert!(
            !wanted(false, true),
            "a primary without the key (being demoted)"
        );
        assert!(!wanted(false, false));
    }
}
