//! A cluster's logs: the ERROR lines a test expects and the check that no other one
//! appeared, and printing every log when a test fails.

use super::Cluster;

impl Cluster {
    /// Says which ERROR lines of the governors this test causes on purpose (a line containing
    /// any of `patterns`); every other ERROR line of any member fails the test when the
    /// cluster is dropped, after the governors stopped. Each call site says why.
    pub fn expect_errors(&mut self, patterns: &[&str]) {
        self.expected_errors
            .extend(patterns.iter().map(|p| p.to_string()));
    }

    /// Every governor's ERROR lines that match no expected pattern, as `member: line`.
    pub(super) fn unexpected_errors_of_all(&self) -> Vec<String> {
        let expected: Vec<&str> = self.expected_errors.iter().map(String::as_str).collect();
        self.members
            .iter()
            .flat_map(|m| {
                self.unexpected_errors(&m.name, &expected)
                    .into_iter()
                    .map(move |l| format!("{}: {l}", m.name))
            })
            .collect()
    }

    /// The governor log of a member.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.member(name).log_path()).unwrap_or_default()
    }

    /// The governor log lines of a member at ERROR level that match none of `allowed`.
    pub fn unexpected_errors(&self, name: &str, allowed: &[&str]) -> Vec<String> {
        let text = std::fs::read_to_string(self.member(name).log_path()).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(" ERROR "))
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .map(str::to_string)
            .collect()
    }

    /// Passes a test's result through, printing every log first when it is an error.
    pub fn finish<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() {
            self.print_logs();
        }
        result
    }

    /// Prints every log of the cluster (used when a test fails).
    pub fn print_logs(&self) {
        for m in &self.members {
            for (what, path) in [("governor", m.log_path()), ("postgresql", m.pg_log_path())] {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(150)..];
                eprintln!(
                    "===== {} {what} log ({}) =====\n{}",
                    m.name,
                    path.display(),
                    tail.join("\n")
                );
            }
        }
        let text = std::fs::read_to_string(self.etcd.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "===== etcd log (tail) =====\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
}
