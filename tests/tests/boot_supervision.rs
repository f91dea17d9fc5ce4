//! The image's governor supervision (`spilo_run_governor` in `boot-lib.sh`), run by bash as
//! the image runs it, with a governor that always fails and a clock that the pauses move:
//! `sleep` is replaced by a function that advances bash's `SECONDS` by the pause, so the
//! documented schedule (1 s doubling to 60 s, a report after three "cannot work" exits in a
//! row or after 5 minutes of failing) is checked exactly and at once.

use std::path::Path;
use std::process::Command;

/// Runs the supervision loop against a governor that exits with `rc`, for `pauses` pauses;
/// returns what it printed (the loop's own lines and the fakes' `PAUSE n`/`REPORT` lines).
fn supervise(rc: u8, pauses: u32) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let lib =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/rootfs/usr/lib/spilo/boot-lib.sh");
    let governor = dir.path().join("governor");
    std::fs::write(
        &governor,
        format!(
            "#!/bin/bash\n[ \"$1\" = --version ] && {{ echo 'governor 0.0.0'; exit 0; }}\n\
             echo 'INFO governor: starting'\n\
             echo 'error: SSM parameter /spilo/orders/superuser: AccessDeniedException'\n\
             exit {rc}\n"
        ),
    )?;
    std::fs::set_permissions(
        &governor,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let driver = format!(
        r#"set -u
source "{lib}"
SPILO_GOVERNOR="{governor}"
SPILO_BOOT_LOG="{dir}/boot.log"
INSTANCE_ID=i-0a1b2c3d LOCAL_IP=127.0.0.1
setpriv() {{ while [ "$1" != -- ]; do shift; done; shift; "$@"; }}
spilo_log() {{ echo "LOG $*"; }}
spilo_report_failure() {{ echo "REPORT after ${{SECONDS}}s: $1"; }}
n=0
sleep() {{ echo "PAUSE $1"; SECONDS=$((SECONDS + $1)); n=$((n + 1)); [ "$n" -lt {pauses} ] || exit 0; }}
spilo_run_governor
"#,
        lib = lib.display(),
        governor = governor.display(),
        dir = dir.path().display(),
    );
    let out = Command::new("bash").arg("-c").arg(driver).output()?;
    anyhow::ensure!(
        out.status.success(),
        "the supervision loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pauses(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix("PAUSE "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The lines before the first report, counted in pauses.
fn pauses_before_report(out: &str) -> Option<usize> {
    let at = out.find("REPORT")?;
    Some(pauses(&out[..at]).len())
}

#[test]
fn a_configuration_that_cannot_work_is_reported_after_three_exits_in_a_row() -> anyhow::Result<()> {
    let out = supervise(2, 9)?;
    assert_eq!(pauses(&out), [1, 2, 4, 8, 16, 32, 60, 60, 60], "{out}");
    assert_eq!(
        pauses_before_report(&out),
        Some(2),
        "reported at the third exit: {out}"
    );
    assert_eq!(out.matches("REPORT").count(), 1, "reported once: {out}");
    assert!(
        out.contains(
            "the governor failed 3 times in a row: error: SSM parameter /spilo/orders/superuser: AccessDeniedException"
        ),
        "the report names the governor's last error line: {out}"
    );
    assert_eq!(
        out.matches("LOG starting the governor (governor 0.0.0)")
            .count(),
        9,
        "{out}"
    );
    Ok(())
}

#[test]
fn a_failure_that_may_pass_is_reported_after_five_minutes_of_failing() -> anyhow::Result<()> {
    let out = supervise(1, 12)?;
    let p = pauses(&out);
    assert_eq!(p, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60], "{out}");
    // Failing since the first exit: 243 s after nine pauses, 303 s after ten.
    let before = pauses_before_report(&out).ok_or_else(|| anyhow::anyhow!("no report: {out}"))?;
    assert_eq!(before, 10, "{out}");
    assert!(p[..before].iter().sum::<u32>() >= 300);
    assert!(p[..before - 1].iter().sum::<u32>() < 300);
    assert_eq!(out.matches("REPORT").count(), 1, "reported once: {out}");
    assert!(
        out.contains("the governor failed 11 times in a row: error: SSM parameter"),
        "{out}"
    );
    Ok(())
}
