//! One running controller member: storage opened, Raft started, gRPC served, leader duties on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Status;
use twill_proto::v1::controller_client::ControllerClient;

use crate::allocator::{Command, NetworkConfig, Request, Response};
use crate::batch::{self, BatchError};
use crate::log_store::{LogStore, OpenError};
use crate::metrics::{Metrics, WriteError};
use crate::network::{NetworkFactory, RaftService, MAX_MESSAGE};
use crate::service::ControllerService;
use crate::state_machine::{Shared, SnapshotFileError, StateMachine};
use crate::watch::DEFAULT_HISTORY;
use crate::{leader, NodeId, Raft};

/// Metadata key naming the leader's address on Unavailable answers, for clients to follow.
pub use twill_proto::LEADER_HINT;
/// Set on a request one member forwards to another, so it is never forwarded twice.
pub const FORWARDED: &str = "x-twill-forwarded";

/// Node certificates last a month; agents renew them when two thirds have passed.
pub const DEFAULT_NODE_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Enough for every agent of a large cluster on one member (each agent keeps one watch).
pub const DEFAULT_MAX_WATCHES: usize = 20_000;
/// Calls in flight on one client connection; a watch holds one for its whole life.
pub const MAX_CALLS_PER_CONNECTION: usize = 1024;

#[derive(Clone, Debug)]
pub struct Options {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// How other members and clients reach this one (`http://host:port`); derived from the
    /// bound address when empty.
    pub advertise: String,
    /// The initial members, this one included; empty means a single-member cluster.
    pub peers: BTreeMap<NodeId, String>,
    /// Start without forming a cluster, to be added to an existing one with `members add`.
    pub join: bool,
    /// Proposed once, by the first leader of a cluster that has no configuration yet.
    pub initial_config: NetworkConfig,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub write_timeout: Duration,
    pub watch_progress: Duration,
    pub watch_history: usize,
    /// Followers serve their watchers from the leader's stream too, ahead of their own log
    /// ([`crate::feed`]).
    pub watch_feed: bool,
    /// How long a follower keeps a feed after its last watcher of that kind has gone.
    pub watch_feed_idle: Duration,
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower catches up from the
    /// log instead of a whole snapshot.
    pub keep_log: u64,
    /// How long past a leader change a lease is kept beyond its deadline (at least one
    /// election timeout, so no holder loses a lease only because leadership moved).
    pub promote_grace_ms: u64,
    pub expiry_interval: Duration,
    /// Where to serve Prometheus metrics over HTTP; none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the read-only status page; none by default.
    pub status_listen: Option<SocketAddr>,
    /// Faults for this member's outgoing Raft messages (chaos tests only).
    pub faults: Option<Arc<crate::network::Faults>>,
    /// Faults under this member's Raft log and snapshot file (tests only).
    pub disk_faults: Option<crate::disk::DiskFaults>,
    /// Watch streams this member serves at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_watches: usize,
    /// This member's certificate, key and the cluster CA: TLS on every connection, identities
    /// checked on every call. None: plaintext and no checks (`--insecure`).
    pub tls: Option<twill_pki::Credentials>,
    /// The CA this member brings to a new cluster (its first leader replicates it).
    pub ca: Option<twill_pki::Ca>,
    /// How long a node certificate issued by this cluster is valid.
    pub node_cert_ttl: Duration,
    /// The log format this member tells the leader it reads: [`crate::allocator::LOG_FORMAT`].
    /// Tests set an older one to stand for a member of an older release.
    pub log_format: u32,
    /// Whether peers' Raft connections, opened with [`crate::listener::PEER_PREFACE`], are
    /// served on Raft's threads. Tests clear it to stand for a member of an older release,
    /// whose TLS handshake (or HTTP/2 server) takes the preface for garbage.
    pub peer_lane: bool,
    /// How long a peer without a Raft lane is called the plain way before the lane is tried
    /// again ([`crate::network::LANE_REPROBE`]); tests shorten it.
    pub lane_reprobe: Duration,
}

impl Options {
    pub fn new(id: NodeId, data_dir: PathBuf, listen: SocketAddr) -> Self {
        Options {
            id,
            data_dir,
            listen,
            advertise: String::new(),
            peers: BTreeMap::new(),
            join: false,
            initial_config: NetworkConfig::embedded_default(),
            heartbeat_ms: 50,
            election_min_ms: 130,
            election_max_ms: 260,
            write_timeout: Duration::from_secs(5),
            watch_progress: Duration::from_secs(5),
            watch_history: DEFAULT_HISTORY,
            watch_feed: true,
            watch_feed_idle: crate::feed::IDLE,
            snapshot_every: 10_000,
            keep_log: 1_000,
            promote_grace_ms: 10_000,
            expiry_interval: Duration::from_secs(1),
            metrics_listen: None,
            status_listen: None,
            faults: None,
            disk_faults: None,
            max_watches: DEFAULT_MAX_WATCHES,
            tls: None,
            ca: None,
            node_cert_ttl: DEFAULT_NODE_CERT_TTL,
            log_format: crate::allocator::LOG_FORMAT,
            peer_lane: true,
            lane_reprobe: crate::network::LANE_REPROBE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] OpenError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotFileError),
    #[error(transparent)]
    StatusToken(#[from] crate::status_page::TokenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid Raft settings: {0}")]
    RaftConfig(String),
    #[error("--peer list {0:?} does not include this member's --id {1}")]
    SelfNotInPeers(Vec<NodeId>, NodeId),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why a write or a linearizable read could not be done on this member.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this member is not the leader")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("no quorum: not committed within {timeout:?} (members {members:?})")]
    NoQuorum {
        timeout: Duration,
        members: Vec<NodeId>,
        leader: Option<(NodeId, String)>,
    },
    #[error("the Raft member stopped: {0}")]
    Fatal(String),
}

impl ProposeError {
    pub fn into_status(self) -> Status {
        let (msg, leader) = match &self {
            ProposeError::NotLeader { leader: None } => {
                ("no leader elected yet; retry shortly".to_string(), None)
            }
            ProposeError::NotLeader { leader: Some(l) } => (
                format!("not the leader; the leader is member {} at {}", l.0, l.1),
                Some(l.1.clone()),
            ),
            ProposeError::NoQuorum { leader, .. } => {
                (self.to_string(), leader.as_ref().map(|l| l.1.clone()))
            }
            ProposeError::Fatal(_) => (self.to_string(), None),
        };
        let mut s = Status::unavailable(msg);
        if let Some(addr) = leader {
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert(LEADER_HINT, v);
            }
        }
        s
    }
}

pub struct Member {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: Arc<Shared>,
    /// The state machine's signals, on this runtime: what watchers wait on.
    pub applied: crate::relay::Relay,
    /// Events from the leader's stream that this member has not applied yet (followers only).
    pub feeds: crate::feed::Feeds,
    pub opts: Options,
    forward: Mutex<HashMap<String, ControllerClient<Channel>>>,
    /// Flipped on shutdown so long-lived streams end instead of holding the server open.
    stopping: tokio::sync::watch::Sender<bool>,
    batches: mpsc::Sender<(Request, batch::Reply)>,
    pub metrics: Arc<Metrics>,
    pub clock: crate::clock::Clock,
    /// The agents' last health reports; meaningful on the leader only.
    pub health: Mutex<crate::health::Board>,
    /// What each peer reads, from its Raft answers; see [`Member::oldest_reader`].
    pub formats: Arc<crate::network::PeerFormats>,
}

impl Member {
    /// Resolves once this member starts shutting down.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Resolves with the reason once Raft has stopped on an error of its own (a log or
    /// snapshot write that failed); never after a requested shutdown. Such a member no longer
    /// votes, appends or acknowledges anything: the process should exit and be restarted.
    pub async fn fatal(&self) -> String {
        let mut m = self.raft.metrics();
        loop {
            if let Err(e) = &m.borrow().running_state {
                if !matches!(e, openraft::error::Fatal::Stopped) {
                    return e.to_string();
                }
            }
            if m.changed().await.is_err() {
                // The metrics' sender is gone with Raft; whatever stopped it was reported above.
                return std::future::pending().await;
            }
        }
    }

    /// The member that reads the oldest log format, when that is older than `format`: a
    /// command of `format` must then not be written. A peer that has never answered this
    /// member is waited for up to two heartbeats (a new leader hears from every live member
    /// within one), then left out: it is down, applies nothing meanwhile, and holding every
    /// acquisition back for a member that may never return would cost more than the risk that
    /// it returns on an older release mid-upgrade (it would then refuse the newer entries until
    /// upgraded, while the others carry on). A member of a release before the check answers
    /// without naming a format and counts as format 1.
    pub async fn oldest_reader(&self, format: u32) -> Option<(NodeId, u32)> {
        let peers: Vec<NodeId> = {
            let m = self.raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.id)
                .collect()
        };
        let until = tokio::time::Instant::now() + Duration::from_millis(self.opts.heartbeat_ms * 2);
        loop {
            let known: Vec<(NodeId, Option<u32>)> =
                peers.iter().map(|p| (*p, self.formats.of(*p))).collect();
            if known.iter().all(|(_, f)| f.is_some()) || tokio::time::Instant::now() >= until {
                return known
                    .into_iter()
                    .filter_map(|(p, f)| Some((p, f?)))
                    .filter(|(_, f)| *f < format)
                    .min_by_key(|(_, f)| *f);
            }
            tokio::time::sleep(Duration::from_millis(self.opts.heartbeat_ms.clamp(5, 50))).await;
        }
    }

    /// The leader as this member knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Mid-upgrade, a member of an older release cannot apply `AcquireAs`: as leader, the lease
    /// is then taken without naming its instance, as that release would have done. Here, where
    /// every proposal passes, so that no path (a request held through an election and served
    /// by the member elected, say) writes what a member cannot read.
    async fn readable_by_all(&self, mut req: Request) -> Request {
        let format = req.command.format();
        if format <= 1 || self.raft.current_leader().await != Some(self.id) {
            return req;
        }
        let Some((member, older)) = self.oldest_reader(format).await else {
            return req;
        };
        if let Command::AcquireAs { args, now, .. } = req.command {
            tracing::warn!(
                node = %args.node,
                member,
                format = older,
                "lease taken without recording the agent's instance: member {member} reads log format {older} (an older release); same-name protection resumes once every member is upgraded"
            );
            self.metrics.older_member_acquires.inc();
            req.command = Command::Acquire { args, now };
        }
        req
    }

    /// Waits until a leader other than `not` is known, or `until`.
    pub async fn await_leader(
        &self,
        not: Option<NodeId>,
        until: tokio::time::Instant,
    ) -> Option<(NodeId, String)> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader().filter(|l| Some(l.0) != not) {
                return Some(l);
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or Raft stopped.
                _ => return None,
            }
        }
    }

    /// The leader to send a client to after a write found no quorum here: never this member,
    /// which may be a leader cut off from the rest and not yet aware it was replaced.
    fn other_leader(&self) -> Option<(NodeId, String)> {
        self.leader().filter(|l| l.0 != self.id)
    }

    fn voters(&self) -> Vec<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().voter_ids().collect()
    }

    /// Proposes a command and waits for it to be applied; fails fast on a follower.
    pub async fn propose(&self, req: Request) -> Result<Response, ProposeError> {
        let started = std::time::Instant::now();
        self.metrics.proposed();
        let req = self.readable_by_all(req).await;
        let r = self.propose_inner(req).await;
        match &r {
            Ok(_) => self.metrics.committed(started.elapsed()),
            Err(ProposeError::NotLeader { .. }) => self.metrics.failed(WriteError::NotLeader),
            Err(ProposeError::NoQuorum { .. }) => self.metrics.failed(WriteError::NoQuorum),
            Err(ProposeError::Fatal(_)) => self.metrics.failed(WriteError::Fatal),
        }
        r
    }

    async fn propose_inner(&self, req: Request) -> Result<Response, ProposeError> {
        let (tx, rx) = oneshot::channel();
        if self.batches.send((req, tx)).await.is_err() {
            return Err(ProposeError::Fatal("the proposal queue is closed".into()));
        }
        match tokio::time::timeout(self.opts.write_timeout, rx).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(BatchError::NotLeader(leader)))) => Err(ProposeError::NotLeader { leader }),
            Ok(Ok(Err(BatchError::Fatal(e)))) => Err(ProposeError::Fatal(e)),
            Ok(Err(_)) => Err(ProposeError::Fatal("the proposal was dropped".into())),
            Err(_) => Err(ProposeError::NoQuorum {
                timeout: self.opts.write_timeout,
                members: self.voters(),
                leader: self.other_leader(),
            }),
        }
    }

    /// Waits until this member, as leader, has applied everything committed before the call.
    /// A round of heartbeats a quorum did not answer in time (a busy host, a slow peer) is
    /// tried again until the write timeout, as a write would wait for its commit: a read fails
    /// for want of a quorum only when there has been none for that long.
    pub async fn linearizable(&self) -> Result<(), ProposeError> {
        const AGAIN: Duration = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + self.opts.write_timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(ProposeError::NotLeader {
                        leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                    })
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))))
                    if tokio::time::Instant::now() + AGAIN < deadline =>
                {
                    tokio::time::sleep(AGAIN).await;
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) | Err(_) => {
                    return Err(ProposeError::NoQuorum {
                        timeout: self.opts.write_timeout,
                        members: self.voters(),
                        leader: self.other_leader(),
                    })
                }
                Ok(Err(e)) => return Err(ProposeError::Fatal(e.to_string())),
            }
        }
    }

    /// How this member presents itself to other members, when TLS is on.
    pub fn client_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.opts.tls.as_ref().map(|c| c.client_tls())
    }

    /// A client for forwarding a request to the member at `addr`.
    pub fn forward_client(&self, addr: &str) -> Result<ControllerClient<Channel>, Status> {
        let mut cache = self.forward.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(addr) {
            return Ok(c.clone());
        }
        let ch = crate::network::channel(addr, Duration::from_secs(2), self.client_tls())
            .map_err(|e| Status::unavailable(format!("leader address {addr:?} unusable: {e}")))?;
        let c = ControllerClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        cache.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Checks that a controller member answers at `addr` within two seconds.
    pub async fn probe_member(&self, addr: &str) -> Result<(), Status> {
        // Not the forwarding cache: an address that never becomes a member is not kept.
        let ch = crate::network::channel(addr, Duration::from_secs(2), self.client_tls()).map_err(
            |e| Status::invalid_argument(format!("addr: {}: {e}", twill_proto::names::quote(addr))),
        )?;
        let mut c = ControllerClient::new(ch);
        let mut req = tonic::Request::new(twill_proto::v1::StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        match tokio::time::timeout(Duration::from_secs(2), c.status(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(Status::failed_precondition(format!(
                "no controller member answers at {addr}: {}: {}; start it with --join first",
                s.code(),
                twill_proto::names::quote(s.message())
            ))),
            Err(_) => Err(Status::failed_precondition(format!(
                "no controller member answers at {addr} within 2s; start it with --join first"
            ))),
        }
    }

    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), ProposeError> {
        let map = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            other => ProposeError::Fatal(other.to_string()),
        };
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(map)?;
        let mut voters: BTreeSet<NodeId> = self.voters().into_iter().collect();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(map)?;
        Ok(())
    }

    pub async fn remove_member(&self, id: NodeId) -> Result<(), ProposeError> {
        let mut voters: BTreeSet<NodeId> = self.voters().into_iter().collect();
        voters.remove(&id);
        match self.raft.change_membership(voters, false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(e) => Err(ProposeError::Fatal(e.to_string())),
        }
    }
}

/// A started member. Dropping it stops its Raft tasks but not its server; [`Running::shutdown`]
/// stops everything, in order.
pub struct Running {
    pub member: Arc<Member>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    duties: JoinHandle<()>,
    log_closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    _raft_runtime: RaftRuntime,
}

/// Raft's own tasks (its core, the state machine's worker, one replication task per peer and
/// the connections they send on) run on threads of their own, and so does the server for
/// peers' connections to this member ([`crate::listener`]). On the shared runtime a commit's
/// notice to the followers queued behind the leader's watch streams, a third of a thousand
/// woken by the same commit, and the followers' watchers had each change 3.4 - 5.3 ms after
/// the leader's (1.5 - 3.1 ms now). Two threads, not one: with one, acquisitions at 64
/// clients came out about 5 % slower (five rounds alternating), the core, the state machine's
/// worker and the replication tasks no longer running side by side.
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        // Dropped from async code (a member shut down inside a test's runtime), where a
        // blocking shutdown would panic.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Running {
    pub fn advertise(&self) -> &str {
        &self.member.opts.advertise
    }

    /// Stops serving and shuts Raft down; the data directory can then be opened again.
    pub async fn shutdown(mut self) {
        self.duties.abort();
        self.member.stopping.send_replace(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.member.raft.shutdown().await;
        // Graceful shutdown waits for open calls; a client that keeps a stream open past the
        // grace period is cut off rather than holding the member up.
        if tokio::time::timeout(Duration::from_secs(3), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        let _ = (&mut self.duties).await;
        // Dropping the last handles lets the log writer finish and close the file.
        let log_closed = std::mem::replace(&mut self.log_closed, Box::pin(async {}));
        drop(self);
        if tokio::time::timeout(Duration::from_secs(5), log_closed)
            .await
            .is_err()
        {
            tracing::warn!("the Raft log was not closed within 5s of shutdown");
        }
    }

    /// Runs until the server fails or is stopped.
    pub async fn wait(&mut self) -> Result<(), tonic::transport::Error> {
        match (&mut self.server).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// Binds `opts.listen` and starts a member on it.
pub async fn start(opts: Options) -> Result<Running, StartError> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| StartError::Bind {
            addr: opts.listen,
            source: e,
        })?;
    start_on(opts, listener).await
}

pub async fn start_on(
    mut opts: Options,
    listener: tokio::net::TcpListener,
) -> Result<Running, StartError> {
    let addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: opts.listen,
        source: e,
    })?;
    if opts.advertise.is_empty() {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        opts.advertise = format!("http://{host}:{}", addr.port());
    }
    secure_data_dir(&opts.data_dir).map_err(|e| StartError::DataDir {
        path: opts.data_dir.clone(),
        source: e,
    })?;
    let mut log = LogStore::open_with(&opts.data_dir.join("raft.redb"), opts.disk_faults.clone())?;
    let log_closed = Box::pin(log.closed());
    let sm = StateMachine::open(&opts.data_dir, opts.watch_history)?
        .with_disk_faults(opts.disk_faults.clone());
    let shared = sm.shared();

    let log_state = log
        .get_log_state()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let vote = log
        .read_vote()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let fresh =
        log_state.last_log_id.is_none() && vote.is_none() && shared.read().last_applied.is_none();

    let config = Config {
        cluster_name: "twill".into(),
        heartbeat_interval: opts.heartbeat_ms,
        election_timeout_min: opts.election_min_ms,
        election_timeout_max: opts.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
        max_in_snapshot_log_to_keep: opts.keep_log,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::RaftConfig(e.to_string()))?;

    let formats = Arc::new(crate::network::PeerFormats::default());
    let network = NetworkFactory {
        faults: opts.faults.clone(),
        tls: opts.tls.as_ref().map(|c| c.client_tls()),
        formats: formats.clone(),
        reprobe: opts.lane_reprobe,
        heartbeat: Duration::from_millis(opts.heartbeat_ms),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("raft")
        .enable_all()
        .build()
        .map_err(|e| StartError::Raft(format!("cannot start Raft's threads: {e}")))?;
    // Everything openraft spawns goes where `Raft::new` runs.
    let started = rt.spawn(Raft::new(opts.id, Arc::new(config), network, log, sm));
    // Wrapped before anything can fail: a bare runtime dropped here would panic.
    let raft_rt = RaftRuntime(Some(rt));
    let raft = started
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?
        .map_err(|e| StartError::Raft(e.to_string()))?;

    let members: BTreeMap<NodeId, BasicNode> = if opts.peers.is_empty() {
        [(opts.id, BasicNode::new(opts.advertise.clone()))].into()
    } else {
        if !opts.peers.contains_key(&opts.id) {
            return Err(StartError::SelfNotInPeers(
                opts.peers.keys().copied().collect(),
                opts.id,
            ));
        }
        opts.peers
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a.clone())))
            .collect()
    };

    let (batch_tx, batch_rx) = mpsc::channel(batch::MAX_BATCH * 4);
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(batch::run(raft.clone(), batch_rx, metrics.clone()));
    let member = Arc::new(Member {
        id: opts.id,
        raft: raft.clone(),
        applied: crate::relay::Relay::start(shared.subscribe(), shared.subscribe_changes()),
        sm: shared,
        feeds: crate::feed::Feeds::default(),
        opts: opts.clone(),
        forward: Mutex::new(HashMap::new()),
        stopping: tokio::sync::watch::channel(false).0,
        batches: batch_tx,
        metrics,
        clock: crate::clock::Clock::new(),
        health: Mutex::new(crate::health::Board::default()),
        formats,
    });

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let lanes = crate::listener::split(listener, crate::listener::SORT_LIMIT, opts.peer_lane);
    let builder = || -> Result<tonic::transport::Server, StartError> {
        let mut b = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .max_concurrent_streams(MAX_CALLS_PER_CONNECTION as u32);
        if let Some(c) = &opts.tls {
            b = b
                .tls_config(c.server_tls())
                .map_err(|e| StartError::Tls(e.to_string()))?;
        }
        Ok(b)
    };
    if opts.tls.is_none() {
        tracing::warn!("TLS is off (--insecure): anyone who reaches this port can change the network, take any node's lease and join the cluster");
    }
    let raft_service = || RaftService::new(raft.clone(), opts.tls.is_some(), opts.log_format);
    // Peers' connections are served where Raft runs (see [`crate::listener`]); each socket
    // is registered with that runtime's reactor by the server's own task there.
    use futures::StreamExt;
    let peers = tokio_stream::wrappers::ReceiverStream::new(lanes.peers)
        .map(tokio::net::TcpStream::from_std);
    let mut stopping = member.stopping();
    let raft_server = builder()?
        .add_service(raft_service().into_server())
        .serve_with_incoming_shutdown(peers, async move {
            let _ = stopping.wait_for(|s| *s).await;
        });
    raft_rt
        .handle()
        .ok_or_else(|| StartError::Raft("Raft's threads are gone".into()))?
        .spawn(async move {
            if let Err(e) = raft_server.await {
                tracing::error!(error = %e, "serving peers' Raft connections failed");
            }
        });
    let clients =
        tokio_stream::wrappers::ReceiverStream::new(lanes.clients).map(Ok::<_, std::io::Error>);
    let server = tokio::spawn(
        builder()?
            .add_service(raft_service().into_server())
            .add_service(ControllerService::new(member.clone()).into_server())
            .serve_with_incoming_shutdown(clients, async {
                let _ = stop_rx.await;
            }),
    );

    if fresh && !opts.join {
        tracing::info!(id = opts.id, members = ?members.keys().collect::<Vec<_>>(), "forming a new cluster");
        // Every founding member proposes the same membership; openraft accepts it from
        // whichever is first and the rest are told it is already done.
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "initialize skipped");
        }
    } else if fresh {
        tracing::info!(id = opts.id, "waiting to be added to an existing cluster");
    } else {
        tracing::info!(id = opts.id, "restarting from {}", opts.data_dir.display());
        hold_elections(&raft, &opts);
    }

    if let Some(addr) = opts.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind { addr, source: e })?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        let mut stopping = member.stopping();
        tokio::spawn(twill_telemetry::serve(
            l,
            crate::metrics::endpoints(member.clone()),
            async move {
                let _ = stopping.changed().await;
            },
        ));
    }
    if let Some(addr) = opts.status_listen {
        let file = crate::status_page::token_path(&opts.data_dir);
        let access = match opts.tls {
            Some(_) => {
                crate::status_page::Access::Token(crate::status_page::load_or_create_token(&file)?)
            }
            None => crate::status_page::Access::Open,
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Bind { addr, source: e })?;
        match access {
            crate::status_page::Access::Open => {
                tracing::warn!(%addr, "serving the status page on http://{addr}/ to anyone (--insecure)")
            }
            crate::status_page::Access::Token(_) => tracing::info!(
                %addr,
                token_file = %file.display(),
                "serving the status page on http://{addr}/?token=<the token file's contents>"
            ),
        }
        let mut stopping = member.stopping();
        tokio::spawn(twill_telemetry::serve_router(
            l,
            crate::status_page::router(member.clone(), access, file),
            async move {
                let _ = stopping.changed().await;
            },
        ));
    }
    let duties = tokio::spawn(leader::run(member.clone()));
    if opts.watch_feed {
        tokio::spawn(crate::feed::run(
            member.clone(),
            false,
            opts.watch_feed_idle,
        ));
        tokio::spawn(crate::feed::run(member.clone(), true, opts.watch_feed_idle));
    }
    Ok(Running {
        member,
        addr,
        stop: Some(stop_tx),
        server,
        duties,
        log_closed,
        _raft_runtime: raft_rt,
    })
}

/// The data directory holds BGP keys and the cluster's keys: 0700, and every file in it 0600,
/// including files an older version left readable. The log file is made before redb opens it,
/// so it is never readable by others, not even for a moment.
fn secure_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("raft.redb"))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// A restarted member has no memory of when it last heard a leader, so openraft would let it
/// call an election at once; with a higher term it then deposes a healthy leader. Like Raft's
/// pre-vote, it first waits to hear from a leader (or for a full election period to pass).
fn hold_elections(raft: &Raft, opts: &Options) {
    let voters = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    if voters <= 1 {
        return;
    }
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    let wait = Duration::from_millis(opts.election_max_ms * 2 + opts.election_min_ms);
    tokio::spawn(async move {
        let mut m = raft.metrics();
        let heard = async {
            loop {
                let leader = m.borrow().current_leader;
                if leader.is_some() {
                    return;
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(wait, heard).await;
        raft.runtime_config().elect(true);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that fails to start, or is dropped without [`Running::shutdown`], drops Raft's
    /// runtime inside async code: that must stop its tasks, not panic.
    #[tokio::test]
    async fn raft_threads_dropped_from_async_code_stop_their_tasks() {
        struct Tell(std::sync::mpsc::Sender<()>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, dropped) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _tell = Tell(tx);
            std::future::pending::<()>().await;
        });
        drop(RaftRuntime(Some(rt)));
        dropped
            .recv_timeout(Duration::from_secs(5))
            .expect("the task on Raft's threads was dropped");
    }
}
