//! `twill controller`: one member of the Raft-replicated subnet allocator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use twill_controller::convert::{config_from_proto, config_to_proto};
use twill_controller::node::{self, Options};
use twill_controller::NodeId;

use crate::network_flags::{parse_duration, NetworkFlags};

/// Where a root-run controller keeps its Raft log and snapshots.
const SYSTEM_DATA_DIR: &str = "/var/lib/twill/controller";

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// This member's id, unique in the cluster and never reused
    #[arg(long, default_value_t = 1, env = "TWILL_ID")]
    id: NodeId,
    /// Raft log, vote and snapshots [default: /var/lib/twill/controller, or
    /// ~/.local/state/twill/controller when that is not writable]
    #[arg(long, value_name = "DIR", env = "TWILL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address for the gRPC API and Raft traffic
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:7420",
        env = "TWILL_LISTEN"
    )]
    listen: SocketAddr,
    /// URL other members and agents use to reach this one [default: https://<listen>, or
    /// http://<listen> with --insecure]
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// An initial member as ID=URL, this one included; repeat for each (e.g. --peer
    /// 1=http://10.0.0.1:7420 --peer 2=http://10.0.0.2:7420 --peer 3=http://10.0.0.3:7420).
    /// Without any, a single-member cluster is formed
    #[arg(long = "peer", value_name = "ID=URL", value_parser = parse_peer)]
    peers: Vec<(NodeId, String)>,
    /// Start empty and wait to be added to a running cluster with `twill members add`
    #[arg(long)]
    join: bool,

    /// Serve plaintext gRPC and check no caller: anyone who reaches the port can change the
    /// network, take or release any node's lease, read BGP passwords and join the cluster.
    /// Without it, every connection is TLS and every call is checked against the caller's
    /// certificate (a new cluster makes its own CA)
    #[arg(long)]
    insecure: bool,
    /// The cluster CA (certificate and key, from `twill ca create`) for a cluster formed with
    /// --peer: every founding member needs the same one. A single-member cluster makes its own
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With --join: a member join token from `twill token create --member`; this member gets
    /// its certificate with it before it is added with `twill members add`
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TWILL_JOIN_TOKEN",
        requires = "ca_hash"
    )]
    join_token: Option<String>,
    /// With --join-token: the hash of the cluster's CA that `twill token create` printed
    /// (sha256:…); the member joined through must prove it belongs to that CA
    #[arg(long, value_name = "HASH", requires = "join_token")]
    ca_hash: Option<String>,
    /// With --join-token: a running member to join through (repeat or separate with commas)
    #[arg(long = "controller", value_name = "URL", value_delimiter = ',')]
    join_via: Vec<String>,
    /// How long the node certificates this cluster issues last; agents renew theirs two
    /// thirds into that time
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    node_cert_ttl: Duration,

    /// Raft heartbeat interval
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Shortest election timeout; the longest is twice this. A follower calls an election
    /// once the leader has been silent for the longest timeout plus its own (so 0.39-0.52 s at
    /// the default, some 8 to 10 heartbeats); raise both on links with long or jittery delays
    #[arg(long, value_name = "DURATION", default_value = "130ms", value_parser = parse_duration)]
    election_timeout: Duration,
    /// Take a snapshot (and purge the log behind it) after this many log entries
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    snapshot_every: u64,
    /// Lease events kept for watchers to resume from
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    watch_history: usize,
    /// Watch streams this member serves at once (each agent keeps one); more are refused with
    /// RESOURCE_EXHAUSTED, so the agent resumes on another member
    #[arg(long, value_name = "N", default_value_t = node::DEFAULT_MAX_WATCHES)]
    max_watches: usize,
    /// How long a write may wait for a quorum before the client is told Unavailable
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    write_timeout: Duration,

    /// Threads that serve clients and watch streams (Raft has two of its own) [default: the
    /// CPUs this process may use, after its affinity and cgroup CPU quota]. Lower it when
    /// members share a machine: three members on two cores, each with two threads, spend
    /// their time handing work between threads that wait for a core. With 1, one thread runs
    /// tasks in the order they were woken (tokio's current-thread scheduler)
    #[arg(
        long,
        value_name = "N",
        env = "TWILL_THREADS",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    threads: Option<u16>,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9420); off when not given
    #[arg(long, value_name = "ADDR", env = "TWILL_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,

    /// Serve a read-only status page on http://ADDR/ (the cluster picture and every node's
    /// health, reloading itself every 3 s); off when not given. Unless --insecure, it asks for
    /// the token that this member keeps in DATA_DIR/status-token: open
    /// http://ADDR/?token=<its contents> once and the browser keeps it as a cookie
    #[arg(long, value_name = "ADDR", env = "TWILL_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,

    /// Initial network configuration, used once when a new cluster first elects a leader
    /// (change it later with `twill config set`)
    #[command(flatten)]
    network: NetworkFlags,
}

fn parse_peer(s: &str) -> Result<(NodeId, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=URL, e.g. 2=http://10.0.0.2:7420"))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: member id {id:?} is not a positive number"))?;
    if id == 0 {
        return Err(format!("{s:?}: member ids start at 1"));
    }
    let url = url.trim().trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{s:?}: URL must start with http:// or https://"));
    }
    Ok((id, url))
}

/// The default data directory: the system one when it can be created, else one under $HOME.
fn default_data_dir() -> PathBuf {
    let sys = PathBuf::from(SYSTEM_DATA_DIR);
    if std::fs::create_dir_all(&sys).is_ok() {
        return sys;
    }
    user_data_dir()
}

fn user_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("twill/controller")
}

/// Where a local controller may keep its data, in the order the CLI looks for its admin
/// credential: `$TWILL_DATA_DIR`, the system directory, the user's.
pub fn data_dir_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("TWILL_DATA_DIR") {
        v.push(PathBuf::from(d));
    }
    v.push(PathBuf::from(SYSTEM_DATA_DIR));
    v.push(user_data_dir());
    v
}

impl ControllerArgs {
    /// The main runtime's worker threads, when the operator chose them.
    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }

    fn options(&self) -> Result<Options> {
        if self.id == 0 {
            bail!("--id: member ids start at 1");
        }
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let mut o = Options::new(self.id, data_dir, self.listen);
        o.advertise = self.advertise.clone().unwrap_or_default();
        let mut peers = BTreeMap::new();
        for (id, url) in &self.peers {
            if let Some(prev) = peers.insert(*id, url.clone()) {
                bail!("--peer: member {id} given twice ({prev} and {url})");
            }
        }
        if !peers.is_empty() && !peers.contains_key(&self.id) {
            bail!(
                "--peer lists members {:?} but not this one (--id {}); list every initial member, this one included",
                peers.keys().collect::<Vec<_>>(),
                self.id
            );
        }
        if let (Some(own), Some(adv)) = (peers.get(&self.id), &self.advertise) {
            if own != adv.trim_end_matches('/') {
                bail!("--advertise {adv} differs from this member's --peer entry {own}");
            }
        }
        if o.advertise.is_empty() {
            if let Some(own) = peers.get(&self.id) {
                o.advertise = own.clone();
            }
        }
        if self.join && !peers.is_empty() {
            bail!("--join and --peer exclude each other: a joining member learns the cluster from `twill members add`");
        }
        o.peers = peers;
        o.join = self.join;

        let heartbeat = self.heartbeat_interval.as_millis() as u64;
        let election = self.election_timeout.as_millis() as u64;
        if heartbeat == 0 || election <= heartbeat * 2 {
            bail!(
                "--election-timeout ({election} ms) must be more than twice --heartbeat-interval ({heartbeat} ms)"
            );
        }
        o.heartbeat_ms = heartbeat;
        o.election_min_ms = election;
        o.election_max_ms = election * 2;
        // A new leader gives every lease at least one full election timeout of slack.
        o.promote_grace_ms = (election * 2).max(10_000);
        if self.snapshot_every == 0 {
            bail!("--snapshot-every must be at least 1");
        }
        o.snapshot_every = self.snapshot_every;
        o.watch_history = self.watch_history.max(1);
        o.write_timeout = self.write_timeout;
        o.metrics_listen = self.metrics_addr;
        o.status_listen = self.http_addr;
        if self.max_watches == 0 {
            bail!("--max-watches must be at least 1");
        }
        o.max_watches = self.max_watches;
        if self.join_token.is_some() && !self.join {
            bail!("--join-token is for a member started with --join");
        }
        if self.insecure && (self.ca.is_some() || self.join_token.is_some()) {
            bail!("--insecure turns TLS off: --ca and --join-token make no sense with it");
        }
        if self.node_cert_ttl < Duration::from_secs(3) {
            bail!("--node-cert-ttl must be at least 3s");
        }
        o.node_cert_ttl = self.node_cert_ttl;
        if o.advertise.is_empty() {
            let host = if self.listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                self.listen.ip().to_string()
            };
            let scheme = if self.insecure { "http" } else { "https" };
            o.advertise = format!("{scheme}://{host}:{}", self.listen.port());
        }

        let base = config_to_proto(&o.initial_config);
        let wanted = self.network.overlay(&base)?;
        o.initial_config = config_from_proto(&wanted).context("initial network configuration")?;
        Ok(o)
    }
}

pub async fn run(args: ControllerArgs) -> Result<()> {
    let mut opts = args.options()?;
    if args.insecure {
        tracing::warn!("--insecure: plaintext gRPC, and no caller is checked");
    } else {
        let (creds, ca) = crate::credentials::member(crate::credentials::MemberSetup {
            id: opts.id,
            data_dir: &opts.data_dir,
            advertise: &opts.advertise,
            listen: opts.listen,
            ca_file: args.ca.as_deref(),
            founding_with_peers: !opts.peers.is_empty(),
            join: args
                .join_token
                .as_deref()
                .zip(args.ca_hash.as_deref())
                .map(|(t, h)| (t, h, args.join_via.as_slice())),
        })
        .await?;
        if let Some(ca) = &ca {
            let admin = crate::credentials::write_admin(&opts.data_dir, ca)?;
            tracing::info!(
                credentials = %admin.display(),
                ca_hash = %ca.hash()?,
                "admin credential for the local CLI (twill status finds it)"
            );
        }
        opts.tls = Some(creds);
        opts.ca = ca;
    }
    tracing::info!(
        id = opts.id,
        data_dir = %opts.data_dir.display(),
        listen = %opts.listen,
        network = %opts.initial_config.network,
        subnet_len = opts.initial_config.subnet_len,
        backend = opts.initial_config.backend.name(),
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "starting controller"
    );
    let mut running = node::start(opts).await?;
    tracing::info!(addr = %running.addr, advertise = running.advertise(), "serving gRPC");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    let member = running.member.clone();
    let fatal = tokio::select! {
        r = running.wait() => {
            r.context("gRPC server failed")?;
            bail!("gRPC server stopped unexpectedly");
        }
        // A member whose disk failed must not linger half alive: exit non-zero, so the
        // service manager (Restart=on-failure) starts it again from its data directory.
        e = member.fatal() => Some(e),
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); None }
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
    };
    drop(member);
    if let Some(e) = fatal {
        tracing::error!(error = %e, "Raft stopped on a storage error; exiting");
        running.shutdown().await;
        bail!("Raft stopped: {e}");
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
