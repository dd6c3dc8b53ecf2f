//! The dataplanes, behind one seam as flannel's backends and netavark's drivers are: each says
//! what it needs at start, what it adds to the desired state, when it has news, whether it is
//! healthy, and what it stops when replaced. The agent's loop knows only this trait; the kernel
//! objects come from the pure [`desired::compute`], fed with each backend's recipe, so what a
//! backend no longer wants is removed by the next reconcile like any other difference.

pub mod bgp;
pub mod host_gw;
pub mod vxlan;

use std::path::Path;

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use twill_proto::settings::BgpSettings;
use twill_proto::v1 as pb;

use crate::desired::{self, LocalFacts, NodeLease};
use crate::reconcile::Kernel;

/// The backend as the cluster's configuration names it, parsed and checked once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Config {
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    HostGw,
    Bgp {
        settings: Box<BgpSettings>,
        /// The pod network: what the speaker takes from peers besides allowed prefixes.
        network: Ipv4Net,
        /// The IPv6 pod network, when the cluster is dual stack.
        network6: Option<ipnet::Ipv6Net>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the cluster's configuration names no backend")]
    None,
    #[error("the cluster's network {0:?} is not an IPv4 CIDR")]
    Network(String),
    #[error("VXLAN port {0} is not a UDP port")]
    Port(u32),
    #[error("the cluster's BGP settings: {0}")]
    Bgp(String),
}

impl Config {
    pub fn from_proto(c: &pb::NetworkConfig) -> Result<Config, ConfigError> {
        match c.backend.as_ref().and_then(|b| b.kind.as_ref()) {
            Some(pb::backend::Kind::Vxlan(v)) => Ok(Config::Vxlan {
                vni: v.vni,
                port: match v.port {
                    0 => twill_proto::defaults::VXLAN_PORT,
                    p => u16::try_from(p).map_err(|_| ConfigError::Port(p))?,
                },
                direct_routing: v.direct_routing,
            }),
            Some(pb::backend::Kind::HostGw(_)) => Ok(Config::HostGw),
            Some(pb::backend::Kind::Bgp(b)) => Ok(Config::Bgp {
                settings: Box::new(
                    twill_proto::settings::bgp_from_proto(b)
                        .map_err(|e| ConfigError::Bgp(e.to_string()))?,
                ),
                network: c
                    .network
                    .parse()
                    .map_err(|_| ConfigError::Network(c.network.clone()))?,
                network6: c.ipv6_network.parse().ok(),
            }),
            None => Err(ConfigError::None),
        }
    }

    /// The MTU pods get with this backend, the same the running backend gives subnet.env.
    pub fn pod_mtu(&self, underlay: u32) -> u32 {
        match self {
            Config::Vxlan { .. } => vxlan::pod_mtu(underlay),
            Config::HostGw | Config::Bgp { .. } => underlay,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Config::Vxlan { .. } => "vxlan",
            Config::HostGw => "host-gw",
            Config::Bgp { .. } => "bgp",
        }
    }
}

/// What a backend sees of the cluster at each update.
pub struct View<'a> {
    pub own: &'a NodeLease,
    pub peers: &'a [NodeLease],
    pub facts: &'a LocalFacts,
}

/// What a backend may need at start.
pub struct Start<'a> {
    pub kernel: &'a Kernel,
    pub facts: &'a LocalFacts,
    pub state_dir: &'a Path,
    pub bgp: &'a crate::bgp::Local,
}

pub trait Dataplane: Send {
    fn name(&self) -> &'static str;
    /// Whether this running backend can take `cfg` in place; if not, it is stopped and a new
    /// one started.
    fn takes(&self, cfg: &Config) -> bool;
    /// The configuration, the node's lease or its peers' changed.
    fn update(&mut self, cfg: &Config, view: &View<'_>) -> BoxFuture<'_, ()>;
    /// What it adds to the desired state.
    fn recipe(&mut self) -> desired::Backend;
    /// The MTU pods get on this backend, from the underlay's.
    fn pod_mtu(&self, underlay: u32) -> u32;
    /// Something it needs that is missing (for readiness); `None` when it needs nothing.
    fn health(&self) -> Option<Result<(), String>> {
        None
    }
    /// Resolves when the backend has news for the desired state; never, for static ones.
    fn changed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// The BGP speaker's peer board, for metrics, when the backend runs one.
    fn bgp_status(&self) -> Option<twill_bgp::speaker::Status> {
        None
    }
    /// Stops what it runs (sessions, tasks).
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Starts the backend `cfg` names.
pub async fn start(cfg: &Config, view: &View<'_>, s: Start<'_>) -> Box<dyn Dataplane> {
    match cfg {
        Config::Vxlan {
            vni,
            port,
            direct_routing,
        } => Box::new(vxlan::Vxlan {
            vni: *vni,
            port: *port,
            direct_routing: *direct_routing,
        }),
        Config::HostGw => Box::new(host_gw::HostGw),
        Config::Bgp {
            settings,
            network,
            network6,
        } => Box::new(bgp::Bgp::start(settings, *network, *network6, view, s).await),
    }
}
