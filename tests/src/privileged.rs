//! What only root may do for a test (mount a small filesystem, create network namespaces):
//! run directly when the test runs as root (as CI does), through `sudo -n` otherwise. A test
//! that needs it fails with a message saying so when neither works; it is never skipped.

use std::process::Command;

/// Runs `program args...` with root privileges; returns stdout.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(program);
        c
    };
    let out = cmd.args(args).output().map_err(|e| {
        anyhow::anyhow!(
            "cannot run {program} as root (this test needs root or passwordless sudo): {e}"
        )
    })?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed (this test needs root or passwordless sudo): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
