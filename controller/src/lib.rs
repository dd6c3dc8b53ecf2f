//! twill's controller: a Raft-replicated subnet allocator that replaces etcd for pod networking.
//!
//! The pieces, each in its own module:
//! - [`allocator`]: the deterministic state machine (leases, reservations, configuration);
//! - [`batch`]: group commit, many client writes per Raft entry;
//! - [`log_store`]: the Raft log and vote, persisted in redb;
//! - [`disk`]: disk faults under the log and snapshots, for tests;
//! - [`state_machine`]: the allocator as openraft's state machine, with snapshots on disk;
//! - [`trust`]: the cluster's CA and join tokens, replicated with the leases;
//! - [`watch`]: the retained lease-event history that `Watch` streams serve from;
//! - [`feed`]: a follower's watchers fed from the leader's stream, ahead of its own log;
//! - [`metrics`]: Prometheus metrics over HTTP;
//! - [`network`]: the Raft transport over gRPC, client and server halves;
//! - [`convert`]: the public API's messages to and from the allocator's types;
//! - [`authz`]: who may call what, from the caller's certificate;
//! - [`certs`]: joins, certificate renewal and join tokens over the API;
//! - [`service`]: the public `twill.v1.Controller` gRPC service;
//! - [`health`]: the agents' health reports, kept by the leader in memory;
//! - [`picture`]: the cluster drawn as SVG, for `twill status --graph` and the status page;
//! - [`status_page`]: the read-only status page over HTTP;
//! - [`leader`]: what only the leader does (promotion grace, lease expiry);
//! - [`node`]: wires all of the above into one running member;
//!
//! The client library lives in its own crate, `twill-client`.

pub mod allocator;
pub mod authz;
pub mod batch;
pub mod certs;
pub mod clock;
pub mod convert;
pub mod disk;
pub mod feed;
pub mod health;
pub mod leader;
pub mod listener;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod picture;
pub mod relay;
pub mod service;
pub mod state_machine;
pub mod status_page;
pub mod trust;
pub mod watch;
pub mod watch_stream;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types for the allocator: log entries carry allocator requests.
    pub TypeConfig:
        D = batch::Batch,
        R = batch::Answers,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;

/// Wall-clock milliseconds since the Unix epoch; only the leader reads it, to stamp commands.
pub use twill_proto::now_ms;
