//! The roles and databases of an AWS cluster's file as its `config` carries them: a generated
//! password becomes the SSM parameter `/spilo/<cluster>/roles/<role>` (or the one the file
//! names with `ssm` beside `generated: true`), which the leader's governor creates when
//! absent (and only it may write: [`super::policies`]); passwords read from SSM or Secrets
//! Manager stay references. A standby cluster's generated passwords are its source's
//! parameters, which it only reads; a standby that is to keep them after its promotion names
//! them in its file (`{generated: true, ssm: /spilo/<source>/roles/<role>}`), since without
//! `spec.standby` the default would be its own. Roles declared absent have no password.

use spilo_model::Catalog;
use spilo_model::catalog::Presence;
use spilo_model::spec::{ClusterFile, DriftPolicy};

/// The SSM parameter that holds `role`'s generated password of cluster `keeper`.
pub fn generated_parameter(keeper: &str, role: &str) -> String {
    format!("/spilo/{keeper}/roles/{role}")
}

/// The cluster whose parameters hold `file`'s generated passwords: its own, or a standby
/// cluster's source named by `from`.
pub fn keeper(file: &ClusterFile) -> String {
    file.spec
        .standby
        .as_ref()
        .and_then(|sb| sb.from.as_ref())
        .map_or(file.metadata.name.to_string(), |from| from.to_string())
}

/// `file`'s roles and databases as `config` carries them (`None`: none declared).
pub fn catalog(file: &ClusterFile) -> Option<Catalog> {
    let spec = &file.spec;
    if spec.roles.is_empty() && spec.databases.is_empty() {
        return None;
    }
    let keeper = keeper(file);
    let mut catalog = Catalog {
        revert: spec.drift_policy() == DriftPolicy::Revert,
        roles: spec.roles.clone(),
        databases: spec.databases.clone(),
    };
    for (name, role) in catalog.roles.iter_mut() {
        if let Some(p) = role
            .password
            .as_mut()
            .filter(|p| p.generated && p.ssm.is_none())
        {
            p.ssm = Some(generated_parameter(&keeper, name));
        }
    }
    Some(catalog)
}

/// The parameters `file`'s members store generated passwords in (none for a standby
/// cluster: it reads its source's).
pub fn parameters_written(file: &ClusterFile) -> Vec<String> {
    if file.spec.standby.is_some() {
        return Vec::new();
    }
    catalog(file)
        .iter()
        .flat_map(|c| c.roles.values())
        .filter(|r| r.state == Presence::Present)
        .filter_map(|r| r.password.as_ref())
        .filter(|p| p.generated)
        .filter_map(|p| p.ssm.clone())
        .collect()
}

/// The SSM parameters and Secrets Manager secrets `file`'s members read passwords from
/// (generated ones included).
pub fn references_read(file: &ClusterFile) -> Vec<spilo_model::spec::SecretRef> {
    let mut out = Vec::new();
    let present = |r: &&spilo_model::catalog::Role| r.state == Presence::Present;
    for role in catalog(file)
        .iter()
        .flat_map(|c| c.roles.values())
        .filter(present)
    {
        if let Some(p) = &role.password
            && (p.ssm.is_some() || p.secrets_manager.is_some())
        {
            out.push(spilo_model::spec::SecretRef {
                ssm: p.ssm.clone(),
                secrets_manager: p.secrets_manager.clone(),
                ..Default::default()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, extra: &str) -> ClusterFile {
        serde_yaml::from_str(&format!(
            "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {{name: {name}}}\nspec:\n  target: aws\n{extra}"
        ))
        .expect("valid")
    }

    const ROLES: &str = "  roles:\n    app: {password: {generated: true}}\n    report: {password: {ssm: /team/report}}\n    group: {login: false}\n  databases:\n    orders: {owner: app}\n";

    #[test]
    fn a_generated_password_is_the_clusters_own_parameter() {
        let f = file("orders", ROLES);
        let c = catalog(&f).expect("declared");
        let app = c.roles["app"].password.as_ref().expect("password");
        assert!(app.generated);
        assert_eq!(app.ssm.as_deref(), Some("/spilo/orders/roles/app"));
        assert_eq!(
            c.roles["report"]
                .password
                .as_ref()
                .and_then(|p| p.ssm.as_deref()),
            Some("/team/report")
        );
        assert_eq!(parameters_written(&f), vec!["/spilo/orders/roles/app"]);
        let read: Vec<_> = references_read(&f)
            .into_iter()
            .filter_map(|r| r.ssm)
            .collect();
        assert_eq!(read, vec!["/spilo/orders/roles/app", "/team/report"]);
    }

    #[test]
    fn a_standby_reads_its_sources_parameters_and_writes_none() {
        let f = file(
            "orders-dr",
            &format!("  standby: {{from: orders}}\n{ROLES}"),
        );
        let c = catalog(&f).expect("declared");
        assert_eq!(
            c.roles["app"]
                .password
                .as_ref()
                .and_then(|p| p.ssm.as_deref()),
            Some("/spilo/orders/roles/app")
        );
        assert!(parameters_written(&f).is_empty());
    }

    #[test]
    fn a_named_parameter_is_kept_and_absent_roles_have_none() {
        let f = file(
            "orders-dr",
            "  roles:\n    app: {password: {generated: true, ssm: /spilo/orders/roles/app}}\n    gone: {state: absent, password: {generated: true}}\n    old: {state: absent, password: {ssm: /team/old}}\n",
        );
        assert_eq!(parameters_written(&f), vec!["/spilo/orders/roles/app"]);
        let read: Vec<_> = references_read(&f)
            .into_iter()
            .filter_map(|r| r.ssm)
            .collect();
        assert_eq!(read, vec!["/spilo/orders/roles/app"]);
    }

    #[test]
    fn nothing_declared_is_no_catalog() {
        assert_eq!(catalog(&file("orders", "")), None);
    }
}
