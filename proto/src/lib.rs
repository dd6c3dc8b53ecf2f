//! twill's wire contract: the public `twill.v1` API that agents and operators use, and the
//! Raft transport service between controller members.

/// Generated code: variant sizes follow the messages, not our choice.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("twill.v1");
}
