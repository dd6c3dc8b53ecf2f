//! host-gw: a route to each peer's subnet via its public address, for peers on our segment.

use futures::future::BoxFuture;

use super::{Config, Dataplane, View};
use crate::desired;

pub struct HostGw;

impl Dataplane for HostGw {
    fn name(&self) -> &'static str {
        "host-gw"
    }

    fn takes(&self, cfg: &Config) -> bool {
        matches!(cfg, Config::HostGw)
    }

    fn update(&mut self, _: &Config, _: &View<'_>) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn recipe(&mut self) -> desired::Backend {
        desired::Backend::HostGw
    }

    fn pod_mtu(&self, underlay: u32) -> u32 {
        underlay
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
