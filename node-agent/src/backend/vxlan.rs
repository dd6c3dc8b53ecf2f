//! flannel's VXLAN layout: one device, and per peer a neighbour, an FDB entry and an onlink
//! route (see [`crate::desired`]).

use futures::future::BoxFuture;

use super::{Config, Dataplane, View};
use crate::desired::{self, VXLAN_OVERHEAD};

/// Pods' MTU over VXLAN: what the underlay carries less the encapsulation.
pub fn pod_mtu(underlay: u32) -> u32 {
    underlay.saturating_sub(VXLAN_OVERHEAD)
}

pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
}

impl Dataplane for Vxlan {
    fn name(&self) -> &'static str {
        "vxlan"
    }

    fn takes(&self, cfg: &Config) -> bool {
        matches!(cfg, Config::Vxlan { .. })
    }

    fn update(&mut self, cfg: &Config, _: &View<'_>) -> BoxFuture<'_, ()> {
        if let Config::Vxlan {
            vni,
            port,
            direct_routing,
        } = cfg
        {
            // A new VNI or port: the reconciler replaces the device, as it would any drift.
            (self.vni, self.port, self.direct_routing) = (*vni, *port, *direct_routing);
        }
        Box::pin(async {})
    }

    fn recipe(&mut self) -> desired::Backend {
        desired::Backend::Vxlan {
            vni: self.vni,
            port: self.port,
            direct_routing: self.direct_routing,
        }
    }

    fn pod_mtu(&self, underlay: u32) -> u32 {
        pod_mtu(underlay)
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
