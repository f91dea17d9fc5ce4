//! A switchover between clusters declared in one commit: cluster X, running as a primary
//! cluster, gets `spec.standby: {from: Y}` while Y, running as X's standby, loses its
//! `spec.standby`. Planned as one action of both clusters, which `spilo apply` carries out in
//! the order of [`crate::handover`] (X steps down, Y is promoted once it has received the end
//! of X's WAL); each file's change alone stays blocked (see [`super::config`]).

use crate::aws::observed::{Observation, Observed};
use serde::{Deserialize, Serialize};
use spilo_model::spec::ClusterFile;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long X's primary may take to step down, and Y to receive X's last position, before
/// the switchover is abandoned (X a primary again, Y still its standby).
pub const STEP: Duration = Duration::from_secs(300);

/// A cluster's part in a switchover between clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", content = "cluster", rename_all = "lowercase")]
pub enum Handover {
    /// This cluster steps down and becomes a standby of the named one.
    Demoted(String),
    /// This cluster is promoted once it has received the named one's last position.
    Promoted(String),
}

impl Handover {
    /// In words, for cluster `me`.
    pub fn describe(&self, me: &str) -> String {
        match self {
            Handover::Demoted(to) => format!(
                "switchover between clusters: the primary of {me} steps down (a clean stop; the \
                 end of its WAL is the demotion token) and {me} becomes a standby of {to}"
            ),
            Handover::Promoted(from) => format!(
                "switchover between clusters: {me} is promoted once its leader has received \
                 the end of the WAL of {from}; when {from} does not step down or {me} does not \
                 catch up within {}s, {from} takes writes again and {me} stays its standby",
                STEP.as_secs()
            ),
        }
    }
}

/// The clusters of `desired` in a switchover between clusters, by name.
pub fn pairs(desired: &[(&str, &ClusterFile)], observed: &Observed) -> BTreeMap<String, Handover> {
    let files: BTreeMap<&str, &ClusterFile> = desired
        .iter()
        .map(|(_, f)| (f.metadata.name.as_str(), *f))
        .collect();
    // `Some(source)`: runs as a standby of `source`; `Some("")`: as a standby of a source
    // outside the repository; `None` inside: runs as a primary cluster; `None`: unknown.
    let runs_as = |name: &str| -> Option<Option<String>> {
        let etcd = observed.clusters.get(name)?.etcd.present()?;
        match &etcd.config {
            Observation::Present(c) => c.value.as_ref().map(|v| {
                v.standby_cluster
                    .as_ref()
                    .map(|s| s.cluster.clone().unwrap_or_default())
            }),
            _ => None,
        }
    };
    let mut out = BTreeMap::new();
    for (x, fx) in &files {
        let Some(y) = fx.spec.standby.as_ref().and_then(|s| s.from.as_ref()) else {
            continue;
        };
        let y = y.as_str();
        let promoted = files.get(y).is_some_and(|fy| fy.spec.standby.is_none());
        if promoted && runs_as(x) == Some(None) && runs_as(y) == Some(Some(x.to_string())) {
            out.insert(x.to_string(), Handover::Demoted(y.to_string()));
            out.insert(y.to_string(), Handover::Promoted(x.to_string()));
        }
    }
    out
}

/// Nothing of a switchover is half-applied: when one of its clusters is blocked, refused or
/// left alone, the other is blocked too.
pub(super) fn block_halves(clusters: &mut [super::ClusterPlan]) {
    let goes = |c: &super::ClusterPlan| {
        c.handover.is_some() && !c.refused && c.action != super::Action::Blocked
    };
    let going: Vec<String> = clusters
        .iter()
        .filter(|c| goes(c))
        .map(|c| c.name.clone())
        .collect();
    for c in clusters.iter_mut() {
        let partner = match &c.handover {
            Some(Handover::Demoted(p) | Handover::Promoted(p)) => p.clone(),
            None => continue,
        };
        if !goes(c) {
            c.handover = None;
        } else if !going.contains(&partner) {
            let why = format!(
                "it is half of a switchover with {partner}, which cannot be applied (see \
                 {partner}); nothing of either is changed"
            );
            *c = super::blocked(c.clone(), why);
            c.handover = None;
        }
    }
}
