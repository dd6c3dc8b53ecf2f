//! The kernel state a node should have, computed from what it knows: its own lease, its peers'
//! leases, the backend, and facts about the host. Pure: the reconciler diffs this against what
//! netlink reports and applies the difference.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::vtep::Mac;

/// VXLAN headers (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14) take this much of the
/// underlay MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay (outer header 40 instead of 20), as flannel's `flannel-v6.1`.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

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
        /// Each prefix's next hops, sorted: more than one is an ECMP route. Both families; a
        /// prefix's next hops are of its own family.
        routes: std::collections::BTreeMap<IpNet, Vec<IpAddr>>,
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
    /// The interface's IPv6 side, when it has a global IPv6 address (dual stack).
    pub v6: Option<FactsV6>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactsV6 {
    pub public_ip: Ipv6Addr,
    pub connected: Vec<Ipv6Net>,
}

/// A lease as the agent uses it (its own or a peer's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLease {
    pub node: String,
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// The VTEP MAC the node published with its lease (vxlan only).
    pub vtep_mac: Option<Mac>,
    /// The lease's IPv6 half, when the cluster is dual stack and the node has an IPv6 address.
    pub v6: Option<LeaseV6>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseV6 {
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
    /// The MAC of the node's IPv6 VXLAN device (vxlan only).
    pub vtep_mac: Option<Mac>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub own: NodeLease,
    pub peers: Vec<NodeLease>,
    pub backend: Backend,
    pub facts: LocalFacts,
    pub sources: SourceTables,
}

/// The kernel's main routing table, where pod routes go first.
pub const MAIN_TABLE: u32 = 254;
/// Tables no per-source copy may go to: unspecified, default, main and local.
pub const RESERVED_TABLES: [u32; 4] = [0, 253, MAIN_TABLE, 255];
/// The priority of the `from <address> lookup <table>` rules twill makes (`--source-table`):
/// before the main table's rule (32766), after anything an operator puts at lower numbers.
pub const MANAGED_RULE_PRIORITY: u32 = 32000;

/// A multi-homed node's per-source routing tables. Replies from a secondary address are routed
/// by its own table (`ip rule from <address> lookup <table>`), which knows nothing of pods; each
/// such table gets the pod routes the main table has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceTables {
    /// Tables that a rule selecting a local source address points to, as found on the host.
    pub found: BTreeSet<u32>,
    /// The pod bridge, once it exists (the CNI plugin makes it with the first pod).
    pub pod_bridge: Option<String>,
    /// Tables twill keeps whole (`--source-table`): rule, connected route and default route.
    pub managed: Vec<ManagedTable>,
}

/// A per-source table twill makes and keeps for one of the node's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedTable {
    pub table: u32,
    pub iface: String,
    /// The address with its prefix length, as it is on `iface`.
    pub addr: Ipv4Net,
    /// The interface's gateway, from the main table's default route through it, if any.
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanLink {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub dev: String,
    pub mac: Mac,
    pub mtu: u32,
}

/// A permanent neighbour entry: `ip` is reached at `mac` on `dev`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A permanent FDB entry on the VXLAN device: frames for `mac` go to the VTEP at `dst`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub dev: String,
    pub mac: Mac,
    pub dst: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The routing table: [`MAIN_TABLE`], or a per-source table that mirrors it.
    pub table: u32,
    pub dst: IpNet,
    pub via: IpAddr,
    pub dev: String,
    /// The gateway is not on a connected prefix of `dev` (VXLAN routes via `<subnet>.0`).
    pub onlink: bool,
    /// Further gateways, in order: the route is multipath over `via` and these (ECMP).
    pub also: Vec<IpAddr>,
}

/// `ip route`'s words for a table other than main (nothing for main).
pub fn table_suffix(t: u32) -> String {
    if t == MAIN_TABLE {
        String::new()
    } else {
        format!(" table {t}")
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route {} via {}", self.dst, self.via)?;
        for h in &self.also {
            write!(f, ", {h}")?;
        }
        write!(
            f,
            " dev {}{}{}",
            self.dev,
            if self.onlink { " onlink" } else { "" },
            table_suffix(self.table)
        )
    }
}

impl std::fmt::Display for DeviceRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "route {} dev {}{}",
            self.dst,
            self.dev,
            table_suffix(self.table)
        )
    }
}

/// A route without a gateway: the node's own pod subnet on its bridge, or a managed table's
/// connected prefix. (The main table has those as the kernel's own routes.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceRoute {
    pub table: u32,
    pub dst: IpNet,
    pub dev: String,
}

/// A policy rule twill makes: traffic from `src` is routed by `table`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub priority: u32,
    pub src: Ipv4Net,
    pub table: u32,
}

/// Why a peer gets no entries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// host-gw needs the peer's public IP on a connected prefix of our interface.
    NotOnSegment { node: String, public_ip: IpAddr },
    /// A vxlan peer that did not publish its VTEP MAC cannot be given neighbour/FDB entries.
    NoVtepMac { node: String },
    /// A device name longer than the kernel allows (15 bytes): `twill-v6.<vni>` for a VNI of
    /// a million or more. That family is not programmed; the other is.
    DeviceName { name: String },
}

/// The longest interface name Linux takes (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// The VXLAN devices: one per family in use.
    pub vxlan: BTreeSet<VxlanLink>,
    /// Addresses on the VXLAN devices: `<own subnet network>/32` (`/128` for IPv6).
    pub addresses: BTreeSet<(String, IpNet)>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<Fdb>,
    pub routes: BTreeSet<Route>,
    pub device_routes: BTreeSet<DeviceRoute>,
    pub rules: BTreeSet<Rule>,
    pub refused: BTreeSet<Refusal>,
}

/// The VXLAN device's name for a VNI, as flannel names it (`flannel.1`), with our prefix.
pub fn vxlan_name(vni: u32) -> String {
    format!("twill.{vni}")
}

/// The IPv6 VXLAN device's name (flannel's `flannel-v6.1`).
pub fn vxlan_name_v6(vni: u32) -> String {
    format!("twill-v6.{vni}")
}

/// One address family's view of the node and its peers: the dataplane is the same recipe in
/// both, over that family's subnets, addresses and MACs.
struct Family<'a> {
    own_subnet: IpNet,
    own_mac: Option<Mac>,
    /// This node's address on the underlay: the VXLAN device's local end.
    local_ip: IpAddr,
    connected: Vec<IpNet>,
    /// (node, subnet, public address, VTEP MAC) of each peer that has this family.
    peers: Vec<(&'a str, IpNet, IpAddr, Option<Mac>)>,
    device: String,
    overhead: u32,
    host_len: u8,
}

impl Family<'_> {
    fn on_segment(&self, ip: IpAddr) -> bool {
        self.connected.iter().any(|n| n.contains(&ip))
    }
}

fn families(input: &Input, vni: u32) -> Vec<Family<'_>> {
    let others = || input.peers.iter().filter(|p| p.node != input.own.node);
    let facts = &input.facts;
    let mut out = vec![Family {
        own_subnet: IpNet::V4(input.own.subnet),
        own_mac: input.own.vtep_mac,
        local_ip: IpAddr::V4(facts.local_ip),
        connected: facts.connected.iter().map(|n| IpNet::V4(*n)).collect(),
        peers: others()
            .map(|p| {
                (
                    p.node.as_str(),
                    IpNet::V4(p.subnet),
                    IpAddr::V4(p.public_ip),
                    p.vtep_mac,
                )
            })
            .collect(),
        device: vxlan_name(vni),
        overhead: VXLAN_OVERHEAD,
        host_len: 32,
    }];
    if let (Some(own6), Some(f6)) = (&input.own.v6, &facts.v6) {
        out.push(Family {
            own_subnet: IpNet::V6(own6.subnet),
            own_mac: own6.vtep_mac,
            local_ip: IpAddr::V6(f6.public_ip),
            connected: f6.connected.iter().map(|n| IpNet::V6(*n)).collect(),
            peers: others()
                .filter_map(|p| {
                    let v6 = p.v6.as_ref()?;
                    Some((
                        p.node.as_str(),
                        IpNet::V6(v6.subnet),
                        IpAddr::V6(v6.public_ip),
                        v6.vtep_mac,
                    ))
                })
                .collect(),
            device: vxlan_name_v6(vni),
            overhead: VXLAN_OVERHEAD_V6,
            host_len: 128,
        });
    }
    out
}

fn main_route(dst: IpNet, via: IpAddr, dev: &str, onlink: bool, also: Vec<IpAddr>) -> Route {
    Route {
        table: MAIN_TABLE,
        dst,
        via,
        dev: dev.to_string(),
        onlink,
        also,
    }
}

/// Everything the node should have, for its lease and every peer's.
pub fn compute(input: &Input) -> Desired {
    let mut d = Desired::default();
    let facts = &input.facts;
    let vni = match &input.backend {
        Backend::Vxlan { vni, .. } => *vni,
        _ => 0,
    };
    for f in families(input, vni) {
        match &input.backend {
            Backend::HostGw => {
                for (node, subnet, public_ip, _) in &f.peers {
                    if f.on_segment(*public_ip) {
                        d.routes.insert(main_route(
                            *subnet,
                            *public_ip,
                            &facts.iface,
                            false,
                            vec![],
                        ));
                    } else {
                        d.refused.insert(Refusal::NotOnSegment {
                            node: node.to_string(),
                            public_ip: *public_ip,
                        });
                    }
                }
            }
            Backend::Bgp { routes } => {
                let own = f.own_subnet;
                let same_family = |n: &IpNet| {
                    matches!(
                        (n, own),
                        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
                    )
                };
                for (dst, hops) in routes.iter().filter(|(n, _)| same_family(n)) {
                    if dst.contains(&own.network()) || own.contains(dst) {
                        continue;
                    }
                    // Next hops off the segment are left out; a prefix with none left is refused.
                    let (near, far): (Vec<IpAddr>, Vec<IpAddr>) =
                        hops.iter().partition(|via| f.on_segment(**via));
                    match near.split_first() {
                        Some((via, also)) => {
                            d.routes.insert(main_route(
                                *dst,
                                *via,
                                &facts.iface,
                                false,
                                also.to_vec(),
                            ));
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
                if f.device.len() > MAX_IFNAME {
                    d.refused.insert(Refusal::DeviceName {
                        name: f.device.clone(),
                    });
                    continue;
                }
                if let Some(mac) = f.own_mac {
                    d.vxlan.insert(VxlanLink {
                        name: f.device.clone(),
                        vni: *vni,
                        port: *port,
                        local: f.local_ip,
                        dev: facts.iface.clone(),
                        mac,
                        mtu: facts.mtu.saturating_sub(f.overhead),
                    });
                    let own = IpNet::new(f.own_subnet.network(), f.host_len)
                        .expect("host length is valid");
                    d.addresses.insert((f.device.clone(), own));
                }
                for (node, subnet, public_ip, mac) in &f.peers {
                    if *direct_routing && f.on_segment(*public_ip) {
                        d.routes.insert(main_route(
                            *subnet,
                            *public_ip,
                            &facts.iface,
                            false,
                            vec![],
                        ));
                        continue;
                    }
                    let Some(mac) = mac else {
                        d.refused.insert(Refusal::NoVtepMac {
                            node: node.to_string(),
                        });
                        continue;
                    };
                    let gw = subnet.network();
                    d.neighbours.insert(Neighbour {
                        dev: f.device.clone(),
                        ip: gw,
                        mac: *mac,
                    });
                    d.fdb.insert(Fdb {
                        dev: f.device.clone(),
                        mac: *mac,
                        dst: *public_ip,
                    });
                    d.routes
                        .insert(main_route(*subnet, gw, &f.device, true, vec![]));
                }
            }
        }
    }
    add_source_tables(&mut d, &input.sources, input.own.subnet);
    d
}

/// Every per-source table gets a copy of the main table's pod routes and the node's own pod
/// subnet on the bridge; a managed table also gets its rule, connected and default routes.
fn add_source_tables(d: &mut Desired, sources: &SourceTables, own: Ipv4Net) {
    let tables: BTreeSet<u32> = sources
        .found
        .iter()
        .copied()
        .chain(sources.managed.iter().map(|m| m.table))
        .filter(|t| !RESERVED_TABLES.contains(t))
        .collect();
    // The rules are IPv4 (`from <IPv4 address>`): their tables get the IPv4 routes.
    let main: Vec<Route> = d
        .routes
        .iter()
        .filter(|r| matches!(r.dst, IpNet::V4(_)))
        .cloned()
        .collect();
    for table in tables {
        for r in &main {
            d.routes.insert(Route { table, ..r.clone() });
        }
        if let Some(bridge) = &sources.pod_bridge {
            d.device_routes.insert(DeviceRoute {
                table,
                dst: IpNet::V4(own),
                dev: bridge.clone(),
            });
        }
    }
    for m in sources
        .managed
        .iter()
        .filter(|m| !RESERVED_TABLES.contains(&m.table))
    {
        d.rules.insert(Rule {
            priority: MANAGED_RULE_PRIORITY,
            src: Ipv4Net::new(m.addr.addr(), 32).expect("/32 is valid"),
            table: m.table,
        });
        d.device_routes.insert(DeviceRoute {
            table: m.table,
            dst: IpNet::V4(m.addr.trunc()),
            dev: m.iface.clone(),
        });
        if let Some(gw) = m.gateway {
            d.routes.insert(Route {
                table: m.table,
                dst: IpNet::V4(Ipv4Net::default()),
                via: IpAddr::V4(gw),
                dev: m.iface.clone(),
                onlink: false,
                also: vec![],
            });
        }
    }
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
        assert!(d.vxlan.is_empty() && d.neighbours.is_empty() && d.fdb.is_empty());
    }

    #[test]
    fn equal_bgp_next_hops_make_one_multipath_route_over_those_on_the_segment() {
        let mut i = input(Backend::HostGw);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
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
            v6: None,
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
                v6: None,
            },
            sources: SourceTables::default(),
        }
    }

    fn route(dst: &str, via: &str, dev: &str, onlink: bool) -> Route {
        Route {
            table: MAIN_TABLE,
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
            [VxlanLink {
                name: "twill.1".into(),
                vni: 1,
                port: 8472,
                local: "192.0.2.1".parse().unwrap(),
                dev: "eth0".into(),
                mac: "0a:00:00:00:00:01".parse().unwrap(),
                mtu: 1450,
            }]
            .into()
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
        assert!(d.vxlan.is_empty());
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
            d.vxlan.first().map(|l| (l.name.as_str(), l.port)),
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
    fn every_source_table_mirrors_the_pod_routes_and_the_local_pod_subnet() {
        let mut i = input(Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        });
        i.sources.found = [100, MAIN_TABLE, 255].into();
        i.sources.pod_bridge = Some("cni0".into());
        let d = compute(&i);
        let in_table = |t: u32| {
            d.routes
                .iter()
                .filter(|r| r.table == t)
                .map(|r| Route {
                    table: MAIN_TABLE,
                    ..r.clone()
                })
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(in_table(100), in_table(MAIN_TABLE), "{:?}", d.routes);
        assert_eq!(in_table(100).len(), 2);
        assert!(in_table(255).is_empty(), "never the local table");
        assert_eq!(
            d.device_routes,
            [DeviceRoute {
                table: 100,
                dst: "10.244.1.0/24".parse().unwrap(),
                dev: "cni0".into()
            }]
            .into()
        );
        assert!(d.rules.is_empty(), "found tables have the operator's rules");
    }

    #[test]
    fn a_managed_table_gets_its_rule_connected_and_default_routes() {
        let mut i = input(Backend::HostGw);
        i.sources.managed = vec![ManagedTable {
            table: 200,
            iface: "eth1".into(),
            addr: "198.51.100.1/24".parse().unwrap(),
            gateway: Some("198.51.100.254".parse().unwrap()),
        }];
        let d = compute(&i);
        assert_eq!(
            d.rules,
            [Rule {
                priority: MANAGED_RULE_PRIORITY,
                src: "198.51.100.1/32".parse().unwrap(),
                table: 200
            }]
            .into()
        );
        let t200: Vec<String> = d
            .routes
            .iter()
            .filter(|r| r.table == 200)
            .map(|r| format!("{} via {} dev {}", r.dst, r.via, r.dev))
            .collect();
        assert_eq!(
            t200,
            [
                "0.0.0.0/0 via 198.51.100.254 dev eth1",
                "10.244.2.0/24 via 192.0.2.2 dev eth0"
            ]
        );
        assert_eq!(
            d.device_routes
                .iter()
                .map(|r| (r.table, r.dst.to_string(), r.dev.as_str()))
                .collect::<Vec<_>>(),
            [(200, "198.51.100.0/24".to_string(), "eth1")],
            "no bridge yet: only the connected prefix"
        );
    }

    #[test]
    fn a_vni_too_long_for_the_ipv6_device_name_leaves_ipv4_programmed() {
        let mut i = input(Backend::Vxlan {
            vni: 16_000_000,
            port: 8472,
            direct_routing: false,
        });
        let v6 = |n: u8| LeaseV6 {
            subnet: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            public_ip: format!("2001:db8::{n}").parse().unwrap(),
            vtep_mac: Some(crate::vtep::derive_v6(&n.to_string())),
        };
        i.own.v6 = Some(v6(1));
        i.peers[1].v6 = Some(v6(2));
        i.facts.v6 = Some(FactsV6 {
            public_ip: "2001:db8::1".parse().unwrap(),
            connected: vec!["2001:db8::/64".parse().unwrap()],
        });
        let d = compute(&i);
        assert_eq!(
            d.vxlan.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["twill.16000000"]
        );
        assert!(d.refused.contains(&Refusal::DeviceName {
            name: "twill-v6.16000000".into()
        }));
        assert!(d.routes.iter().all(|r| r.dst.addr().is_ipv4()));
        assert_eq!(d.routes.len(), 2);

        // With a VNI that fits, the IPv6 side is there: device, one peer's three entries.
        i.backend = Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        };
        let d = compute(&i);
        assert_eq!(d.vxlan.len(), 2);
        let v6_routes: Vec<String> = d
            .routes
            .iter()
            .filter(|r| r.dst.addr().is_ipv6())
            .map(|r| format!("{} via {} dev {} onlink={}", r.dst, r.via, r.dev, r.onlink))
            .collect();
        assert_eq!(
            v6_routes,
            ["fd00:10:244:2::/64 via fd00:10:244:2:: dev twill-v6.1 onlink=true"]
        );
        assert!(d
            .fdb
            .iter()
            .any(|f| f.dev == "twill-v6.1" && f.dst.to_string() == "2001:db8::2"));
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
