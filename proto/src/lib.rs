//! twill's wire contract: the public `twill.v1` API that agents and operators use, and the
//! Raft transport service between controller members.

/// Generated code: variant sizes follow the messages, not our choice.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("twill.v1");
}

pub mod defaults;
pub mod names;
pub mod settings;

/// Response metadata naming the leader's API address, so a client's next attempt goes there.
pub const LEADER_HINT: &str = "x-twill-leader";

/// The largest gRPC message either side accepts. A snapshot or a large lease table fits.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Wall-clock milliseconds since the Unix epoch: the unit of lease deadlines on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
