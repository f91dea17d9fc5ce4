//! Drift and the continuous reconcile: `detect` (pure: what differs between git, AWS and the
//! running cluster), `alerts` (pure: one alert per drift, one resolve), `notify` (log and
//! webhook sinks with retries), `metrics` (Prometheus text), `watch` (the loop behind
//! `spilo watch`) and `report` (`spilo drift`, one shot).

pub mod alerts;
pub mod detect;
pub mod hook;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod watch;
