//! The CloudFormation resource signal: a member on AWS tells its stack's `CreationPolicy`
//! that it runs (a primary holding the leader key, or a replica that streams), once per
//! governor start, so `spilo apply` reports success only when the software is up. A failure
//! before that is signalled by the image's boot layer (`governor boot-failed`), which also
//! leaves the reason in etcd `boot/<member>`; once the member runs, this removes it.

use crate::shared::Shared;
use aws_sdk_cloudformation::types::ResourceSignalStatus;
use spilo_model::MemberRole;
use spilo_model::governor::StackSignal;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What to signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The member runs.
    Success,
    /// It cannot. SignalResource carries no reason: the reason goes to etcd `boot/<member>`
    /// (`crate::boot_report`); the string is logged here.
    Failure(String),
}

/// A CloudFormation client for `region`.
pub async fn client(region: &str) -> aws_sdk_cloudformation::Client {
    aws_sdk_cloudformation::Client::new(&crate::aws::sdk_config(region).await)
}

/// Sends one signal for `unique_id` (the instance id). A stack that no longer waits
/// (complete, or being rolled back) refuses it with a validation error, which is no failure.
pub async fn send(
    cfn: &aws_sdk_cloudformation::Client,
    target: &StackSignal,
    unique_id: &str,
    outcome: &Outcome,
) -> Result<(), String> {
    let status = match outcome {
        Outcome::Success => ResourceSignalStatus::Success,
        Outcome::Failure(why) => {
            tracing::warn!(
                reason = why.as_str(),
                "signalling the stack: this member failed"
            );
            ResourceSignalStatus::Failure
        }
    };
    match cfn
        .signal_resource()
        .stack_name(&target.stack)
        .logical_resource_id(&target.resource)
        .unique_id(unique_id)
        .status(status)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            use aws_sdk_cloudformation::error::ProvideErrorMetadata;
            if e.code() == Some("ValidationError") {
                tracing::info!(
                    error = e.message().unwrap_or_default(),
                    "the stack does not wait for a signal"
                );
                Ok(())
            } else {
                Err(crate::aws::describe(&e))
            }
        }
    }
}

/// Waits until this member runs, then signals success (retrying for up to 10 minutes).
pub async fn run(
    region: String,
    target: StackSignal,
    unique_id: String,
    shared: Arc<Shared>,
    dcs: crate::dcs::Store,
    cancel: CancellationToken,
) {
    loop {
        let ready = {
            let n = shared.node.read().await;
            (n.is_leader && n.member.running_as(MemberRole::Primary))
                || (n.member.running_as(MemberRole::Replica) && n.streaming)
        };
        if ready {
            break;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    if let Err(e) = dcs.delete_boot_failure().await {
        tracing::warn!(error = %e, "cannot remove this member's earlier boot failure report");
    }
    let cfn = client(&region).await;
    for attempt in 1..=60 {
        match send(&cfn, &target, &unique_id, &Outcome::Success).await {
            Ok(()) => {
                tracing::info!(
                    stack = target.stack,
                    resource = target.resource,
                    "signalled the stack: this member runs"
                );
                return;
            }
            Err(e) => tracing::warn!(attempt, error = e, "cannot signal the stack; trying again"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
