//! The one client for the controller's API, used by the CLI, the agent and the tests.
//!
//! It knows every member's endpoint, follows the leader hint a member returns, retries
//! unavailable members with capped exponential backoff and jitter, and gives each logical write
//! one request id for all its retries, so a write that was applied before its answer was lost
//! is not applied twice.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};
use twill_proto::v1::controller_client::ControllerClient;
use twill_proto::v1::{self as pb};

use twill_proto::{LEADER_HINT, MAX_MESSAGE};

pub mod certs;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no controller endpoints given")]
    NoEndpoints,
    #[error("invalid controller endpoint {0:?}: expected a URL like https://127.0.0.1:7420")]
    BadEndpoint(String),
    /// The TLS handshake failed for a reason that retrying will not change.
    #[error("TLS refused: {0}")]
    Refused(String),
    #[error("{0} does not speak plaintext gRPC; it probably serves TLS: pass --credentials FILE (a controller writes an admin's as admin.pem in its data directory)")]
    TlsExpected(String),
    #[error("{0} needs the cluster's credentials: pass --credentials FILE (a controller writes an admin's as admin.pem in its data directory), or use http:// for a cluster run with --insecure")]
    NoCredentials(String),
    /// The controller answered with an error that retrying will not fix.
    #[error("{}", .0.message())]
    Status(Status),
    /// Every endpoint refused the connection: nothing listens there, and waiting will not
    /// start a controller.
    #[error("no controller answers at {} (connection refused); start one with `twill controller` or pass --controller URL", .0.join(", "))]
    NotListening(Vec<String>),
    #[error("controller unavailable after {elapsed:?} ({attempts} attempts); last error: {last}")]
    Unavailable {
        elapsed: Duration,
        attempts: u32,
        last: String,
    },
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline for one attempt.
    pub attempt_timeout: Duration,
    /// Give up retrying after this long.
    pub retry_for: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// TLS settings with this client's certificate (or only the CA, for a join); none for a
    /// cluster run with `--insecure`.
    pub tls: Option<ClientTlsConfig>,
    /// Give up at once when every endpoint refuses the connection (an operator's command:
    /// nothing listens, so say so now); agents keep retrying instead.
    pub fail_when_none_listens: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(8),
            retry_for: Duration::from_secs(20),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            tls: None,
            fail_when_none_listens: false,
        }
    }
}

pub struct Client {
    endpoints: Mutex<Vec<(String, Api)>>,
    /// The member calls go to: the leader once one has been named.
    current: AtomicUsize,
    /// The member watches go to. Not the leader's cursor: any member serves a watch, and if
    /// every node's watch followed the leader, the leader would carry every stream. Starts at
    /// a random member, so a cluster's nodes spread their watches over its members.
    watching: AtomicUsize,
    opts: ClientOptions,
    /// The TLS settings new connections use; replaced when a certificate is renewed.
    tls: Mutex<Option<ClientTlsConfig>>,
}

/// Which of a client's two places a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    Calls,
    Watches,
}

/// An endpoint as this client dials it: with TLS, `http://` means the same member over
/// `https://` (the CLI's default endpoint is written either way); without, `https://` cannot
/// work and says why.
fn normalise(addr: &str, tls: bool) -> Result<String, ClientError> {
    let addr = addr.trim().trim_end_matches('/');
    match (
        addr.strip_prefix("http://"),
        addr.starts_with("https://"),
        tls,
    ) {
        (Some(rest), _, true) => Ok(format!("https://{rest}")),
        (Some(_), _, false) | (None, true, true) => Ok(addr.to_string()),
        (None, true, false) => Err(ClientError::NoCredentials(addr.to_string())),
        (None, false, _) => Err(ClientError::BadEndpoint(addr.to_string())),
    }
}

/// Every call says which release and API level it comes from, so a controller that cannot
/// serve it refuses with a message instead of misreading it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Versioned;

impl tonic::service::Interceptor for Versioned {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        use twill_proto::version::{API, API_HEADER, RELEASE, RELEASE_HEADER};
        let md = req.metadata_mut();
        md.insert(API_HEADER, tonic::metadata::MetadataValue::from(API));
        if let Ok(v) = RELEASE.parse() {
            md.insert(RELEASE_HEADER, v);
        }
        Ok(req)
    }
}

/// The public API's client as this crate uses it.
pub type Api =
    ControllerClient<tonic::service::interceptor::InterceptedService<Channel, Versioned>>;

fn connect(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Api, ClientError> {
    let ch = channel(addr, Duration::from_secs(2), tls)
        .map_err(|_| ClientError::BadEndpoint(addr.to_string()))?;
    Ok(ControllerClient::with_interceptor(ch, Versioned)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Builds a lazily connecting channel to a member's address (`https://host:port` with TLS,
/// `http://host:port` without).
pub fn channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr, connect_timeout, tls)?.connect_lazy())
}

/// The endpoint [`channel`] connects to, for a caller that dials the connection itself (the
/// Raft transport between members, which opens each one with a preface).
pub fn endpoint(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    // With TLS, a member's http:// URL (from flags written before TLS) is dialled as https://.
    let addr = match (&tls, addr.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => addr.to_string(),
    };
    let mut e = Endpoint::from_shared(addr)?;
    if let Some(t) = tls {
        e = e.tls_config(t)?;
    }
    Ok(e.connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// A fresh request id: random enough that two clients never collide.
pub fn new_request_id() -> String {
    let mut r = rand::rng();
    format!("{:016x}{:016x}", r.random::<u64>(), r.random::<u64>())
}

/// A status with the errors beneath it: a TLS refusal (an expired certificate, an unknown CA)
/// is named only in the transport error's sources.
fn describe(s: &Status) -> String {
    let mut out = format!("{}: {}", s.code(), s.message());
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = e.source();
    }
    if let Some(hint) = tls_refusal(&out) {
        out.push_str(" (");
        out.push_str(hint);
        out.push(')');
    }
    out
}

/// A connection that was made and then broke, as opposed to one refused or a call answered.
fn broken_connection(text: &str) -> bool {
    !text.contains("tcp connect error")
        && [
            "h2 protocol error",
            "connection closed",
            "broken pipe",
            "connection reset",
            "transport error",
        ]
        .iter()
        .any(|k| text.contains(k))
}

/// What a TLS refusal means for this client, when the transport error is one; retrying does
/// not help any of these.
fn tls_refusal(text: &str) -> Option<&'static str> {
    const KNOWN: [(&str, &str); 6] = [
        ("UnknownCA", "the controller does not know the CA that signed this client's certificate: it belongs to another cluster"),
        ("CertificateExpired", "this client's certificate has expired: renew it, or join again"),
        ("BadCertificate", "the controller refused this client's certificate"),
        ("CertificateRequired", "the controller requires a client certificate"),
        ("UnknownIssuer", "the controller's certificate is not signed by the CA this client trusts: it belongs to another cluster"),
        ("invalid peer certificate", "the controller's certificate was refused"),
    ];
    KNOWN
        .iter()
        .find(|(k, _)| text.contains(k))
        .map(|(_, hint)| *hint)
}

/// A transport error saying the peer's port is closed (ECONNREFUSED).
fn connection_refused(text: &str) -> bool {
    text.contains("Connection refused") || text.contains("os error 111")
}

/// Whether tonic made this status here from the connection's error rather than reading it from
/// the member's answer: a status received in trailers never carries a source.
pub fn from_connection(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

fn retryable(s: &Status) -> bool {
    // Unknown and Cancelled come from connections dropped mid-call (a member killed).
    // INTERNAL from the connection is how tonic reports an HTTP/2 GOAWAY from a member shutting
    // down; the write's request id makes trying again safe.
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted => true,
        Code::Internal => from_connection(s),
        _ => false,
    }
}

impl Client {
    pub fn new<I, S>(endpoints: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options<I, S>(endpoints: I, opts: ClientOptions) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut eps = Vec::new();
        for e in endpoints {
            let e = normalise(e.as_ref(), opts.tls.is_some())?;
            if !eps.iter().any(|(a, _): &(String, _)| *a == e) {
                let c = connect(&e, opts.tls.clone())?;
                eps.push((e, c));
            }
        }
        if eps.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let spread = rand::rng().random_range(0..eps.len());
        Ok(Client {
            endpoints: Mutex::new(eps),
            current: AtomicUsize::new(0),
            watching: AtomicUsize::new(spread),
            tls: Mutex::new(opts.tls.clone()),
            opts,
        })
    }

    fn tls(&self) -> Option<ClientTlsConfig> {
        self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Switches to new TLS settings (a renewed certificate): calls from now on use new
    /// connections, while streams already open (a watch) carry on over theirs.
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls.clone());
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        for (addr, c) in eps.iter_mut() {
            if let Ok(fresh) = connect(addr, Some(tls.clone())) {
                *c = fresh;
            }
        }
    }

    fn cursor(&self, c: Cursor) -> &AtomicUsize {
        match c {
            Cursor::Calls => &self.current,
            Cursor::Watches => &self.watching,
        }
    }

    fn pick(&self, cur: Cursor) -> (usize, Api) {
        let eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.cursor(cur).load(Ordering::Relaxed) % eps.len();
        (i, eps[i].1.clone())
    }

    fn endpoint(&self, i: usize) -> String {
        let eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        eps.get(i).map(|e| e.0.clone()).unwrap_or_default()
    }

    fn endpoint_count(&self) -> usize {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn plaintext(&self, i: usize) -> bool {
        self.endpoint(i).starts_with("http://")
    }

    /// Moves calls to the hinted leader (adding it if unknown), or else `cur` to the next
    /// endpoint. A watch never follows a hint: it is served where it is.
    fn switch(&self, cur: Cursor, from: usize, hint: Option<String>) {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(h), Cursor::Calls) = (hint, cur) {
            let h = h.trim_end_matches('/').to_string();
            if let Some(i) = eps.iter().position(|(a, _)| *a == h) {
                self.current.store(i, Ordering::Relaxed);
                return;
            }
            if let Ok(c) = connect(&h, self.tls()) {
                eps.push((h, c));
                self.current.store(eps.len() - 1, Ordering::Relaxed);
                return;
            }
        }
        let _ = self.cursor(cur).compare_exchange(
            from,
            (from + 1) % eps.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Moves watches on to the next known member, e.g. after a stream from the current one
    /// went quiet.
    pub fn rotate(&self) {
        let (i, _) = self.pick(Cursor::Watches);
        self.switch(Cursor::Watches, i, None);
    }

    /// Runs `f` against the current member, retrying elsewhere while the answer is retryable.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(Cursor::Calls, f).await
    }

    async fn call_on<T, F, Fut>(&self, cur: Cursor, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.opts.backoff_min;
        let mut attempts = 0u32;
        // Endpoints that refused the connection in this call.
        let mut refused: Vec<String> = Vec::new();
        loop {
            attempts += 1;
            let (i, c) = self.pick(cur);
            let err = match tokio::time::timeout(self.opts.attempt_timeout, f(c)).await {
                Ok(Ok(r)) => {
                    // A follower forwarded this call and named the leader: go there directly.
                    if let Some(h) = r.metadata().get(LEADER_HINT).and_then(|v| v.to_str().ok()) {
                        self.switch(cur, i, Some(h.to_string()));
                    }
                    return Ok(r.into_inner());
                }
                // A TLS port breaks a plaintext connection (h2 reads garbage, or the
                // connection closes or resets): if TLS answers there, no retry will help.
                Ok(Err(s))
                    if self.plaintext(i)
                        && broken_connection(&describe(&s))
                        && twill_pki::bootstrap::speaks_tls(
                            self.endpoint(i).trim_start_matches("http://"),
                        )
                        .await =>
                {
                    return Err(ClientError::TlsExpected(self.endpoint(i)))
                }
                Ok(Err(s)) if !retryable(&s) => return Err(ClientError::Status(s)),
                Ok(Err(s)) if tls_refusal(&describe(&s)).is_some() => {
                    return Err(ClientError::Refused(describe(&s)))
                }
                Ok(Err(s)) => {
                    let hint = s
                        .metadata()
                        .get(LEADER_HINT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let had_hint = hint.is_some();
                    if self.opts.fail_when_none_listens && connection_refused(&describe(&s)) {
                        let ep = self.endpoint(i);
                        if !refused.contains(&ep) {
                            refused.push(ep);
                        }
                        if refused.len() >= self.endpoint_count() {
                            return Err(ClientError::NotListening(refused));
                        }
                    }
                    self.switch(cur, i, hint);
                    if had_hint && cur == Cursor::Calls {
                        // A hint is fresh news: try the leader at once, once.
                        if started.elapsed() < self.opts.retry_for {
                            continue;
                        }
                    }
                    describe(&s)
                }
                Err(_) => {
                    self.switch(cur, i, None);
                    format!("no answer within {:?}", self.opts.attempt_timeout)
                }
            };
            if started.elapsed() >= self.opts.retry_for {
                return Err(ClientError::Unavailable {
                    elapsed: started.elapsed(),
                    attempts,
                    last: err,
                });
            }
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(self.opts.backoff_max);
        }
    }

    pub async fn acquire(
        &self,
        mut req: pb::AcquireRequest,
    ) -> Result<pb::LeaseResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|mut c| {
            let r = req.clone();
            async move { c.acquire(r).await }
        })
        .await
    }

    pub async fn renew(
        &self,
        node: &str,
        create_revision: u64,
    ) -> Result<pb::LeaseResponse, ClientError> {
        let req = pb::RenewRequest {
            request_id: new_request_id(),
            node: node.to_string(),
            create_revision,
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.renew(r).await }
        })
        .await
    }

    pub async fn release(&self, node: &str) -> Result<pb::ReleaseResponse, ClientError> {
        let req = pb::ReleaseRequest {
            request_id: new_request_id(),
            node: node.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.release(r).await }
        })
        .await
    }

    pub async fn get_config(&self) -> Result<pb::ConfigResponse, ClientError> {
        self.call(|mut c| async move { c.get_config(pb::GetConfigRequest {}).await })
            .await
    }

    pub async fn set_config(
        &self,
        config: pb::NetworkConfig,
    ) -> Result<pb::ConfigResponse, ClientError> {
        let req = pb::SetConfigRequest {
            request_id: new_request_id(),
            config: Some(config),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.set_config(r).await }
        })
        .await
    }

    /// Every lease and reservation, page by page; `revision` is the last page's. Each page is
    /// consistent on its own, the whole only when nothing changed in between.
    pub async fn list_leases(&self) -> Result<pb::ListLeasesResponse, ClientError> {
        let mut all = pb::ListLeasesResponse::default();
        loop {
            let req = pb::ListLeasesRequest {
                limit: 0,
                after: all.next_after.clone(),
            };
            let page = self
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.list_leases(r).await }
                })
                .await?;
            all.leases.extend(page.leases);
            all.reservations.extend(page.reservations);
            all.revision = page.revision;
            // A cursor that does not move would loop forever; a correct server never sends one.
            if page.next_after.is_empty() || page.next_after <= all.next_after {
                all.next_after = String::new();
                return Ok(all);
            }
            all.next_after = page.next_after;
        }
    }

    pub async fn reserve(
        &self,
        node: &str,
        subnet: &str,
    ) -> Result<pb::ReserveResponse, ClientError> {
        let req = pb::ReserveRequest {
            request_id: new_request_id(),
            node: node.to_string(),
            subnet: subnet.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.reserve(r).await }
        })
        .await
    }

    pub async fn unreserve(&self, node: &str) -> Result<pb::ReserveResponse, ClientError> {
        let req = pb::UnreserveRequest {
            request_id: new_request_id(),
            node: node.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.unreserve(r).await }
        })
        .await
    }

    /// The status of the member this client is talking to (not necessarily the leader).
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        self.call(|mut c| async move { c.status(pb::StatusRequest {}).await })
            .await
    }

    /// Sends this node's health summary (to the leader, which keeps it in memory).
    pub async fn report_health(
        &self,
        node: &str,
        health: pb::NodeHealth,
    ) -> Result<pb::ReportHealthResponse, ClientError> {
        let req = pb::ReportHealthRequest {
            node: node.to_string(),
            health: Some(health),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.report_health(r).await }
        })
        .await
    }

    /// Every node's last health summary, as the leader has it.
    pub async fn list_health(&self) -> Result<pb::ListHealthResponse, ClientError> {
        self.call(|mut c| async move { c.list_health(pb::ListHealthRequest {}).await })
            .await
    }

    /// The status of the member at one endpoint, without retrying elsewhere.
    pub async fn status_of(
        endpoint: &str,
        tls: Option<ClientTlsConfig>,
    ) -> Result<pb::StatusResponse, ClientError> {
        let endpoint = normalise(endpoint, tls.is_some())?;
        let mut c = connect(&endpoint, tls)?;
        match tokio::time::timeout(Duration::from_secs(3), c.status(pb::StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(ClientError::Status(s)),
            Err(_) => Err(ClientError::Unavailable {
                elapsed: Duration::from_secs(3),
                attempts: 1,
                last: format!("{endpoint}: no answer"),
            }),
        }
    }

    pub async fn add_member(
        &self,
        id: u64,
        addr: &str,
    ) -> Result<pb::MembersResponse, ClientError> {
        let req = pb::AddMemberRequest {
            id,
            addr: addr.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.add_member(r).await }
        })
        .await
    }

    /// Trades a join token and a CSR for a certificate.
    pub async fn join_node(
        &self,
        req: pb::JoinRequest,
    ) -> Result<pb::CertificateResponse, ClientError> {
        self.call(|mut c| {
            let r = req.clone();
            async move { c.join_node(r).await }
        })
        .await
    }

    /// A new certificate for this node's identity and a new key.
    pub async fn renew_certificate(
        &self,
        csr_pem: &str,
    ) -> Result<pb::CertificateResponse, ClientError> {
        let req = pb::RenewCertificateRequest {
            csr_pem: csr_pem.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.renew_certificate(r).await }
        })
        .await
    }

    pub async fn create_token(
        &self,
        mut req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, ClientError> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        self.call(|mut c| {
            let r = req.clone();
            async move { c.create_token(r).await }
        })
        .await
    }

    pub async fn list_tokens(&self) -> Result<pb::ListTokensResponse, ClientError> {
        self.call(|mut c| async move { c.list_tokens(pb::ListTokensRequest {}).await })
            .await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<pb::RevokeTokenResponse, ClientError> {
        let req = pb::RevokeTokenRequest {
            request_id: new_request_id(),
            id: id.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.revoke_token(r).await }
        })
        .await
    }

    /// Refuses every certificate `node` holds now.
    pub async fn revoke_node(&self, node: &str) -> Result<pb::RevokeNodeResponse, ClientError> {
        let req = pb::RevokeNodeRequest {
            request_id: new_request_id(),
            node: node.to_string(),
        };
        self.call(|mut c| {
            let r = req.clone();
            async move { c.revoke_node(r).await }
        })
        .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<pb::MembersResponse, ClientError> {
        self.call(|mut c| async move { c.remove_member(pb::RemoveMemberRequest { id }).await })
            .await
    }

    /// Opens a watch on this client's watch member, which is not necessarily the leader (see
    /// [`Client::rotate`]); the caller resumes from its last revision when the stream ends or
    /// goes quiet past the progress interval.
    pub async fn watch(&self, start_revision: u64) -> Result<Watch, ClientError> {
        self.open_watch(pb::WatchRequest {
            start_revision,
            omit_renewals: false,
        })
        .await
    }

    /// Like [`Self::watch`], without the events that only move a lease's expiry: what an agent
    /// needs, which follows who holds which subnet. Its revision is moved on by progress notes.
    pub async fn watch_changes(&self, start_revision: u64) -> Result<Watch, ClientError> {
        self.open_watch(pb::WatchRequest {
            start_revision,
            omit_renewals: true,
        })
        .await
    }

    async fn open_watch(&self, req: pb::WatchRequest) -> Result<Watch, ClientError> {
        let inner = self
            .call_on(Cursor::Watches, |mut c| async move { c.watch(req).await })
            .await?;
        Ok(Watch { inner })
    }
}

/// A watch stream whose snapshots arrive whole: the chunks a member sends for a large table
/// (`WatchSnapshot.more`) are put back together before they are handed on.
pub struct Watch {
    inner: Streaming<pb::WatchResponse>,
}

impl Watch {
    /// The next message; `None` when the member ended the stream.
    pub async fn message(&mut self) -> Result<Option<pb::WatchResponse>, Status> {
        use pb::watch_response::Msg;
        let mut partial: Option<Box<pb::WatchSnapshot>> = None;
        loop {
            let Some(m) = self.inner.message().await? else {
                return match partial {
                    None => Ok(None),
                    Some(_) => Err(Status::unavailable(
                        "the watch ended in the middle of a snapshot",
                    )),
                };
            };
            let chunk = match (m.msg, partial.take()) {
                (Some(Msg::Snapshot(s)), None) => s,
                (Some(Msg::Snapshot(s)), Some(mut acc)) if s.revision == acc.revision => {
                    acc.leases.extend(s.leases);
                    acc.more = s.more;
                    acc
                }
                (Some(Msg::Snapshot(_)), Some(_)) => {
                    return Err(Status::internal(
                        "snapshot chunks of different revisions on one watch",
                    ))
                }
                (other, None) => return Ok(Some(pb::WatchResponse { msg: other })),
                (_, Some(_)) => {
                    return Err(Status::internal(
                        "a watch event arrived in the middle of a snapshot",
                    ))
                }
            };
            if !chunk.more {
                return Ok(Some(pb::WatchResponse {
                    msg: Some(Msg::Snapshot(chunk)),
                }));
            }
            partial = Some(chunk);
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn every_call_carries_the_release_and_the_api_level() {
        let req = Versioned.call(tonic::Request::new(())).expect("request");
        let md = req.metadata();
        assert_eq!(
            md.get(twill_proto::version::API_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(twill_proto::version::API.to_string().as_str())
        );
        assert_eq!(
            md.get(twill_proto::version::RELEASE_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn a_members_internal_answer_is_final_and_a_broken_connections_is_not() {
        // What the member sent: read from its trailers, no source.
        assert!(!retryable(&Status::internal("the member failed")));
        // What tonic made here from the connection's error.
        let mut local = Status::internal("h2 protocol error: http2 error");
        local.set_source(std::sync::Arc::new(std::io::Error::other("GOAWAY")));
        assert!(retryable(&local));
        assert!(!retryable(&Status::invalid_argument("bad name")));
    }
}
