//! The public `twill.v1.Controller` gRPC service.
//!
//! Writes and linearizable reads that reach a follower are forwarded to the leader once (the
//! forwarded request is marked so it is never forwarded again); a member that cannot find a
//! leader answers Unavailable with the last leader it knows in `x-twill-leader`. Watches are
//! served by whichever member the client is connected to, from its own applied state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::ServerState;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use twill_proto::server::controller_server::{self, ControllerServer};
use twill_proto::v1 as pb;
use twill_proto::v1::controller_client::ControllerClient;

use crate::allocator::{self as alloc, Command, Outcome};
use crate::authz::{self, Access, Caller, Denied};
use crate::convert::{self, alloc_status, config_to_proto, lease_to_proto};
use crate::network::MAX_MESSAGE;
use crate::node::{Member, ProposeError, FORWARDED, LEADER_HINT};
use crate::watch_stream;
use twill_proto::{MAX_REQUEST, PAGE_LEASES};

/// Feeds served to other members at once: two per member, with room for streams that are
/// being replaced after a leader change.
const MAX_FEEDS: usize = 64;

pub struct ControllerService {
    pub(crate) m: Arc<Member>,
    /// One permit per open watch stream: each holds a stream and its HTTP/2 window on this member.
    watches: Arc<tokio::sync::Semaphore>,
    /// Other members' feeds, apart from clients' watches so that none takes a client's place.
    feeds: Arc<tokio::sync::Semaphore>,
}

type Fwd<'a, Resp> = Pin<Box<dyn Future<Output = Result<Response<Resp>, Status>> + Send + 'a>>;

fn request_id(s: &str) -> Result<Option<String>, Status> {
    Ok(convert::request_id(s)?)
}

fn node(s: &str) -> Result<String, Status> {
    Ok(convert::node_name(s)?.to_string())
}

fn forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED)
}

fn mark<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}

impl ControllerService {
    pub fn new(m: Arc<Member>) -> Self {
        let watches = Arc::new(tokio::sync::Semaphore::new(m.opts.max_watches));
        let feeds = Arc::new(tokio::sync::Semaphore::new(MAX_FEEDS));
        ControllerService { m, watches, feeds }
    }

    pub fn into_server(self) -> ControllerServer<Self> {
        ControllerServer::new(self)
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Who is calling, and whether they may: a refusal is logged with the caller and counted.
    pub(crate) fn authorize<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
        access: Access<'_>,
    ) -> Result<Caller, Status> {
        let md = req.metadata();
        let text = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let version = twill_proto::version::refusal(
            text(twill_proto::version::API_HEADER),
            text(twill_proto::version::RELEASE_HEADER),
        );
        if let Some(why) = version {
            tracing::warn!(method, peer = ?req.remote_addr(), "call refused: {why}");
            return Err(Status::failed_precondition(why));
        }
        let caller = self.caller(req)?;
        if let Err(d) = authz::check(&caller, method, access) {
            self.m.metrics.denied(method, caller.role_label());
            tracing::warn!(caller = %caller, method, peer = ?req.remote_addr(), "call denied: {d}");
            return Err(match d {
                Denied::NoCertificate => Status::unauthenticated(d.to_string()),
                Denied::Forbidden { .. } => Status::permission_denied(d.to_string()),
            });
        }
        Ok(caller)
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if self.m.opts.tls.is_none() {
            return Ok(Caller::Insecure);
        }
        let Some(certs) = req.peer_certs() else {
            return Ok(Caller::Anonymous);
        };
        let Some(leaf) = certs.first() else {
            return Ok(Caller::Anonymous);
        };
        // The TLS layer has checked the chain and the dates; the identity is ours to read,
        // and a node's certificate from before its revocation is refused.
        match twill_pki::Identity::from_der(leaf) {
            Ok(id) if id.role == twill_pki::Role::Node => {
                let start = twill_pki::identity::not_before_ms(leaf).unwrap_or(0);
                if self
                    .m
                    .sm
                    .read()
                    .alloc
                    .trust()
                    .node_certificate_ok(&id.name, start)
                {
                    Ok(Caller::Known(id))
                } else {
                    self.m.metrics.denied("any", "node");
                    tracing::warn!(caller = %id, "call with a revoked certificate refused");
                    Err(Status::unauthenticated(format!(
                        "the certificate of {id} was revoked; join again with a new token"
                    )))
                }
            }
            Ok(id) => Ok(Caller::Known(id)),
            Err(e) => {
                self.m.metrics.denied("any", "unreadable");
                Err(Status::unauthenticated(format!(
                    "the client certificate carries no usable identity: {e}"
                )))
            }
        }
    }

    /// Sends a request that this member cannot serve to the leader, once.
    async fn forward_or<Resp>(
        &self,
        err: ProposeError,
        was_forwarded: bool,
        f: impl FnOnce(ControllerClient<Channel>) -> Fwd<'static, Resp>,
    ) -> Result<Response<Resp>, Status> {
        match err {
            ProposeError::NotLeader {
                leader: Some((id, addr)),
            } if !was_forwarded && id != self.m.id => {
                let client = self.m.forward_client(&addr)?;
                let mut resp = f(client).await?;
                // Tell the client where the leader is, so its next call skips this hop.
                if let Ok(v) = addr.parse() {
                    resp.metadata_mut().insert(LEADER_HINT, v);
                }
                Ok(resp)
            }
            e => Err(e.into_status()),
        }
    }

    /// Proposes a command; `answer` turns the allocator's outcome into the reply. The command
    /// is built afresh for each try, so the time it carries is the time it is proposed.
    pub(crate) async fn write<Req, Resp>(
        &self,
        req: Request<Req>,
        cmd: impl Fn(&Req) -> Result<alloc::Request, Status>,
        answer: impl FnOnce(u64, Outcome) -> Result<Resp, Status>,
        fwd: impl Fn(ControllerClient<Channel>, Request<Req>) -> Fwd<'static, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
    {
        let was_forwarded = forwarded(&req);
        let msg = req.into_inner();
        let mut route = Route::new(&self.m, was_forwarded);
        loop {
            let c = cmd(&msg)?;
            let err = match self.m.propose(c).await {
                Ok(resp) => {
                    return match resp.result {
                        Ok(out) => {
                            log_outcome(resp.revision, &out);
                            answer(resp.revision, out).map(Response::new)
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "request refused");
                            Err(alloc_status(&e))
                        }
                    }
                }
                Err(e) => e,
            };
            if let Some(resp) = route.forward(err, &msg, &fwd).await? {
                return Ok(resp);
            }
        }
    }

    /// Waits for a linearizable read point, forwarding to the leader when this is a follower.
    pub(crate) async fn read<Req, Resp>(
        &self,
        req: Request<Req>,
        answer: impl FnOnce(&Member) -> Result<Resp, Status>,
        fwd: impl Fn(ControllerClient<Channel>, Request<Req>) -> Fwd<'static, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone + Send + 'static,
    {
        let was_forwarded = forwarded(&req);
        let msg = req.into_inner();
        let mut route = Route::new(&self.m, was_forwarded);
        loop {
            let err = match self.m.linearizable().await {
                Ok(()) => return answer(&self.m).map(Response::new),
                Err(e) => e,
            };
            if let Some(resp) = route.forward(err, &msg, &fwd).await? {
                return Ok(resp);
            }
        }
    }
}

/// Where a write or read that this member could not serve goes. A follower sends it to the
/// leader; while no leader is known (an election), or the one it knows cannot be reached (it
/// died), the follower holds the request until a leader is elected, then sends it there, or
/// serves it itself if it was elected. It holds it for up to four longest election timeouts
/// (detection takes two at most, a split vote one more) or 2 s, whichever is longer, still
/// under every client's attempt timeout. The client is thus answered as soon as the cluster can
/// answer, however long its own retry backoff has grown. A retried write keeps its request id,
/// so one that reached the dead leader and was committed is answered, not applied again.
struct Route<'a> {
    m: &'a Member,
    was_forwarded: bool,
    until: tokio::time::Instant,
    /// A leader that could not be reached: wait for another.
    unreachable: Option<crate::NodeId>,
}

/// What to do next with the request: `None` is "try here again".
type Routed<Resp> = Result<Option<Response<Resp>>, Status>;

impl<'a> Route<'a> {
    fn new(m: &'a Member, was_forwarded: bool) -> Self {
        let hold = std::time::Duration::from_millis((m.opts.election_max_ms * 4).max(2_000));
        Route {
            m,
            was_forwarded,
            until: tokio::time::Instant::now() + hold,
            unreachable: None,
        }
    }

    async fn forward<Req: Clone, Resp>(
        &mut self,
        err: ProposeError,
        msg: &Req,
        fwd: &impl Fn(ControllerClient<Channel>, Request<Req>) -> Fwd<'static, Resp>,
    ) -> Routed<Resp> {
        let ProposeError::NotLeader { leader } = err else {
            return Err(err.into_status());
        };
        // A request forwarded to us is answered by us: never forwarded again, never held.
        if self.was_forwarded {
            return Err(ProposeError::NotLeader { leader }.into_status());
        }
        let known = leader
            .clone()
            .filter(|l| l.0 != self.m.id && Some(l.0) != self.unreachable);
        let (id, addr) = match known {
            Some(l) => l,
            None => match self.m.await_leader(self.unreachable, self.until).await {
                // Elected here while waiting: serve it (pausing a little, in case this member
                // calls itself leader a moment longer than Raft lets it propose).
                Some((id, _)) if id == self.m.id && tokio::time::Instant::now() < self.until => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    return Ok(None);
                }
                Some((id, _)) if id == self.m.id => {
                    return Err(ProposeError::NotLeader { leader }.into_status())
                }
                Some(l) => l,
                None => return Err(ProposeError::NotLeader { leader }.into_status()),
            },
        };
        let client = self.m.forward_client(&addr)?;
        match fwd(client, mark(msg.clone())).await {
            Ok(mut resp) => {
                // Tell the client where the leader is, so its next call skips this hop.
                if let Ok(v) = addr.parse() {
                    resp.metadata_mut().insert(LEADER_HINT, v);
                }
                Ok(Some(resp))
            }
            // Our own connection failed, not the leader's answer.
            Err(s)
                if twill_client::from_connection(&s)
                    && tokio::time::Instant::now() < self.until =>
            {
                tracing::info!(leader = id, %addr, error = %s, "leader unreachable; holding the request for the next one");
                self.unreachable = Some(id);
                Ok(None)
            }
            Err(s) => Err(s),
        }
    }
}

impl ControllerService {
    /// Answers from what only the leader keeps in memory (no Raft round): here when this
    /// member leads, else forwarded to the leader once.
    async fn on_leader<Req, Resp>(
        &self,
        req: Request<Req>,
        answer: impl FnOnce(&Member) -> Resp,
        fwd: impl FnOnce(ControllerClient<Channel>, Request<Req>) -> Fwd<'static, Resp>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
    {
        match self.m.leader() {
            Some((id, _)) if id == self.m.id => Ok(Response::new(answer(&self.m))),
            leader => {
                let was_forwarded = forwarded(&req);
                let msg = req.into_inner();
                self.forward_or(
                    ProposeError::NotLeader { leader },
                    was_forwarded,
                    move |c| fwd(c, mark(msg)),
                )
                .await
            }
        }
    }
}

/// One line per change an operator would want to find in the log; renewals only at debug.
fn log_outcome(rev: u64, o: &Outcome) {
    match o {
        Outcome::Lease(l) if l.create_revision == rev => {
            tracing::info!(node = %l.node, subnet = %l.subnet, public_ip = %l.public_ip, reason = %l.reason, revision = rev, "lease granted")
        }
        Outcome::Lease(l) => {
            tracing::debug!(node = %l.node, subnet = %l.subnet, revision = rev, "lease renewed")
        }
        Outcome::Released(l) => {
            tracing::info!(node = %l.node, subnet = %l.subnet, revision = rev, "lease released")
        }
        Outcome::Config(c) => {
            tracing::info!(network = %c.network, subnet_len = c.subnet_len, backend = c.backend.name(), revision = rev, "network configuration set")
        }
        Outcome::Reserved => tracing::info!(revision = rev, "reservation added"),
        Outcome::Unreserved => tracing::info!(revision = rev, "reservation removed"),
        Outcome::Expired(_) | Outcome::Promoted(_) | Outcome::Noop | Outcome::Trust(_) => {}
    }
}

fn unexpected(o: Outcome) -> Status {
    Status::internal(format!("unexpected allocator outcome {o:?}"))
}

fn lease_answer(rev: u64, o: Outcome) -> Result<pb::LeaseResponse, Status> {
    match o {
        Outcome::Lease(l) => Ok(pb::LeaseResponse {
            lease: Some(lease_to_proto(&l)),
            revision: rev,
        }),
        o => Err(unexpected(o)),
    }
}

fn members(m: &Member) -> Vec<pb::Member> {
    let metrics = m.raft.metrics().borrow().clone();
    let mem = metrics.membership_config.membership();
    let voters: Vec<u64> = mem.voter_ids().collect();
    mem.nodes()
        .map(|(id, n)| pb::Member {
            id: *id,
            addr: n.addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

#[tonic::async_trait]
impl controller_server::Controller for ControllerService {
    async fn acquire(
        &self,
        req: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        self.authorize(&req, "Acquire", Access::Node(&req.get_ref().node))?;
        let instance = convert::instance(&req.get_ref().instance)?;
        self.write(
            req,
            |r| {
                let args = convert::acquire_args(r)?;
                let now = self.m.clock.now_ms();
                Ok(alloc::Request {
                    request_id: request_id(&r.request_id)?,
                    // Agents that name no instance keep the older form.
                    command: if instance.is_empty() {
                        Command::Acquire { args, now }
                    } else {
                        Command::AcquireAs {
                            args,
                            now,
                            instance: instance.clone(),
                        }
                    },
                })
            },
            lease_answer,
            |mut c, r| Box::pin(async move { c.acquire(r).await }),
        )
        .await
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        self.authorize(&req, "Renew", Access::Node(&req.get_ref().node))?;
        self.write(
            req,
            |r| {
                Ok(alloc::Request {
                    request_id: request_id(&r.request_id)?,
                    command: Command::Renew {
                        node: node(&r.node)?,
                        create_revision: r.create_revision,
                        now: self.m.clock.now_ms(),
                    },
                })
            },
            lease_answer,
            |mut c, r| Box::pin(async move { c.renew(r).await }),
        )
        .await
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.authorize(&req, "Release", Access::Node(&req.get_ref().node))?;
        self.write(
            req,
            |r| {
                Ok(alloc::Request {
                    request_id: request_id(&r.request_id)?,
                    command: Command::Release {
                        node: node(&r.node)?,
                    },
                })
            },
            |rev, o| match o {
                Outcome::Released(_) => Ok(pb::ReleaseResponse { revision: rev }),
                o => Err(unexpected(o)),
            },
            |mut c, r| Box::pin(async move { c.release(r).await }),
        )
        .await
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigResponse>, Status> {
        let caller = self.authorize(&req, "GetConfig", Access::Identified)?;
        let mut resp = self
            .read(
                req,
                |m| {
                    let d = m.sm.read();
                    Ok(pb::ConfigResponse {
                        config: d.alloc.config().map(config_to_proto),
                        revision: d.alloc.revision(),
                        present: d.alloc.config().is_some(),
                        config_revision: d.alloc.config_revision(),
                    })
                },
                |mut c, r| Box::pin(async move { c.get_config(r).await }),
            )
            .await?;
        // A forwarded answer comes from the leader in full: redact it here, for this caller.
        if let Some(cfg) = resp.get_mut().config.as_mut() {
            authz::redact_config(cfg, &caller);
        }
        Ok(resp)
    }

    async fn set_config(
        &self,
        req: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::ConfigResponse>, Status> {
        self.authorize(&req, "SetConfig", Access::Admin)?;
        self.write(
            req,
            |r| {
                let cfg = r
                    .config
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("config: required"))?;
                Ok(alloc::Request {
                    request_id: request_id(&r.request_id)?,
                    command: Command::SetConfig {
                        config: convert::config_from_proto(cfg)?,
                        only_if_absent: false,
                    },
                })
            },
            |rev, o| match o {
                Outcome::Config(c) => Ok(pb::ConfigResponse {
                    config: Some(config_to_proto(&c)),
                    revision: rev,
                    present: true,
                    // Every accepted set is a new revision, this one.
                    config_revision: rev,
                }),
                o => Err(unexpected(o)),
            },
            |mut c, r| Box::pin(async move { c.set_config(r).await }),
        )
        .await
    }

    async fn list_leases(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        self.authorize(&req, "ListLeases", Access::Identified)?;
        let (limit, after) = {
            let r = req.get_ref();
            let limit = match r.limit as usize {
                0 => PAGE_LEASES,
                n => n.min(PAGE_LEASES),
            };
            // Node names are at most 253 bytes; a longer cursor cannot come from a page.
            if r.after.len() > twill_proto::names::MAX_NODE_NAME_LEN {
                return Err(Status::invalid_argument(format!(
                    "after: {} is not a node name",
                    twill_proto::names::quote(&r.after)
                )));
            }
            (limit, r.after.clone())
        };
        self.read(
            req,
            move |m| {
                let d = m.sm.read();
                let page = d.alloc.page(&after, limit);
                Ok(pb::ListLeasesResponse {
                    leases: page.leases.into_iter().map(lease_to_proto).collect(),
                    reservations: page
                        .reservations
                        .into_iter()
                        .map(|(n, s)| pb::Reservation {
                            node: n.clone(),
                            subnet: s.to_string(),
                        })
                        .collect(),
                    revision: d.alloc.revision(),
                    next_after: page.next_after.unwrap_or_default(),
                })
            },
            |mut c, r| Box::pin(async move { c.list_leases(r).await }),
        )
        .await
    }

    async fn reserve(
        &self,
        req: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        self.authorize(&req, "Reserve", Access::Admin)?;
        self.write(
            req,
            |r| {
                Ok(alloc::Request {
                    request_id: request_id(&r.request_id)?,
                    command: Command::Reserve {
                        node: node(&r.node)?,
                        subnet: convert::reserve_subnet(&r.subnet)?,
                    },
                })
            },
            |rev, _| Ok(pb::ReserveResponse { revision: rev }),
            |mut c, r| Box::pin(async move { c.reserve(r).await }),
        )
        .await
    }

    async fn unreserve(
        &self,
        req: Request<pb::UnreserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        self.authorize(&req, "Unreserve", Access::Admin)?;
        self.write(
            req,
            |r| {
                Ok(alloc::Request {
                    request_id: request_id(&r.request_id)?,
                    command: Command::Unreserve {
                        node: node(&r.node)?,
                    },
                })
            },
            |rev, _| Ok(pb::ReserveResponse { revision: rev }),
            |mut c, r| Box::pin(async move { c.unreserve(r).await }),
        )
        .await
    }

    async fn join_node(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.join(req).await
    }

    async fn renew_certificate(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.renew_cert(req).await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.new_token(req).await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.tokens(req).await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.revoke(req).await
    }

    async fn revoke_node(
        &self,
        req: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        self.revoke_node_certs(req).await
    }

    type WatchStream = watch_stream::WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.authorize(&req, "Watch", Access::Identified)?;
        let r = req.into_inner();
        if caller.is_member() {
            let Ok(permit) = self.feeds.clone().try_acquire_owned() else {
                return Err(Status::resource_exhausted(format!(
                    "this member already serves {MAX_FEEDS} other members' feeds"
                )));
            };
            return Ok(Response::new(watch_stream::serve(
                self.m.clone(),
                r.start_revision,
                r.omit_renewals,
                caller,
                permit,
            )));
        }
        let Ok(permit) = self.watches.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "this member already serves {} watches (--max-watches); watch another member",
                self.m.opts.max_watches
            )));
        };
        Ok(Response::new(watch_stream::serve(
            self.m.clone(),
            r.start_revision,
            r.omit_renewals,
            caller,
            permit,
        )))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&req, "Status", Access::Identified)?;
        let x = self.m.raft.metrics().borrow().clone();
        let leader_addr = self.m.leader().map(|l| l.1).unwrap_or_default();
        let (revision, leases, retry_answers) = {
            let d = self.m.sm.read();
            (
                d.alloc.revision(),
                d.alloc.lease_count() as u64,
                d.alloc.retry_answers() as u64,
            )
        };
        Ok(Response::new(pb::StatusResponse {
            id: self.m.id,
            members: members(&self.m),
            leader: x.current_leader.unwrap_or(0),
            leader_addr,
            term: x.current_term,
            last_log_index: x.last_log_index.unwrap_or(0),
            applied_index: x.last_applied.map(|l| l.index).unwrap_or(0),
            revision,
            state: match x.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            leases,
            release: twill_proto::version::RELEASE.into(),
            api: twill_proto::version::API,
            retry_answers,
        }))
    }

    async fn report_health(
        &self,
        req: Request<pb::ReportHealthRequest>,
    ) -> Result<Response<pb::ReportHealthResponse>, Status> {
        self.authorize(&req, "ReportHealth", Access::Node(&req.get_ref().node))?;
        let msg = req.get_ref();
        let name = node(&msg.node)?;
        let Some(health) = msg.health.clone() else {
            return Err(Status::invalid_argument("health: missing"));
        };
        crate::health::validate(&health)?;
        self.on_leader(
            req,
            |m| {
                let now = std::time::Instant::now();
                // The state first, then the board: the order /metrics takes them in.
                let d = m.sm.read();
                let mut board = m.health.lock().unwrap_or_else(|p| p.into_inner());
                board.record(name, health, now);
                board.prune(|n| d.alloc.lease(n).is_some(), now);
                pb::ReportHealthResponse {}
            },
            |mut c, r| Box::pin(async move { c.report_health(r).await }),
        )
        .await
    }

    async fn list_health(
        &self,
        req: Request<pb::ListHealthRequest>,
    ) -> Result<Response<pb::ListHealthResponse>, Status> {
        self.authorize(&req, "ListHealth", Access::Identified)?;
        self.on_leader(
            req,
            |m| pb::ListHealthResponse {
                nodes: m
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .list(std::time::Instant::now()),
                member: m.id,
            },
            |mut c, r| Box::pin(async move { c.list_health(r).await }),
        )
        .await
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        self.authorize(&req, "AddMember", Access::Admin)?;
        let was_forwarded = forwarded(&req);
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("id: member ids start at 1"));
        }
        if !(r.addr.starts_with("http://") || r.addr.starts_with("https://")) {
            return Err(Status::invalid_argument(format!(
                "addr: {} is not a URL like http://10.0.0.2:7420",
                twill_proto::names::quote(&r.addr)
            )));
        }
        // A learner that never answers would be replicated to forever, and the call would hang:
        // check that something serves the Raft API there first.
        if !was_forwarded {
            self.m.probe_member(&r.addr).await?;
        }
        tracing::info!(member = r.id, addr = %r.addr, "adding member (learner, then voter)");
        match self.m.add_member(r.id, r.addr.clone()).await {
            Ok(()) => Ok(Response::new(pb::MembersResponse {
                members: members(&self.m),
            })),
            Err(e) => {
                self.forward_or(e, was_forwarded, move |mut c| {
                    Box::pin(async move { c.add_member(mark(r)).await })
                })
                .await
            }
        }
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        self.authorize(&req, "RemoveMember", Access::Admin)?;
        let was_forwarded = forwarded(&req);
        let r = req.into_inner();
        if !members(&self.m).iter().any(|x| x.id == r.id) {
            return Err(Status::not_found(format!(
                "member {} is not in the cluster",
                r.id
            )));
        }
        tracing::info!(member = r.id, "removing member");
        match self.m.remove_member(r.id).await {
            Ok(()) => Ok(Response::new(pb::MembersResponse {
                members: members(&self.m),
            })),
            Err(e) => {
                self.forward_or(e, was_forwarded, move |mut c| {
                    Box::pin(async move { c.remove_member(mark(r)).await })
                })
                .await
            }
        }
    }
}
