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
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use twill_proto::v1::controller_client::ControllerClient;
use twill_proto::v1::{self as pb};

use twill_proto::{LEADER_HINT, MAX_MESSAGE};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no controller endpoints given")]
    NoEndpoints,
    #[error("invalid controller endpoint {0:?}: expected a URL like http://127.0.0.1:7420")]
    BadEndpoint(String),
    /// The controller answered with an error that retrying will not fix.
    #[error("{}", .0.message())]
    Status(Status),
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(8),
            retry_for: Duration::from_secs(20),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

pub struct Client {
    endpoints: Mutex<Vec<(String, ControllerClient<Channel>)>>,
    current: AtomicUsize,
    opts: ClientOptions,
}

fn connect(addr: &str) -> Result<ControllerClient<Channel>, ClientError> {
    if !(addr.starts_with("http://") || addr.starts_with("https://")) {
        return Err(ClientError::BadEndpoint(addr.to_string()));
    }
    let ch = channel(addr, Duration::from_secs(2))
        .map_err(|_| ClientError::BadEndpoint(addr.to_string()))?;
    Ok(ControllerClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Builds a lazily connecting channel to a member's address (`http://host:port`); the Raft
/// transport between members uses it too.
pub fn channel(addr: &str, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(addr.to_string())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// A fresh request id: random enough that two clients never collide.
pub fn new_request_id() -> String {
    let mut r = rand::rng();
    format!("{:016x}{:016x}", r.random::<u64>(), r.random::<u64>())
}

fn retryable(s: &Status) -> bool {
    // Unknown and Cancelled come from connections dropped mid-call (a member killed).
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
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
            let e = e.as_ref().trim().trim_end_matches('/').to_string();
            if !eps.iter().any(|(a, _): &(String, _)| *a == e) {
                let c = connect(&e)?;
                eps.push((e, c));
            }
        }
        if eps.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(Client {
            endpoints: Mutex::new(eps),
            current: AtomicUsize::new(0),
            opts,
        })
    }

    fn pick(&self) -> (usize, ControllerClient<Channel>) {
        let eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.current.load(Ordering::Relaxed) % eps.len();
        (i, eps[i].1.clone())
    }

    /// Moves to the hinted leader (adding it if unknown) or else to the next endpoint.
    fn switch(&self, from: usize, hint: Option<String>) {
        let mut eps = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hint {
            let h = h.trim_end_matches('/').to_string();
            if let Some(i) = eps.iter().position(|(a, _)| *a == h) {
                self.current.store(i, Ordering::Relaxed);
                return;
            }
            if let Ok(c) = connect(&h) {
                eps.push((h, c));
                self.current.store(eps.len() - 1, Ordering::Relaxed);
                return;
            }
        }
        let _ = self.current.compare_exchange(
            from,
            (from + 1) % eps.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Moves on to the next known member, e.g. after a stream from the current one went quiet.
    pub fn rotate(&self) {
        let (i, _) = self.pick();
        self.switch(i, None);
    }

    /// Runs `f` against the current member, retrying elsewhere while the answer is retryable.
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(ControllerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.opts.backoff_min;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (i, c) = self.pick();
            let err = match tokio::time::timeout(self.opts.attempt_timeout, f(c)).await {
                Ok(Ok(r)) => {
                    // A follower forwarded this call and named the leader: go there directly.
                    if let Some(h) = r.metadata().get(LEADER_HINT).and_then(|v| v.to_str().ok()) {
                        self.switch(i, Some(h.to_string()));
                    }
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if !retryable(&s) => return Err(ClientError::Status(s)),
                Ok(Err(s)) => {
                    let hint = s
                        .metadata()
                        .get(LEADER_HINT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let had_hint = hint.is_some();
                    self.switch(i, hint);
                    if had_hint {
                        // A hint is fresh news: try the leader at once, once.
                        if started.elapsed() < self.opts.retry_for {
                            continue;
                        }
                    }
                    format!("{}: {}", s.code(), s.message())
                }
                Err(_) => {
                    self.switch(i, None);
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

    /// The status of the member at one endpoint, without retrying elsewhere.
    pub async fn status_of(endpoint: &str) -> Result<pb::StatusResponse, ClientError> {
        let mut c = connect(endpoint)?;
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

    pub async fn remove_member(&self, id: u64) -> Result<pb::MembersResponse, ClientError> {
        self.call(|mut c| async move { c.remove_member(pb::RemoveMemberRequest { id }).await })
            .await
    }

    /// Opens a watch on the current member; the caller resumes from its last revision when the
    /// stream ends or goes quiet past the progress interval.
    pub async fn watch(&self, start_revision: u64) -> Result<Watch, ClientError> {
        let inner = self
            .call(|mut c| async move { c.watch(pb::WatchRequest { start_revision }).await })
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
        let mut partial: Option<pb::WatchSnapshot> = None;
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
