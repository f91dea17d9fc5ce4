//! The end-to-end harness: real etcd (Debian's `etcd-server`), real PostgreSQL 15, the real
//! `governor` and `spilo` binaries, started as an unprivileged user in a private work
//! directory, and the tools tests use to hurt them (kill -9, SIGTERM, a TCP proxy that
//! partitions one member from etcd) and to judge the outcome (SQL, REST, etcd reads, a write
//! prober that records every acknowledged write).
//!
//! Tests poll with deadlines through [`wait::until`]; nothing sleeps to wait. Every spawned
//! process is killed when its handle drops, and logs are printed when a test fails.

pub mod aws;
pub mod aws_box;
pub mod aws_world;
pub mod bench;
pub mod cluster;
pub mod dns;
pub mod endpoints;
pub mod etcd;
pub mod forge;
pub mod local;
pub mod major_upgrade;
pub mod netns;
pub mod pair;
pub mod patroni;
pub mod ports;
pub mod privileged;
pub mod probe;
pub mod proc;
pub mod proxy;
pub mod sql;
pub mod tls;
pub mod wait;
pub mod webhook;
#[path = "../../governor/tests/contract/zookeeper.rs"]
pub mod zookeeper;

pub use cluster::{Cluster, ClusterOptions, Member};
pub use etcd::Etcd;
