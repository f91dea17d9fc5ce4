//! The `spilo` CLI's library: everything the binary does, so tests can call it directly.
//!
//! Today it reads running clusters from etcd (`spilo list`). Planning and applying cluster files
//! (desired state from git, observed state from AWS and etcd) will live here too; it shares the
//! etcd keyspace and JSON values with the governor through `spilo-model`.

pub mod list;
