//! The bgp backend: the embedded speaker originates the node's subnet and the routes it learns
//! become plain routes via their next hops. After an agent restart, the routes an earlier run
//! left in the kernel are kept until every peer has resent its table (graceful restart), so pod
//! traffic keeps flowing while sessions come back.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use twill_proto::settings::BgpSettings;

use super::{Config, Dataplane, Start, View};
use crate::bgp::{plan, restart_routes, status_path, Learned, Runner};
use crate::desired;

pub struct Bgp {
    runner: Runner,
    /// Routes found in the kernel at start, kept until the speaker has every peer's table.
    preserved: Learned,
    local: crate::bgp::Local,
}

impl Bgp {
    pub async fn start(
        settings: &BgpSettings,
        network: Ipv4Net,
        network6: Option<ipnet::Ipv6Net>,
        view: &View<'_>,
        s: Start<'_>,
    ) -> Bgp {
        let p = plan(settings, network, view.own, view.peers)
            .with_network6(network6)
            .with_local(s.bgp);
        for addr in s.bgp.unknown_peers(&p) {
            tracing::warn!(peer = %addr, "a --bgp-* flag names an address that is not one of this node's outside BGP peers (--bgp-peer); it has no effect");
        }
        let preserved: Learned = match s.kernel.observe().await {
            Ok(o) => o
                .routes
                .iter()
                .filter(|r| {
                    r.table == crate::desired::MAIN_TABLE && r.dev == s.facts.iface && !r.onlink
                })
                .map(|r| {
                    let hops = std::iter::once(r.via).chain(r.also.iter().copied());
                    (r.dst, hops.collect())
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kernel's routes; none kept over the restart");
                BTreeMap::new()
            }
        };
        if !preserved.is_empty() {
            tracing::info!(
                routes = preserved.len(),
                "restarting: routes in the kernel kept until every BGP peer has resent its table"
            );
        }
        let listen = SocketAddr::new(s.facts.local_ip.into(), 179);
        let runner = Runner::start(
            p,
            listen,
            Some(status_path(s.state_dir)),
            !preserved.is_empty(),
        );
        Bgp {
            runner,
            preserved,
            local: s.bgp.clone(),
        }
    }
}

impl Dataplane for Bgp {
    fn name(&self) -> &'static str {
        "bgp"
    }

    fn takes(&self, cfg: &Config) -> bool {
        // Settings that change the speaker's identity need a new speaker; the rest are
        // applied in place by `update`.
        matches!(cfg, Config::Bgp { .. })
    }

    fn update(&mut self, cfg: &Config, view: &View<'_>) -> BoxFuture<'_, ()> {
        let Config::Bgp {
            settings,
            network,
            network6,
        } = cfg
        else {
            return Box::pin(async {});
        };
        let p = plan(settings, *network, view.own, view.peers)
            .with_network6(*network6)
            .with_local(&self.local);
        Box::pin(async move {
            if self.runner.compatible(&p) {
                self.runner.update(p).await;
            } else {
                tracing::info!(
                    "BGP identity changed (AS, router id or cluster id); restarting the speaker"
                );
                let (listen, status_file) = (self.runner.listen(), self.runner.status_file());
                let old = std::mem::replace(
                    &mut self.runner,
                    Runner::start(p, listen, status_file, false),
                );
                old.stop().await;
            }
        })
    }

    fn recipe(&mut self) -> desired::Backend {
        let learned = self.runner.learned.borrow().clone();
        let converged = self.preserved.is_empty() || self.runner.converged();
        let routes = restart_routes(&learned, &self.preserved, converged);
        if converged && !self.preserved.is_empty() {
            tracing::info!(
                routes = learned.len(),
                "every BGP peer resent its table; the speaker's routes replace those from before the restart"
            );
            self.preserved.clear();
        }
        desired::Backend::Bgp { routes }
    }

    fn pod_mtu(&self, underlay: u32) -> u32 {
        underlay
    }

    fn health(&self) -> Option<Result<(), String>> {
        Some(self.runner.listening())
    }

    fn bgp_status(&self) -> Option<twill_bgp::speaker::Status> {
        Some(self.runner.status.clone())
    }

    fn changed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            if self.runner.learned.changed().await.is_err() {
                // The speaker is gone; the loop will notice through health and reconcile.
                std::future::pending::<()>().await;
            }
            // A burst of UPDATEs (a peer's full table) settles before one reconcile.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        })
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(self.runner.stop())
    }
}
