//! The watchdog: a separate process (`governor watchdog`, spawned by the governor with a pipe
//! on its stdin) that stops the primary's PostgreSQL when the governor stops telling it the
//! lease is still good. It closes the gap the in-process fence cannot: a governor that is
//! frozen as a whole (SIGSTOP, a stalled VM thread, swapped out) runs none of its tasks, so
//! its own fence cannot fire while PostgreSQL, a separate process, keeps accepting writes.
//!
//! Protocol, one line each: `arm <postmaster pid> <milliseconds left>` (re-sent at every lease
//! renewal) and `disarm`. The watchdog keeps its own deadline from its own clock; when it
//! passes with no newer message it sends SIGQUIT (immediate shutdown) to the postmaster. When
//! the pipe closes (the governor exited) it exits too.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::BufRead;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A parsed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Stop `pid` unless another message comes within `left`.
    Arm {
        /// The postmaster.
        pid: u32,
        /// Time left.
        left: Duration,
    },
    /// Nothing to guard.
    Disarm,
}

impl Message {
    /// Parses one line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Message> {
        let mut words = line.split_whitespace();
        match (words.next()?, words.next(), words.next(), words.next()) {
            ("disarm", None, None, None) => Some(Message::Disarm),
            ("arm", Some(pid), Some(ms), None) => Some(Message::Arm {
                pid: pid.parse().ok().filter(|p| *p > 1)?,
                left: Duration::from_millis(ms.parse().ok()?),
            }),
            _ => None,
        }
    }

    /// The line for this message.
    pub fn line(&self) -> String {
        match self {
            Message::Arm { pid, left } => format!("arm {pid} {}\n", left.as_millis()),
            Message::Disarm => "disarm\n".into(),
        }
    }
}

/// Runs the watchdog on stdin until it closes.
pub fn run() {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(m) = Message::parse(&line) {
                if tx.send(m).is_err() {
                    break;
                }
            } else {
                eprintln!("watchdog: ignoring {line:?}");
            }
        }
    });
    let mut armed: Option<(u32, Instant)> = None;
    loop {
        let wait = armed.map_or(Duration::from_secs(3600), |(_, at)| {
            at.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok(Message::Arm { pid, left }) => armed = Some((pid, Instant::now() + left)),
            Ok(Message::Disarm) => armed = None,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                if let Some((pid, at)) = armed
                    && Instant::now() >= at
                {
                    eprintln!(
                        "watchdog: the governor did not confirm its lease in time; stopping PostgreSQL (pid {pid}) immediately"
                    );
                    let _ = kill(
                        Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                        Signal::SIGQUIT,
                    );
                    armed = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_junk_is_ignored() {
        for m in [
            Message::Arm {
                pid: 4242,
                left: Duration::from_millis(2500),
            },
            Message::Disarm,
        ] {
            assert_eq!(Message::parse(m.line().trim_end()), Some(m));
        }
        for junk in [
            "",
            "arm",
            "arm 1 10",
            "arm x 10",
            "arm 5 -1",
            "disarm now",
            "fire 5 5",
        ] {
            assert_eq!(Message::parse(junk), None, "{junk}");
        }
    }
}
