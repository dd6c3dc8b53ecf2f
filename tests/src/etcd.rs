//! etcd 3.4 as the benchmark peer: a cluster of real `etcd` processes (Debian's etcd-server) on
//! loopback, and a client that takes pod subnets from it the way flannel's etcd subnet manager
//! does: a lease grant, then a transaction that creates the subnet's key only if it does not
//! exist yet, retried with another subnet on conflict.
//!
//! The benchmark measures twill and etcd in the same run, so this module aims at a fair peer:
//! etcd runs with its default Raft timings and fsync, and the client does no more work per
//! acquisition than flannel does (less, in fact: see [`FlannelEtcd`]), so ratios against etcd are
//! conservative.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use ipnet::Ipv4Net;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Resident memory of a process in KiB (VmRSS from `/proc/<pid>/status`).
pub use crate::bench::rss_kib;

/// etcd's v3 API, the part of it in tests/proto/etcd_kv.proto.
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;

/// Where flannel keeps its subnet leases (its default etcd prefix, `/coreos.com/network`).
pub const SUBNET_PREFIX: &str = "/coreos.com/network/subnets/";

/// flannel's subnet lease TTL (`subnetTTL`, 24 h).
pub const LEASE_TTL_SECS: i64 = 24 * 3600;

/// How long [`EtcdCluster::start`] and [`EtcdCluster::restart`] wait for the cluster.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster of `etcd` processes on loopback, one data directory each under a caller's
/// directory. Dropping it SIGKILLs every member.
pub struct EtcdCluster {
    dir: PathBuf,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl EtcdCluster {
    /// Whether an `etcd` binary is on PATH (`apt-get install etcd-server`).
    pub fn available() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts `n` members named m0..m{n-1} with data directories `dir/mI` (logs in `dir/mI.log`)
    /// and returns once a leader is elected and a write is acknowledged.
    pub async fn start(n: usize, dir: &Path) -> Result<EtcdCluster> {
        if n == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut ports = free_ports(2 * n)?;
        let peer_ports = ports.split_off(n);
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            client_ports: ports,
            peer_ports,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.spawn(i, true)?;
        }
        // On failure `c` is dropped here, which kills the members already started.
        c.wait_writable(START_TIMEOUT)
            .await
            .context("etcd cluster did not become writable")?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize, new: bool) -> Result<()> {
        let peer = |j: usize| format!("http://127.0.0.1:{}", self.peer_ports[j]);
        let cluster: Vec<String> = (0..self.peer_ports.len())
            .map(|j| format!("m{j}={}", peer(j)))
            .collect();
        let log_path = self.dir.join(format!("m{i}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &self.client_url(i)])
            .args(["--advertise-client-urls", &self.client_url(i)])
            .args(["--listen-peer-urls", &peer(i)])
            .args(["--initial-advertise-peer-urls", &peer(i)])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "twill-bench"])
            // Ignored once the data directory exists, as on a restart; "existing" says so.
            .args([
                "--initial-cluster-state",
                if new { "new" } else { "existing" },
            ])
            // zap to a file: 3.4's default logger (capnslog) is deprecated and chattier.
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start etcd (Debian package etcd-server: apt-get install etcd-server)")?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Number of members, running or not.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Member `i`'s client URL.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[i])
    }

    /// Every member's client URL, in member order (killed members included).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.client_url(i)).collect()
    }

    /// Member `i`'s pid, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// The pids of the running members, in member order (killed members are left out).
    pub fn pids(&self) -> Vec<u32> {
        (0..self.len()).filter_map(|i| self.pid(i)).collect()
    }

    /// The index of the leader, as of now: the running member that reports itself as leader
    /// (Maintenance.Status), the one with the highest term should two do so for a moment.
    pub async fn leader_index(&self) -> Result<usize> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.pid(i).is_some()).collect();
        let statuses = futures::future::join_all(running.iter().map(|&i| self.status(i))).await;
        let mut best: Option<(u64, usize)> = None;
        let mut errors = Vec::new();
        for (&i, s) in running.iter().zip(statuses) {
            match s {
                Ok(s) => {
                    let me = s.header.map(|h| h.member_id).unwrap_or(0);
                    if s.leader != 0 && s.leader == me && best.is_none_or(|(t, _)| s.raft_term > t)
                    {
                        best = Some((s.raft_term, i));
                    }
                }
                Err(e) => errors.push(format!("m{i}: {e:#}")),
            }
        }
        match best {
            Some((_, i)) => Ok(i),
            None if errors.is_empty() => bail!("no etcd member reports itself leader"),
            None => bail!(
                "no etcd member reports itself leader ({})",
                errors.join("; ")
            ),
        }
    }

    /// Polls [`leader_index`](Self::leader_index) until a leader is known.
    pub async fn wait_leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            match self.leader_index().await {
                Ok(i) => return Ok(i),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("no etcd leader within {within:?}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// SIGKILLs member `i` (no-op if it is not running) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts member `i` on its data directory (killing it first if it runs) and waits until
    /// it has rejoined: it answers and follows a leader.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i, false)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            if let Ok(s) = self.status(i).await {
                if s.leader != 0 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd member m{i} did not rejoin within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn status(&self, i: usize) -> Result<pb::StatusResponse> {
        let ch = Endpoint::from_shared(self.client_url(i))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1))
            .connect()
            .await
            .with_context(|| format!("connect to {}", self.client_url(i)))?;
        Ok(MaintenanceClient::new(ch)
            .status(pb::StatusRequest {})
            .await?
            .into_inner())
    }

    /// Fails if a member that should run has exited (bad flags, port taken), with its log's tail.
    fn check_running(&mut self) -> Result<()> {
        for i in 0..self.len() {
            let Some(c) = self.children[i].as_mut() else {
                continue;
            };
            if let Some(st) = c.try_wait().context("wait for etcd")? {
                self.children[i] = None;
                let log =
                    std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "etcd member m{i} exited ({st}); last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Waits for a leader, then for an acknowledged write (a leader can be elected before it
    /// has applied its first entry and serves writes).
    async fn wait_writable(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut last = anyhow!("no attempt made");
        loop {
            self.check_running()?;
            match self.probe_write().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(last.context(format!("not writable within {within:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn probe_write(&self) -> Result<()> {
        let leader = self.leader_index().await?;
        let ch = Endpoint::from_shared(self.client_url(leader))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        KvClient::new(ch)
            .put(pb::PutRequest {
                key: b"/twill-bench/ready".to_vec(),
                value: b"1".to_vec(),
                lease: 0,
            })
            .await?;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}

/// `k` distinct free loopback ports: all listeners are held until every port is chosen, so no
/// port is handed out twice.
fn free_ports(k: usize) -> Result<Vec<u16>> {
    let listeners = (0..k)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("bind a free loopback port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One flannel daemon's view of etcd: takes a subnet for a node as flannel's etcd subnet manager
/// does, with one gRPC connection per endpoint.
///
/// # How a subnet is picked
/// flannel lists every lease under [`SUBNET_PREFIX`] before each attempt (plus a lease TTL
/// lookup per key) and picks at random among the first 100 free subnets. That is O(leases) per
/// acquisition and would make etcd look far slower at 10,000 leases than it is as a store, so
/// this client keeps the set of subnets it knows to be taken and picks uniformly at random among
/// the others of `network`; it reads the prefix (keys only) once before its first attempt and
/// again after each conflict. Random picks keep concurrent clients apart like flannel's random
/// choice does, and each conflict costs one re-read, so etcd does strictly less work than under
/// real flannel: ratios against it are conservative. As in flannel the network's first subnet
/// (e.g. 10.244.0.0/24) is never handed out.
///
/// # Writes
/// One lease grant (TTL 24 h) per acquisition, then per candidate the transaction
/// `if create_revision(key) == 0 then put(key, value, lease) else range(key)`. flannel compares
/// the key's version with 0, which holds exactly when create_revision is 0. The else-branch read
/// lets a retried transaction whose first try was applied (a timeout or failover after commit)
/// recognise its own key by the lease instead of leaking it and taking a second subnet.
///
/// # Failover
/// Calls go to one member, chosen at random per client so that many clients spread over the
/// cluster like etcd's client balancer spreads them. A call that fails with a transient status
/// (Unavailable, a timeout, a refused connection) is retried on the next member after a short
/// backoff, for up to a minute. Each attempt is bounded by `attempt_timeout` (1 s by default):
/// a follower that has lost its leader otherwise holds a proposal for etcd's own request timeout
/// (over 5 s) before failing it.
pub struct FlannelEtcd {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    network: Ipv4Net,
    subnet_len: u8,
    attempt_timeout: Duration,
    conflicts: AtomicU64,
    /// Candidate indices (1..count) known to be taken; None until the first read.
    taken: Mutex<Option<HashSet<u32>>>,
}

/// How long one acquisition may keep retrying across members.
const ACQUIRE_DEADLINE: Duration = Duration::from_secs(60);

impl FlannelEtcd {
    /// A client of `endpoints` (URLs such as `http://127.0.0.1:2379`) allocating `/subnet_len`
    /// subnets of `network`. Connections are made on first use; call it inside a tokio runtime.
    pub fn new(endpoints: Vec<String>, network: Ipv4Net, subnet_len: u8) -> Result<FlannelEtcd> {
        if endpoints.is_empty() {
            bail!("no etcd endpoints");
        }
        if subnet_len <= network.prefix_len() || subnet_len > 30 {
            bail!("subnet length /{subnet_len} does not fit network {network}");
        }
        if subnet_len - network.prefix_len() > 24 {
            bail!("{network} holds more than 2^24 /{subnet_len} subnets");
        }
        let channels = endpoints
            .iter()
            .map(|e| {
                Ok(Endpoint::from_shared(e.clone())
                    .with_context(|| format!("bad etcd endpoint {e}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .connect_lazy())
            })
            .collect::<Result<Vec<_>>>()?;
        let start = rand::random_range(0..endpoints.len());
        Ok(FlannelEtcd {
            endpoints,
            channels,
            current: AtomicUsize::new(start),
            network: network.trunc(),
            subnet_len,
            attempt_timeout: Duration::from_secs(1),
            conflicts: AtomicU64::new(0),
            taken: Mutex::new(None),
        })
    }

    /// Bounds each RPC attempt (default 1 s) before it is retried on the next member.
    pub fn with_attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// Takes a free subnet for `node` and returns it in CIDR form (`10.244.7.0/24`); its key is
    /// `/coreos.com/network/subnets/10.244.7.0-24`.
    pub async fn acquire(&self, node: &str) -> Result<String> {
        let deadline = Instant::now() + ACQUIRE_DEADLINE;
        let lease = self
            .call(deadline, "LeaseGrant", |ch| async move {
                LeaseClient::new(ch)
                    .lease_grant(pb::LeaseGrantRequest {
                        ttl: LEASE_TTL_SECS,
                        id: 0,
                    })
                    .await
            })
            .await?;
        if !lease.error.is_empty() || lease.id == 0 {
            bail!("etcd refused a lease: {:?}", lease.error);
        }
        let value = lease_value(node);
        if self.lock_taken().is_none() {
            self.refresh(deadline).await?;
        }
        loop {
            let idx = match self.pick() {
                Some(i) => i,
                None => {
                    self.refresh(deadline).await?;
                    self.pick().with_context(|| {
                        format!("no free /{} in {}", self.subnet_len, self.network)
                    })?
                }
            };
            let subnet = self.subnet(idx);
            let key = subnet_key(subnet).into_bytes();
            let txn = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Create as i32,
                    key: key.clone(),
                    target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                }],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        lease: lease.id,
                    })),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
            };
            let resp = self
                .call(deadline, "Txn", |ch| {
                    let txn = txn.clone();
                    async move { KvClient::new(ch).txn(txn).await }
                })
                .await?;
            self.mark_taken(idx);
            if resp.succeeded || owner_lease(&resp) == Some(lease.id) {
                return Ok(subnet.to_string());
            }
            // Someone else holds it: learn what else was taken meanwhile, as flannel re-lists.
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            if Instant::now() > deadline {
                bail!("no subnet acquired within {ACQUIRE_DEADLINE:?}");
            }
            self.refresh(deadline).await?;
        }
    }

    /// Every subnet of this client's network that has a key under [`SUBNET_PREFIX`], in CIDR
    /// form (one linearizable Range, keys only).
    pub async fn list(&self) -> Result<Vec<String>> {
        let deadline = Instant::now() + ACQUIRE_DEADLINE;
        Ok(self
            .read_taken(deadline)
            .await?
            .into_iter()
            .map(|i| self.subnet(i).to_string())
            .collect())
    }

    /// A watch of every subnet key, as flannel's agent keeps one: from revision `from`, or from
    /// now when it is 0. Returns once etcd has said the watch is created, so a caller knows
    /// that every later write reaches it, with the revision etcd was at then. One Watch stream
    /// per call, on this client's current member; the request side stays open, since closing it
    /// may end the watch.
    pub async fn watch_subnets(
        &self,
        from: i64,
    ) -> Result<(tonic::Streaming<pb::WatchResponse>, i64)> {
        let key = SUBNET_PREFIX.as_bytes().to_vec();
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    range_end: prefix_end(&key),
                    key,
                    start_revision: from,
                    ..Default::default()
                },
            )),
        };
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        let requests = futures::stream::iter([create]).chain(futures::stream::pending());
        let opening = async {
            let mut stream = pb::watch_client::WatchClient::new(self.channels[i].clone())
                .watch(requests)
                .await?
                .into_inner();
            match stream.message().await? {
                Some(m) if m.created && !m.canceled => {
                    Ok((stream, m.header.map_or(0, |h| h.revision)))
                }
                Some(m) => Err(anyhow!(
                    "etcd answered a watch create with {:?} (canceled: {})",
                    m.cancel_reason,
                    m.canceled
                )),
                None => Err(anyhow!("etcd ended a watch before creating it")),
            }
        };
        tokio::time::timeout(ACQUIRE_DEADLINE, opening)
            .await
            .map_err(|_| anyhow!("no watch created within {ACQUIRE_DEADLINE:?}"))?
            .with_context(|| format!("etcd Watch at {}", self.endpoints[i]))
    }

    /// Transactions so far that found their subnet taken (each cost a re-read): a check that
    /// the random picks keep clients apart.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    fn lock_taken(&self) -> std::sync::MutexGuard<'_, Option<HashSet<u32>>> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of `/subnet_len` subnets in the network; candidates are 1..count.
    fn count(&self) -> u32 {
        1 << (self.subnet_len - self.network.prefix_len())
    }

    fn subnet(&self, idx: u32) -> Ipv4Net {
        let base = u32::from(self.network.network());
        let addr = Ipv4Addr::from(base + (idx << (32 - self.subnet_len)));
        Ipv4Net::new(addr, self.subnet_len).expect("subnet_len checked in new")
    }

    /// The candidate index of a subnet key of this network, if it is one.
    fn index_of(&self, key: &[u8]) -> Option<u32> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(SUBNET_PREFIX)?;
        let (ip, len) = rest.split_once('-')?;
        let (ip, len): (Ipv4Addr, u8) = (ip.parse().ok()?, len.parse().ok()?);
        if len != self.subnet_len || !self.network.contains(&ip) {
            return None;
        }
        let off = u32::from(ip) - u32::from(self.network.network());
        let idx = off >> (32 - self.subnet_len);
        (idx > 0 && off.trailing_zeros() >= u32::from(32 - self.subnet_len)).then_some(idx)
    }

    /// A random candidate not known to be taken, or None if all are.
    fn pick(&self) -> Option<u32> {
        let guard = self.lock_taken();
        let empty = HashSet::new();
        let taken = guard.as_ref().unwrap_or(&empty);
        let candidates = self.count() - 1;
        let free = candidates as usize - taken.len().min(candidates as usize);
        if free == 0 {
            return None;
        }
        if taken.len() < candidates as usize / 2 {
            // Mostly free: rejection sampling ends in < 2 draws on average.
            loop {
                let i = rand::random_range(1..self.count());
                if !taken.contains(&i) {
                    return Some(i);
                }
            }
        }
        let nth = rand::random_range(0..free);
        (1..self.count()).filter(|i| !taken.contains(i)).nth(nth)
    }

    fn mark_taken(&self, idx: u32) {
        self.lock_taken()
            .get_or_insert_with(HashSet::new)
            .insert(idx);
    }

    /// Re-reads which subnets are taken.
    async fn refresh(&self, deadline: Instant) -> Result<()> {
        let taken = self.read_taken(deadline).await?;
        *self.lock_taken() = Some(taken);
        Ok(())
    }

    async fn read_taken(&self, deadline: Instant) -> Result<HashSet<u32>> {
        let key = SUBNET_PREFIX.as_bytes().to_vec();
        let range = pb::RangeRequest {
            range_end: prefix_end(&key),
            key,
            keys_only: true,
            ..Default::default()
        };
        let resp = self
            .call(deadline, "Range", |ch| {
                let range = range.clone();
                async move {
                    KvClient::new(ch)
                        // 10,000s of keys exceed tonic's default 4 MiB limit.
                        .max_decoding_message_size(256 << 20)
                        .range(range)
                        .await
                }
            })
            .await?;
        Ok(resp
            .kvs
            .iter()
            .filter_map(|kv| self.index_of(&kv.key))
            .collect())
    }

    /// Runs `rpc` on the current member, moving to the next one on transient failures until
    /// `deadline`.
    async fn call<T, F, Fut>(&self, deadline: Instant, what: &str, mut rpc: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = Duration::from_millis(10);
        loop {
            let i = self.current.load(Ordering::Relaxed) % self.channels.len();
            let status =
                match tokio::time::timeout(self.attempt_timeout, rpc(self.channels[i].clone()))
                    .await
                {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(s)) => s,
                    Err(_) => tonic::Status::deadline_exceeded("attempt timed out"),
                };
            if !transient(&status) || Instant::now() > deadline {
                return Err(anyhow!(status))
                    .with_context(|| format!("etcd {what} at {}", self.endpoints[i]));
            }
            // Move on unless another task already did.
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.channels.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

/// Statuses worth retrying on another member: etcd's "no leader" / "leader changed" /
/// "request timed out" (Unavailable), its rate limit (ResourceExhausted), and the transport's
/// refused or reset connections and our own attempt timeout.
fn transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// The lease of the key read by a failed create transaction's else-branch.
fn owner_lease(resp: &pb::TxnResponse) -> Option<i64> {
    resp.responses.iter().find_map(|r| match &r.response {
        Some(pb::response_op::Response::ResponseRange(rr)) => rr.kvs.first().map(|kv| kv.lease),
        _ => None,
    })
}

/// flannel's key for a subnet: `/coreos.com/network/subnets/10.244.7.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!(
        "{SUBNET_PREFIX}{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// flannel's lease value (its LeaseAttrs as JSON) for a vxlan node. The VTEP MAC is derived from
/// the node name so that values differ per node and have flannel's size.
fn lease_value(node: &str) -> Vec<u8> {
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mac = format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        h as u8,
        (h >> 8) as u8,
        (h >> 16) as u8,
        (h >> 24) as u8,
        (h >> 32) as u8
    );
    serde_json::json!({
        "PublicIP": "192.0.2.1",
        "BackendType": "vxlan",
        "BackendData": { "VNI": 1, "VtepMAC": mac },
    })
    .to_string()
    .into_bytes()
}

/// The range end that selects every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: etcd's "\0" means "to the end of the keyspace".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(net: &str, len: u8) -> FlannelEtcd {
        FlannelEtcd::new(vec!["http://127.0.0.1:1".into()], net.parse().unwrap(), len).unwrap()
    }

    // `new` makes lazy channels, which need a runtime.
    #[tokio::test]
    async fn keys_round_trip_and_foreign_keys_are_ignored() {
        let c = client("10.244.0.0/16", 24);
        assert_eq!(c.count(), 256);
        let s = c.subnet(7);
        assert_eq!(s.to_string(), "10.244.7.0/24");
        assert_eq!(subnet_key(s), "/coreos.com/network/subnets/10.244.7.0-24");
        assert_eq!(c.index_of(subnet_key(s).as_bytes()), Some(7));
        for k in [
            "/coreos.com/network/subnets/10.244.0.0-24", // the skipped first subnet
            "/coreos.com/network/subnets/10.245.1.0-24", // other network
            "/coreos.com/network/subnets/10.244.1.0-25", // other length
            "/coreos.com/network/subnets/10.244.1.1-24", // not a subnet address
            "/coreos.com/network/config",
        ] {
            assert_eq!(c.index_of(k.as_bytes()), None, "{k}");
        }
        let big = client("10.0.0.0/8", 24);
        assert_eq!(big.subnet(65535).to_string(), "10.255.255.0/24");
    }

    #[tokio::test]
    async fn pick_finds_the_last_free_subnet_and_then_none() {
        let c = client("10.244.0.0/16", 24);
        for i in 1..256 {
            if i != 42 {
                c.mark_taken(i);
            }
        }
        assert_eq!(c.pick(), Some(42));
        c.mark_taken(42);
        assert_eq!(c.pick(), None);
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[tokio::test]
    async fn new_rejects_bad_lengths() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(FlannelEtcd::new(vec!["http://127.0.0.1:1".into()], net, 16).is_err());
        assert!(FlannelEtcd::new(vec!["http://127.0.0.1:1".into()], net, 31).is_err());
        assert!(FlannelEtcd::new(vec![], net, 24).is_err());
    }
}
