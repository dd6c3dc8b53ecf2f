//! The `bgp` backend: the agent's embedded speaker originates the node's subnet and hands what
//! it learns to the reconciler. Which sessions a node has is a pure function of the cluster's
//! BGP settings and the lease table ([`plan`]); the running speaker is told the new plan and
//! keeps the sessions it does not change. The settings arrive parsed and checked by
//! [`twill_proto::settings::bgp_from_proto`], the controller's own reading of them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, watch};
use twill_bgp::policy::Import;
use twill_bgp::rib::{Change, Peer};
use twill_bgp::speaker::{self, Control, Export, PeerConfig, SpeakerConfig, Status};
use twill_proto::settings::BgpSettings;

use crate::desired::NodeLease;

/// How long peers keep this node's routes while its agent restarts, and how long a restarted
/// agent keeps the routes it found in the kernel while its sessions come back.
pub const RESTART_TIME: Duration = Duration::from_secs(120);

/// After a restart, a peer whose session is not back within this long no longer holds up the
/// routes from before: it may be gone for good.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(10);

/// A peer without graceful restart sends no End-of-RIB: its table counts as in this long after
/// its session came up, so the kernel does not switch to a table still arriving.
const NO_END_OF_RIB_SETTLE: Duration = Duration::from_secs(2);

/// What one node's speaker should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub cluster_id: Option<Ipv4Addr>,
    pub peers: Vec<PeerConfig>,
    /// What is taken from peers: inside the pod network only each lease's subnet from its
    /// holder, outside it the explicitly allowed prefixes.
    pub import: Import,
    pub originate: Vec<IpNet>,
    /// Announced to outside peers only: service and load-balancer ranges.
    pub advertise: Vec<IpNet>,
    /// This node's IPv6 address: the next hop of its IPv6 subnet (dual stack).
    pub local_v6: Option<std::net::Ipv6Addr>,
}

/// This node's own BGP choices, from the agent's flags rather than the cluster's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    /// The prefix limit of each outside peer; `None`: none.
    pub max_prefixes: Option<u32>,
    /// Per-peer limits that replace it (0: none for that peer).
    pub max_prefixes_for: Vec<(IpAddr, u32)>,
    /// Ranges announced to outside peers (service cluster IPs, load-balancer IPs).
    pub advertise: Vec<Ipv4Net>,
    /// Peers one hop away whose sessions use GTSM (RFC 5082).
    pub gtsm: Vec<IpAddr>,
    /// (outside peer, range): routes learned from other peers inside the range may be sent
    /// to that peer too (transit the operator asked for).
    pub export: Vec<(IpAddr, Ipv4Net)>,
}

/// The sessions of node `me` among `nodes` (every lease, `me` included or not):
/// - with route reflectors named, a reflector peers with every node (the others are its
///   clients, fellow reflectors are not) and every other node peers with the reflectors only;
/// - otherwise a full iBGP (or, with per-node AS numbers, eBGP) mesh, unless turned off;
/// - the outside peers meant for every node or for `me`.
///
/// Between two nodes the one with the lower address connects and the other waits, so each
/// pair has one connection and no collision to settle.
pub fn plan(b: &BgpSettings, network: Ipv4Net, me: &NodeLease, nodes: &[NodeLease]) -> Plan {
    let asn_of = |node: &str| b.node_asn.get(node).copied().unwrap_or(b.asn);
    let reflectors: BTreeSet<&str> = b.route_reflectors.iter().map(String::as_str).collect();
    let i_reflect = reflectors.contains(me.node.as_str());
    let mut peers = Vec::new();
    let mut node_addrs = BTreeSet::new();
    for n in nodes.iter().filter(|n| n.node != me.node) {
        let (include, rr_client) = if reflectors.is_empty() {
            (b.mesh, false)
        } else if i_reflect {
            (true, !reflectors.contains(n.node.as_str()))
        } else {
            (reflectors.contains(n.node.as_str()), false)
        };
        if !include || !node_addrs.insert(n.public_ip) {
            continue;
        }
        let peer = Peer {
            addr: IpAddr::V4(n.public_ip),
            router_id: n.public_ip,
            asn: asn_of(&n.node),
            rr_client,
        };
        peers.push(PeerConfig {
            passive: me.public_ip > n.public_ip,
            ..PeerConfig::new(peer, b.hold_time)
        });
    }
    for p in &b.peers {
        if p.node.as_deref().is_some_and(|n| n != me.node) {
            continue;
        }
        let addr = p.address;
        // A node's own session takes precedence over an outside entry for the same address.
        if matches!(addr, IpAddr::V4(a) if node_addrs.contains(&a)) {
            continue;
        }
        let peer = Peer {
            addr,
            // Learned from its OPEN once the session is up.
            router_id: match addr {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            },
            asn: p.asn,
            rr_client: false,
        };
        peers.push(PeerConfig {
            md5_password: p.password.clone(),
            // No transit: an outside router hears of this node's subnet only.
            export: Export::Own(Vec::new()),
            ..PeerConfig::new(peer, b.hold_time)
        });
    }
    peers.sort_by_key(|p| p.peer.addr);
    let cluster_id = i_reflect.then(|| {
        b.cluster_id
            .unwrap_or_else(|| default_cluster_id(&b.route_reflectors))
    });
    let everyone = || nodes.iter().chain(std::iter::once(me));
    let import = Import {
        guarded: vec![IpNet::V4(network)],
        // Each node owns its IPv4 subnet at its IPv4 address and its IPv6 subnet at its IPv6
        // address: those are the next hops their speakers announce them with.
        owners: everyone()
            .map(|n| (IpNet::V4(n.subnet), IpAddr::V4(n.public_ip)))
            .chain(everyone().filter_map(|n| {
                let v6 = n.v6.as_ref()?;
                Some((IpNet::V6(v6.subnet), IpAddr::V6(v6.public_ip)))
            }))
            .collect(),
        allow: Some(b.allowed_prefixes.iter().copied().map(IpNet::V4).collect()),
    };
    Plan {
        local_as: asn_of(&me.node),
        router_id: me.public_ip,
        cluster_id,
        peers,
        import,
        originate: std::iter::once(IpNet::V4(me.subnet))
            .chain(me.v6.as_ref().map(|v6| IpNet::V6(v6.subnet)))
            .collect(),
        advertise: vec![],
        local_v6: me.v6.as_ref().map(|v6| v6.public_ip),
    }
}

impl Plan {
    /// Guards the IPv6 pod network too (dual stack): inside it only owners' subnets are taken.
    pub fn with_network6(mut self, network6: Option<ipnet::Ipv6Net>) -> Plan {
        self.import.guarded.extend(network6.map(IpNet::V6));
        self
    }
}

impl Local {
    /// Addresses the per-peer choices name that are not among `plan`'s peers (outside peers,
    /// but for GTSM): a typo an operator should hear of.
    pub fn unknown_peers(&self, plan: &Plan) -> BTreeSet<IpAddr> {
        let outside: BTreeSet<IpAddr> = plan
            .peers
            .iter()
            .filter(|p| p.export != Export::All)
            .map(|p| p.peer.addr)
            .collect();
        // GTSM may be asked of any peer, node or not.
        let any: BTreeSet<IpAddr> = plan.peers.iter().map(|p| p.peer.addr).collect();
        let limits_and_exports = self
            .max_prefixes_for
            .iter()
            .map(|(a, _)| *a)
            .chain(self.export.iter().map(|(a, _)| *a))
            .filter(|a| !outside.contains(a));
        let gtsm = self.gtsm.iter().copied().filter(|a| !any.contains(a));
        limits_and_exports.chain(gtsm).collect()
    }
}

impl Plan {
    /// Adds the node's own choices: the prefix limit goes on the outside peers (the nodes'
    /// own sessions stay unlimited, a node announcing one subnet and a reflector one per
    /// node), the ranges to announce to them.
    pub fn with_local(mut self, local: &Local) -> Plan {
        for p in &mut self.peers {
            if let Export::Own(transit) = &mut p.export {
                p.max_prefixes = match local
                    .max_prefixes_for
                    .iter()
                    .find(|(a, _)| *a == p.peer.addr)
                {
                    Some((_, 0)) => None,
                    Some((_, n)) => Some(*n),
                    None => local.max_prefixes,
                };
                *transit = local
                    .export
                    .iter()
                    .filter(|(peer, _)| *peer == p.peer.addr)
                    .map(|(_, range)| IpNet::V4(*range))
                    .collect();
            }
            p.gtsm = local.gtsm.contains(&p.peer.addr);
        }
        self.advertise = local.advertise.iter().copied().map(IpNet::V4).collect();
        self
    }
}

/// The routes to install while a restarted agent's speaker catches up (RFC 4724 §4.1): the
/// kernel keeps what the earlier run left, unchanged, until every peer has resent its table,
/// and then takes the speaker's choice in one step; a partial table never reaches it.
pub fn restart_routes(learned: &Learned, preserved: &Learned, converged: bool) -> Learned {
    if converged || preserved.is_empty() {
        learned.clone()
    } else {
        preserved.clone()
    }
}

/// Every reflector must use the same CLUSTER_ID, and it must not change while leases come and
/// go (a change restarts the speaker): one derived from the reflectors' names (FNV-1a).
fn default_cluster_id(reflectors: &[String]) -> Ipv4Addr {
    let mut names: Vec<&str> = reflectors.iter().map(String::as_str).collect();
    names.sort_unstable();
    let mut h: u32 = 0x811c_9dc5;
    for b in names.join(",").bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    Ipv4Addr::from(h)
}

/// Routes the speaker has chosen, prefix → next hops of the prefix's family (sorted; more
/// than one is ECMP).
pub type Learned = BTreeMap<IpNet, Vec<IpAddr>>;

/// A running speaker and what it has learned.
pub struct Runner {
    plan: Plan,
    control: mpsc::Sender<Control>,
    pub learned: watch::Receiver<Learned>,
    pub status: Status,
    started: std::time::Instant,
    listen: SocketAddr,
    status_file: Option<PathBuf>,
}

impl Runner {
    /// Starts a speaker for `plan`, accepting sessions on `listen`, and keeps `status_file`
    /// current for `twill bgp status`. `restarted`: routes of an earlier run are still in the
    /// kernel, so peers are told forwarding went on (graceful restart's R and F bits).
    pub fn start(
        plan: Plan,
        listen: SocketAddr,
        status_file: Option<PathBuf>,
        restarted: bool,
    ) -> Runner {
        let cfg = SpeakerConfig {
            local_as: plan.local_as,
            router_id: plan.router_id,
            cluster_id: plan.cluster_id,
            local_address: IpAddr::V4(plan.router_id),
            local_address_v6: plan.local_v6,
            peers: plan.peers.clone(),
            originate: plan.originate.clone(),
            advertise: plan.advertise.clone(),
            listen: Some(listen),
            import: plan.import.clone(),
            graceful_restart: Some(speaker::RestartConfig {
                time: RESTART_TIME.as_secs() as u16,
                restarted,
            }),
        };
        let (changes_tx, mut changes) = mpsc::channel::<Change>(4096);
        let (control, control_rx) = mpsc::channel(16);
        let status: Status = Default::default();
        tokio::spawn(speaker::run(cfg, changes_tx, control_rx, status.clone()));
        let (learned_tx, learned) = watch::channel(Learned::new());
        let own: BTreeSet<IpNet> = plan
            .originate
            .iter()
            .chain(&plan.advertise)
            .copied()
            .collect();
        tokio::spawn(async move {
            while let Some(c) = changes.recv().await {
                // A next hop of the other family cannot be installed (RFC 5549 is not
                // supported): such a route is dropped.
                let same_family = |p: &IpNet, h: &IpAddr| p.addr().is_ipv4() == h.is_ipv4();
                learned_tx.send_modify(|l| match c {
                    Change::Best(p, path) if !own.contains(&p) => {
                        if same_family(&p, &path.next_hop) {
                            l.insert(p, vec![path.next_hop]);
                        } else {
                            l.remove(&p);
                        }
                    }
                    // Equal paths after the best: the route goes over all of them.
                    Change::NextHops(p, hops) if l.contains_key(&p) => {
                        let mut usable: Vec<IpAddr> =
                            hops.into_iter().filter(|h| same_family(&p, h)).collect();
                        usable.sort();
                        if !usable.is_empty() {
                            l.insert(p, usable);
                        }
                    }
                    Change::Gone(p) => {
                        l.remove(&p);
                    }
                    _ => {}
                });
            }
        });
        if let Some(path) = status_file.clone() {
            let st = status.clone();
            let stop = control.clone();
            tokio::spawn(async move {
                while !stop.is_closed() {
                    let rows = status_rows(&st);
                    if let Err(e) = write_status(&path, &rows) {
                        tracing::debug!(error = %e, file = %path.display(), "cannot write the BGP status");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        tracing::info!(asn = plan.local_as, router_id = %plan.router_id, peers = plan.peers.len(), "BGP speaker started");
        Runner {
            plan,
            control,
            learned,
            status,
            started: std::time::Instant::now(),
            listen,
            status_file,
        }
    }

    /// Where it accepts sessions.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Where it keeps the status for `twill bgp status`.
    pub fn status_file(&self) -> Option<PathBuf> {
        self.status_file.clone()
    }

    /// Every peer has sent its whole table since this speaker started (End-of-RIB, or, for a
    /// peer without graceful restart, which need not send one, its session is up; a peer not
    /// back within [`RECONNECT_WINDOW`] counts as gone), or the restart time is over: routes
    /// from before a restart can go.
    pub fn converged(&self) -> bool {
        if self.started.elapsed() > RESTART_TIME {
            return true;
        }
        // Peers the speaker has not put on the board yet count as not done.
        let board = self.status.lock().unwrap_or_else(|p| p.into_inner());
        self.plan.peers.iter().all(|p| {
            board.peers.get(&p.peer.addr).is_some_and(|s| {
                s.end_of_rib
                    || (s.established
                        && !s.graceful_restart
                        && s.since.elapsed().is_ok_and(|d| d > NO_END_OF_RIB_SETTLE))
                    || (!s.established && self.started.elapsed() > RECONNECT_WINDOW)
            })
        })
    }

    /// Whether the speaker runs and accepts sessions: a node whose peers cannot reach it is
    /// not ready.
    pub fn listening(&self) -> Result<(), String> {
        if self.control.is_closed() {
            return Err("the BGP speaker has stopped".into());
        }
        let board = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match &board.listen_error {
            Some(e) => Err(format!("BGP {e}")),
            None => Ok(()),
        }
    }

    /// Whether a new plan can be applied to this speaker (same AS, router id, cluster id and
    /// IPv6 next hop); if not, it must be replaced.
    pub fn compatible(&self, p: &Plan) -> bool {
        self.plan.local_as == p.local_as
            && self.plan.router_id == p.router_id
            && self.plan.cluster_id == p.cluster_id
            && self.plan.local_v6 == p.local_v6
    }

    /// Tells the speaker what changed; sessions whose peers did not change are left alone.
    pub async fn update(&mut self, p: Plan) {
        // Before the peers: a new node's subnet is taken from its first UPDATE.
        if p.import != self.plan.import {
            let _ = self
                .control
                .send(Control::SetImport(p.import.clone()))
                .await;
        }
        if p.peers != self.plan.peers {
            tracing::info!(peers = p.peers.len(), "BGP peers changed");
            let _ = self.control.send(Control::SetPeers(p.peers.clone())).await;
        }
        if p.advertise != self.plan.advertise {
            let _ = self
                .control
                .send(Control::SetAdvertise(p.advertise.clone()))
                .await;
        }
        if p.originate != self.plan.originate {
            let _ = self
                .control
                .send(Control::SetOriginate(p.originate.clone()))
                .await;
        }
        self.plan = p;
    }

    pub async fn stop(self) {
        let _ = self.control.send(Control::Stop).await;
    }
}

/// One row of `twill bgp status`, as written to the status file.
pub fn status_rows(st: &Status) -> Vec<serde_json::Value> {
    let board = st.lock().unwrap_or_else(|p| p.into_inner());
    board
        .peers
        .values()
        .map(|p| {
            serde_json::json!({
                "peer": p.addr.to_string(),
                "asn": p.asn,
                "state": if p.established { "established" } else { "down" },
                "since": p.since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "received": p.received,
                "accepted": p.accepted,
                "advertised": p.advertised,
                "last_error": p.last_error,
                "refused": p.refused.iter().map(|(why, n)| (why.name().to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect()
}

/// The status file, replaced atomically so a reader never sees half of it.
fn write_status(path: &Path, rows: &[serde_json::Value]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rows)?)?;
    std::fs::rename(tmp, path)
}

/// Where the agent keeps the BGP status, under its state directory.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("bgp-status.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_proto::settings::BgpPeer;

    fn node(name: &str, last: u8) -> NodeLease {
        NodeLease {
            node: name.into(),
            subnet: format!("10.244.{last}.0/24").parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, last),
            vtep_mac: None,
            v6: None,
        }
    }

    fn nodes() -> Vec<NodeLease> {
        vec![node("n1", 1), node("n2", 2), node("n3", 3)]
    }

    fn settings() -> BgpSettings {
        BgpSettings {
            asn: 64512,
            ..Default::default()
        }
    }

    fn addrs(p: &Plan) -> Vec<String> {
        p.peers.iter().map(|p| p.peer.addr.to_string()).collect()
    }

    #[test]
    fn a_dual_stack_node_originates_and_owns_its_ipv6_subnet_at_its_ipv6_address() {
        let mut all = nodes();
        for (i, n) in all.iter_mut().enumerate() {
            n.v6 = Some(crate::desired::LeaseV6 {
                subnet: format!("fd00:10:244:{}::/64", i + 1).parse().unwrap(),
                public_ip: format!("2001:db8::{}", i + 1).parse().unwrap(),
                vtep_mac: None,
            });
        }
        let p = plan(&settings(), "10.244.0.0/16".parse().unwrap(), &all[0], &all)
            .with_network6(Some("fd00:10:244::/56".parse().unwrap()));
        assert_eq!(
            p.originate,
            vec![
                "10.244.1.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap()
            ]
        );
        assert_eq!(p.local_v6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            p.import.owners.get(&"fd00:10:244:2::/64".parse().unwrap()),
            Some(&"2001:db8::2".parse().unwrap())
        );
        assert!(p
            .import
            .guarded
            .contains(&"fd00:10:244::/56".parse().unwrap()));
        // Sessions stay between the IPv4 addresses.
        assert!(p.peers.iter().all(|c| c.peer.addr.is_ipv4()));
    }

    #[test]
    fn after_a_restart_the_kernel_keeps_the_old_routes_until_every_peer_is_done() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let preserved: Learned = [(net("10.244.2.0/24"), vec![ip("192.0.2.2")])].into();
        // One peer is back with a new next hop, another subnet is new: neither yet.
        let learned: Learned = [
            (net("10.244.2.0/24"), vec![ip("192.0.2.9")]),
            (net("10.244.3.0/24"), vec![ip("192.0.2.3"), ip("192.0.2.4")]),
        ]
        .into();
        assert_eq!(restart_routes(&learned, &preserved, false), preserved);
        assert_eq!(restart_routes(&learned, &preserved, true), learned);
        // Nothing kept from before (a first start): what is learned goes in at once.
        assert_eq!(restart_routes(&learned, &Learned::new(), false), learned);
    }

    #[test]
    fn the_nodes_own_choices_go_on_its_outside_peers_only() {
        let all = nodes();
        let mut s = settings();
        for last in [253, 254] {
            s.peers.push(BgpPeer {
                address: format!("192.0.2.{last}").parse().unwrap(),
                asn: 64500,
                password: None,
                node: None,
            });
        }
        let tor = |last: u8| IpAddr::from([192, 0, 2, last]);
        let local = Local {
            max_prefixes: Some(10_000),
            max_prefixes_for: vec![(tor(254), 500), (tor(253), 0)],
            advertise: vec!["10.96.0.0/12".parse().unwrap()],
            gtsm: vec![tor(254)],
            export: vec![(tor(254), "10.244.0.0/16".parse().unwrap())],
        };
        let p = plan(&s, "10.244.0.0/16".parse().unwrap(), &all[1], &all).with_local(&local);
        let peer = |a: IpAddr| p.peers.iter().find(|x| x.peer.addr == a).unwrap();
        assert_eq!(peer(tor(254)).max_prefixes, Some(500));
        assert_eq!(peer(tor(253)).max_prefixes, None, "0: no limit");
        assert_eq!(
            peer(tor(1)).max_prefixes,
            None,
            "node sessions are not limited"
        );
        assert_eq!(
            peer(tor(254)).export,
            Export::Own(vec!["10.244.0.0/16".parse().unwrap()])
        );
        assert_eq!(peer(tor(253)).export, Export::Own(vec![]));
        assert!(peer(tor(254)).gtsm && !peer(tor(253)).gtsm);
        let mut typo = local.clone();
        typo.gtsm.push(tor(99));
        assert_eq!(
            typo.unknown_peers(&p),
            [tor(99)].into(),
            "only the typo is named"
        );
        assert_eq!(p.advertise, ["10.96.0.0/12".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn full_mesh_lower_address_connects() {
        let all = nodes();
        let p = plan(&settings(), "10.244.0.0/16".parse().unwrap(), &all[1], &all);
        assert_eq!(addrs(&p), ["192.0.2.1", "192.0.2.3"]);
        // .2 waits for .1 and calls .3.
        assert!(p.peers[0].passive && !p.peers[1].passive);
        assert!(p
            .peers
            .iter()
            .all(|x| x.peer.asn == 64512 && !x.peer.rr_client));
        assert!(p
            .peers
            .iter()
            .all(|x| x.hold_time == twill_proto::defaults::BGP_HOLD_TIME));
        assert_eq!(p.originate, ["10.244.2.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(p.cluster_id, None);
    }

    #[test]
    fn reflectors_serve_clients_and_clients_see_only_reflectors() {
        let all = nodes();
        let mut s = settings();
        s.route_reflectors = vec!["n1".into()];
        let net = "10.244.0.0/16".parse().unwrap();
        let rr = plan(&s, net, &all[0], &all);
        assert_eq!(addrs(&rr), ["192.0.2.2", "192.0.2.3"]);
        assert!(rr.peers.iter().all(|p| p.peer.rr_client));
        // The same id on every reflector, whatever leases the reflector has seen so far.
        assert_eq!(rr.cluster_id, Some(default_cluster_id(&["n1".into()])));
        assert_eq!(plan(&s, net, &all[0], &all[..1]).cluster_id, rr.cluster_id);
        let client = plan(&s, net, &all[2], &all);
        assert_eq!(addrs(&client), ["192.0.2.1"]);
        assert!(!client.peers[0].peer.rr_client);
        assert_eq!(client.cluster_id, None);
    }

    #[test]
    fn outside_peers_per_node_and_per_node_as() {
        let all = nodes();
        let mut s = settings();
        s.mesh = false;
        s.node_asn.insert("n2".into(), 64602);
        s.peers = vec![
            BgpPeer {
                address: "192.0.2.254".parse().unwrap(),
                asn: 64500,
                password: Some("k".into()),
                node: None,
            },
            BgpPeer {
                address: "192.0.2.253".parse().unwrap(),
                asn: 64500,
                password: None,
                node: Some("n3".into()),
            },
        ];
        s.allowed_prefixes = vec!["0.0.0.0/0".parse().unwrap()];
        let p = plan(&s, "10.244.0.0/16".parse().unwrap(), &all[1], &all);
        assert_eq!(p.local_as, 64602);
        assert_eq!(
            addrs(&p),
            ["192.0.2.254"],
            "no mesh, and n3's own ToR is not ours"
        );
        assert_eq!(p.peers[0].md5_password.as_deref(), Some("k"));
        assert_eq!(
            p.peers[0].export,
            Export::Own(vec![]),
            "no transit through a node"
        );
        // Every lease is owned by its holder's address; the pod network is guarded.
        assert_eq!(
            p.import.guarded,
            ["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(p.import.owners.len(), 3);
        assert_eq!(
            p.import.owners.get(&"10.244.3.0/24".parse().unwrap()),
            Some(&"192.0.2.3".parse().unwrap())
        );
        assert_eq!(p.import.allow, Some(vec!["0.0.0.0/0".parse().unwrap()]));
    }
}
