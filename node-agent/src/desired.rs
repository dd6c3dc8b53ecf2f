//! The kernel state a node should have, computed from what it knows: its own lease, its peers'
//! leases, the backend, and facts about the host. Pure: the reconciler diffs this against what
//! netlink reports and applies the difference.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::vtep::Mac;

/// VXLAN headers (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14) take this much of the
/// underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    HostGw,
    /// Routes the BGP speaker chose, prefix → next hop; our own subnet is never among them.
    Bgp {
        /// Each prefix's next hops, sorted: more than one is an ECMP route.
        routes: std::collections::BTreeMap<Ipv4Net, Vec<Ipv4Addr>>,
    },
}

/// What the agent found out about its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFacts {
    /// The interface carrying node-to-node traffic, and its MTU.
    pub iface: String,
    pub mtu: u32,
    /// The address other nodes reach this one at (published in the lease); with NAT it need
    /// not be local.
    pub public_ip: Ipv4Addr,
    /// This node's address on `iface`: the VXLAN device's local address.
    pub local_ip: Ipv4Addr,
    /// Prefixes directly connected on `iface`: a peer inside one is on the same L2 segment.
    pub connected: Vec<Ipv4Net>,
}

/// A lease as the agent uses it (its own or a peer's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLease {
    pub node: String,
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// The VTEP MAC the node published with its lease (vxlan only).
    pub vtep_mac: Option<Mac>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub own: NodeLease,
    pub peers: Vec<NodeLease>,
    pub backend: Backend,
    pub facts: LocalFacts,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanLink {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub dev: String,
    pub mac: Mac,
    pub mtu: u32,
}

/// A permanent neighbour entry: `ip` is reached at `mac` on `dev`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub dev: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A permanent FDB entry on the VXLAN device: frames for `mac` go to the VTEP at `dst`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub dev: String,
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
    pub dev: String,
    /// The gateway is not on a connected prefix of `dev` (VXLAN routes via `<subnet>.0`).
    pub onlink: bool,
    /// Further gateways, in order: the route is multipath over `via` and these (ECMP).
    pub also: Vec<Ipv4Addr>,
}

/// Why a peer gets no entries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// host-gw needs the peer's public IP on a connected prefix of our interface.
    NotOnSegment { node: String, public_ip: Ipv4Addr },
    /// A vxlan peer that did not publish its VTEP MAC cannot be given neighbour/FDB entries.
    NoVtepMac { node: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub vxlan: Option<VxlanLink>,
    /// Addresses on the VXLAN device: `<own subnet network>/32`.
    pub addresses: BTreeSet<(String, Ipv4Net)>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<Fdb>,
    pub routes: BTreeSet<Route>,
    pub refused: BTreeSet<Refusal>,
}

/// The VXLAN device's name for a VNI, as flannel names it (`flannel.1`), with our prefix.
pub fn vxlan_name(vni: u32) -> String {
    format!("twill.{vni}")
}

fn on_segment(facts: &LocalFacts, ip: Ipv4Addr) -> bool {
    facts.connected.iter().any(|n| n.contains(&ip))
}

/// Everything the node should have, for its lease and every peer's.
pub fn compute(input: &Input) -> Desired {
    let mut d = Desired::default();
    let facts = &input.facts;
    let peers = input.peers.iter().filter(|p| p.node != input.own.node);
    match &input.backend {
        Backend::HostGw => {
            for p in peers {
                if on_segment(facts, p.public_ip) {
                    d.routes.insert(Route {
                        dst: p.subnet,
                        via: p.public_ip,
                        dev: facts.iface.clone(),
                        onlink: false,
                        also: vec![],
                    });
                } else {
                    d.refused.insert(Refusal::NotOnSegment {
                        node: p.node.clone(),
                        public_ip: p.public_ip,
                    });
                }
            }
        }
        Backend::Bgp { routes } => {
            for (dst, hops) in routes {
                if dst.contains(&input.own.subnet.network()) || input.own.subnet.contains(dst) {
                    continue;
                }
                // Next hops off the segment are left out; a prefix with none left is refused.
                let (near, far): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) =
                    hops.iter().partition(|via| on_segment(facts, **via));
                match near.split_first() {
                    Some((via, also)) => {
                        d.routes.insert(Route {
                            dst: *dst,
                            via: *via,
                            dev: facts.iface.clone(),
                            onlink: false,
                            also: also.to_vec(),
                        });
                    }
                    None => {
                        if let Some(via) = far.first() {
                            d.refused.insert(Refusal::NotOnSegment {
                                node: dst.to_string(),
                                public_ip: *via,
                            });
                        }
                    }
                }
            }
        }
        Backend::Vxlan {
            vni,
            port,
            direct_routing,
        } => {
            let name = vxlan_name(*vni);
            if let Some(mac) = input.own.vtep_mac {
                d.vxlan = Some(VxlanLink {
                    name: name.clone(),
                    vni: *vni,
                    port: *port,
                    local: facts.local_ip,
                    dev: facts.iface.clone(),
                    mac,
                    mtu: facts.mtu.saturating_sub(VXLAN_OVERHEAD),
                });
                let own = Ipv4Net::new(input.own.subnet.network(), 32).expect("/32 is valid");
                d.addresses.insert((name.clone(), own));
            }
            for p in peers {
                if *direct_routing && on_segment(facts, p.public_ip) {
                    d.routes.insert(Route {
                        dst: p.subnet,
                        via: p.public_ip,
                        dev: facts.iface.clone(),
                        onlink: false,
                        also: vec![],
                    });
                    continue;
                }
                let Some(mac) = p.vtep_mac else {
                    d.refused.insert(Refusal::NoVtepMac {
                        node: p.node.clone(),
                    });
                    continue;
                };
                let gw = p.subnet.network();
                d.neighbours.insert(Neighbour {
                    dev: name.clone(),
                    ip: gw,
                    mac,
                });
                d.fdb.insert(Fdb {
                    dev: name.clone(),
                    mac,
                    dst: p.public_ip,
                });
                d.routes.insert(Route {
                    dst: p.subnet,
                    via: gw,
                    dev: name.clone(),
                    onlink: true,
                    also: vec![],
                });
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_routes_on_segment_are_installed_and_our_subnet_never() {
        let mut i = input(Backend::HostGw);
        i.backend = Backend::Bgp {
            routes: [
                ("10.244.2.0/24", "192.0.2.2"),
                ("10.244.1.0/24", "192.0.2.9"),
                ("10.244.7.0/24", "198.51.100.7"),
            ]
            .iter()
            .map(|(p, v)| (p.parse().unwrap(), vec![v.parse().unwrap()]))
            .collect(),
        };
        let d = compute(&i);
        let routes: Vec<String> = d
            .routes
            .iter()
            .map(|r| format!("{} via {} dev {}", r.dst, r.via, r.dev))
            .collect();
        assert_eq!(routes, ["10.244.2.0/24 via 192.0.2.2 dev eth0"]);
        assert_eq!(d.refused.len(), 1, "{:?}", d.refused);
        assert!(d.vxlan.is_none() && d.neighbours.is_empty() && d.fdb.is_empty());
    }

    #[test]
    fn equal_bgp_next_hops_make_one_multipath_route_over_those_on_the_segment() {
        let mut i = input(Backend::HostGw);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        i.backend = Backend::Bgp {
            routes: [(
                "192.168.9.0/24".parse().unwrap(),
                vec![ip("192.0.2.3"), ip("192.0.2.4"), ip("198.51.100.7")],
            )]
            .into(),
        };
        let d = compute(&i);
        let r: Vec<&Route> = d.routes.iter().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].via, r[0].also.clone()),
            (ip("192.0.2.3"), vec![ip("192.0.2.4")])
        );
        assert!(
            d.refused.is_empty(),
            "one next hop off the segment is left out, not the route"
        );
    }

    fn lease(node: &str, subnet: &str, ip: &str, mac: Option<&str>) -> NodeLease {
        NodeLease {
            node: node.into(),
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: mac.map(|m| m.parse().unwrap()),
        }
    }

    fn input(backend: Backend) -> Input {
        Input {
            own: lease("a", "10.244.1.0/24", "192.0.2.1", Some("0a:00:00:00:00:01")),
            peers: vec![
                lease("a", "10.244.1.0/24", "192.0.2.1", Some("0a:00:00:00:00:01")),
                lease("b", "10.244.2.0/24", "192.0.2.2", Some("0a:00:00:00:00:02")),
                lease(
                    "c",
                    "10.244.3.0/24",
                    "198.51.100.3",
                    Some("0a:00:00:00:00:03"),
                ),
            ],
            backend,
            facts: LocalFacts {
                iface: "eth0".into(),
                mtu: 1500,
                public_ip: "192.0.2.1".parse().unwrap(),
                local_ip: "192.0.2.1".parse().unwrap(),
                connected: vec!["192.0.2.0/24".parse().unwrap()],
            },
        }
    }

    fn route(dst: &str, via: &str, dev: &str, onlink: bool) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            dev: dev.into(),
            onlink,
            also: vec![],
        }
    }

    #[test]
    fn vxlan_golden() {
        let d = compute(&input(Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        }));
        assert_eq!(
            d.vxlan,
            Some(VxlanLink {
                name: "twill.1".into(),
                vni: 1,
                port: 8472,
                local: "192.0.2.1".parse().unwrap(),
                dev: "eth0".into(),
                mac: "0a:00:00:00:00:01".parse().unwrap(),
                mtu: 1450,
            })
        );
        assert_eq!(
            d.addresses,
            [("twill.1".to_string(), "10.244.1.0/32".parse().unwrap())].into()
        );
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        assert_eq!(
            d.neighbours,
            [
                Neighbour {
                    dev: "twill.1".into(),
                    ip: "10.244.2.0".parse().unwrap(),
                    mac: mac("0a:00:00:00:00:02")
                },
                Neighbour {
                    dev: "twill.1".into(),
                    ip: "10.244.3.0".parse().unwrap(),
                    mac: mac("0a:00:00:00:00:03")
                },
            ]
            .into()
        );
        assert_eq!(
            d.fdb,
            [
                Fdb {
                    dev: "twill.1".into(),
                    mac: mac("0a:00:00:00:00:02"),
                    dst: "192.0.2.2".parse().unwrap()
                },
                Fdb {
                    dev: "twill.1".into(),
                    mac: mac("0a:00:00:00:00:03"),
                    dst: "198.51.100.3".parse().unwrap()
                },
            ]
            .into()
        );
        assert_eq!(
            d.routes,
            [
                route("10.244.2.0/24", "10.244.2.0", "twill.1", true),
                route("10.244.3.0/24", "10.244.3.0", "twill.1", true),
            ]
            .into()
        );
        assert!(d.refused.is_empty());
    }

    #[test]
    fn host_gw_golden_refuses_peers_off_the_segment() {
        let d = compute(&input(Backend::HostGw));
        assert_eq!(d.vxlan, None);
        assert!(d.addresses.is_empty() && d.neighbours.is_empty() && d.fdb.is_empty());
        assert_eq!(
            d.routes,
            [route("10.244.2.0/24", "192.0.2.2", "eth0", false)].into()
        );
        assert_eq!(
            d.refused,
            [Refusal::NotOnSegment {
                node: "c".into(),
                public_ip: "198.51.100.3".parse().unwrap()
            }]
            .into()
        );
    }

    #[test]
    fn vxlan_direct_routing_golden() {
        let d = compute(&input(Backend::Vxlan {
            vni: 7,
            port: 4789,
            direct_routing: true,
        }));
        assert_eq!(
            d.vxlan.as_ref().map(|l| (l.name.as_str(), l.port)),
            Some(("twill.7", 4789))
        );
        assert_eq!(
            d.routes,
            [
                route("10.244.2.0/24", "192.0.2.2", "eth0", false),
                route("10.244.3.0/24", "10.244.3.0", "twill.7", true),
            ]
            .into()
        );
        // Only the peer reached over VXLAN needs neighbour and FDB entries.
        assert_eq!(d.neighbours.len(), 1);
        assert_eq!(
            d.fdb.iter().map(|f| f.dst.to_string()).collect::<Vec<_>>(),
            ["198.51.100.3"]
        );
    }

    #[test]
    fn vxlan_peer_without_mac_is_refused_not_half_programmed() {
        let mut i = input(Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        });
        i.peers[1].vtep_mac = None;
        let d = compute(&i);
        assert!(d
            .routes
            .iter()
            .all(|r| r.dst.to_string() != "10.244.2.0/24"));
        assert!(d
            .neighbours
            .iter()
            .all(|n| n.ip.to_string() != "10.244.2.0"));
        assert_eq!(d.refused, [Refusal::NoVtepMac { node: "b".into() }].into());
    }
}
