//! Shared harness for the integration tests and benchmarks: controller clusters on loopback,
//! in this process or as real `twill` processes.

pub mod bench;
pub mod bgp;
pub mod chaos;
pub mod dashboards;
pub mod etcd;
pub mod fanout;
pub mod inject;
pub mod netns;
pub mod procs;
pub mod rounds;
pub mod routewatch;
pub mod scale;
pub mod tmpfs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tonic::transport::ClientTlsConfig;
use twill_client::{Client, ClientOptions};
use twill_controller::node::{self, Options, Running};
use twill_controller::NodeId;
use twill_pki::{Ca, Credentials, Identity};

/// One CA for every cluster this test process starts, with an admin credential: clients and
/// helpers anywhere in the harness can then speak TLS to any of them without plumbing.
pub struct TestPki {
    pub ca: Ca,
    pub admin: Credentials,
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = Ca::generate("tests").expect("a CA can be generated");
        let admin = ca
            .credentials(&Identity::admin("admin"), Duration::from_secs(86_400), &[])
            .expect("an admin certificate can be issued");
        TestPki { ca, admin }
    })
}

/// The admin's TLS settings, for any client the tests make.
pub fn admin_tls() -> ClientTlsConfig {
    pki().admin.client_tls()
}

/// Credentials for anyone, signed by the tests' CA.
pub fn credentials(who: &Identity, ttl: Duration) -> Credentials {
    pki()
        .ca
        .credentials(who, ttl, &["127.0.0.1".to_string()])
        .expect("a certificate can be issued")
}

/// The tests' CA as a file, for `twill controller --ca`.
pub fn write_ca(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("ca.pem");
    pki().ca.save(&p)?;
    Ok(p)
}

/// Raft timings short enough for tests, long enough for a loaded 2-core CI machine.
pub fn test_options(id: NodeId, data_dir: PathBuf, listen: SocketAddr) -> Options {
    let mut o = Options::new(id, data_dir, listen);
    o.heartbeat_ms = 50;
    o.election_min_ms = 300;
    o.election_max_ms = 600;
    o.write_timeout = Duration::from_secs(3);
    o.promote_grace_ms = 2_000;
    o.expiry_interval = Duration::from_millis(200);
    // Room for a few thousand nodes: 10.0.0.0/12 in /24s.
    o.initial_config.network = "10.0.0.0/12".parse().expect("valid literal");
    o.tls = Some(credentials(
        &Identity::member(id),
        Duration::from_secs(86_400),
    ));
    o.ca = Some(pki().ca.clone());
    o
}

/// A controller cluster whose members run as tasks in this process, on loopback ports, with data
/// directories under one temporary directory.
pub struct Cluster {
    pub dir: TempDir,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub members: BTreeMap<NodeId, Running>,
    tweak: std::sync::Arc<dyn Fn(&mut Options) + Send + Sync>,
}

impl Cluster {
    /// Starts members 1..=n and waits for a leader.
    pub async fn start(n: u64) -> Result<Cluster> {
        Self::start_with(n, |_| {}).await
    }

    /// As [`Cluster::start`], letting the test adjust every member's options.
    pub async fn start_with(
        n: u64,
        tweak: impl Fn(&mut Options) + Send + Sync + 'static,
    ) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            addrs.insert(id, l.local_addr()?);
            listeners.insert(id, l);
        }
        let mut c = Cluster {
            dir,
            addrs,
            members: BTreeMap::new(),
            tweak: std::sync::Arc::new(tweak),
        };
        for (id, l) in listeners {
            let opts = c.options(id);
            let r = node::start_on(opts, l)
                .await
                .with_context(|| format!("start member {id}"))?;
            c.members.insert(id, r);
        }
        c.wait_leader(Duration::from_secs(20)).await?;
        c.wait_configured(Duration::from_secs(20)).await?;
        Ok(c)
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("m{id}"))
    }

    pub fn url(&self, id: NodeId) -> String {
        format!("https://{}", self.addrs[&id])
    }

    /// A raw gRPC channel to one member, as the admin.
    pub fn channel(&self, id: NodeId) -> tonic::transport::Channel {
        twill_client::channel(&self.url(id), Duration::from_secs(2), Some(admin_tls()))
            .expect("loopback URL is valid")
    }

    pub fn urls(&self) -> Vec<String> {
        self.addrs.keys().map(|id| self.url(*id)).collect()
    }

    fn options(&self, id: NodeId) -> Options {
        let mut o = test_options(id, self.data_dir(id), self.addrs[&id]);
        o.peers = self.addrs.keys().map(|i| (*i, self.url(*i))).collect();
        (self.tweak)(&mut o);
        o
    }

    /// A client that knows every member, with a generous retry window for failovers.
    pub fn client(&self) -> Client {
        let opts = ClientOptions {
            retry_for: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            tls: Some(admin_tls()),
            ..Default::default()
        };
        Client::with_options(self.urls(), opts).expect("loopback URLs are valid")
    }

    /// A client bound to one member only (its writes are forwarded if it is a follower).
    pub fn client_of(&self, id: NodeId) -> Client {
        let opts = ClientOptions {
            tls: Some(admin_tls()),
            ..Default::default()
        };
        Client::with_options([self.url(id)], opts).expect("loopback URL is valid")
    }

    /// The leader every running member agrees on.
    pub async fn wait_leader(&self, within: Duration) -> Result<NodeId> {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<NodeId>> = self
                .members
                .values()
                .map(|r| r.member.raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if self.members.contains_key(l) && leaders.iter().all(|x| *x == Some(*l)) {
                    return Ok(*l);
                }
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {within:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the first leader's initial network configuration is applied everywhere.
    pub async fn wait_configured(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        for (id, r) in &self.members {
            while r.member.sm.read().alloc.config().is_none() {
                if Instant::now() > deadline {
                    bail!("member {id} has no network configuration after {within:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Stops one member (its data directory stays).
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(r) = self.members.remove(&id) {
            r.shutdown().await;
        }
    }

    /// Restarts a stopped member from its data directory, on its old address.
    pub async fn restart(&mut self, id: NodeId) -> Result<()> {
        let opts = self.options(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            match node::start(opts.clone()).await {
                Ok(r) => break r,
                // The old socket may linger for a moment after shutdown.
                Err(node::StartError::Bind { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(anyhow!(e)).with_context(|| format!("restart member {id}")),
            }
        };
        self.members.insert(id, r);
        Ok(())
    }

    /// The highest index any running member has applied: every acknowledged write is in it (the
    /// leader applies a write before answering), which a status answered by a lagging
    /// follower's own index may not be.
    pub fn applied_max(&self) -> u64 {
        self.members.values().map(applied_index).max().unwrap_or(0)
    }

    /// The highest Raft term any running member has seen. Tests that a new leader would upset
    /// (its promotion moves every lease's deadline, its first entries lengthen the log, its
    /// board of health reports starts empty) compare it before and after, since on a loaded
    /// machine an election can come at any time.
    pub fn term_max(&self) -> u64 {
        self.members
            .values()
            .map(|r| r.member.raft.metrics().borrow().current_term)
            .max()
            .unwrap_or(0)
    }

    /// Waits until every running member has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        for (id, r) in &self.members {
            loop {
                let applied = applied_index(r);
                if applied >= index {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("member {id} applied {applied}, wanted {index} within {within:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// The last log index a member's state machine has applied. Read from the state machine, not
/// from Raft's metrics: the leader answers a client once the entry is applied but publishes its
/// metrics a moment later, so an index taken from the metrics right after an acknowledged write
/// can lack it (a full run saw leases [40, 41, 40] that way).
pub fn applied_index(r: &Running) -> u64 {
    r.member
        .sm
        .read()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0)
}

/// A member's lease table (node → subnet) from its own applied state, without asking the leader.
pub fn local_leases(r: &Running) -> BTreeMap<String, String> {
    let sm = r.member.sm.read();
    sm.alloc
        .leases()
        .map(|l| (l.node.clone(), l.subnet.to_string()))
        .collect()
}

/// The `twill` binary, built once per test process.
pub fn twill_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_bin("twill").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The `twill-cni` plugin, built once per test process.
pub fn cni_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_bin("twill-cni").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// `cmd` without the variables cargo sets for a running test. Cargo runs a test with its
/// package's variables set (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, …). A build script that reads one
/// (ring's does) counts a different value as a change, so a cargo build started from a test would
/// recompile ring and everything above it, and the next build outside a test would do it again.
/// Build with the environment a build outside has.
pub fn without_test_cargo_env(cmd: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
            .iter()
            .any(|p| k.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&&*k)
        {
            cmd.env_remove(&key);
        }
    }
}

/// Runs `scripts/<name>` with `env` and returns the last line it printed, its result; the
/// script's stderr goes to the test's. Panics with what went wrong when it fails.
pub fn run_script(name: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(workspace_root().join("scripts").join(name));
    without_test_cargo_env(&mut cmd);
    cmd.envs(env.iter().copied());
    let started = Instant::now();
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/{name} failed ({}), printed: {stdout}",
        out.status
    );
    eprintln!("scripts/{name} took {:.1?}", started.elapsed());
    stdout.lines().last().unwrap_or_default().trim().to_string()
}

fn build_bin(bin: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    without_test_cargo_env(&mut build);
    let status = build
        // The same selection as the suite's own build (scripts/test), so features unify the same
        // way and nothing is compiled twice: a `-p` build would rebuild shared dependencies with
        // other features and double the target directory.
        .args(["build", "--quiet", "--workspace", "--all-targets"])
        .current_dir(&root)
        .status()
        .with_context(|| format!("run cargo build --bin {bin}"))?;
    if !status.success() {
        bail!("cargo build --bin {bin} failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("debug").join(bin);
    if !path.exists() {
        bail!("built binary not found at {}", path.display());
    }
    Ok(path)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free loopback port (bound and released; good enough for tests that start a process on it).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One HTTP/1.1 GET of `path` from 127.0.0.1:`port`, the whole response (blocking).
pub fn scrape(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// The samples of a `/metrics` HTTP response, read by a Prometheus text-format parser (not our
/// own): a scrape that does not parse fails the test.
pub fn parse_metrics(response: &str) -> Result<prometheus_parse::Scrape> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "scrape failed: {head}");
    Ok(prometheus_parse::Scrape::parse(
        body.lines().map(|l| Ok(l.to_string())),
    )?)
}

/// The value of the unlabelled sample `name` in a parsed scrape.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// True when `tool` is on PATH; in CI (CI=true, where scripts/test installs it) a missing tool
/// is a failure, elsewhere the test prints "skipped" and passes.
pub fn tool_or_skip(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs {tool}, which scripts/test installs: failing instead of skipping");
    }
    eprintln!("skipped: {test} needs {tool}");
    false
}

/// Node → subnet of every acquisition a controller acknowledged.
pub type Acked = std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>;

/// Runs `attempt`, and runs it again when it failed while a leader was elected (at most three
/// times in all): for checks that a new leader upsets without anything being wrong, such as
/// "refused calls left the log as it was" (its own entries lengthen it) or "the leader holds
/// the health reports" (a new one starts with none). On a loaded 2-core machine an election
/// can come at any time. A failure with no election meanwhile, or the third, is the test's.
pub async fn again_if_elected<F, Fut>(cl: &Cluster, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let mut n = 1;
    loop {
        let term = cl.term_max();
        let failed = match std::panic::AssertUnwindSafe(attempt()).catch_unwind().await {
            Ok(()) => return,
            Err(p) => p,
        };
        let now = cl.term_max();
        if now == term || n == 3 {
            std::panic::resume_unwind(failed);
        }
        eprintln!("attempt {n} failed while a leader was elected (term {term} -> {now}); again");
        n += 1;
    }
}

/// The lease table as `client` lists it: subnet by node.
pub async fn lease_table(client: &Client) -> Result<BTreeMap<String, String>> {
    Ok(client
        .list_leases()
        .await?
        .leases
        .into_iter()
        .map(|l| (l.node, l.subnet))
        .collect())
}

/// The acknowledged leases (node, subnet) that `client`'s member does not list as acknowledged.
pub async fn missing_acked(
    client: &Client,
    acked: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    let listed = lease_table(client).await?;
    Ok(acked
        .iter()
        .filter(|(n, s)| listed.get(*n) != Some(*s))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect())
}

/// One task per client, each acquiring leases for new node names (`w<k>-<n>`) until `stop` is
/// set and recording every acknowledged one in `acked`; a write the client gives up on fails
/// the test with `why`. For tests that disturb a controller while it is written to.
pub fn spawn_acquirers(
    clients: Vec<Client>,
    acked: Acked,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    why: &'static str,
) -> Vec<tokio::task::JoinHandle<()>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(w, c)| {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let node = format!("w{w}-{i:05}");
                    let r = c
                        .acquire(twill_proto::v1::AcquireRequest {
                            node: node.clone(),
                            public_ip: "192.0.2.9".into(),
                            ..Default::default()
                        })
                        .await
                        .expect(why);
                    let subnet = r.lease.expect("an acquire answers with the lease").subnet;
                    acked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(node, subnet);
                    i += 1;
                }
            })
        })
        .collect()
}
