//! Running PostgreSQL's own tools (initdb, pg_basebackup, pg_rewind) with a deadline, the
//! password file in the environment, and their output kept for the error message.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A tool that failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be started.
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The error.
        source: std::io::Error,
    },
    /// It exited non-zero.
    #[error("{tool} failed ({status}): {output}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its output.
        output: String,
    },
    /// It ran past its deadline and was killed.
    #[error("{tool} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The tool.
        tool: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// Runs `bin_dir/tool args...` with the libpq environment `env` (`PGPASSFILE`, and with TLS
/// `PGSSLMODE=verify-full` and `PGSSLROOTCERT`); returns its combined output.
pub async fn run(
    bin_dir: &Path,
    tool: &str,
    args: &[String],
    env: &[(&'static str, String)],
    timeout: Duration,
) -> Result<String, ToolError> {
    run_with(bin_dir, tool, args, env, None, timeout).await
}

/// [`run`] in the working directory `cwd` (pg_upgrade writes its logs there).
pub async fn run_in(
    bin_dir: &Path,
    tool: &str,
    args: &[String],
    env: &[(&'static str, String)],
    cwd: &Path,
    timeout: Duration,
) -> Result<String, ToolError> {
    run_with(bin_dir, tool, args, env, Some(cwd), timeout).await
}

async fn run_with(
    bin_dir: &Path,
    tool: &str,
    args: &[String],
    env: &[(&'static str, String)],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<String, ToolError> {
    let mut cmd = tokio::process::Command::new(bin_dir.join(tool));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::info!(tool, args = args.join(" "), "running");
    let child = cmd.spawn().map_err(|source| ToolError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| ToolError::Spawn {
            tool: tool.to_string(),
            source,
        })?,
        Err(_) => {
            return Err(ToolError::Timeout {
                tool: tool.to_string(),
                timeout,
            });
        }
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool: tool.to_string(),
            status: out.status,
            output: tail(&text, 20),
        });
    }
    Ok(text)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
