//! The `spilo` CLI's library: everything the binary does, so tests can call it directly.
//!
//! Cluster files: their schema and validation (`spec`), and `init`, which writes a new one.
//! Desired state is read from a git commit (`desired`). The AWS target (`aws`) plans and
//! applies it as CloudFormation stacks; the local target (`local`) runs it on this machine.
//! Both render the governors' configuration with `member_config`. Running clusters: `list`
//! reads the member table from etcd (`etcd`). Everything shares the cluster types, the etcd
//! keyspace and its JSON values with the governor through `spilo-model`. `forge` keeps the plan
//! as one comment on a pull or merge request.

pub mod aws;
pub mod desired;
pub mod drift;
pub mod etcd;
pub mod forge;
pub mod handover;
pub mod init;
pub mod installed;
pub mod list;
pub mod local;
pub mod member_config;
pub mod operate;
pub mod spec;
pub mod zookeeper;
