//! The agent's Prometheus metrics: what it programmed, how reconciles go, whether it is ready,
//! and, with the bgp backend, one series per peer.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use twill_telemetry::{prometheus_client, Endpoints, Readiness};

use crate::health::{readiness, Health};

/// Handles the agent updates as it works (each shares its value with the registry).
#[derive(Clone, Default)]
pub struct Metrics {
    pub routes: Gauge,
    pub refused: Gauge,
    pub reconciles: Counter,
    pub changes: Counter,
    pub errors: Counter,
    pub masquerade_repairs: Counter,
    /// One series, value 1, labelled with the public interface chosen and why.
    pub public_interface: Family<PeerLabels, Gauge>,
}

impl Metrics {
    /// Replaces the public interface series with one for `labels`.
    pub fn set_public_interface(&self, labels: PeerLabels) {
        self.public_interface.clear();
        self.public_interface.get_or_create(&labels).set(1);
    }
}

type PeerLabels = Vec<(&'static str, String)>;

/// The BGP speaker's board, read at scrape time, while the bgp backend runs.
pub type BgpBoard = Arc<Mutex<Option<twill_bgp::speaker::Status>>>;

/// The agent's `/healthz`, `/readyz` (from `health` at every request) and `/metrics`.
pub fn endpoints(m: &Metrics, health: Arc<Mutex<Health>>, bgp: BgpBoard) -> Endpoints {
    let mut r = Registry::default();
    let ready = Gauge::<i64>::default();
    r.register(
        "twill_agent_ready",
        "1 while the agent is ready: lease held and valid, last reconcile succeeded, subnet.env written, the backend healthy",
        ready.clone(),
    );
    r.register(
        "twill_agent_routes",
        "Routes to peers' subnets programmed",
        m.routes.clone(),
    );
    r.register(
        "twill_agent_refused_peers",
        "Peers not programmed (host-gw peer off the L2 segment, vxlan peer without a VTEP MAC)",
        m.refused.clone(),
    );
    r.register(
        "twill_agent_reconciles",
        "Reconcile passes",
        m.reconciles.clone(),
    );
    r.register(
        "twill_agent_changes",
        "Kernel changes applied",
        m.changes.clone(),
    );
    r.register(
        "twill_agent_reconcile_errors",
        "Reconcile passes that failed",
        m.errors.clone(),
    );
    r.register(
        "twill_agent_masquerade_repairs",
        "Times the masquerade table was found changed or removed by someone else and written again",
        m.masquerade_repairs.clone(),
    );
    r.register(
        "twill_agent_public_interface",
        "1 for the interface carrying node-to-node traffic: its name, the local address used, the public IP published and the reason it was chosen",
        m.public_interface.clone(),
    );
    let established: Family<PeerLabels, Gauge> = Family::default();
    let received: Family<PeerLabels, Gauge> = Family::default();
    let accepted: Family<PeerLabels, Gauge> = Family::default();
    let advertised: Family<PeerLabels, Gauge> = Family::default();
    let refused: Family<PeerLabels, Gauge> = Family::default();
    r.register(
        "twill_bgp_session_established",
        "1 while the session to the peer is established",
        established.clone(),
    );
    r.register(
        "twill_bgp_prefixes_received",
        "Prefixes the peer announces, taken or refused",
        received.clone(),
    );
    r.register(
        "twill_bgp_prefixes_accepted",
        "Of those, prefixes whose best path is from this peer",
        accepted.clone(),
    );
    r.register(
        "twill_bgp_prefixes_advertised",
        "Prefixes announced to the peer",
        advertised.clone(),
    );
    r.register(
        "twill_bgp_prefixes_refused",
        "Prefixes the peer announces that the import rules refuse, by reason",
        refused.clone(),
    );
    let h = health.clone();
    Endpoints::new(r)
        .with_refresh(move || {
            let now = std::time::Instant::now();
            let snapshot = h.lock().unwrap_or_else(|p| p.into_inner()).clone();
            ready.set(i64::from(readiness(&snapshot, now) == Readiness::Ready));
            // Peers that went away must not linger as series.
            for f in [&established, &received, &accepted, &advertised, &refused] {
                f.clear();
            }
            let board = bgp.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(st) = board {
                let peers = st.lock().unwrap_or_else(|p| p.into_inner());
                for p in peers.peers.values() {
                    let l: PeerLabels =
                        vec![("peer", p.addr.to_string()), ("asn", p.asn.to_string())];
                    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
                    established.get_or_create(&l).set(i64::from(p.established));
                    received.get_or_create(&l).set(n(p.received));
                    accepted.get_or_create(&l).set(n(p.accepted));
                    advertised.get_or_create(&l).set(n(p.advertised));
                    for why in twill_bgp::policy::Refusal::ALL {
                        let mut l = l.clone();
                        l.push(("reason", why.name().to_string()));
                        let count = p.refused.get(&why).copied().unwrap_or(0);
                        refused.get_or_create(&l).set(n(count));
                    }
                }
            }
        })
        .with_readiness(move || {
            let snapshot = health.lock().unwrap_or_else(|p| p.into_inner()).clone();
            readiness(&snapshot, std::time::Instant::now())
        })
}
