//! The governor: one daemon beside each PostgreSQL instance.
//!
//! It keeps its member registered in etcd, races for the `initialize` and `leader` keys, runs
//! initdb, pg_basebackup and pg_rewind, starts, promotes and demotes PostgreSQL, and answers
//! health checks on a small REST API so that a load balancer can find the primary.
//!
//! The work is split as gather -> decide -> act: [`runtime`] gathers a [`ha::Snapshot`] (all
//! the I/O), [`ha::decide`] picks the next [`ha::Decision`] (pure), and [`runtime`] carries it out
//! through [`dcs`] (etcd) and [`postgres`] (the local instance). Lease renewal and fencing run on
//! their own tasks so that nothing the loop waits on can delay them.

pub mod api;
pub mod archive;
pub mod aws;
pub mod boot_report;
pub mod catalog;
pub mod certs;
pub mod config;
pub mod dcs;
pub mod drill;
pub mod etcd_member;
pub mod ha;
pub mod major_upgrade;
pub mod postgres;
pub mod preflight;
pub mod proxy;
pub mod runtime;
pub mod shared;
pub mod watchdog;
