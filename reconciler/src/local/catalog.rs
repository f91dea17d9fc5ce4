//! The roles and databases of a local cluster's file (`spec.roles`, `spec.databases`) carried
//! into its `config`, where its leader's governor converges PostgreSQL to them. Each role's
//! password is resolved to a file in the cluster's state directory (`secrets/roles/<role>`,
//! readable only by the PostgreSQL user): generated once and kept, or copied from the file or
//! environment variable the role names. Neither git nor etcd holds a password.

use super::cluster::{mkdir, random_password, write_private};
use super::state::Layout;
use super::up::Desired;
use super::user::RunAs;
use anyhow::Context;
use spilo_model::Catalog;
use spilo_model::catalog::RolePassword;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cluster whose state directory keeps `cluster`'s role passwords: its own, or for a
/// standby cluster its source's (a copy of it: the same roles with the same passwords, so that
/// a promotion changes none).
pub fn keeper(cluster: &str, file: &spilo_model::spec::ClusterFile) -> String {
    file.spec
        .standby
        .as_ref()
        .and_then(|sb| sb.from.as_ref())
        .map_or(cluster.to_string(), |from| from.to_string())
}

/// Where role `role`'s password of cluster `cluster` is kept.
pub fn password_file(layout: &Layout, cluster: &str, role: &str) -> PathBuf {
    layout.cluster(cluster).join("secrets/roles").join(role)
}

/// `file`'s roles and databases with every password as a file the governors read; `source`
/// is the path of the cluster file (a relative `password.file` is relative to its folder).
pub fn resolve(
    cluster: &str,
    file: &spilo_model::spec::ClusterFile,
    source: &str,
    layout: &Layout,
    run_as: &RunAs,
) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog {
        revert: file.spec.drift_policy() == spilo_model::spec::DriftPolicy::Revert,
        roles: file.spec.roles.clone(),
        databases: file.spec.databases.clone(),
    };
    let keeper = keeper(cluster, file);
    let dir = layout.cluster(&keeper).join("secrets/roles");
    let salt_file = dir.join(".salt");
    for (name, role) in catalog.roles.iter_mut() {
        let Some(p) = role.password.as_ref() else {
            continue;
        };
        let kept = password_file(layout, &keeper, name);
        let value = if p.generated {
            None
        } else if let Some(var) = &p.env {
            Some(std::env::var(var).with_context(|| {
                format!(
                    "role {name}: its password is the environment variable {var}, which is not set"
                )
            })?)
        } else if let Some(f) = &p.file {
            let path = Path::new(source).parent().unwrap_or(Path::new(".")).join(f);
            Some(
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!("role {name}: read its password from {}", path.display())
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            )
        } else {
            continue;
        };
        mkdir(&dir, 0o700, run_as)?;
        let current = std::fs::read_to_string(&kept).ok();
        match value {
            Some(v) if current.as_deref() != Some(v.as_str()) => write_private(&kept, &v, run_as)?,
            None if current.is_none() => write_private(&kept, &random_password()?, run_as)?,
            _ => {}
        }
        if !salt_file.exists() {
            write_private(&salt_file, &random_password()?, run_as)?;
        }
        let salt = std::fs::read_to_string(&salt_file)
            .with_context(|| format!("read {}", salt_file.display()))?;
        let password =
            std::fs::read_to_string(&kept).with_context(|| format!("read {}", kept.display()))?;
        role.password = Some(RolePassword {
            file: Some(kept.display().to_string()),
            fingerprint: Some(fingerprint(&salt, &password)),
            ..RolePassword::default()
        });
    }
    Ok(catalog)
}

/// A digest of `password` with the secret `salt`: changes when the password does, and says
/// nothing of it to whoever reads `config`.
fn fingerprint(salt: &str, password: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(password.as_bytes())
        .finalize();
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Writes each running cluster's roles and databases into its `config` (nothing when it
/// declares none and `config` has none), printing what each write changes in words
/// (`cluster demo: + role reporting (login, createdb)`). Returns the errors to print.
pub async fn sync(
    desired: &Desired,
    running: &std::collections::BTreeMap<String, super::cluster::LocalCluster>,
    layout: &Layout,
    run_as: &RunAs,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in running.keys() {
        let Some((source, file)) = desired.get(name) else {
            continue;
        };
        let catalog = match resolve(name, file, source, layout, run_as) {
            Ok(c) => (!c.is_empty()).then_some(c),
            Err(e) => {
                out.push(format!("cluster {name}: {e:#}"));
                continue;
            }
        };
        let quiet = catalog.is_none();
        let target = super::standby::target(&file.metadata.name, layout);
        // What the write changes, in words (the last attempt's, should it retry).
        let changes = std::sync::Mutex::new(Vec::new());
        let write = crate::list::update_config(&target, |cfg| {
            let said = spilo_model::catalog::describe_changes(
                cfg.catalog.as_ref(),
                catalog.as_ref().unwrap_or(&Catalog::default()),
            );
            *changes.lock().unwrap_or_else(|p| p.into_inner()) = said;
            cfg.catalog = catalog.clone();
        });
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(())) => {
                for line in changes.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    println!("cluster {name}: {line}");
                }
            }
            // Nothing to write, and no `config` to clear it in.
            Ok(Err(e)) if quiet && e.downcast_ref::<crate::list::ConfigAbsent>().is_some() => {}
            Ok(Err(e)) => out.push(format!(
                "cluster {name}: cannot write its roles and databases into config: {e:#}"
            )),
            Err(_) => out.push(format!(
                "cluster {name}: cannot write its roles and databases into config: its store did not answer within 10s"
            )),
        }
    }
    out
}
