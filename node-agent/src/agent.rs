//! The agent: one loop over typed events (the node's lease changed or was renewed, the lease
//! stream moved, the configuration changed, the kernel changed, the resync tick, the backend
//! has news) feeding one state value through small handlers. After each handler that can
//! change the dataplane, the desired state is computed (a pure function) and reconciled with
//! the kernel; readiness is derived from that state whenever it is asked for.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use twill_client::{Client, ClientOptions};
use twill_proto::v1 as pb;

use crate::backend::{self, Config, ConfigError, Dataplane};
use crate::desired::{self, Input, LocalFacts, NodeLease, Refusal, SourceTables};
use crate::facts::{self, Choice, FactsError, Reason};
use crate::health::Health;
use crate::lease::{Identity, Keeper};
use crate::masquerade::{self, Masquerade, NftError};
use crate::metrics::{BgpBoard, Metrics};
use crate::reconcile::{Kernel, KernelError, Op};
use crate::source_tables::{self, IfaceView, TableSpec};
use crate::subnet_env::SubnetEnv;
use crate::vtep::{self, Mac};
use crate::watch::{follow, View};

/// How the agent proves who it is to the controller.
#[derive(Clone, Debug)]
pub enum Tls {
    /// Plaintext, for a controller run with `--insecure`.
    Off,
    /// The node certificate in `file`; made with the join token and CA hash when missing.
    On {
        file: PathBuf,
        join: Option<(String, String)>,
    },
}

#[derive(Clone, Debug)]
pub struct Options {
    pub tls: Tls,
    pub controllers: Vec<String>,
    pub node_name: String,
    pub choice: Choice,
    pub state_dir: PathBuf,
    pub subnet_file: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub resync: Duration,
    /// How often the health summary goes to the controller.
    pub health_interval: Duration,
    pub ip_masq: bool,
    /// This node's own BGP choices (prefix limit, ranges to announce).
    pub bgp: crate::bgp::Local,
    /// Per-source tables twill keeps whole (`--source-table`).
    pub source_tables: Vec<TableSpec>,
}

/// The pod bridge the CNI plugin's delegate makes (flannel's name, twill-cni's default).
pub const POD_BRIDGE: &str = "cni0";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("controller endpoints: {0}")]
    Client(#[from] twill_client::ClientError),
    #[error(transparent)]
    NodeName(#[from] twill_proto::names::NodeNameError),
    #[error(transparent)]
    Metrics(#[from] twill_telemetry::BindError),
    #[error("node certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Masquerade(#[from] NftError),
}

/// What wakes the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The keeper holds a different lease, or none.
    LeaseChanged,
    /// The keeper renewed the lease (or lost it): only readiness moves.
    LeaseRenewed,
    /// The lease stream moved: peers' leases or the configuration.
    StreamMoved,
    /// Netlink reported a change to something we may own.
    Kernel,
    Resync,
    /// The backend has news (the BGP speaker chose other routes).
    Backend,
    /// A source of events ended: the agent is shutting down.
    Closed(&'static str),
}

/// A lease as the desired state uses it; `None` for one that does not parse.
pub fn node_lease(l: &pb::Lease) -> Option<NodeLease> {
    Some(NodeLease {
        node: l.node.clone(),
        subnet: l.subnet.parse().ok()?,
        public_ip: l.public_ip.parse().ok()?,
        vtep_mac: l
            .backend_data
            .get("vtep_mac")
            .and_then(|m| m.parse::<Mac>().ok()),
        // Both halves or none: an IPv6 subnet without an address to reach it is of no use.
        v6: match (l.ipv6_subnet.parse(), l.public_ipv6.parse()) {
            (Ok(subnet), Ok(public_ip)) => Some(desired::LeaseV6 {
                subnet,
                public_ip,
                vtep_mac: l
                    .backend_data
                    .get("vtep_mac_v6")
                    .and_then(|m| m.parse::<Mac>().ok()),
            }),
            _ => None,
        },
    })
}

/// The steps of a reconcile pass that can fail on their own and are retried at the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Reconcile,
    Masquerade,
    Forward,
}

impl Step {
    fn failed(self) -> &'static str {
        match self {
            Step::Reconcile => "reconcile failed; retrying at the next resync",
            Step::Masquerade => "masquerade not in place; retrying at the next resync",
            Step::Forward => {
                "pod traffic not accepted in the FORWARD chain; retrying at the next resync"
            }
        }
    }
}

/// The node's own lease as the desired state uses it: with the VTEP MACs this node derives,
/// whatever the lease says (the device is made with these).
pub fn own_lease(own: &pb::Lease, mac: Mac, mac_v6: Mac) -> Option<NodeLease> {
    let l = node_lease(own)?;
    Some(NodeLease {
        vtep_mac: Some(mac),
        v6: l.v6.map(|v6| desired::LeaseV6 {
            vtep_mac: Some(mac_v6),
            ..v6
        }),
        ..l
    })
}

struct Agent {
    opts: Options,
    kernel: Kernel,
    facts: LocalFacts,
    mac: Mac,
    /// The IPv6 VXLAN device's MAC: another device, another MAC.
    mac_v6: Mac,
    lease_rx: watch::Receiver<Option<pb::Lease>>,
    valid_rx: watch::Receiver<Option<Instant>>,
    view_rx: watch::Receiver<View>,
    kernel_events: mpsc::UnboundedReceiver<()>,
    tick: tokio::time::Interval,
    // The state the handlers keep.
    own: Option<pb::Lease>,
    config: Option<pb::NetworkConfig>,
    backend: Option<Box<dyn Dataplane>>,
    last_env: Option<SubnetEnv>,
    refused: BTreeSet<Refusal>,
    config_error: Option<String>,
    health: Arc<Mutex<Health>>,
    metrics: Metrics,
    bgp_board: BgpBoard,
    masq: Masquerade,
    /// With --ip-masq=false: whether a table left by an earlier run was looked for.
    masq_cleared: bool,
    forwarding_checked: bool,
    forwarding6_checked: bool,
    /// Whether the next pass checks the nftables rules (masquerade, FORWARD). They depend on
    /// the configuration alone, and nft changes make no netlink event, so peers' lease changes
    /// and kernel events do not need them read again: only the first pass, a new configuration
    /// or own lease, every resync, and a pass after a failed check. Each check runs `nft`
    /// twice, and at 50 nodes every join made all of them do it at once, which delayed the
    /// join's route on the last nodes (bench-agent converge).
    firewall_due: bool,
    /// The per-source tables as last found, and what was last said about them.
    sources: SourceTables,
    source_problems: Vec<String>,
    conflicts: Vec<Op>,
    table_errors: Vec<String>,
    /// The failing steps of a pass (reconcile, masquerade, forward) and what each last said: a
    /// node stuck on one error warns once, and again only when the error changes or clears.
    failing: std::collections::BTreeMap<Step, String>,
    /// Whether the nft tool is absent, once looked for.
    nft_missing: Option<bool>,
    /// Why `facts.iface` was chosen; the identity the lease keeper acquires with; the
    /// interface selection's last error (warned about once), while the old choice is kept.
    reason: Reason,
    identity: watch::Sender<Identity>,
    select_error: Option<String>,
}

impl Agent {
    async fn next(&mut self) -> Event {
        let backend_news = async {
            match self.backend.as_mut() {
                Some(b) => b.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.lease_rx.changed() => if r.is_err() { Event::Closed("lease keeper") } else { Event::LeaseChanged },
            r = self.valid_rx.changed() => if r.is_err() { Event::Closed("lease keeper") } else { Event::LeaseRenewed },
            r = self.view_rx.changed() => if r.is_err() { Event::Closed("lease stream") } else { Event::StreamMoved },
            () = backend_news => Event::Backend,
            _ = self.tick.tick() => Event::Resync,
            e = self.kernel_events.recv() => match e {
                Some(()) => Event::Kernel,
                None => Event::Closed("netlink monitor"),
            },
        }
    }

    /// Logs a failing step of a pass: a warning when its error is new, at debug level when it
    /// is the one already reported, so a node stuck on one problem does not flood its log.
    fn step_failed(&mut self, step: Step, error: String) {
        self.metrics.errors.inc();
        self.health(|h| h.reconciled(Err(error.clone())));
        let what = step.failed();
        if self.failing.get(&step) == Some(&error) {
            tracing::debug!(error = %error, "{what} (still)");
        } else {
            tracing::warn!(error = %error, "{what}");
            self.failing.insert(step, error);
        }
    }

    fn step_ended(&mut self, step: Step, r: Result<(), impl std::fmt::Display>) {
        match r {
            Ok(()) => self.step_done(step),
            Err(e) => self.step_failed(step, e.to_string()),
        }
    }

    /// A step that succeeds after failing says so once.
    fn step_done(&mut self, step: Step) {
        if self.failing.remove(&step).is_some() {
            tracing::info!(?step, "succeeds again");
        }
    }

    fn health(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.health.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn on_lease_changed(&mut self) {
        self.own = self.lease_rx.borrow_and_update().clone();
        if self.own.is_none() {
            self.last_env = None;
            self.health(|h| h.subnet_env_written = false);
        }
    }

    fn on_lease_renewed(&mut self) {
        let until = *self.valid_rx.borrow_and_update();
        self.health(|h| h.lease_valid_until = until);
    }

    /// A changed configuration gets its own handler. The leases are not copied out of the
    /// channel: a pass reads them there, so the stream's follower changes the one map in place
    /// instead of copying all of it for every event (see `watch::View`).
    async fn on_stream_moved(&mut self) {
        let config = self.view_rx.borrow_and_update().config.clone();
        if config != self.config {
            self.config = config;
            self.on_config_changed().await;
        }
    }

    /// A new configuration: a backend that cannot take it is stopped (the next reconcile
    /// removes what it programmed and the new one does not want).
    async fn on_config_changed(&mut self) {
        let parsed = self.config.as_ref().map(Config::from_proto);
        match parsed {
            None => {
                tracing::info!("waiting for the cluster's network configuration");
            }
            Some(Err(e)) => self.refuse_config(e).await,
            Some(Ok(c)) => {
                self.config_error = None;
                self.firewall_due = true;
                if let Some(b) = self.backend.take_if(|b| !b.takes(&c)) {
                    tracing::info!(from = b.name(), to = c.name(), "backend changed");
                    self.stop_backend(b).await;
                }
            }
        }
    }

    async fn refuse_config(&mut self, e: ConfigError) {
        let e = e.to_string();
        if self.config_error.as_ref() != Some(&e) {
            tracing::error!(error = %e, "configuration not usable; the dataplane is left as it is");
        }
        self.config_error = Some(e);
    }

    async fn stop_backend(&mut self, b: Box<dyn Dataplane>) {
        *self.bgp_board.lock().unwrap_or_else(|p| p.into_inner()) = None;
        b.stop().await;
    }

    /// Drains a burst of kernel events (a flush, a device deletion) so it is repaired once;
    /// an address may have changed, so the interface selection runs again.
    async fn on_kernel(&mut self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        while self.kernel_events.try_recv().is_ok() {}
        self.reselect().await;
    }

    /// Runs the interface selection again with the same flags (after a kernel change and at
    /// each resync): a different outcome becomes the facts the dataplane is computed from, and
    /// the lease keeper acquires again with the new public IP, keeping the subnet. While the
    /// selection fails (an address being changed) the old choice is kept.
    async fn reselect(&mut self) {
        let sel = match facts::discover(&self.kernel, &self.opts.choice).await {
            Ok(s) => s,
            Err(e) => {
                let e = e.to_string();
                if self.select_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, iface = %self.facts.iface, address = %self.facts.local_ip, "interface selection fails; keeping the current choice, retrying at the next change or resync");
                }
                self.select_error = Some(e);
                return;
            }
        };
        let recovered = self.select_error.take().is_some();
        if sel.facts == self.facts && sel.reason == self.reason {
            if recovered {
                tracing::info!(iface = %sel.facts.iface, address = %sel.facts.local_ip, "interface selection works again; the choice is unchanged");
            }
            return;
        }
        sel.log("public interface changed");
        self.metrics.set_public_interface(sel.labels());
        self.identity.send_if_modified(|id| {
            let (ip, data) = (sel.facts.public_ip, sel.backend_data());
            let ip6 = sel.facts.v6.as_ref().map(|v| v.public_ip);
            let changed = id.public_ip != ip || id.backend_data != data || id.public_ipv6 != ip6;
            (id.public_ip, id.backend_data, id.public_ipv6) = (ip, data, ip6);
            changed
        });
        // The BGP speaker listens on the local address: a new one needs a new speaker.
        if sel.facts.local_ip != self.facts.local_ip {
            if let Some(b) = self.backend.take_if(|b| b.name() == "bgp") {
                self.stop_backend(b).await;
            }
        }
        (self.facts, self.reason) = (sel.facts, sel.reason);
    }

    /// Brings the backend and the kernel in line with the state; records the outcome.
    async fn reconcile(&mut self) {
        let (Some(own), Some(config)) = (self.own.clone(), self.config.clone()) else {
            return;
        };
        let cfg = match Config::from_proto(&config) {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                self.refuse_config(e).await;
                self.health(|h| h.reconciled(Err(msg)));
                return;
            }
        };
        let Some(own_lease) = own_lease(&own, self.mac, self.mac_v6) else {
            let msg = format!("own lease does not parse (subnet {:?})", own.subnet);
            tracing::error!("{msg}");
            self.health(|h| h.reconciled(Err(msg)));
            return;
        };
        // The newest view: a change it holds that this loop has not taken yet still wakes it.
        let peers: Vec<NodeLease> = self
            .view_rx
            .borrow()
            .leases
            .values()
            .filter_map(node_lease)
            .collect();
        let view = backend::View {
            own: &own_lease,
            peers: &peers,
            facts: &self.facts,
        };
        let backend = match self.backend.as_mut() {
            Some(b) => {
                b.update(&cfg, &view).await;
                b
            }
            None => {
                let b = backend::start(
                    &cfg,
                    &view,
                    backend::Start {
                        kernel: &self.kernel,
                        facts: &self.facts,
                        state_dir: &self.opts.state_dir,
                        bgp: &self.opts.bgp,
                    },
                )
                .await;
                tracing::info!(backend = b.name(), "backend started");
                *self.bgp_board.lock().unwrap_or_else(|p| p.into_inner()) = b.bgp_status();
                self.backend.insert(b)
            }
        };
        let recipe = backend.recipe();
        let pod_mtu = backend.pod_mtu(self.facts.mtu);
        let backend_health = backend.health();
        let backend_name = backend.name();
        self.health(|h| {
            h.backend = backend_health;
            h.backend_name = Some(backend_name);
        });

        let sources = self.find_source_tables().await;
        let want = desired::compute(&Input {
            own: own_lease.clone(),
            peers,
            backend: recipe,
            facts: self.facts.clone(),
            sources,
        });
        for r in want.refused.difference(&self.refused) {
            tracing::warn!(refusal = ?r, "not programmed");
        }
        self.refused = want.refused.clone();
        self.metrics.reconciles.inc();
        match self.kernel.reconcile_reporting(&want).await {
            Ok(applied) => {
                if applied.conflicts != self.conflicts {
                    for op in &applied.conflicts {
                        tracing::warn!(
                            ?op,
                            "a route of someone else's is where twill's should go; left alone"
                        );
                    }
                    self.conflicts = applied.conflicts;
                }
                let table_errors: Vec<String> = applied
                    .table_errors
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect();
                if table_errors != self.table_errors {
                    for (op, e) in &applied.table_errors {
                        tracing::warn!(?op, error = %e, "per-source table entry refused by the kernel; retrying at the next pass");
                    }
                    self.table_errors = table_errors;
                }
                let ops = applied.ops;
                if !ops.is_empty() {
                    self.metrics.changes.inc_by(ops.len() as u64);
                    tracing::info!(subnet = %own_lease.subnet, changes = ops.len(), "dataplane updated");
                    for op in &ops {
                        tracing::debug!(?op, "applied");
                    }
                }
                self.health(|h| h.reconciled(Ok(())));
                self.step_done(Step::Reconcile);
            }
            Err(e) => {
                self.step_failed(Step::Reconcile, e.to_string());
                return;
            }
        }
        if self.firewall_due {
            let masq = self.sync_masquerade(&config).await;
            let forward = self.sync_forward(&config).await;
            self.firewall_due = masq.is_err() || forward.is_err();
            self.step_ended(Step::Masquerade, masq);
            self.step_ended(Step::Forward, forward);
        }
        self.ensure_forwarding(own_lease.v6.is_some());
        self.metrics
            .routes
            .set(i64::try_from(want.routes.len()).unwrap_or(i64::MAX));
        self.metrics
            .refused
            .set(i64::try_from(want.refused.len()).unwrap_or(i64::MAX));
        self.write_subnet_env(&config, &own, own_lease.subnet, pod_mtu);
    }

    /// The host's per-source tables now (see [`source_tables_now`]); what cannot be read keeps
    /// its last known value.
    async fn find_source_tables(&mut self) -> SourceTables {
        let (now, problems) = match source_tables_now(&self.kernel, &self.opts.source_tables).await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read interfaces or rules; per-source tables as before");
                return self.sources.clone();
            }
        };
        if problems != self.source_problems {
            for p in &problems {
                tracing::warn!("{p}; retrying as interfaces and addresses change");
            }
            self.source_problems = problems;
        }
        if now.found != self.sources.found || now.managed != self.sources.managed {
            let managed: Vec<String> = now
                .managed
                .iter()
                .map(|m| format!("{}={} via {:?}", m.addr, m.table, m.gateway))
                .collect();
            tracing::info!(found = ?now.found, managed = ?managed, "per-source routing tables get the pod routes");
        }
        self.sources = now.clone();
        now
    }

    /// Pod traffic accepted in the `filter` tables' FORWARD chains where they exist (Docker's
    /// drop them by default). Needs nft; without it (and without masquerade) nothing is done.
    async fn sync_forward(&mut self, config: &pb::NetworkConfig) -> Result<(), NftError> {
        if self.nft_missing.is_none() {
            self.nft_missing = Some(masquerade::check_tool().await.is_err());
        }
        if self.nft_missing == Some(true) {
            return Ok(());
        }
        let want = masquerade::Networks {
            v4: config.network.parse().ok(),
            v6: config.ipv6_network.parse().ok(),
        };
        for chain in crate::forward::sync(Some(&want)).await? {
            tracing::info!(%chain, "pod traffic accepted at the head of a FORWARD chain (comment \"twill: pod network\")");
        }
        Ok(())
    }

    /// Pod egress masquerade for the cluster's networks, or no table of ours when it is off.
    async fn sync_masquerade(&mut self, config: &pb::NetworkConfig) -> Result<(), NftError> {
        if !self.opts.ip_masq {
            if !self.masq_cleared {
                // Only when nft exists: an agent run without masquerade does not need the tool.
                if masquerade::check_tool().await.is_ok()
                    && self.masq.sync(None).await? == masquerade::Sync::Removed
                {
                    tracing::info!("masquerade table of an earlier run removed (--ip-masq=false)");
                }
                self.masq_cleared = true;
            }
            return Ok(());
        }
        let want = masquerade::Networks {
            v4: config.network.parse().ok(),
            v6: config.ipv6_network.parse().ok(),
        };
        match self.masq.sync(Some(&want)).await? {
            masquerade::Sync::Unchanged | masquerade::Sync::Removed => {}
            masquerade::Sync::Written => {
                tracing::info!(network = %config.network, ipv6_network = %config.ipv6_network, "pod egress masquerade in place (nft table inet twill)")
            }
            masquerade::Sync::Repaired => {
                self.metrics.masquerade_repairs.inc();
                tracing::warn!(
                    "masquerade table was changed or removed by someone else; written again"
                );
            }
        }
        Ok(())
    }

    /// Pods' traffic is forwarded by the node: forwarding must be on, for IPv6 too once the
    /// node has an IPv6 subnet. The bridge CNI plugin turns IPv4 on at the first pod; a node
    /// without pods yet still forwards for peers. Turning IPv6 forwarding on makes the kernel
    /// ignore router advertisements on interfaces with accept_ra=1, so those are moved to
    /// accept_ra=2 first (accept them while forwarding) and keep their SLAAC routes.
    fn ensure_forwarding(&mut self, v6: bool) {
        if !self.forwarding_checked {
            self.forwarding_checked = true;
            turn_on("/proc/sys/net/ipv4/ip_forward", "IPv4 forwarding");
        }
        if v6 && !self.forwarding6_checked {
            self.forwarding6_checked = true;
            // Every interface that takes router advertisements (accept_ra=1) would stop taking
            // them once forwarding is on; 2 keeps them coming.
            let dirs = std::fs::read_dir("/proc/sys/net/ipv6/conf")
                .into_iter()
                .flatten();
            for dir in dirs.flatten() {
                let name = dir.file_name().to_string_lossy().into_owned();
                if name == "all" || name == "lo" {
                    continue;
                }
                let ra = dir.path().join("accept_ra");
                if std::fs::read_to_string(&ra).is_ok_and(|v| v.trim() == "1") {
                    match std::fs::write(&ra, "2") {
                        Ok(()) => {
                            tracing::info!(iface = %name, "accept_ra=2, so router advertisements still count with IPv6 forwarding on")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, file = %ra.display(), "cannot keep accepting router advertisements with forwarding on")
                        }
                    }
                }
            }
            turn_on("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6 forwarding");
        }
    }

    fn write_subnet_env(
        &mut self,
        config: &pb::NetworkConfig,
        own: &pb::Lease,
        subnet: ipnet::Ipv4Net,
        mtu: u32,
    ) {
        let Ok(network) = config.network.parse() else {
            return;
        };
        let env = SubnetEnv {
            network,
            subnet,
            ipv6_network: config.ipv6_network.parse().ok(),
            ipv6_subnet: own.ipv6_subnet.parse().ok(),
            mtu,
            ipmasq: self.opts.ip_masq,
        };
        if self.last_env.as_ref() == Some(&env) {
            return;
        }
        match env.write(&self.opts.subnet_file) {
            Ok(()) => {
                tracing::info!(file = %self.opts.subnet_file.display(), subnet = %env.subnet, "subnet.env written");
                self.last_env = Some(env);
                self.health(|h| h.subnet_env_written = true);
            }
            Err(e) => {
                tracing::warn!(error = %e, file = %self.opts.subnet_file.display(), "cannot write subnet.env");
                self.health(|h| h.subnet_env_written = false);
            }
        }
    }

    async fn run(mut self) {
        loop {
            let ev = self.next().await;
            match ev {
                Event::LeaseChanged => {
                    self.firewall_due = true;
                    self.on_lease_changed()
                }
                Event::LeaseRenewed => {
                    self.on_lease_renewed();
                    continue;
                }
                Event::StreamMoved => self.on_stream_moved().await,
                Event::Kernel => self.on_kernel().await,
                Event::Resync => {
                    self.firewall_due = true;
                    self.reselect().await
                }
                Event::Backend => {}
                Event::Closed(what) => {
                    tracing::info!(source = what, "event source closed; agent stopping");
                    break;
                }
            }
            self.reconcile().await;
        }
        if let Some(b) = self.backend.take() {
            self.stop_backend(b).await;
        }
    }
}

/// The host's per-source tables as the kernel has them now: found from its rules and
/// addresses, and the managed ones resolved from `--source-table`, with what keeps a managed
/// one from being resolved (a missing interface or address, unreadable default routes).
pub async fn source_tables_now(
    kernel: &Kernel,
    specs: &[TableSpec],
) -> Result<(SourceTables, Vec<String>), KernelError> {
    let ifaces = kernel.interfaces().await?;
    let local: Vec<std::net::Ipv4Addr> = ifaces
        .iter()
        .flat_map(|(_, _, nets)| nets.iter().map(|n| n.addr()))
        .filter(|a| !a.is_loopback())
        .collect();
    let found = source_tables::found_tables(&kernel.rule_views().await?, &local);
    let mut problems = Vec::new();
    let managed = if specs.is_empty() {
        Vec::new()
    } else {
        let gateways = kernel.default_gateways().await.unwrap_or_else(|e| {
            problems.push(format!("cannot read the default routes: {e}"));
            Default::default()
        });
        let views: Vec<IfaceView> = ifaces
            .iter()
            .map(|(name, _, addrs)| IfaceView {
                name: name.clone(),
                addrs: addrs.clone(),
            })
            .collect();
        let (managed, errors) = source_tables::resolve(specs, &views, |i| gateways.get(i).copied());
        problems.extend(errors.iter().map(|e| format!("--source-table: {e}")));
        managed
    };
    let sources = SourceTables {
        found,
        pod_bridge: ifaces
            .iter()
            .any(|(n, _, _)| n == POD_BRIDGE)
            .then(|| POD_BRIDGE.to_string()),
        managed,
    };
    Ok((sources, problems))
}

/// Writes 1 to a sysctl file that says 0, saying so.
fn turn_on(path: &str, what: &str) {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(path, "1") {
            Ok(()) => tracing::info!(sysctl = path, "{what} was off; turned on"),
            Err(e) => {
                tracing::warn!(error = %e, sysctl = path, "{what} is off and cannot be turned on; pods on other nodes will not be reached")
            }
        },
        Err(e) => tracing::warn!(error = %e, sysctl = path, "cannot read {what}"),
    }
}

/// Removes everything twill programmed in this network namespace: reconciling to an empty
/// desired state takes away exactly what twill owns (its devices, its routes and rules in every
/// table), and the masquerade table goes. Returns how many kernel objects were removed.
pub async fn cleanup() -> Result<usize, AgentError> {
    let kernel = Kernel::connect()?;
    let ops = kernel.reconcile(&desired::Desired::default()).await?;
    for op in &ops {
        tracing::info!(?op, "removed");
    }
    if masquerade::check_tool().await.is_ok() {
        if Masquerade::default().sync(None).await? == masquerade::Sync::Removed {
            tracing::info!("masquerade table removed");
        }
        for chain in crate::forward::sync(None).await? {
            tracing::info!(%chain, "twill's rules removed from the chain");
        }
    }
    Ok(ops.len())
}

/// glibc gives threads that allocate at once arenas of their own (up to eight per core), and
/// memory freed in one arena is not reused by another, so the agent's few runtime threads each
/// come to hold a peak of their own: with 5,000 peers a pass reads and plans some 15,000 kernel
/// entries. The agent handles one event at a time and gains nothing from more arenas; with one
/// its RSS holds one peak (bench-agent memory, 5,000 peers, this change alone: VmRSS 37.9 MB ->
/// 32.0 MB, anonymous 24.3 -> 18.6 MB). Call it before
/// any thread is started.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter; no other thread exists yet to race with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub async fn run(opts: Options) -> Result<(), AgentError> {
    twill_proto::names::validate_node_name(&opts.node_name)?;
    // For `twill doctor`: it computes the desired state from what this run uses.
    if let Err(e) = crate::settings::Settings::of(&opts).save(&opts.state_dir) {
        tracing::warn!(error = %e, dir = %opts.state_dir.display(), "cannot save the agent's settings; twill doctor will not find them");
    }
    let kernel = Kernel::connect()?;
    let selected = facts::discover(&kernel, &opts.choice).await?;
    selected.log("public interface chosen");
    if opts.ip_masq {
        masquerade::check_tool().await?;
    }
    let mac = vtep::derive(&opts.node_name);
    let mac_v6 = vtep::derive_v6(&opts.node_name);
    // Health first: an agent still waiting to join is alive, and not ready.
    let health = Arc::new(Mutex::new(Health::default()));
    let metrics = Metrics::default();
    metrics.set_public_interface(selected.labels());
    let bgp_board = BgpBoard::default();
    if let Some(addr) = opts.metrics_addr {
        let l = twill_telemetry::bind(addr).await?;
        let e = crate::metrics::endpoints(&metrics, health.clone(), bgp_board.clone());
        tokio::spawn(twill_telemetry::serve(l, e, std::future::pending()));
    }

    let creds = crate::certs::obtain(&opts).await?;
    let client = Arc::new(Client::with_options(
        &opts.controllers,
        ClientOptions {
            retry_for: Duration::from_secs(15),
            tls: creds.as_ref().map(|(c, _)| c.client_tls()),
            ..Default::default()
        },
    )?);
    if let Some((c, file)) = creds {
        tokio::spawn(twill_client::certs::keep_renewed(
            client.clone(),
            c,
            Some(file),
        ));
    }

    tokio::spawn(crate::health::report(
        client.clone(),
        opts.node_name.clone(),
        health.clone(),
        bgp_board.clone(),
        opts.health_interval,
    ));

    let (lease_tx, lease_rx) = watch::channel(None);
    let (valid_tx, valid_rx) = watch::channel(None);
    let (identity, identity_rx) = watch::channel(Identity {
        node: opts.node_name.clone(),
        public_ip: selected.facts.public_ip,
        vtep_mac: mac,
        public_ipv6: selected.facts.v6.as_ref().map(|v| v.public_ip),
        vtep_mac_v6: mac_v6,
        backend_data: selected.backend_data(),
    });
    let keeper = Keeper {
        client: client.clone(),
        id: identity_rx,
        state_dir: opts.state_dir.clone(),
        instance: crate::lease::instance(&opts.state_dir),
        health: health.clone(),
        // Until the cluster's configuration is read, after the first lease.
        lease_ttl: Duration::from_secs(60),
        tx: lease_tx,
        valid_until: valid_tx,
    };
    tokio::spawn(keeper.run());
    let (view_tx, view_rx) = watch::channel(View::default());
    tokio::spawn(follow(client.clone(), view_tx, Duration::from_secs(20)));

    let agent = Agent {
        kernel_events: crate::reconcile::monitor()?,
        tick: tokio::time::interval(opts.resync),
        opts,
        kernel,
        mac_v6,
        facts: selected.facts,
        mac,
        lease_rx,
        valid_rx,
        view_rx,
        own: None,
        config: None,
        backend: None,
        last_env: None,
        refused: BTreeSet::new(),
        config_error: None,
        health,
        metrics,
        bgp_board,
        masq: Masquerade::default(),
        masq_cleared: false,
        forwarding_checked: false,
        forwarding6_checked: false,
        firewall_due: true,
        sources: SourceTables::default(),
        source_problems: Vec::new(),
        conflicts: Vec::new(),
        table_errors: Vec::new(),
        failing: Default::default(),
        nft_missing: None,
        reason: selected.reason,
        identity,
        select_error: None,
    };
    agent.run().await;
    Ok(())
}
