//! The `spilo` CLI's library: everything the binary does, so tests can call it directly.
//!
//! Cluster files: their schema and validation (`spec`), and `init`, which writes a new one.
//! Running clusters: `list` reads the member table from etcd. Planning and applying cluster
//! files (desired state from git, observed state from AWS and etcd) will live here too; it
//! shares the cluster types, the etcd keyspace and its JSON values with the governor through
//! `spilo-model`.

pub mod init;
pub mod list;
pub mod local;
pub mod spec;
