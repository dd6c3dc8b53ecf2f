//! The cluster as a picture: members (the leader marked), nodes with their subnets and health,
//! and BGP sessions coloured by state. Pure: `twill status --graph` and the controller's status
//! page gather the same three lists and both draw them here, so the two never differ.

use std::collections::BTreeMap;
use std::fmt::Write;

use twill_proto::v1 as pb;

/// A controller member as the picture shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberBox {
    pub id: u64,
    pub addr: String,
    /// "leader", "follower", "learner", "candidate", or why it could not be asked.
    pub state: String,
    pub leader: bool,
}

/// One node: its lease, if it holds one, and its last health report, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBox {
    pub name: String,
    pub subnet: Option<String>,
    pub ipv6_subnet: Option<String>,
    pub public_ip: Option<String>,
    /// Why the node needs attention; `None` when healthy.
    pub problem: Option<String>,
    pub reported: bool,
    pub sessions: Vec<(String, bool)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Picture {
    pub members: Vec<MemberBox>,
    pub nodes: Vec<NodeBox>,
    /// Shown under the title (e.g. when it was drawn).
    pub caption: String,
}

/// Why each node needs attention, by name (every node that holds a lease or has reported):
/// its report's verdict, a lease without any report, or a report without a lease. A session
/// down to a node that is itself in trouble is blamed on that node only.
/// Something that belongs to a node.
pub trait OfNode {
    fn node(&self) -> &str;
}

impl OfNode for pb::Lease {
    fn node(&self) -> &str {
        &self.node
    }
}

impl OfNode for pb::NodeHealthEntry {
    fn node(&self) -> &str {
        &self.node
    }
}

/// `items` by node name.
pub fn by_node<T: OfNode>(items: &[T]) -> BTreeMap<&str, &T> {
    items.iter().map(|x| (x.node(), x)).collect()
}

pub fn node_problems(
    leases: &[pb::Lease],
    reports: &[pb::NodeHealthEntry],
) -> BTreeMap<String, Option<String>> {
    let own = |lease: Option<&pb::Lease>,
               report: Option<&pb::NodeHealthEntry>,
               excused: &dyn Fn(&str) -> bool| {
        match (lease, report) {
            (_, Some(r)) => crate::health::verdict(r, excused)
                .or_else(|| lease.is_none().then(|| "no lease".into())),
            (Some(_), None) => Some("no health report (agent down, or too old to report)".into()),
            (None, None) => None,
        }
    };
    // Indexed by name: a cluster of 65,536 leases must not cost a search per node.
    let (by_lease, by_report) = (by_node(leases), by_node(reports));
    let names: std::collections::BTreeSet<&str> =
        by_lease.keys().chain(by_report.keys()).copied().collect();
    let find = |name: &str| (by_lease.get(name).copied(), by_report.get(name).copied());
    // First each node on its own (sessions aside), then sessions, excusing troubled peers.
    let troubled: std::collections::BTreeSet<&str> = names
        .iter()
        .filter_map(|&n| {
            let (l, r) = find(n);
            own(l, r, &|_: &str| true)
                .and(l)
                .map(|l| l.public_ip.as_str())
        })
        .collect();
    names
        .into_iter()
        .map(|n| {
            let (l, r) = find(n);
            (
                n.to_string(),
                own(l, r, &|peer: &str| troubled.contains(peer)),
            )
        })
        .collect()
}

impl Picture {
    /// Every node that holds a lease or has reported, by name.
    pub fn new(
        members: Vec<MemberBox>,
        leases: &[pb::Lease],
        reports: &[pb::NodeHealthEntry],
    ) -> Picture {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let problems = node_problems(leases, reports);
        let (by_lease, by_report) = (by_node(leases), by_node(reports));
        let nodes = problems
            .into_iter()
            .map(|(name, problem)| {
                let lease = by_lease.get(name.as_str()).copied();
                let report = by_report.get(name.as_str()).copied();
                NodeBox {
                    name,
                    subnet: lease.and_then(|l| nonempty(&l.subnet)),
                    ipv6_subnet: lease.and_then(|l| nonempty(&l.ipv6_subnet)),
                    public_ip: lease.and_then(|l| nonempty(&l.public_ip)),
                    problem,
                    reported: report.is_some(),
                    sessions: report
                        .and_then(|r| r.health.as_ref())
                        .map(|h| {
                            h.bgp_sessions
                                .iter()
                                .map(|s| (s.peer.clone(), s.state == "Established"))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        Picture {
            members,
            nodes,
            caption: String::new(),
        }
    }
}

/// The line under the title: who leads, at which revision, when drawn (UTC).
pub fn caption(leader: u64, revision: u64) -> String {
    let t = time::OffsetDateTime::now_utc();
    let leader = match leader {
        0 => "none elected".to_string(),
        id => format!("member {id}"),
    };
    format!(
        "leader: {leader}, revision {revision}, drawn {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Text safe inside SVG/HTML, whatever a node's report says.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const NODE_W: u32 = 230;
const NODE_H: u32 = 92;
const MEMBER_W: u32 = 200;
const MEMBER_H: u32 = 50;
const GAP: u32 = 30;
const MARGIN: u32 = 20;
/// Up to this many nodes sit on an ellipse, so that the line of every session between two
/// of them crosses open space instead of hiding behind a third box; more go in a grid.
const RING_MAX: usize = 16;
const COLUMNS: usize = 6;

/// Each node box's top-left corner relative to the nodes' area, and the area's size.
fn layout(n: usize) -> (Vec<(u32, u32)>, u32, u32) {
    if n <= 1 || n > RING_MAX {
        let cols = COLUMNS.min(n.max(1));
        let rows = n.div_ceil(cols) as u32;
        let spots = (0..n)
            .map(|i| {
                let (c, r) = ((i % cols) as u32, (i / cols) as u32);
                (c * (NODE_W + GAP), r * (NODE_H + GAP))
            })
            .collect();
        return (spots, cols as u32 * (NODE_W + GAP), rows * (NODE_H + GAP));
    }
    // Radii that keep neighbouring boxes apart for n up to RING_MAX.
    let rx = (62 * n as u32).max(300) as f64;
    let ry = (30 * n as u32).max(150) as f64;
    let spots = (0..n)
        .map(|i| {
            let a = -std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * i as f64 / n as f64;
            let cx = rx + rx * a.cos();
            let cy = ry + ry * a.sin();
            (cx.round() as u32, cy.round() as u32)
        })
        .collect();
    (
        spots,
        (2.0 * rx) as u32 + NODE_W + GAP,
        (2.0 * ry) as u32 + NODE_H + GAP,
    )
}

const GREEN: &str = "#2e7d32";
const RED: &str = "#c62828";
const GREY: &str = "#757575";

/// Draws the picture as a standalone SVG document.
pub fn svg(p: &Picture) -> String {
    let by_addr: BTreeMap<&str, usize> = p
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.public_ip.as_deref().map(|a| (a, i)))
        .collect();
    // Sessions: between two nodes (once per pair) or to a router outside the cluster.
    let mut externals: Vec<&str> = Vec::new();
    let mut edges: BTreeMap<(usize, usize, bool), bool> = BTreeMap::new();
    for (i, n) in p.nodes.iter().enumerate() {
        for (peer, up) in &n.sessions {
            // One line per pair of ends, red when either side says the session is down.
            let key = match by_addr.get(peer.as_str()) {
                Some(&j) => (i.min(j), i.max(j), false),
                None => {
                    let k = match externals.iter().position(|e| e == peer) {
                        Some(k) => k,
                        None => {
                            externals.push(peer);
                            externals.len() - 1
                        }
                    };
                    (i, k, true)
                }
            };
            let e = edges.entry(key).or_insert(true);
            *e &= *up;
        }
    }

    let members_y = MARGIN + 50;
    let nodes_y = members_y + MEMBER_H + 2 * GAP;
    let (spots, nodes_w, nodes_h) = layout(p.nodes.len());
    let members_w = p.members.len() as u32 * (MEMBER_W + GAP);
    let ext_w = externals.len() as u32 * (MEMBER_W + GAP);
    let width = 2 * MARGIN + members_w.max(nodes_w).max(ext_w).max(480);
    let ext_y = nodes_y + nodes_h + GAP;
    let height = ext_y
        + if externals.is_empty() {
            0
        } else {
            MEMBER_H + GAP
        }
        + 30;

    let node_xy = |i: usize| (MARGIN + spots[i].0, nodes_y + spots[i].1);
    let ext_xy = |k: usize| (MARGIN + k as u32 * (MEMBER_W + GAP), ext_y);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let healthy = p.nodes.iter().filter(|n| n.problem.is_none()).count();
    let _ = writeln!(
        s,
        r#"<title>twill cluster: {} members, {} nodes, {} healthy</title>"#,
        p.members.len(),
        p.nodes.len(),
        healthy
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN}" y="{}" font-size="18" font-weight="bold">twill: {} of {} nodes healthy</text>"#,
        MARGIN + 16,
        healthy,
        p.nodes.len()
    );
    if !p.caption.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{MARGIN}" y="{}" fill="{GREY}">{}</text>"#,
            MARGIN + 36,
            escape(&p.caption)
        );
    }

    for (k, m) in p.members.iter().enumerate() {
        let x = MARGIN + k as u32 * (MEMBER_W + GAP);
        let (stroke, width) = if m.leader { ("#b8860b", 3) } else { (GREY, 1) };
        let role = if m.leader { "leader" } else { "member" };
        let _ = writeln!(
            s,
            r##"<g class="member {role}" id="member-{id}"><rect x="{x}" y="{members_y}" width="{MEMBER_W}" height="{MEMBER_H}" rx="6" fill="#f5f5f5" stroke="{stroke}" stroke-width="{width}"/><text x="{tx}" y="{y1}" font-weight="bold">member {id}: {state}</text><text x="{tx}" y="{y2}" fill="{GREY}">{addr}</text></g>"##,
            id = m.id,
            tx = x + 10,
            y1 = members_y + 20,
            y2 = members_y + 38,
            state = escape(&shorten(&m.state, 22)),
            addr = escape(&shorten(&m.addr, 28)),
        );
    }

    for (&(a, b, external), &up) in &edges {
        let centre = |(x, y): (u32, u32), w: u32, h: u32| (x + w / 2, y + h / 2);
        let from = centre(node_xy(a), NODE_W, NODE_H);
        let to = if external {
            centre(ext_xy(b), MEMBER_W, MEMBER_H)
        } else {
            centre(node_xy(b), NODE_W, NODE_H)
        };
        let (colour, dash, state) = if up {
            (GREEN, "", "established")
        } else {
            (RED, r#" stroke-dasharray="6 4""#, "down")
        };
        let _ = writeln!(
            s,
            r#"<line class="session {state}" x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="2"{dash}/>"#,
            from.0, from.1, to.0, to.1
        );
    }

    for (i, n) in p.nodes.iter().enumerate() {
        let (x, y) = node_xy(i);
        let (fill, stroke, class) = match (&n.problem, n.reported) {
            (None, _) => ("#e8f5e9", GREEN, "healthy"),
            (Some(_), true) => ("#ffebee", RED, "unhealthy"),
            (Some(_), false) => ("#eeeeee", RED, "unreported"),
        };
        let status = match &n.problem {
            None => "healthy".to_string(),
            Some(p) => shorten(p, 30),
        };
        let subnets = match (&n.subnet, &n.ipv6_subnet) {
            (Some(a), Some(b)) => format!("{a}  {b}"),
            (Some(a), None) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => "no lease".into(),
        };
        let _ = writeln!(
            s,
            r#"<g class="node {class}" id="node-{id}"><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" stroke="{stroke}" stroke-width="2"/><text x="{tx}" y="{y1}" font-weight="bold" font-size="15">{name}</text><text x="{tx}" y="{y2}">{subnets}</text><text x="{tx}" y="{y3}" fill="{GREY}">{ip}</text><text x="{tx}" y="{y4}" fill="{stroke}">{status}</text></g>"#,
            id = escape(&n.name),
            tx = x + 10,
            y1 = y + 22,
            y2 = y + 42,
            y3 = y + 60,
            y4 = y + 80,
            name = escape(&shorten(&n.name, 28)),
            subnets = escape(&shorten(&subnets, 32)),
            ip = escape(n.public_ip.as_deref().unwrap_or("")),
            status = escape(&status),
        );
    }

    for (k, peer) in externals.iter().enumerate() {
        let (x, y) = ext_xy(k);
        let _ = writeln!(
            s,
            r##"<g class="peer"><rect x="{x}" y="{y}" width="{MEMBER_W}" height="{MEMBER_H}" rx="6" fill="#e3f2fd" stroke="#1565c0"/><text x="{tx}" y="{ty}">BGP peer {peer}</text></g>"##,
            tx = x + 10,
            ty = y + 30,
            peer = escape(&shorten(peer, 22)),
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, subnet: &str, ip: &str) -> pb::Lease {
        pb::Lease {
            node: node.into(),
            subnet: subnet.into(),
            public_ip: ip.into(),
            ..Default::default()
        }
    }

    fn report(node: &str, ready: bool, sessions: &[(&str, &str)]) -> pb::NodeHealthEntry {
        pb::NodeHealthEntry {
            node: node.into(),
            health: Some(pb::NodeHealth {
                ready,
                problems: if ready {
                    vec![]
                } else {
                    vec!["last reconcile failed: <File exists> & more".into()]
                },
                interval_ms: 1000,
                bgp_sessions: sessions
                    .iter()
                    .map(|(p, s)| pb::BgpSessionHealth {
                        peer: p.to_string(),
                        state: s.to_string(),
                        last_error: String::new(),
                    })
                    .collect(),
                ..Default::default()
            }),
            age_ms: 10,
            stale: false,
        }
    }

    fn members() -> Vec<MemberBox> {
        (1..=3)
            .map(|id| MemberBox {
                id,
                addr: format!("https://192.0.2.10{id}:7420"),
                state: if id == 2 { "leader" } else { "follower" }.into(),
                leader: id == 2,
            })
            .collect()
    }

    #[test]
    fn every_member_and_node_is_drawn_with_its_state_as_well_formed_xml() {
        let leases = [
            lease("node1", "10.244.1.0/24", "192.0.2.1"),
            lease("node2", "10.244.2.0/24", "192.0.2.2"),
            lease("node3", "10.244.3.0/24", "192.0.2.3"),
        ];
        let reports = [
            report("node1", true, &[("192.0.2.2", "Established")]),
            report(
                "node2",
                false,
                &[("192.0.2.1", "Established"), ("192.0.2.254", "Down")],
            ),
            // node3 never reported; node4 reports without a lease.
            report("node4", true, &[]),
        ];
        let pic = Picture::new(members(), &leases, &reports);
        let text = svg(&pic);
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        let all_text: String = doc
            .descendants()
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("\n");
        for name in ["node1", "node2", "node3", "node4"] {
            assert!(all_text.contains(name), "{name} missing: {text}");
        }
        for id in 1..=3 {
            assert!(all_text.contains(&format!("member {id}")), "{text}");
        }
        let class_of = |id: &str| {
            doc.descendants()
                .find(|n| n.attribute("id") == Some(id))
                .and_then(|n| n.attribute("class"))
                .map(str::to_string)
        };
        assert_eq!(class_of("member-2").as_deref(), Some("member leader"));
        assert_eq!(class_of("node-node1").as_deref(), Some("node healthy"));
        assert_eq!(class_of("node-node2").as_deref(), Some("node unhealthy"));
        assert_eq!(class_of("node-node3").as_deref(), Some("node unreported"));
        assert_eq!(class_of("node-node4").as_deref(), Some("node unhealthy"));
        // The node1-node2 session is one line, green; the ToR session is red, to a peer box.
        let lines: Vec<_> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "line")
            .map(|n| n.attribute("class").unwrap_or_default().to_string())
            .collect();
        assert_eq!(lines, ["session established", "session down"]);
        assert!(all_text.contains("BGP peer 192.0.2.254"));
        assert!(all_text.contains("1 of 4 nodes healthy"), "{all_text}");
    }

    #[test]
    fn a_dead_node_is_blamed_for_its_sessions_and_its_peers_stay_healthy() {
        let leases = [
            lease("a", "10.244.1.0/24", "192.0.2.1"),
            lease("b", "10.244.2.0/24", "192.0.2.2"),
            lease("c", "10.244.3.0/24", "192.0.2.3"),
        ];
        let mut dead = report("c", true, &[]);
        dead.stale = true;
        dead.age_ms = 31_000;
        let reports = [
            report(
                "a",
                true,
                &[("192.0.2.2", "Established"), ("192.0.2.3", "Down")],
            ),
            report("b", true, &[("192.0.2.1", "Down"), ("192.0.2.3", "Down")]),
            dead,
        ];
        let p = node_problems(&leases, &reports);
        assert_eq!(p["a"], None);
        assert_eq!(p["b"].as_deref(), Some("BGP down with 192.0.2.1"));
        assert_eq!(p["c"].as_deref(), Some("no report for 31 s"));
    }

    #[test]
    fn a_session_either_side_calls_down_is_drawn_down() {
        let leases = [
            lease("a", "10.244.1.0/24", "192.0.2.1"),
            lease("b", "10.244.2.0/24", "192.0.2.2"),
        ];
        let reports = [
            report("a", true, &[("192.0.2.2", "Established")]),
            report("b", true, &[("192.0.2.1", "Down")]),
        ];
        let text = svg(&Picture::new(vec![], &leases, &reports));
        assert_eq!(text.matches("<line").count(), 1);
        assert!(text.contains(r#"class="session down""#), "{text}");
    }

    #[test]
    fn node_boxes_never_overlap_and_fit_the_area() {
        for n in 1..=40 {
            let (spots, w, h) = layout(n);
            assert_eq!(spots.len(), n);
            for (i, a) in spots.iter().enumerate() {
                assert!(
                    a.0 + NODE_W <= w && a.1 + NODE_H <= h,
                    "n={n}: {a:?} outside {w}x{h}"
                );
                for b in &spots[i + 1..] {
                    let apart = a.0.abs_diff(b.0) >= NODE_W + GAP / 2
                        || a.1.abs_diff(b.1) >= NODE_H + GAP / 2;
                    assert!(apart, "n={n}: boxes at {a:?} and {b:?} overlap");
                }
            }
        }
    }

    #[test]
    fn hostile_text_is_escaped_and_an_empty_cluster_still_draws() {
        assert_eq!(
            escape("<a href=\"x\">&'\u{7}"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39; "
        );
        let text = svg(&Picture::default());
        roxmltree::Document::parse(&text).expect("well-formed XML");
        assert!(text.contains("0 of 0 nodes healthy"));
    }
}
