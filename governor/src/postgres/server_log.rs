//! Reading PostgreSQL's own account of a failure from its server log, so that a member that
//! cannot start says why in its status (and `spilo status`, `spilo up` print it) instead of
//! pointing at a file on a machine the user may not be logged in to.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// At most this much of the log is read back.
const TAIL: u64 = 256 << 10;

/// The size of the log now: [`errors_since`] reads what comes after it.
pub fn offset(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// The error of PostgreSQL's run that began at `offset` in `log`, as one line (see
/// [`last_error`]); `None` when the log says nothing of the kind.
pub fn errors_since(log: &Path, offset: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    let from = offset.max(len.saturating_sub(TAIL)).min(len);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    last_error(&String::from_utf8_lossy(&bytes))
}

/// The last `FATAL` or `PANIC` line of `text`, preceded by the `LOG`/`ERROR` line that states
/// its cause when there is one (PostgreSQL reports a bad setting as `LOG: invalid value for
/// parameter ...` followed by `FATAL: configuration file ... contains errors`). The log line
/// prefix (time, pid) is dropped; `None` when there is no such line.
pub fn last_error(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let fatal = lines
        .iter()
        .rposition(|l| l.contains("FATAL:  ") || l.contains("PANIC:  "))?;
    let body = |l: &str| -> String {
        let from = ["FATAL:  ", "PANIC:  ", "ERROR:  ", "LOG:  "]
            .iter()
            .filter_map(|k| l.find(k))
            .min()
            .unwrap_or(0);
        l[from..].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let cause = fatal
        .checked_sub(1)
        .map(|i| lines[i])
        .filter(|l| l.contains("ERROR:  ") || l.contains("LOG:  invalid value"));
    Some(match cause {
        Some(c) => format!("{}; {}", body(c), body(lines[fatal])),
        None => body(lines[fatal]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_setting_is_reported_with_its_cause() {
        let log = "2026-11-27 11:24:05.001 UTC [811] LOG:  starting PostgreSQL 15.18\n\
                   2026-11-27 11:24:05.002 UTC [811] LOG:  invalid value for parameter \"recovery_target_time\": \"2026-11-27T11:24:03Z\"\n\
                   2026-11-27 11:24:05.002 UTC [811] FATAL:  configuration file \"/m/data.run/postgresql.conf\" contains errors\n";
        assert_eq!(
            last_error(log).as_deref(),
            Some(
                "LOG: invalid value for parameter \"recovery_target_time\": \"2026-11-27T11:24:03Z\"; \
                 FATAL: configuration file \"/m/data.run/postgresql.conf\" contains errors"
            )
        );
    }

    #[test]
    fn the_last_fatal_line_wins_and_plain_logs_are_not_errors() {
        let log = "x [1] FATAL:  old failure\n\
                   x [2] LOG:  redo starts at 0/2000028\n\
                   x [2] FATAL:  recovery ended before configured recovery target was reached\n\
                   x [2] LOG:  startup process (PID 9) exited with exit code 1\n";
        assert_eq!(
            last_error(log).as_deref(),
            Some("FATAL: recovery ended before configured recovery target was reached")
        );
        assert_eq!(last_error("x [1] LOG:  database system is ready\n"), None);
    }

    #[test]
    fn only_the_run_after_the_offset_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("postgresql.log");
        std::fs::write(&log, "x [1] FATAL:  an earlier run\n").expect("write");
        let at = offset(&log);
        assert_eq!(errors_since(&log, at), None);
        std::fs::write(
            &log,
            "x [1] FATAL:  an earlier run\nx [2] PANIC:  could not locate a valid checkpoint record\n",
        )
        .expect("write");
        assert_eq!(
            errors_since(&log, at).as_deref(),
            Some("PANIC: could not locate a valid checkpoint record")
        );
        assert_eq!(errors_since(&dir.path().join("absent"), 0), None);
    }
}
