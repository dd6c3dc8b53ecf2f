//! `twill doctor`: what is wrong with this node's pod network, and what to do about it.
//!
//! The verdicts are a pure function of facts gathered read-only ([`gather`] does the I/O): the
//! cluster as the controller sees it, the interface choice, what twill owns in the kernel,
//! MTUs, `subnet.env`, probes of the peers on the underlay, the masquerade table. The
//! differences between the kernel and the desired state come from the agent's own
//! [`desired::compute`] and [`reconcile::plan`], so the doctor and the agent cannot disagree
//! about what the node should have.

pub mod gather;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};
use twill_proto::v1 as pb;

use crate::backend::Config;
use crate::cni::NodeSubnet;
use crate::desired::{
    self, table_suffix, Desired, LocalFacts, NodeLease, Refusal, SourceTables, MAIN_TABLE,
};
use crate::masquerade::{self, Networks};
use crate::reconcile::{self, BridgePort, Observed, Op, ROUTE_PROTOCOL};
use crate::vtep;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    /// Could not be checked, or worth a look; does not make the node unhealthy.
    Warning,
    Problem,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Problem => "problem",
        }
    }
}

/// One line of the report: which check, how bad, what was found, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub severity: Severity,
    pub what: String,
    /// Empty for an ok finding.
    pub advice: String,
}

fn ok(check: &'static str, what: impl Into<String>) -> Finding {
    Finding {
        check,
        severity: Severity::Ok,
        what: what.into(),
        advice: String::new(),
    }
}

fn problem(check: &'static str, what: impl Into<String>, advice: impl Into<String>) -> Finding {
    Finding {
        check,
        severity: Severity::Problem,
        what: what.into(),
        advice: advice.into(),
    }
}

fn warning(check: &'static str, what: impl Into<String>, advice: impl Into<String>) -> Finding {
    Finding {
        check,
        severity: Severity::Warning,
        what: what.into(),
        advice: advice.into(),
    }
}

/// The cluster as the controller answered for it.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub config: Option<pb::NetworkConfig>,
    pub leases: Vec<pb::Lease>,
    pub health: Vec<pb::NodeHealthEntry>,
}

/// What is probed to tell whether a peer is reachable on the underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// The peer's VXLAN endpoint (its public address). VXLAN's UDP port answers nothing that
    /// could be probed, so this is an ICMP echo to the address the tunnel goes to.
    Vtep,
    /// The next hop of a host-gw (or direct-routing) route: an ICMP echo sent out of the
    /// public interface, which needs the peer to answer ARP on the segment.
    NextHop,
    /// The next hop the BGP peer announces its subnet with (its address).
    BgpPeer,
}

impl ProbeKind {
    fn describe(&self) -> &'static str {
        match self {
            ProbeKind::Vtep => "VXLAN endpoint (ICMP echo to its public address)",
            ProbeKind::NextHop => "host-gw next hop (ARP and ICMP echo on the segment)",
            ProbeKind::BgpPeer => "BGP next hop (ICMP echo to its address)",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub node: String,
    pub addr: IpAddr,
    pub kind: ProbeKind,
    /// Sent out of this interface (a next hop must be on the segment), else routed.
    pub iface: Option<String>,
}

/// A probe's outcome: answered or not, or why it could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub target: ProbeTarget,
    pub answered: Result<bool, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mtus {
    /// cni0's MTU, when the bridge exists (made with the first pod).
    pub bridge: Option<u32>,
    /// cni0's ports: the host ends of the pods' veths.
    pub ports: Vec<BridgePort>,
}

/// `/readyz` of the agent's metrics address, when the agent serves one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readyz {
    pub addr: String,
    /// HTTP status and body, or why nothing answered.
    pub answer: Result<(u16, String), String>,
}

/// Everything the doctor looked at. Each part is the value read or why it could not be read.
#[derive(Clone, Debug)]
pub struct Facts {
    pub node: String,
    pub controllers: Vec<String>,
    pub ip_masq: bool,
    pub subnet_file: String,
    /// Now, in Unix ms: lease deadlines are in the controller leader's wall clock.
    pub now_ms: u64,
    pub cluster: Result<Cluster, String>,
    /// The interface choice, with the agent's flags.
    pub local: Result<LocalFacts, String>,
    pub observed: Result<Observed, String>,
    /// Every VXLAN device on the node, twill's or anyone's (empty when they cannot be listed):
    /// one of someone else's may hold the VNI and port twill's device needs.
    pub vxlan_devices: Vec<reconcile::VxlanDevice>,
    /// Per-source tables and what keeps a `--source-table` from being resolved.
    pub sources: Result<(SourceTables, Vec<String>), String>,
    pub subnet_env: Result<NodeSubnet, String>,
    pub mtus: Result<Mtus, String>,
    pub probes: Vec<Probe>,
    /// twill's nft table as listed (`None`: absent), or why it could not be listed.
    pub masquerade: Result<Option<String>, String>,
    /// `net.ipv4.ip_forward`.
    pub forwarding: Result<bool, String>,
    pub readyz: Option<Readyz>,
}

/// The node's lease, its peers' and the backend, as the agent would use them.
#[derive(Clone, Debug)]
pub struct Expected {
    pub cfg: Config,
    pub config: pb::NetworkConfig,
    pub own: NodeLease,
    pub own_pb: pb::Lease,
    pub peers: Vec<NodeLease>,
}

/// The agent's view rebuilt from the controller's answers; a finding when it cannot be.
pub fn expected(node: &str, c: &Cluster) -> Result<Expected, Finding> {
    let Some(config) = c.config.clone() else {
        return Err(problem(
            "config",
            "the cluster has no network configuration yet",
            "set one: twill config set --network 10.244.0.0/16 (with an admin credential)",
        ));
    };
    let cfg = Config::from_proto(&config).map_err(|e| {
        problem(
            "config",
            format!("the cluster's configuration is not usable: {e}"),
            "fix it with twill config set (the agent leaves the dataplane as it is meanwhile)",
        )
    })?;
    let Some(own_pb) = c.leases.iter().find(|l| l.node == node).cloned() else {
        return Err(problem(
            "lease",
            format!("node {node} holds no lease"),
            "start twill agent on this node (its log says why it cannot acquire one); \
             twill leases shows who holds which subnet",
        ));
    };
    let Some(own) = crate::agent::own_lease(&own_pb, vtep::derive(node), vtep::derive_v6(node))
    else {
        return Err(problem(
            "lease",
            format!(
                "this node's lease does not parse (subnet {:?})",
                own_pb.subnet
            ),
            "release it (twill release NODE) and restart the agent to acquire a new one",
        ));
    };
    let peers = c
        .leases
        .iter()
        .filter(|l| l.node != node)
        .filter_map(crate::agent::node_lease)
        .collect();
    Ok(Expected {
        cfg,
        config,
        own,
        own_pb,
        peers,
    })
}

/// What to probe for each peer: the address its traffic goes to on the underlay.
pub fn probe_targets(e: &Expected, local: &LocalFacts) -> Vec<ProbeTarget> {
    let on_segment = |ip: std::net::Ipv4Addr| local.connected.iter().any(|n| n.contains(&ip));
    e.peers
        .iter()
        .filter_map(|p| {
            let (kind, iface) = match &e.cfg {
                Config::Vxlan { direct_routing, .. } => {
                    if *direct_routing && on_segment(p.public_ip) {
                        (ProbeKind::NextHop, Some(local.iface.clone()))
                    } else {
                        (ProbeKind::Vtep, None)
                    }
                }
                // A peer off the segment is refused, not routed: the refusal is the finding.
                Config::HostGw if on_segment(p.public_ip) => {
                    (ProbeKind::NextHop, Some(local.iface.clone()))
                }
                Config::HostGw => return None,
                Config::Bgp { .. } => (ProbeKind::BgpPeer, None),
            };
            Some(ProbeTarget {
                node: p.node.clone(),
                addr: IpAddr::V4(p.public_ip),
                kind,
                iface,
            })
        })
        .collect()
}

/// The desired state, as the agent computes it. With bgp the routes are the speaker's choice,
/// which only the running agent knows: the doctor takes those in the kernel that lead to a live
/// lease's subnet or outside the pod network, and wants every peer's subnet via the peer's
/// address where the kernel has no route for it; a pod-network route no lease holds is stale.
pub fn desired(
    e: &Expected,
    local: &LocalFacts,
    sources: &SourceTables,
    observed: &Observed,
) -> Desired {
    let backend = match &e.cfg {
        Config::Vxlan {
            vni,
            port,
            direct_routing,
        } => desired::Backend::Vxlan {
            vni: *vni,
            port: *port,
            direct_routing: *direct_routing,
        },
        Config::HostGw => desired::Backend::HostGw,
        Config::Bgp {
            network, network6, ..
        } => {
            let leased: Vec<(IpNet, IpAddr)> = e
                .peers
                .iter()
                .flat_map(|p| {
                    let v4 = (IpNet::V4(p.subnet), IpAddr::V4(p.public_ip));
                    let v6 =
                        p.v6.as_ref()
                            .map(|v| (IpNet::V6(v.subnet), IpAddr::V6(v.public_ip)));
                    std::iter::once(v4).chain(v6)
                })
                .collect();
            let in_pod_network = |n: &IpNet| match n {
                IpNet::V4(v) => network.contains(v),
                IpNet::V6(v) => network6.is_some_and(|p| p.contains(v)),
            };
            let mut routes: BTreeMap<IpNet, Vec<IpAddr>> = observed
                .routes
                .iter()
                .filter(|r| r.table == MAIN_TABLE && r.dev == local.iface && !r.onlink)
                .filter(|r| !in_pod_network(&r.dst) || leased.iter().any(|(n, _)| *n == r.dst))
                .map(|r| {
                    let hops = std::iter::once(r.via).chain(r.also.iter().copied());
                    (r.dst, hops.collect())
                })
                .collect();
            for (subnet, via) in leased {
                routes.entry(subnet).or_insert_with(|| vec![via]);
            }
            desired::Backend::Bgp { routes }
        }
    };
    desired::compute(&desired::Input {
        own: e.own.clone(),
        peers: e.peers.clone(),
        backend,
        facts: local.clone(),
        sources: sources.clone(),
    })
}

/// Whose lease an address or prefix belongs to, for naming it in a finding.
struct Owners(Vec<(IpNet, IpAddr, String)>);

impl Owners {
    fn of(e: &Expected) -> Owners {
        let mut v = Vec::new();
        for p in std::iter::once(&e.own).chain(&e.peers) {
            v.push((IpNet::V4(p.subnet), IpAddr::V4(p.public_ip), p.node.clone()));
            if let Some(v6) = &p.v6 {
                v.push((
                    IpNet::V6(v6.subnet),
                    IpAddr::V6(v6.public_ip),
                    p.node.clone(),
                ));
            }
        }
        Owners(v)
    }

    fn subnet(&self, n: &IpNet) -> String {
        self.0
            .iter()
            .find(|(s, _, _)| s == n)
            .map(|(_, _, node)| format!(" ({node}'s subnet)"))
            .unwrap_or_default()
    }

    fn addr(&self, ip: &IpAddr) -> String {
        self.0
            .iter()
            .find(|(s, public, _)| public == ip || s.contains(ip))
            .map(|(_, _, node)| format!(" ({node})"))
            .unwrap_or_default()
    }
}

/// The `ip` command that adds a single-path route as the agent would.
fn route_add_cmd(r: &desired::Route) -> Option<String> {
    r.also.is_empty().then(|| {
        format!(
            "ip route add {} via {} dev {}{}{} proto {ROUTE_PROTOCOL}",
            r.dst,
            r.via,
            r.dev,
            if r.onlink { " onlink" } else { "" },
            table_suffix(r.table)
        )
    })
}

const AGENT_REPAIRS: &str = "a running agent repairs this at its next pass (a netlink event, \
    or --resync, 5 s by default); if it stays, check that twill agent runs here and read its log";
const AGENT_REMOVES: &str = "a running agent removes this at its next pass; if none runs, start \
    it, or take all of twill's state off the node with twill agent --cleanup";

fn with_cmd(base: &str, cmd: Option<String>) -> String {
    match cmd {
        Some(c) => format!("{base}; by hand: {c}"),
        None => base.to_string(),
    }
}

/// One finding per real difference between the kernel and the desired state. A device made
/// again puts everything on it in the plan; what the kernel already has is not repeated. A
/// device that differs only in its MTU is left to the MTU check.
fn differences(
    ops: &[Op],
    d: &Desired,
    o: &Observed,
    devices: &[reconcile::VxlanDevice],
    owners: &Owners,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // A device that is not there at all takes everything on it along: one finding for the
    // device, not one per entry that cannot exist without it.
    let absent: std::collections::BTreeSet<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::CreateLink(l) if !o.links.iter().any(|h| h.name == l.name) => Some(l.name.as_str()),
            _ => None,
        })
        .collect();
    let on_absent = |op: &Op| -> Option<String> {
        let dev = match op {
            Op::AddAddress(dev, _) => dev,
            Op::AddNeighbour(n) => &n.dev,
            Op::AddFdb(f) => &f.dev,
            Op::AddRoute(r) => &r.dev,
            _ => return None,
        };
        absent.contains(dev.as_str()).then(|| dev.clone())
    };
    let carried = |name: &str| {
        let n = ops
            .iter()
            .filter(|op| on_absent(op).as_deref() == Some(name))
            .count();
        if n == 0 {
            String::new()
        } else {
            format!("; {} on it missing with it", count(n, "entry", "entries"))
        }
    };
    let check = |table: u32| {
        if table == MAIN_TABLE {
            "routes"
        } else {
            "source-tables"
        }
    };
    let missing = |check, what: String, cmd: Option<String>| {
        problem(
            check,
            format!("missing: {what}"),
            with_cmd(AGENT_REPAIRS, cmd),
        )
    };
    let unwanted = |check, what: String, cmd: String| {
        problem(
            check,
            format!("unwanted: {what}"),
            with_cmd(AGENT_REMOVES, Some(cmd)),
        )
    };
    const DP: &str = "dataplane";
    for op in ops {
        if on_absent(op).is_some() {
            continue;
        }
        let f = match op {
            Op::CreateLink(want) => match o.links.iter().find(|l| l.name == want.name) {
                None => match reconcile::vxlan_holder(devices, want) {
                    Some(h) => problem(
                        DP,
                        format!(
                            "missing: VXLAN device {} (VNI {}, port {}): device {} holds that \
                             VNI and port, and the kernel allows one device per VNI and port{}",
                            want.name,
                            want.vni,
                            want.port,
                            h.name,
                            carried(&want.name)
                        ),
                        format!(
                            "if {0} is flannel's (left from a migration), delete it: ip link del \
                             {0}; the agent makes {1} at its next pass. Otherwise run the \
                             cluster with another --vni or --vxlan-port",
                            h.name, want.name
                        ),
                    ),
                    None => problem(
                        DP,
                        format!(
                            "missing: VXLAN device {} (VNI {}, port {}, local {} on {}){}",
                            want.name,
                            want.vni,
                            want.port,
                            want.local,
                            want.dev,
                            carried(&want.name)
                        ),
                        "restart twill agent: it makes the device and everything on it",
                    ),
                },
                Some(have) => {
                    let diff = link_diff(have, want);
                    if diff.is_empty() {
                        continue; // the MTU alone: see the MTU check
                    }
                    problem(
                        DP,
                        format!("VXLAN device {} differs: {}", want.name, diff.join(", ")),
                        "a running agent makes the device again at its next pass; if it stays, \
                         restart twill agent and read its log",
                    )
                }
            },
            // The other half of a device made again, or a device of an old configuration.
            Op::DeleteLink(name) => {
                if d.vxlan.iter().any(|l| &l.name == name) {
                    continue;
                }
                unwanted(
                    DP,
                    format!("VXLAN device {name} (not of the cluster's configuration)"),
                    format!("ip link del {name}"),
                )
            }
            Op::AddAddress(dev, a) if !o.addresses.contains(&(dev.clone(), *a)) => missing(
                DP,
                format!("address {a} on {dev}"),
                Some(format!("ip addr add {a} dev {dev}")),
            ),
            Op::DeleteAddress(dev, a) => unwanted(
                DP,
                format!("address {a} on {dev}"),
                format!("ip addr del {a} dev {dev}"),
            ),
            Op::AddNeighbour(n) if !o.neighbours.contains(n) => missing(
                DP,
                format!(
                    "neighbour {} lladdr {} on {}{}",
                    n.ip,
                    n.mac,
                    n.dev,
                    owners.addr(&n.ip)
                ),
                Some(format!(
                    "ip neigh replace {} lladdr {} dev {} nud permanent",
                    n.ip, n.mac, n.dev
                )),
            ),
            Op::DeleteNeighbour(n) => unwanted(
                DP,
                format!("neighbour {} lladdr {} on {}", n.ip, n.mac, n.dev),
                format!("ip neigh del {} dev {}", n.ip, n.dev),
            ),
            Op::AddFdb(f) if !o.fdb.contains(f) => missing(
                DP,
                format!(
                    "FDB entry {} dst {} on {}{}",
                    f.mac,
                    f.dst,
                    f.dev,
                    owners.addr(&f.dst)
                ),
                Some(format!(
                    "bridge fdb append {} dev {} dst {} self permanent",
                    f.mac, f.dev, f.dst
                )),
            ),
            Op::DeleteFdb(f) => unwanted(
                DP,
                format!("FDB entry {} dst {} on {}", f.mac, f.dst, f.dev),
                format!("bridge fdb del {} dev {} dst {} self", f.mac, f.dev, f.dst),
            ),
            Op::AddRoute(r) if !o.routes.contains(r) => missing(
                check(r.table),
                format!("{}{}", r, owners.subnet(&r.dst)),
                route_add_cmd(r),
            ),
            Op::DeleteRoute(r) => unwanted(
                check(r.table),
                format!("{r} (proto {ROUTE_PROTOCOL}; no live lease or choice wants it)"),
                route_del_cmd(&r.dst, r.table),
            ),
            Op::AddDeviceRoute(r) => missing(
                check(r.table),
                r.to_string(),
                Some(format!(
                    "ip route add {} dev {}{} proto {ROUTE_PROTOCOL}",
                    r.dst,
                    r.dev,
                    table_suffix(r.table)
                )),
            ),
            Op::DeleteDeviceRoute(r) => unwanted(
                check(r.table),
                r.to_string(),
                route_del_cmd(&r.dst, r.table),
            ),
            Op::AddRule(r) => missing(
                "source-tables",
                format!(
                    "rule from {} lookup {} priority {}",
                    r.src, r.table, r.priority
                ),
                Some(format!(
                    "ip rule add from {} lookup {} priority {} protocol {ROUTE_PROTOCOL}",
                    r.src, r.table, r.priority
                )),
            ),
            Op::DeleteRule(r) => unwanted(
                "source-tables",
                format!(
                    "rule from {} lookup {} priority {}",
                    r.src, r.table, r.priority
                ),
                format!(
                    "ip rule del from {} lookup {} priority {}",
                    r.src, r.table, r.priority
                ),
            ),
            // Additions only there because their device is made again.
            Op::AddAddress(..) | Op::AddNeighbour(_) | Op::AddFdb(_) | Op::AddRoute(_) => continue,
        };
        out.push(f);
    }
    out
}

fn route_del_cmd(dst: &IpNet, table: u32) -> String {
    format!(
        "ip route del {dst}{} proto {ROUTE_PROTOCOL}",
        table_suffix(table)
    )
}

/// How a VXLAN device differs from the wanted one, MTU aside.
fn link_diff(have: &desired::VxlanLink, want: &desired::VxlanLink) -> Vec<String> {
    let mut diff = Vec::new();
    if have.vni != want.vni {
        diff.push(format!("VNI {} (want {})", have.vni, want.vni));
    }
    if have.port != want.port {
        diff.push(format!("port {} (want {})", have.port, want.port));
    }
    if have.local != want.local {
        diff.push(format!("local {} (want {})", have.local, want.local));
    }
    if have.dev != want.dev {
        diff.push(format!("device {:?} (want {})", have.dev, want.dev));
    }
    if have.mac != want.mac {
        diff.push(format!("MAC {} (want {})", have.mac, want.mac));
    }
    diff
}

fn refusal_finding(r: &Refusal) -> Finding {
    match r {
        Refusal::NotOnSegment { node, public_ip } => problem(
            "dataplane",
            format!("refused: {node} ({public_ip}) is not on a connected prefix of this node's interface; host-gw cannot route to it"),
            "host-gw needs every node on one L2 segment: use vxlan (or vxlan with --direct-routing) for this cluster, or move the node",
        ),
        Refusal::NoVtepMac { node } => problem(
            "dataplane",
            format!("refused: {node}'s lease has no VTEP MAC; no VXLAN entries for it"),
            format!("restart twill agent on {node}: it publishes its MAC with the lease"),
        ),
        Refusal::DeviceName { name } => warning(
            "dataplane",
            format!("refused: device name {name} is longer than the kernel allows; that family is not programmed"),
            "use a VNI below 1,000,000 for dual stack",
        ),
    }
}

/// A duration for people: seconds up to two minutes, then minutes, hours, days.
fn secs(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// "1 route", "2 routes".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn lease_findings(f: &Facts, e: &Expected, local: Option<&LocalFacts>) -> Vec<Finding> {
    let mut out = Vec::new();
    let l = &e.own_pb;
    let ttl = e.config.lease_ttl_ms;
    let left = l.expires_at_ms.saturating_sub(f.now_ms);
    if left == 0 {
        out.push(problem(
            "lease",
            format!("{}'s lease on {} has expired", f.node, l.subnet),
            "renewals are not reaching the controller: check that twill agent runs here and \
             reaches the controller (its log); the subnet may be given to another node",
        ));
    } else if ttl > 0 && left < ttl / 4 {
        // The agent renews with a third of the TTL left; under a quarter means it has failed.
        out.push(problem(
            "lease",
            format!(
                "{}'s lease on {} has {} left of {}: renewals are failing",
                f.node,
                l.subnet,
                secs(left),
                secs(ttl)
            ),
            "check that twill agent runs here and reaches the controller (its log says why renewals fail)",
        ));
    } else {
        out.push(ok(
            "lease",
            format!(
                "{} holds {}{}, {} left of {}",
                f.node,
                l.subnet,
                if l.ipv6_subnet.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", l.ipv6_subnet)
                },
                secs(left),
                secs(ttl)
            ),
        ));
    }
    if let Some(local) = local {
        if e.own.public_ip != local.public_ip {
            out.push(problem(
                "lease",
                format!(
                    "the lease publishes {} but this node's address is now {} ({})",
                    e.own.public_ip, local.public_ip, local.iface
                ),
                "a running agent acquires its lease again with the new address within a resync; \
                 if it stays, restart twill agent here",
            ));
        }
    }
    out
}

fn health_of<'a>(c: &'a Cluster, node: &str) -> Option<&'a pb::NodeHealthEntry> {
    c.health.iter().find(|h| h.node == node)
}

fn agent_findings(f: &Facts, c: &Cluster, e: Option<&Expected>) -> Vec<Finding> {
    let mut out = Vec::new();
    let me = &f.node;
    match health_of(c, me) {
        None => out.push(problem(
            "agent",
            format!("this node's agent ({me}) has not reported its health to the controller"),
            "start twill agent here (or restart it) and read its log; a controller that just \
             changed leader shows nodes as unreported until their next report",
        )),
        Some(h) if h.stale => out.push(problem(
            "agent",
            format!(
                "this node's agent ({me}) last reported {} ago (stale)",
                secs(h.age_ms)
            ),
            "twill agent is not running or cannot reach the controller: start it, or read its \
             log; meanwhile nothing repairs the dataplane or follows lease changes",
        )),
        Some(h) => {
            let health = h.health.clone().unwrap_or_default();
            // The agent's own /readyz is fresher than its last report (sent up to a second
            // after a change): when it answers, its finding speaks for readiness.
            let local = f.readyz.as_ref().is_some_and(|r| r.answer.is_ok());
            if local {
                out.push(ok(
                    "agent",
                    format!(
                        "this node's agent reports to the controller ({} backend, version {}, \
                         reported {} ago); its readiness is /readyz's below",
                        health.backend,
                        health.version,
                        secs(h.age_ms)
                    ),
                ));
            } else if health.ready {
                out.push(ok(
                    "agent",
                    format!(
                        "this node's agent is ready ({} backend, version {}, reported {} ago)",
                        health.backend,
                        health.version,
                        secs(h.age_ms)
                    ),
                ));
            } else {
                out.push(problem(
                    "agent",
                    format!(
                        "this node's agent is not ready: {}",
                        if health.problems.is_empty() {
                            "no reason given".to_string()
                        } else {
                            health.problems.join("; ")
                        }
                    ),
                    "read the agent's log for the failing step; each reason above names it",
                ));
            }
            for s in &health.bgp_sessions {
                if s.state == "Established" {
                    out.push(ok("bgp", format!("session with {} established", s.peer)));
                } else {
                    out.push(problem(
                        "bgp",
                        format!(
                            "session with {} is {}{}",
                            s.peer,
                            s.state,
                            if s.last_error.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", s.last_error)
                            }
                        ),
                        format!(
                            "check that {} runs its BGP speaker and is configured with this node's \
                             address and AS, and that TCP port 179 is open between them; \
                             twill bgp status shows every session",
                            s.peer
                        ),
                    ));
                }
            }
        }
    }
    let Some(e) = e else { return out };
    for p in &e.peers {
        let n = &p.node;
        match health_of(c, n) {
            None => out.push(problem(
                "peer-agent",
                format!(
                    "{n} holds a lease ({}) but its agent has not reported its health",
                    p.subnet
                ),
                format!(
                    "on {n}: check that twill agent runs (and its log); run twill doctor there"
                ),
            )),
            Some(h) if h.stale => {
                let every = h.health.as_ref().map(|x| x.interval_ms).unwrap_or(0);
                out.push(problem(
                    "peer-agent",
                    format!(
                        "{n}'s agent last reported {} ago (stale: it reports every {}); its lease on {} stays until it expires",
                        secs(h.age_ms),
                        secs(every),
                        p.subnet
                    ),
                    format!(
                        "on {n}: start twill agent, or find why it cannot reach the controller (its log); \
                         if {n} is gone for good, twill release {n} frees its subnet"
                    ),
                ))
            }
            Some(h) if !h.health.as_ref().is_some_and(|x| x.ready) => out.push(problem(
                "peer-agent",
                format!(
                    "{n}'s agent is not ready: {}",
                    h.health
                        .as_ref()
                        .map(|x| x.problems.join("; "))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "no reason given".into())
                ),
                format!("on {n}: run twill doctor, and read the agent's log"),
            )),
            Some(_) => out.push(ok("peer-agent", format!("{n}'s agent is ready"))),
        }
    }
    out
}

fn probe_findings(probes: &[Probe]) -> Vec<Finding> {
    probes
        .iter()
        .map(|p| {
            let t = &p.target;
            let what = format!(
                "{} at {}, its {}{}",
                t.node,
                t.addr,
                t.kind.describe(),
                t.iface
                    .as_ref()
                    .map(|i| format!(" out of {i}"))
                    .unwrap_or_default()
            );
            match &p.answered {
                Ok(true) => ok("peer-underlay", format!("{what}: answers")),
                Ok(false) => problem(
                    "peer-underlay",
                    format!("{what}: no answer"),
                    match t.kind {
                        ProbeKind::NextHop => format!(
                            "check {}'s link and address on the segment (ip neigh show {} says FAILED when ARP gets no answer); pods there are unreachable until it answers",
                            t.node, t.addr
                        ),
                        ProbeKind::Vtep => format!(
                            "check the underlay between the nodes (ip route get {}), {}'s link, and that firewalls let ICMP and UDP port of VXLAN through",
                            t.addr, t.node
                        ),
                        ProbeKind::BgpPeer => format!(
                            "check the underlay to {} (ip route get {}) and that node's link",
                            t.node, t.addr
                        ),
                    },
                ),
                Err(e) => warning(
                    "peer-underlay",
                    format!("{what}: not probed: {e}"),
                    "install iputils-ping (the doctor probes with ping)",
                ),
            }
        })
        .collect()
}

fn mtu_findings(
    f: &Facts,
    e: Option<&Expected>,
    local: Option<&LocalFacts>,
    d: Option<&Desired>,
    o: Option<&Observed>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let (Some(e), Some(local)) = (e, local) else {
        return out;
    };
    let pod = e.cfg.pod_mtu(local.mtu);
    let mut seen = vec![format!("underlay {} {}", local.iface, local.mtu)];
    let why = match e.cfg {
        Config::Vxlan { .. } => format!("{} less {} for VXLAN", local.mtu, desired::VXLAN_OVERHEAD),
        _ => format!("{}'s MTU", local.iface),
    };
    let mut bad = false;
    if let (Some(d), Some(o)) = (d, o) {
        for want in &d.vxlan {
            if let Some(have) = o.links.iter().find(|l| l.name == want.name) {
                if have.mtu != want.mtu {
                    bad = true;
                    out.push(problem(
                        "mtu",
                        format!(
                            "{} has MTU {}, want {} ({} {} less the encapsulation)",
                            have.name, have.mtu, want.mtu, local.iface, local.mtu
                        ),
                        format!(
                            "a running agent makes the device again at its next pass; by hand: ip link set {} mtu {}",
                            have.name, want.mtu
                        ),
                    ));
                } else {
                    seen.push(format!("{} {}", have.name, have.mtu));
                }
            }
        }
    }
    let env_mtu = f.subnet_env.as_ref().ok().map(|s| s.mtu);
    if let Some(m) = env_mtu {
        if m != pod {
            bad = true;
            out.push(problem(
                "mtu",
                format!(
                    "{} says FLANNEL_MTU={m}, but pods get {pod} here ({why})",
                    f.subnet_file
                ),
                "a running agent rewrites subnet.env at its next pass; pods made before keep the \
                 old MTU: recreate them once it is right",
            ));
        } else {
            seen.push(format!("subnet.env {m}"));
        }
    }
    // Pods should have what the path carries; named after subnet.env when that agrees, since
    // CNI made them from it.
    let want = pod;
    let says = if env_mtu == Some(pod) {
        "subnet.env says"
    } else {
        "pods get"
    };
    match &f.mtus {
        Err(e) => out.push(warning(
            "mtu",
            format!("pod-side MTUs not read: {e}"),
            "check cni0 and its veths by hand: ip -d link show master cni0",
        )),
        Ok(m) => {
            if let Some(b) = m.bridge {
                if b != want {
                    bad = true;
                    out.push(problem(
                        "mtu",
                        format!("cni0 has MTU {b}, {says} {want}"),
                        format!("ip link set cni0 mtu {want} (the bridge plugin sets it when it makes cni0; a port with a smaller MTU lowers it)"),
                    ));
                } else {
                    seen.push(format!("cni0 {b}"));
                }
            }
            let mut fine = 0;
            for p in &m.ports {
                let mut port_bad = false;
                if p.mtu != want {
                    port_bad = true;
                    out.push(problem(
                        "mtu",
                        format!(
                            "{} (a pod's veth on cni0) has MTU {}, {says} {want}",
                            p.name, p.mtu
                        ),
                        format!("ip link set {} mtu {want}, or recreate the pod", p.name),
                    ));
                }
                match &p.peer {
                    Ok((name, mtu)) if *mtu != want => {
                        port_bad = true;
                        out.push(problem(
                            "mtu",
                            format!(
                                "pod interface {name} behind {} has MTU {mtu}, {says} {want}",
                                p.name
                            ),
                            format!(
                                "{} drops large packets: recreate the pod (CNI ADD sets FLANNEL_MTU), or set it in the pod's namespace{}: ip -n NETNS link set {name} mtu {want}",
                                if *mtu > want { "a pod MTU above what the path between nodes carries" } else { "a pod MTU below its veth's" },
                                p.peer_netns.map(|id| format!(" (netns id {id}; ip netns list-id names it)")).unwrap_or_default()
                            ),
                        ));
                    }
                    Ok(_) => {}
                    Err(err) => out.push(warning(
                        "mtu",
                        format!("the pod side of {} was not read: {err}", p.name),
                        "ip -d link show the veth and check its peer in the pod's namespace",
                    )),
                }
                if !port_bad {
                    fine += 1;
                }
            }
            bad |= fine != m.ports.len();
            if fine > 0 {
                seen.push(format!("{} {want}", count(fine, "pod", "pods")));
            }
        }
    }
    if !bad {
        out.push(ok("mtu", seen.join(", ")));
    }
    out
}

fn subnet_env_findings(f: &Facts, e: Option<&Expected>) -> Vec<Finding> {
    let path = &f.subnet_file;
    let s = match &f.subnet_env {
        Err(err) => {
            return vec![problem(
                "subnet.env",
                format!("{path}: {err}"),
                "the agent writes it once it holds a lease: check that twill agent runs with this \
                 --subnet-file; CNI ADD fails until it is there",
            )]
        }
        Ok(s) => s,
    };
    let Some(e) = e else {
        return vec![ok(
            "subnet.env",
            format!("{path} reads (not compared: no lease known)"),
        )];
    };
    let mut diff = Vec::new();
    let want_subnet = crate::subnet_env::first_host(e.own.subnet);
    if s.subnet != want_subnet {
        diff.push(format!(
            "FLANNEL_SUBNET={} but the lease is {} (want {want_subnet})",
            s.subnet, e.own.subnet
        ));
    }
    if e.config.network.parse().ok() != Some(s.network) {
        diff.push(format!(
            "FLANNEL_NETWORK={} but the cluster's network is {}",
            s.network, e.config.network
        ));
    }
    if s.ipmasq != f.ip_masq {
        diff.push(format!(
            "FLANNEL_IPMASQ={} but the agent runs with --ip-masq={}",
            s.ipmasq, f.ip_masq
        ));
    }
    if diff.is_empty() {
        vec![ok(
            "subnet.env",
            format!("{path} matches the lease ({})", s.subnet),
        )]
    } else {
        diff.into_iter()
            .map(|d| {
                problem(
                    "subnet.env",
                    format!("{path}: {d}"),
                    "a running agent rewrites it at its next pass; pods made from the old file \
                     have addresses outside this node's subnet: recreate them",
                )
            })
            .collect()
    }
}

fn masquerade_findings(f: &Facts, e: Option<&Expected>) -> Vec<Finding> {
    let listing = match &f.masquerade {
        Err(err) if f.ip_masq => {
            return vec![problem(
                "masquerade",
                format!("twill's nft table cannot be listed: {err}"),
                "install nftables (the agent needs nft for --ip-masq) and run nft list table inet twill",
            )]
        }
        Err(_) => return vec![ok("masquerade", "off (--ip-masq=false); nft not available")],
        Ok(l) => l,
    };
    match (f.ip_masq, listing) {
        (false, None) => vec![ok("masquerade", "off (--ip-masq=false), no table inet twill")],
        (false, Some(_)) => vec![problem(
            "masquerade",
            "table inet twill exists although the agent runs with --ip-masq=false",
            "the agent removes it at start; by hand: nft delete table inet twill",
        )],
        (true, None) => vec![problem(
            "masquerade",
            "table inet twill is missing: pods reach nothing outside the cluster network",
            "a running agent writes it again at its next pass; if it stays missing read the agent's log (and look for something flushing the ruleset)",
        )],
        (true, Some(l)) => {
            let Some(e) = e else {
                return vec![ok("masquerade", "table inet twill present (not compared: no configuration known)")];
            };
            let want = Networks {
                v4: e.config.network.parse().ok(),
                v6: e.config.ipv6_network.parse().ok(),
            };
            let d = masquerade::drift(l, &want);
            if d.is_empty() {
                return vec![ok("masquerade", format!("table inet twill masquerades pods of {} to the outside", e.config.network))];
            }
            let mut out: Vec<Finding> = d
                .missing
                .iter()
                .map(|r| {
                    problem(
                        "masquerade",
                        format!("table inet twill lacks: {r}"),
                        "a running agent writes the table again when it differs; check nft list table inet twill",
                    )
                })
                .collect();
            out.extend(d.extra.iter().map(|r| {
                problem(
                    "masquerade",
                    format!("table inet twill has a line twill does not write: {r}"),
                    "the table is twill's own: put other rules in a table of your own",
                )
            }));
            out
        }
    }
}

fn source_table_findings(f: &Facts, diffs: &[Finding]) -> Vec<Finding> {
    let mut out = Vec::new();
    match &f.sources {
        Err(e) => out.push(warning(
            "source-tables",
            format!("per-source tables not read: {e}"),
            "ip rule show; ip route show table all proto 151",
        )),
        Ok((s, problems)) => {
            for p in problems {
                out.push(problem(
                    "source-tables",
                    p.clone(),
                    "fix the interface or address the agent's --source-table names; the agent resolves it again as addresses come",
                ));
            }
            if problems.is_empty() && !diffs.iter().any(|d| d.check == "source-tables") {
                let tables: Vec<String> = s
                    .found
                    .iter()
                    .chain(s.managed.iter().map(|m| &m.table))
                    .map(|t| t.to_string())
                    .collect();
                out.push(ok(
                    "source-tables",
                    if tables.is_empty() {
                        "no per-source routing tables on this node".to_string()
                    } else {
                        format!(
                            "{} the pod routes",
                            if tables.len() == 1 {
                                format!("table {} has", tables[0])
                            } else {
                                format!("tables {} have", tables.join(", "))
                            }
                        )
                    },
                ));
            }
        }
    }
    out
}

/// Every finding, in the order a reader checks a node: the controller and lease, the agent,
/// the kernel's state, MTUs, subnet.env, the peers, masquerade, forwarding.
pub fn diagnose(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let cluster = match &f.cluster {
        Ok(c) => {
            out.push(ok(
                "controller",
                format!(
                    "{} answers: {}, {}",
                    f.controllers.join(","),
                    count(c.leases.len(), "lease", "leases"),
                    count(c.health.len(), "health report", "health reports")
                ),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(problem(
                "controller",
                format!(
                    "cannot ask the controller at {}: {e}",
                    f.controllers.join(",")
                ),
                "check twill status from this node, the network path to the controller, and \
                 that the node certificate (node.pem in the state directory) is valid; the \
                 dataplane checks below run without the lease table",
            ));
            None
        }
    };
    let e = match cluster.map(|c| expected(&f.node, c)) {
        Some(Ok(e)) => Some(e),
        Some(Err(finding)) => {
            out.push(finding);
            None
        }
        None => None,
    };
    let local = match &f.local {
        Ok(l) => {
            out.push(ok(
                "interface",
                format!("{} {} (public {})", l.iface, l.local_ip, l.public_ip),
            ));
            Some(l)
        }
        Err(err) => {
            out.push(problem(
                "interface",
                format!("no interface for node-to-node traffic with the agent's flags: {err}"),
                "check the agent's --iface/--iface-regex/--iface-can-reach and the interface's address (ip -4 addr)",
            ));
            None
        }
    };
    if let Some(e) = &e {
        out.extend(lease_findings(f, e, local));
    }
    if let Some(c) = cluster {
        out.extend(agent_findings(f, c, e.as_ref()));
    }
    if let Some(r) = &f.readyz {
        out.push(match &r.answer {
            Ok((200, _)) => ok("readyz", format!("http://{}/readyz answers 200", r.addr)),
            Ok((code, body)) => problem(
                "readyz",
                format!("http://{}/readyz answers {code}: {}", r.addr, body.trim()),
                "each reason above is what keeps the agent from being ready; its log has the details",
            ),
            Err(err) => problem(
                "readyz",
                format!("nothing answers on the agent's metrics address {}: {err}", r.addr),
                "twill agent is not running (or runs with another --metrics-addr): start it",
            ),
        });
    }

    let mut d_for_mtu = None;
    match (&e, local, &f.observed, &f.sources) {
        (_, _, Err(err), _) => out.push(problem(
            "dataplane",
            format!("what twill owns in the kernel cannot be read: {err}"),
            "run twill doctor as root in the node's network namespace",
        )),
        (Some(e), Some(local), Ok(o), Ok((sources, _))) => {
            let want = desired(e, local, sources, o);
            let ops = reconcile::plan(&want, o);
            let owners = Owners::of(e);
            let diffs = differences(&ops, &want, o, &f.vxlan_devices, &owners);
            out.extend(want.refused.iter().map(refusal_finding));
            if !diffs.iter().any(|d| d.check != "source-tables") {
                out.push(ok(
                    "routes",
                    format!(
                        "the kernel has what the agent wants: {}, {}, {}, {}",
                        count(want.vxlan.len(), "device", "devices"),
                        count(
                            want.routes.iter().filter(|r| r.table == MAIN_TABLE).count(),
                            "route",
                            "routes"
                        ),
                        count(want.neighbours.len(), "neighbour", "neighbours"),
                        count(want.fdb.len(), "FDB entry", "FDB entries"),
                    ),
                ));
            }
            out.extend(source_table_findings(f, &diffs));
            out.extend(diffs);
            d_for_mtu = Some(want);
        }
        _ => out.push(warning(
            "dataplane",
            "the kernel was not compared with the desired state (lease, configuration, interface or tables unknown; see above)",
            "fix what is reported above first",
        )),
    }
    out.extend(mtu_findings(
        f,
        e.as_ref(),
        local,
        d_for_mtu.as_ref(),
        f.observed.as_ref().ok(),
    ));
    out.extend(subnet_env_findings(f, e.as_ref()));
    out.extend(probe_findings(&f.probes));
    out.extend(masquerade_findings(f, e.as_ref()));
    out.push(match &f.forwarding {
        Ok(true) => ok("forwarding", "net.ipv4.ip_forward = 1"),
        Ok(false) => problem(
            "forwarding",
            "net.ipv4.ip_forward = 0: this node forwards no pod traffic",
            "sysctl -w net.ipv4.ip_forward=1 (the agent turns it on at start; something turned it off)",
        ),
        Err(err) => warning(
            "forwarding",
            format!("net.ipv4.ip_forward not read: {err}"),
            "sysctl net.ipv4.ip_forward",
        ),
    });
    out
}

pub fn healthy(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.severity != Severity::Problem)
}

/// The report for people: one line per finding, the advice under each that needs one.
pub fn render_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.severity {
            Severity::Ok => "ok",
            Severity::Warning => "WARNING",
            Severity::Problem => "PROBLEM",
        };
        s.push_str(&format!("{tag:<8} {:<14} {}\n", f.check, f.what));
        if !f.advice.is_empty() {
            s.push_str(&format!("{:<24}-> {}\n", "", f.advice));
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .count();
    if problems == 0 {
        s.push_str("healthy\n");
    } else {
        s.push_str(&format!("{}\n", count(problems, "problem", "problems")));
    }
    s
}

/// The report for scripts: `healthy` and every finding.
pub fn to_json(findings: &[Finding]) -> Value {
    json!({
        "healthy": healthy(findings),
        "findings": findings.iter().map(|f| json!({
            "check": f.check,
            "severity": f.severity.name(),
            "what": f.what,
            "advice": f.advice,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests;
