//! `spilo show-config` and `spilo edit-config`: the cluster's etcd `config` as YAML, and
//! changes to it (`--set`, `--pg`, `--unset-pg`, or `$EDITOR`), checked field by field,
//! shown as a diff, and written by compare-and-swap on the revision read. Governors apply
//! reloadable settings at once and flag the rest `pending_restart`; the cluster file in git
//! is not changed, so `spilo drift` reports the difference until the file follows.

use super::{Target, read_state};
use anyhow::{Context, bail};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::{Map, Value};
use spilo_model::{ClusterConfig, Keyspace};

/// `spilo edit-config`.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    /// The cluster.
    #[command(flatten)]
    pub target: Target,
    /// A top-level setting, `NAME=VALUE` (VALUE as JSON, else a string), e.g. `ttl=10`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// A PostgreSQL parameter, `NAME=VALUE`.
    #[arg(long = "pg", value_name = "NAME=VALUE")]
    pub pg: Vec<String>,
    /// Remove a PostgreSQL parameter.
    #[arg(long = "unset-pg", value_name = "NAME")]
    pub unset_pg: Vec<String>,
    /// Show the change without writing it.
    #[arg(long)]
    pub dry_run: bool,
}

fn yaml(v: &Value) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(v)?)
}

/// `spilo show-config`.
pub async fn show(t: Target) -> anyhow::Result<()> {
    let state = read_state(&t).await?;
    match &state.config {
        Some(v) => print!("{}", yaml(v)?),
        None => bail!("{} has no config yet", t.cluster),
    }
    Ok(())
}

fn split(kv: &str) -> anyhow::Result<(&str, &str)> {
    kv.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .with_context(|| format!("{kv:?}: expected NAME=VALUE"))
}

/// The merge patch the flags describe.
fn patch_from_flags(a: &EditArgs) -> anyhow::Result<Value> {
    let mut patch = Map::new();
    for kv in &a.set {
        let (k, v) = split(kv)?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        patch.insert(k.to_string(), value);
    }
    let mut params = Map::new();
    for kv in &a.pg {
        let (k, v) = split(kv)?;
        params.insert(k.to_string(), Value::String(v.to_string()));
    }
    for k in &a.unset_pg {
        params.insert(k.clone(), Value::Null);
    }
    if !params.is_empty() {
        patch.insert("postgresql_parameters".into(), Value::Object(params));
    }
    Ok(Value::Object(patch))
}

/// Opens `$EDITOR` on the YAML; the result replaces the config.
fn edit_in_editor(current: &Value) -> anyhow::Result<Value> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .context("no --set/--pg given and neither VISUAL nor EDITOR is set")?;
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), yaml(current)?)?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .with_context(|| format!("run {editor}"))?;
    if !status.success() {
        bail!("{editor} exited with {status}; nothing changed");
    }
    let text = std::fs::read_to_string(file.path())?;
    let edited: Value = serde_yaml::from_str(&text).context("the edited config is not YAML")?;
    // A full replacement: every key that disappeared becomes a `null` in the patch.
    let mut patch = edited.as_object().cloned().unwrap_or_default();
    if let Some(old) = current.as_object() {
        for k in old.keys() {
            patch.entry(k.clone()).or_insert(Value::Null);
        }
    }
    Ok(Value::Object(patch))
}

/// `spilo edit-config`.
pub async fn edit(a: EditArgs) -> anyhow::Result<()> {
    let state = read_state(&a.target).await?;
    let current = state
        .config
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let patch = if a.set.is_empty() && a.pg.is_empty() && a.unset_pg.is_empty() {
        edit_in_editor(&current)?
    } else {
        patch_from_flags(&a)?
    };
    let config = ClusterConfig::merge_patch(&current, &patch).map_err(anyhow::Error::msg)?;
    let new = serde_json::to_value(&config)?;
    let (before, after) = (yaml(&current)?, yaml(&new)?);
    if before == after {
        println!("{}: no change", a.target.cluster);
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(&before, &after);
    print!(
        "{}",
        diff.unified_diff()
            .context_radius(3)
            .header("config (in the store)", "config (edited)")
    );
    if a.dry_run {
        println!("(dry run: nothing written)");
        return Ok(());
    }
    let key = Keyspace::with_namespace(&a.target.namespace, &a.target.cluster).config();
    if let Some(hosts) = a.target.zookeeper_hosts() {
        let client = crate::zookeeper::connect(&hosts).await?;
        let value = serde_json::to_vec(&config)?;
        if !crate::zookeeper::put_if_revision(&client, &key, &value, state.config_revision).await? {
            bail!(
                "{key} changed while it was being edited; nothing written, run the command again"
            );
        }
        println!("{}: config written", a.target.cluster);
        return Ok(());
    }
    let mut client = a.target.connect().await?;
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            state.config_revision,
        )])
        .and_then([TxnOp::put(
            key.clone(),
            serde_json::to_string(&config)?,
            None,
        )]);
    let written = client
        .txn(txn)
        .await
        .with_context(|| format!("write {key}"))?
        .succeeded();
    if !written {
        bail!("{key} changed while it was being edited; nothing written, run the command again");
    }
    println!("{}: config written", a.target.cluster);
    Ok(())
}
