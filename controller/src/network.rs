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
use twill_proto::server::raft_server;
use twill_proto::v1::raft_client::RaftClient;
use twill_proto::v1::RaftPayload;

use crate::{NodeId, Raft, TypeConfig};

/// Snapshots and large append batches exceed tonic's 4 MiB default.
pub use twill_proto::MAX_MESSAGE;

pub use twill_client::channel;
use twill_client::endpoint;

/// Answer metadata in which a member names the newest log format it reads
/// ([`crate::allocator::LOG_FORMAT`]). Members from before this header name none: they read
/// format 1.
pub const LOG_FORMAT_HEADER: &str = "x-twill-log-format";

/// What each peer's last Raft answer showed. The log format it reads, so that the leader
/// writes only commands every member can apply: during a rolling upgrade an older follower
/// would refuse a newer command as undecodable, and with two such followers no write could
/// commit. And whether it came the plain way, for an operator to see that no member is left
/// on it once an upgrade is done.
#[derive(Debug, Default)]
pub struct PeerFormats(std::sync::Mutex<std::collections::BTreeMap<NodeId, Seen>>);

#[derive(Clone, Copy, Debug)]
struct Seen {
    format: u32,
    plain: bool,
}

impl PeerFormats {
    fn record(&self, peer: NodeId, format: u32, plain: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Seen { format, plain });
    }

    /// What `peer` last said it reads; `None` before its first answer.
    pub fn of(&self, peer: NodeId) -> Option<u32> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map(|s| s.format)
    }

    /// Each peer that has answered, and whether its last answer came the plain way.
    pub fn ways(&self) -> Vec<(NodeId, bool)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, s)| (*id, s.plain))
            .collect()
    }
}

/// The format named in an answer's metadata: 1 when absent (a member from before the header),
/// 0 when unreadable (never trusted with anything newer than format 1 either).
fn answer_format(meta: &tonic::metadata::MetadataMap) -> u32 {
    match meta.get(LOG_FORMAT_HEADER) {
        None => 1,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
    }
}

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
    pub formats: std::sync::Arc<PeerFormats>,
    /// How long a peer is called the plain way before its lane is tried again.
    pub reprobe: Duration,
    /// The heartbeat interval: the first wait before an unreachable peer is called again.
    pub heartbeat: Duration,
}

/// How long a peer found without a Raft lane is called the plain way before the lane is tried
/// again: it may have been upgraded without a call failing in between (a quick restart).
pub const LANE_REPROBE: Duration = Duration::from_secs(30);

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        let raft_client = |ch: Channel| {
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE)
        };
        let e = endpoint(&node.addr, Duration::from_secs(2), self.tls.clone()).ok();
        PeerConn {
            target,
            addr: node.addr.clone(),
            lane: e.as_ref().map(|e| {
                raft_client(e.connect_with_connector_lazy(crate::listener::PeerConnector))
            }),
            plain: e.map(|e| raft_client(e.connect_lazy())),
            way: Way::Unknown,
            reprobe: self.reprobe,
            heartbeat: self.heartbeat,
            faults: self.faults.clone(),
            formats: self.formats.clone(),
        }
    }
}

/// How a peer is reached: on its Raft lane (connections opened with
/// [`crate::listener::PEER_PREFACE`]), or, for a member of an older release that takes the
/// preface for a broken handshake, on its main server like any client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// Not known yet, or the peer stopped answering (it may have restarted as another
    /// release): a failed call on the lane is tried once more the plain way.
    Unknown,
    Lane,
    /// Since when: after [`PeerConn::reprobe`] the lane is tried again, as with `Unknown`.
    Plain(tokio::time::Instant),
}

pub struct PeerConn {
    target: NodeId,
    addr: String,
    lane: Option<RaftClient<Channel>>,
    plain: Option<RaftClient<Channel>>,
    way: Way,
    reprobe: Duration,
    heartbeat: Duration,
    faults: Option<std::sync::Arc<Faults>>,
    formats: std::sync::Arc<PeerFormats>,
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
        if self.lane.is_none() || self.plain.is_none() {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                "invalid address {:?} for member {}",
                self.addr, self.target
            )))));
        }
        let data = bincode::serialize(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
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
        let started = tokio::time::Instant::now();
        let was_plain = matches!(self.way, Way::Plain(_));
        if matches!(self.way, Way::Plain(since) if since.elapsed() >= self.reprobe) {
            self.way = Way::Unknown;
        }
        // Kept for a second try only while the way is not known.
        let again = (self.way == Way::Unknown).then(|| data.clone());
        let first = match self.way {
            Way::Plain(since) => Way::Plain(since),
            _ => Way::Lane,
        };
        let mut answer = self.send(first, action, data, ttl).await;
        if let (Err(Some(status)), Some(data)) = (&answer, again) {
            let left = ttl.saturating_sub(started.elapsed());
            let plain = self.send(Way::Plain(started), action, data, left).await;
            if plain.is_ok() {
                if !was_plain {
                    tracing::info!(member = self.target, addr = %self.addr, error = %status.message(), "peer does not take Raft's own connections (an older release?); calling it like a client");
                }
                self.way = Way::Plain(started);
            }
            answer = plain;
        } else if was_plain && answer.is_ok() && first == Way::Lane {
            tracing::info!(member = self.target, addr = %self.addr, "peer takes Raft's own connections again (upgraded?); calling it on its lane");
        }
        let resp = match answer {
            Err(None) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: 0,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Err(Some(status)) => {
                // It may be restarting as another release: find its way again.
                if status.code() == tonic::Code::Unavailable {
                    self.way = Way::Unknown;
                }
                return Err(status_to_rpc(&self.addr, status));
            }
            Ok(r) => {
                if self.way == Way::Unknown {
                    self.way = first;
                }
                self.formats.record(
                    self.target,
                    answer_format(r.metadata()),
                    matches!(self.way, Way::Plain(_)),
                );
                r.into_inner()
            }
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

impl PeerConn {
    /// One call the given way; `Err(None)` when `ttl` ran out.
    async fn send(
        &mut self,
        way: Way,
        action: RPCTypes,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<tonic::Response<RaftPayload>, Option<Status>> {
        let client = match way {
            Way::Plain(_) => self.plain.as_mut(),
            _ => self.lane.as_mut(),
        };
        let Some(client) = client else {
            return Err(Some(Status::unavailable("no client")));
        };
        let mut req = Request::new(RaftPayload { data });
        req.set_timeout(ttl);
        let fut = async {
            match action {
                RPCTypes::Vote => client.vote(req).await,
                RPCTypes::AppendEntries => client.append_entries(req).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(req).await,
            }
        };
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(None),
            Ok(r) => r.map_err(Some),
        }
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

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(unreachable_retries(self.heartbeat))
    }
}

/// The waits before calling an unreachable peer again: a heartbeat, doubling up to four.
///
/// openraft's own is 500 ms every time. A member restarted within that wait heard nothing from
/// the leader before its election timer ran out (the leader's lease plus its random timeout,
/// 390 - 520 ms with the defaults), called an election, deposed the leader, and, refused for its
/// shorter log, kept 520 ms more on its timer until its next election: half of `scripts/bench
/// failover`'s kills took 950 - 1,000 ms instead of 430 - 560 ms. Four heartbeats stay under
/// the shortest such timer, and a dead peer costs a failed connection five times a second.
pub fn unreachable_retries(heartbeat: Duration) -> impl Iterator<Item = Duration> + Send + 'static {
    let first = heartbeat.max(Duration::from_millis(1));
    let cap = first * 4;
    std::iter::successors(Some(first), move |d| Some((*d * 2).min(cap)))
}

/// The server half: hands incoming RPCs to the local Raft member.
pub struct RaftService {
    raft: Raft,
    /// With TLS on, only a member's certificate may speak Raft.
    members_only: bool,
    /// Named in every answer ([`LOG_FORMAT_HEADER`]).
    format: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
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
    /// `format`: the newest log format this member reads, told to the leader in every answer.
    pub fn new(raft: Raft, members_only: bool, format: u32) -> Self {
        RaftService {
            raft,
            members_only,
            format: tonic::metadata::MetadataValue::from(format),
        }
    }

    fn answer<T: Serialize>(&self, v: &T) -> Result<tonic::Response<RaftPayload>, Status> {
        let mut r = encode_resp(v)?;
        r.metadata_mut()
            .insert(LOG_FORMAT_HEADER, self.format.clone());
        Ok(r)
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
        self.answer(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode_req(req.into_inner())?;
        self.answer(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_req(req.into_inner())?;
        self.answer(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use openraft::Vote;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::listener::{sort, Lane};

    /// A restarted member must hear from the leader before its own election timer runs out:
    /// that timer is at least the longest election timeout plus the shortest, each more than
    /// two heartbeats, so the wait between calls stays at or under four heartbeats.
    #[test]
    fn an_unreachable_peer_is_called_again_within_four_heartbeats() {
        let ms = |v: Vec<Duration>| v.into_iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        let waits: Vec<Duration> = unreachable_retries(Duration::from_millis(50))
            .take(6)
            .collect();
        assert_eq!(ms(waits), vec![50, 100, 200, 200, 200, 200]);
        let slow: Vec<Duration> = unreachable_retries(Duration::from_millis(300))
            .take(4)
            .collect();
        assert_eq!(ms(slow), vec![300, 600, 1200, 1200]);
        assert_eq!(
            unreachable_retries(Duration::ZERO).next(),
            Some(Duration::from_millis(1))
        );
    }

    /// Grants every vote; the other calls are not used here.
    struct Grant;

    #[tonic::async_trait]
    impl raft_server::Raft for Grant {
        async fn append_entries(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, Status> {
            Err(Status::unimplemented("append_entries"))
        }

        async fn vote(
            &self,
            req: Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, Status> {
            let rpc: VoteRequest<NodeId> = decode_req(req.into_inner())?;
            let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse {
                vote: rpc.vote,
                vote_granted: true,
                last_log_id: None,
            });
            encode_resp(&answer)
        }

        async fn install_snapshot(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<tonic::Response<RaftPayload>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }
    }

    /// A peer without TLS whose Raft lane can be switched on while it runs, with no call
    /// failing meanwhile: until then the preface reaches its HTTP/2 server as garbage, as it
    /// does on a member of an older release.
    async fn peer(lane: Arc<AtomicBool>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (to_clients, clients) = mpsc::channel(16);
        let (to_peers, peers) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                if !lane.load(Ordering::SeqCst) {
                    let _ = to_clients.send(Ok::<_, std::io::Error>(s)).await;
                    continue;
                }
                let (to_clients, to_peers) = (to_clients.clone(), to_peers.clone());
                tokio::spawn(async move {
                    match sort(s, Duration::from_secs(5)).await {
                        Ok(Lane::Client(s)) => drop(to_clients.send(Ok(s)).await),
                        Ok(Lane::Peer(s)) => drop(to_peers.send(Ok(s)).await),
                        Err(_) => {}
                    }
                });
            }
        });
        for incoming in [clients, peers] {
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(raft_server::RaftServer::new(Grant))
                    .serve_with_incoming(ReceiverStream::new(incoming)),
            );
        }
        addr
    }

    async fn vote(c: &mut PeerConn) -> VoteResponse<NodeId> {
        c.vote(
            VoteRequest::new(Vote::new(1, 1), None),
            RPCOption::new(Duration::from_secs(2)),
        )
        .await
        .expect("vote answered")
    }

    /// A member found without a lane may be upgraded without any call to it failing (a quick
    /// restart between two calls): its lane is tried again after the reprobe time, and the
    /// member's record of ways (what the metric serves) follows.
    #[tokio::test]
    async fn a_peer_called_the_plain_way_is_tried_on_its_lane_again_later() {
        let lane = Arc::new(AtomicBool::new(false));
        let addr = peer(lane.clone()).await;
        let formats = Arc::new(PeerFormats::default());
        let mut factory = NetworkFactory {
            faults: None,
            tls: None,
            formats: formats.clone(),
            // Long enough that a loaded machine does not reach it between the first two calls.
            reprobe: Duration::from_secs(2),
            heartbeat: Duration::from_millis(50),
        };
        let mut conn = factory
            .new_client(2, &BasicNode::new(format!("http://{addr}")))
            .await;
        assert!(vote(&mut conn).await.vote_granted);
        assert_eq!(
            formats.ways(),
            vec![(2, true)],
            "fell back to the plain way"
        );

        lane.store(true, Ordering::SeqCst);
        vote(&mut conn).await;
        assert_eq!(
            formats.ways(),
            vec![(2, true)],
            "the plain way is kept until the reprobe time"
        );
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        vote(&mut conn).await;
        assert_eq!(formats.ways(), vec![(2, false)], "back on the lane");
        vote(&mut conn).await;
        assert_eq!(formats.ways(), vec![(2, false)], "and kept on it");
    }
}
