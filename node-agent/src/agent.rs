//! The agent: lease keeper and lease watch feed the desired state; the reconciler applies it on
//! every change and on a resync timer (which also puts back anything removed from outside);
//! `subnet.env` is written once the lease is held; `/healthz`, `/readyz` and `/metrics` report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use twill_controller::client::{Client, ClientOptions};
use twill_proto::v1 as pb;

use crate::desired::{self, Backend, Desired, Input, NodeLease};
use crate::facts::{self, Choice, FactsError};
use crate::lease::{Identity, Keeper};
use crate::reconcile::{Kernel, KernelError};
use crate::subnet_env::SubnetEnv;
use crate::vtep::{self, Mac};
use crate::watch::{follow, View};

#[derive(Clone, Debug)]
pub struct Options {
    pub controllers: Vec<String>,
    pub node_name: String,
    pub choice: Choice,
    pub state_dir: PathBuf,
    pub subnet_file: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub resync: Duration,
    pub ip_masq: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("controller endpoints: {0}")]
    Client(#[from] twill_controller::client::ClientError),
    #[error("invalid node name {0:?}: 1 to 253 printable characters without spaces")]
    NodeName(String),
    #[error("the cluster's configuration names no backend ({0})")]
    Backend(String),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Stats {
    /// The BGP speaker's peer board, with the bgp backend.
    bgp: std::sync::Mutex<Option<twill_bgp::speaker::Status>>,
    ready: AtomicBool,
    peers: AtomicU64,
    refused: AtomicU64,
    reconciles: AtomicU64,
    changes: AtomicU64,
    errors: AtomicU64,
}

/// The backend as configured: a fixed dataplane, or BGP settings for the speaker to turn into
/// routes.
enum Mode {
    Plain(Backend),
    Bgp(pb::BgpBackend),
}

fn backend_of(c: &pb::NetworkConfig) -> Result<Mode, AgentError> {
    match c.backend.as_ref().and_then(|b| b.kind.as_ref()) {
        Some(pb::backend::Kind::Vxlan(v)) => Ok(Mode::Plain(Backend::Vxlan {
            vni: v.vni,
            port: u16::try_from(v.port).unwrap_or(8472),
            direct_routing: v.direct_routing,
        })),
        Some(pb::backend::Kind::HostGw(_)) => Ok(Mode::Plain(Backend::HostGw)),
        Some(pb::backend::Kind::Bgp(b)) => Ok(Mode::Bgp(b.clone())),
        None => Err(AgentError::Backend("none".into())),
    }
}

fn node_lease(l: &pb::Lease) -> Option<NodeLease> {
    Some(NodeLease {
        node: l.node.clone(),
        subnet: l.subnet.parse().ok()?,
        public_ip: l.public_ip.parse().ok()?,
        vtep_mac: l
            .backend_data
            .get("vtep_mac")
            .and_then(|m| m.parse::<Mac>().ok()),
    })
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    let n = &opts.node_name;
    if n.is_empty() || n.len() > 253 || !n.chars().all(|c| c.is_ascii_graphic()) {
        return Err(AgentError::NodeName(n.clone()));
    }
    let kernel = Kernel::connect()?;
    let facts = facts::discover(&kernel, &opts.choice).await?;
    tracing::info!(iface = %facts.iface, public_ip = %facts.public_ip, mtu = facts.mtu, "public interface chosen");
    let mac = vtep::derive(&opts.node_name);
    let client = Arc::new(Client::with_options(
        &opts.controllers,
        ClientOptions {
            retry_for: Duration::from_secs(15),
            ..Default::default()
        },
    )?);

    let stats = Arc::new(Stats::default());
    if let Some(addr) = opts.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AgentError::Metrics { addr, source: e })?;
        tokio::spawn(serve_http(l, stats.clone()));
    }

    let (lease_tx, mut lease_rx) = watch::channel(None);
    let keeper = Keeper {
        client: client.clone(),
        id: Identity {
            node: opts.node_name.clone(),
            public_ip: facts.public_ip,
            vtep_mac: mac,
        },
        state_dir: opts.state_dir.clone(),
        // Until the cluster's configuration is read, after the first lease.
        lease_ttl: Duration::from_secs(60),
        tx: lease_tx,
    };
    tokio::spawn(keeper.run());
    let (view_tx, mut view_rx) = watch::channel(View::default());
    tokio::spawn(follow(client.clone(), view_tx, Duration::from_secs(20)));

    let mut events = crate::reconcile::monitor()?;
    let mut tick = tokio::time::interval(opts.resync);
    let mut last_env: Option<SubnetEnv> = None;
    let mut last_refused = BTreeMap::new();
    let mut speaker: Option<crate::bgp::Runner> = None;
    // Routes to peers found in the kernel when the speaker starts (an agent restart): kept
    // until the speaker has every peer's table again, so pod traffic keeps flowing.
    let mut preserved: crate::bgp::Learned = BTreeMap::new();
    loop {
        let learned_changed = async {
            match speaker.as_mut() {
                Some(r) => r.learned.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = lease_rx.changed() => if r.is_err() { break },
            r = view_rx.changed() => if r.is_err() { break },
            Ok(()) = learned_changed => {
                // A burst of UPDATEs (a peer's full table) settles before one reconcile.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tick.tick() => {}
            Some(()) = events.recv() => {
                // Let a burst (a flush, a device deletion) finish, then repair once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while events.try_recv().is_ok() {}
            }
        }
        let own = lease_rx.borrow().clone();
        let view = view_rx.borrow().clone();
        let (Some(own), Some(config)) = (own, view.config.clone()) else {
            continue;
        };
        let mode = backend_of(&config)?;
        let Some(own_lease) = node_lease(&own) else {
            tracing::error!(subnet = %own.subnet, "lease from the controller does not parse");
            continue;
        };
        let own_lease = NodeLease {
            vtep_mac: Some(mac),
            ..own_lease
        };
        let peers: Vec<NodeLease> = view.leases.values().filter_map(node_lease).collect();
        let backend = match mode {
            Mode::Plain(b) => {
                if let Some(r) = speaker.take() {
                    tracing::info!("backend is no longer bgp; stopping the BGP speaker");
                    r.stop().await;
                }
                b
            }
            Mode::Bgp(settings) => {
                let Ok(network) = config.network.parse() else {
                    continue;
                };
                let plan = crate::bgp::plan(&settings, network, &own_lease, &peers);
                match speaker.as_mut() {
                    Some(r) if r.compatible(&plan) => r.update(plan).await,
                    _ => {
                        if let Some(old) = speaker.take() {
                            old.stop().await;
                        }
                        let listen = SocketAddr::new(facts.public_ip.into(), 179);
                        let status = crate::bgp::status_path(&opts.state_dir);
                        preserved = match kernel.observe().await {
                            Ok(o) => o
                                .routes
                                .iter()
                                .filter(|r| r.dev == facts.iface && !r.onlink)
                                .map(|r| (r.dst, r.via))
                                .collect(),
                            Err(_) => BTreeMap::new(),
                        };
                        if !preserved.is_empty() {
                            tracing::info!(routes = preserved.len(), "restarting: routes in the kernel kept until every BGP peer has resent its table");
                        }
                        let r = crate::bgp::Runner::start(
                            plan,
                            listen,
                            Some(status),
                            !preserved.is_empty(),
                        );
                        *stats.bgp.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(r.status.clone());
                        speaker = Some(r);
                    }
                }
                let mut routes = speaker
                    .as_ref()
                    .map(|r| r.learned.borrow().clone())
                    .unwrap_or_default();
                if !preserved.is_empty() {
                    if speaker.as_ref().is_some_and(|r| r.converged()) {
                        tracing::info!("every BGP peer resent its table; routes from before the restart released");
                        preserved.clear();
                    } else {
                        for (dst, via) in &preserved {
                            routes.entry(*dst).or_insert(*via);
                        }
                    }
                }
                Backend::Bgp { routes }
            }
        };
        let input = Input {
            own: own_lease.clone(),
            peers,
            backend: backend.clone(),
            facts: facts.clone(),
        };
        let want: Desired = desired::compute(&input);
        for r in &want.refused {
            if last_refused.insert(format!("{r:?}"), ()).is_none() {
                tracing::warn!(refusal = ?r, "peer not programmed");
            }
        }
        last_refused.retain(|k, _| want.refused.iter().any(|r| format!("{r:?}") == *k));
        stats.reconciles.fetch_add(1, Ordering::Relaxed);
        match kernel.reconcile(&want).await {
            Ok(ops) => {
                if !ops.is_empty() {
                    stats.changes.fetch_add(ops.len() as u64, Ordering::Relaxed);
                    tracing::info!(subnet = %own_lease.subnet, changes = ops.len(), "dataplane updated");
                    for op in &ops {
                        tracing::debug!(?op, "applied");
                    }
                }
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "reconcile failed; retrying at the next resync");
                continue;
            }
        }
        stats
            .peers
            .store(want.routes.len() as u64, Ordering::Relaxed);
        stats
            .refused
            .store(want.refused.len() as u64, Ordering::Relaxed);
        let env = SubnetEnv {
            network: match config.network.parse() {
                Ok(n) => n,
                Err(_) => continue,
            },
            subnet: own_lease.subnet,
            ipv6_network: config.ipv6_network.parse().ok(),
            ipv6_subnet: own.ipv6_subnet.parse().ok(),
            mtu: match &backend {
                Backend::Vxlan { .. } => facts.mtu.saturating_sub(desired::VXLAN_OVERHEAD),
                Backend::HostGw | Backend::Bgp { .. } => facts.mtu,
            },
            ipmasq: opts.ip_masq,
        };
        if last_env.as_ref() != Some(&env) {
            match env.write(&opts.subnet_file) {
                Ok(()) => {
                    tracing::info!(file = %opts.subnet_file.display(), subnet = %env.subnet, "subnet.env written");
                    last_env = Some(env);
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %opts.subnet_file.display(), "cannot write subnet.env");
                    continue;
                }
            }
        }
        stats.ready.store(true, Ordering::Relaxed);
    }
    Ok(())
}

fn render(s: &Stats) -> String {
    let mut o = String::new();
    for (name, kind, help, v) in [
        ("twill_agent_ready", "gauge", "1 once the lease is held, the dataplane programmed and subnet.env written.", u64::from(s.ready.load(Ordering::Relaxed))),
        ("twill_agent_routes", "gauge", "Routes to peers' subnets programmed.", s.peers.load(Ordering::Relaxed)),
        ("twill_agent_refused_peers", "gauge", "Peers not programmed (host-gw peer off the L2 segment, vxlan peer without a VTEP MAC).", s.refused.load(Ordering::Relaxed)),
        ("twill_agent_reconciles_total", "counter", "Reconcile passes.", s.reconciles.load(Ordering::Relaxed)),
        ("twill_agent_changes_total", "counter", "Kernel changes applied.", s.changes.load(Ordering::Relaxed)),
        ("twill_agent_reconcile_errors_total", "counter", "Reconcile passes that failed.", s.errors.load(Ordering::Relaxed)),
    ] {
        twill_controller::metrics::metric(&mut o, name, kind, help, v);
    }
    if let Some(st) = s.bgp.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        crate::bgp::render_metrics(st, &mut o);
    }
    o
}

async fn serve_http(l: tokio::net::TcpListener, s: Arc<Stats>) {
    twill_controller::metrics::serve_http(l, std::future::pending(), move |path| match path {
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" if s.ready.load(Ordering::Relaxed) => ("200 OK", "ready\n".to_string()),
        "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
        "/metrics" => ("200 OK", render(&s)),
        _ => (
            "404 Not Found",
            "try /healthz, /readyz or /metrics\n".to_string(),
        ),
    })
    .await
}
