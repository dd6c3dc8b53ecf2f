//! twill's wire contract: the public `twill.v1` API that agents and operators use, and the
//! Raft transport service between controller members.

/// Generated code: variant sizes follow the messages, not our choice.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("twill.v1");
}

/// The services' server side, on the messages of [`v1`]; a `Watch` stream yields
/// [`frame::WatchFrame`]s.
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/twill.v1.rs"));
}

pub mod codec;
pub mod frame;

pub mod defaults;
pub mod names;
pub mod settings;
pub mod version;

/// Response metadata naming the leader's API address, so a client's next attempt goes there.
pub const LEADER_HINT: &str = "x-twill-leader";

/// The largest gRPC message between members: a Raft snapshot fits.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// The largest request the public API accepts. The biggest honest request, a configuration
/// with many BGP peers, is far smaller.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// Leases in one ListLeases page or one Watch snapshot chunk. A lease within the request limits
/// below encodes to under 5 KB, so a page stays under gRPC's default 4 MiB receive limit.
pub const PAGE_LEASES: usize = 500;

/// Request ids are kept in a replicated table to make retries idempotent; bounded like names.
pub const MAX_REQUEST_ID: usize = 64;

/// `backend_data` is copied into every lease and every watch event: kept small.
pub const MAX_BACKEND_ENTRIES: usize = 16;
pub const MAX_BACKEND_KEY: usize = 63;
pub const MAX_BACKEND_VALUE: usize = 256;

/// Wall-clock milliseconds since the Unix epoch: the unit of lease deadlines on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
