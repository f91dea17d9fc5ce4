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

/// For a test that needs root throughout (it mounts, chroots and owns its files as root, as
/// in CI): `None` when this process is root, so the test goes on; otherwise runs the test
/// `name` of this test binary again through `sudo -n` and returns its outcome, so a normal
/// user with passwordless sudo runs exactly what CI runs. The moto environment found here is
/// passed on, since root's `HOME` differs.
pub fn rerun_as_root(name: &str) -> Option<anyhow::Result<()>> {
    if nix::unistd::Uid::effective().is_root() {
        return None;
    }
    Some((|| {
        let exe = std::env::current_exe()?;
        let venv = crate::aws::venv()?;
        let status = Command::new("sudo")
            .arg("-n")
            .arg("--")
            .arg("env")
            .arg(format!("SPILO_AWS_VENV={}", venv.display()))
            .arg(exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .status()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run {name} as root (it needs root or passwordless sudo): {e}"
                )
            })?;
        anyhow::ensure!(
            status.success(),
            "{name}, run as root through sudo -n (it needs root or passwordless sudo), failed: {status}"
        );
        Ok(())
    })())
}
