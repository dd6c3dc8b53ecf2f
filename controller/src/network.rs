//! The Raft transport over gRPC: openraft's RPCs, serialized with bincode, carried in the
//! `twill.v1.Raft` service. The client half dials peers lazily and reconnects on its own (a
//! tonic channel does); every call has the deadline openraft asks for.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Status};
use twill_proto::v1::raft_client::RaftClient;
use twill_proto::v1::raft_server;
use twill_proto::v1::RaftPayload;

use crate::{NodeId, Raft, TypeConfig};

/// Snapshots and large append batches exceed tonic's 4 MiB default.
pub use twill_proto::MAX_MESSAGE;

pub use twill_client::channel;

/// Faults injected into a member's outgoing Raft messages, for the chaos tests: peers it cannot
/// reach (a partition, set on both sides), a share of messages lost before delivery or after
/// (the answer lost), and a random delay. Never set outside tests.
#[derive(Debug, Default)]
pub struct Faults {
    state: std::sync::Mutex<FaultState>,
}

#[derive(Debug, Default, Clone)]
struct FaultState {
    cut_off: std::collections::BTreeSet<NodeId>,
    loss_per_mille: u32,
    max_delay_ms: u64,
    rng: u64,
}

enum Fate {
    Deliver { delay: Duration, lose_answer: bool },
    Lose { delay: Duration },
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Faults {
            state: std::sync::Mutex::new(FaultState {
                rng: seed | 1,
                ..Default::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FaultState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Messages to these members are lost until [`Faults::heal`].
    pub fn cut_off(&self, peers: impl IntoIterator<Item = NodeId>) {
        self.with(|s| s.cut_off.extend(peers));
    }

    /// Loses `per_mille` of the messages (and as many answers), delaying the rest by up to
    /// `max_delay`.
    pub fn degrade(&self, per_mille: u32, max_delay: Duration) {
        self.with(|s| {
            s.loss_per_mille = per_mille.min(1000);
            s.max_delay_ms = max_delay.as_millis() as u64;
        });
    }

    pub fn heal(&self) {
        self.with(|s| {
            s.cut_off.clear();
            s.loss_per_mille = 0;
            s.max_delay_ms = 0;
        });
    }

    fn fate(&self, target: NodeId) -> Fate {
        self.with(|s| {
            // xorshift64: the chaos schedule is seeded; this only needs to be cheap.
            let mut next = || {
                s.rng ^= s.rng << 13;
                s.rng ^= s.rng >> 7;
                s.rng ^= s.rng << 17;
                s.rng
            };
            let delay = match s.max_delay_ms {
                0 => Duration::ZERO,
                m => Duration::from_millis(next() % (m + 1)),
            };
            let lost = s.loss_per_mille > 0 && (next() % 1000) < u64::from(s.loss_per_mille);
            if s.cut_off.contains(&target) || lost {
                return Fate::Lose { delay };
            }
            let lose_answer = s.loss_per_mille > 0 && (next() % 1000) < u64::from(s.loss_per_mille);
            Fate::Deliver { delay, lose_answer }
        })
    }
}

#[derive(Clone, Default)]
pub struct NetworkFactory {
    pub faults: Option<std::sync::Arc<Faults>>,
    /// This member's client side of TLS; none when TLS is off.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let client = channel(&node.addr, Duration::from_secs(2), self.tls.clone())
            .ok()
            .map(|ch| {
                RaftClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
            });
        PeerConn {
            target,
            addr: node.addr.clone(),
            client,
            faults: self.faults.clone(),
        }
    }
}

pub struct PeerConn {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    faults: Option<std::sync::Arc<Faults>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerConn {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                "invalid address {:?} for member {}",
                self.addr, self.target
            )))));
        };
        let data = bincode::serialize(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut req = Request::new(RaftPayload { data });
        let ttl = option.hard_ttl();
        req.set_timeout(ttl);
        let mut lose_answer = false;
        if let Some(f) = &self.faults {
            let lost = |action| {
                RPCError::Network(NetworkError::new(&Msg(format!(
                    "{action:?} to member {}: lost (injected fault)",
                    self.target
                ))))
            };
            match f.fate(self.target) {
                Fate::Lose { delay } => {
                    tokio::time::sleep(delay.min(ttl)).await;
                    return Err(lost(action));
                }
                Fate::Deliver {
                    delay,
                    lose_answer: l,
                } => {
                    tokio::time::sleep(delay.min(ttl)).await;
                    lose_answer = l;
                }
            }
        }
        let fut = async {
            match action {
                RPCTypes::Vote => client.vote(req).await,
                RPCTypes::AppendEntries => client.append_entries(req).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(req).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => return Err(status_to_rpc(&self.addr, status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        if lose_answer {
            return Err(RPCError::Network(NetworkError::new(&Msg(format!(
                "answer from member {} lost (injected fault)",
                self.target
            )))));
        }
        let res: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&resp.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn status_to_rpc<E: std::error::Error>(
    addr: &str,
    s: Status,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    let err = Msg(format!("{addr}: {}: {}", s.code(), s.message()));
    match s.code() {
        // Connection refused / reset: let openraft back off instead of retrying in a tight loop.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&err)),
        _ => RPCError::Network(NetworkError::new(&err)),
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// The server half: hands incoming RPCs to the local Raft member.
pub struct RaftService {
    raft: Raft,
    /// With TLS on, only a member's certificate may speak Raft.
    members_only: bool,
}

type Interceptor = fn(Request<()>) -> Result<Request<()>, Status>;

/// Refuses a Raft RPC from anything but a member certificate: a node or an admin that could
/// send Vote or AppendEntries could depose the leader or rewrite the log.
fn member_only(req: Request<()>) -> Result<Request<()>, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        tracing::warn!(peer = ?req.remote_addr(), "Raft RPC without a client certificate refused");
        Status::unauthenticated("Raft RPCs need a controller member's certificate")
    })?;
    let who = certs
        .first()
        .map(|c| twill_pki::Identity::from_der(c))
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    if who.role != twill_pki::Role::Member {
        tracing::warn!(caller = %who, "Raft RPC from a non-member refused");
        return Err(Status::permission_denied(format!(
            "{who} may not speak Raft: a controller member's certificate is required"
        )));
    }
    Ok(req)
}

fn anyone(req: Request<()>) -> Result<Request<()>, Status> {
    Ok(req)
}

impl RaftService {
    pub fn new(raft: Raft, members_only: bool) -> Self {
        RaftService { raft, members_only }
    }

    pub fn into_server(
        self,
    ) -> tonic::service::interceptor::InterceptedService<raft_server::RaftServer<Self>, Interceptor>
    {
        let check: Interceptor = if self.members_only {
            member_only
        } else {
            anyone
        };
        let server = raft_server::RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        tonic::service::interceptor::InterceptedService::new(server, check)
    }
}

fn decode_req<T: DeserializeOwned>(p: RaftPayload) -> Result<T, Status> {
    bincode::deserialize(&p.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode_resp<T: Serialize>(v: &T) -> Result<tonic::Response<RaftPayload>, Status> {
    bincode::serialize(v)
        .map(|data| tonic::Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_req(req.into_inner())?;
        encode_resp(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode_req(req.into_inner())?;
        encode_resp(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_req(req.into_inner())?;
        encode_resp(&self.raft.install_snapshot(rpc).await)
    }
}
