//! Network settings given on the command line, laid over a base configuration: the embedded
//! default for `twill controller`, the cluster's current one for `twill config set`.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use twill_proto::v1 as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Vxlan,
    HostGw,
    Bgp,
}

#[derive(Args, Clone, Debug, Default)]
pub struct NetworkFlags {
    /// IPv4 pod network every node's subnet is carved from [default: 10.244.0.0/16]
    #[arg(long, value_name = "CIDR")]
    pub network: Option<String>,
    /// Prefix length of each node's subnet (longer than the network's, at most 30) [default: 24]
    #[arg(long, value_name = "LEN")]
    pub subnet_len: Option<u32>,
    /// Lowest subnet handed out (default: the second subnet of the network, as flannel does)
    #[arg(long, value_name = "ADDR")]
    pub subnet_min: Option<String>,
    /// Highest subnet handed out (default: the last subnet of the network)
    #[arg(long, value_name = "ADDR")]
    pub subnet_max: Option<String>,
    /// Optional IPv6 pod network for dual stack; "" removes it with `config set`
    #[arg(long, value_name = "CIDR")]
    pub ipv6_network: Option<String>,
    /// Prefix length of each node's IPv6 subnet [default: 64]
    #[arg(long, value_name = "LEN")]
    pub ipv6_subnet_len: Option<u32>,
    /// How agents carry pod traffic between nodes [default: vxlan]
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// VXLAN network identifier (device twill.<vni>) [default: 1]
    #[arg(long, value_name = "VNI")]
    pub vni: Option<u32>,
    /// VXLAN UDP port [default: 8472, flannel's]
    #[arg(long, value_name = "PORT")]
    pub vxlan_port: Option<u32>,
    /// With vxlan: plain routes to peers on the same L2 segment, VXLAN for the rest
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub direct_routing: Option<bool>,
    /// With bgp: the nodes' AS number
    #[arg(long, value_name = "ASN")]
    pub bgp_asn: Option<u32>,
    /// With bgp: iBGP between every pair of nodes, as Calico does [default: true]; ignored
    /// when route reflectors are named
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub bgp_mesh: Option<bool>,
    /// With bgp: nodes that reflect routes for the others, comma-separated (e.g. node1,node2;
    /// "" for none); the others peer only with them
    #[arg(long, value_name = "NODES")]
    pub bgp_route_reflectors: Option<String>,
    /// With bgp: the reflectors' CLUSTER_ID [default: derived from the reflectors' names]
    #[arg(long, value_name = "ADDR")]
    pub bgp_cluster_id: Option<String>,
    /// With bgp: hold time proposed to peers, in seconds (at least 3) [default: 90]
    #[arg(long, value_name = "SECONDS")]
    pub bgp_hold_time: Option<u32>,
    /// With bgp: an outside peer such as a ToR router, as ADDR=ASN[,OPTION]... (options:
    /// node=NODE: only NODE peers with it; an RFC 2385 TCP-MD5 key as password-file=PATH (the
    /// file's first line), password-env=VAR, or password=KEY, which `ps` shows to every user);
    /// it is sent the node's own subnet only (no transit); repeat for each; replaces the list
    #[arg(long = "bgp-peer", value_name = "PEER", value_parser = parse_bgp_peer)]
    pub bgp_peers: Vec<pb::BgpPeer>,
    /// With bgp: a node's own AS number, as NODE=ASN; repeat for each; replaces the list
    #[arg(long = "bgp-node-asn", value_name = "NODE=ASN", value_parser = parse_node_asn)]
    pub bgp_node_asn: Vec<(String, u32)>,
    /// With bgp: a range whose prefixes may be taken from peers although no lease holds them
    /// (outside the pod network nothing else is; inside it, leased subnets are taken only
    /// from their holders and their more-specifics never); repeat for each; replaces the list
    #[arg(long = "bgp-allow", value_name = "CIDR")]
    pub bgp_allow: Vec<String>,
    /// How long a lease lives without renewal, e.g. 24h, 90m, 30s [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,
}

fn parse_bgp_peer(s: &str) -> Result<pb::BgpPeer, String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or_default();
    let (addr, asn) = head.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected ADDR=ASN[,password-file=PATH][,node=NODE], e.g. 192.0.2.254=64500")
    })?;
    let address: std::net::IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let asn: u32 = asn
        .trim()
        .parse()
        .map_err(|_| format!("{asn:?} is not an AS number"))?;
    let mut p = pb::BgpPeer {
        address: address.to_string(),
        asn,
        ..Default::default()
    };
    for kv in parts {
        match kv.split_once('=') {
            Some(("password", v)) => p.password = v.to_string(),
            Some(("password-file", path)) => p.password = password_from_file(path)?,
            Some(("password-env", var)) => {
                p.password = std::env::var(var)
                    .map_err(|_| format!("password-env={var}: no such environment variable"))?
            }
            Some(("node", v)) => p.node = v.trim().to_string(),
            _ => {
                return Err(format!(
                "{kv:?}: expected node=NODE, password-file=PATH, password-env=VAR or password=KEY"
            ))
            }
        }
    }
    Ok(p)
}

/// A key file's first line, without its line ending; an empty key is refused rather than
/// silently meaning "no key".
fn password_from_file(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password-file={path}: cannot read it: {e}"))?;
    let key = text.lines().next().unwrap_or_default().to_string();
    if key.is_empty() {
        return Err(format!("password-file={path}: the first line is empty"));
    }
    Ok(key)
}

fn parse_node_asn(s: &str) -> Result<(String, u32), String> {
    let (node, asn) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NODE=ASN, e.g. node1=64601"))?;
    let asn: u32 = asn
        .trim()
        .parse()
        .map_err(|_| format!("{asn:?} is not an AS number"))?;
    Ok((node.trim().to_string(), asn))
}

impl NetworkFlags {
    fn any_bgp(&self) -> bool {
        self.bgp_asn.is_some()
            || self.bgp_mesh.is_some()
            || self.bgp_route_reflectors.is_some()
            || self.bgp_cluster_id.is_some()
            || self.bgp_hold_time.is_some()
            || !self.bgp_peers.is_empty()
            || !self.bgp_node_asn.is_empty()
            || !self.bgp_allow.is_empty()
    }

    /// The base configuration with every given flag applied; the controller validates the
    /// result (prefix lengths, boundaries, live leases).
    pub fn overlay(&self, base: &pb::NetworkConfig) -> Result<pb::NetworkConfig> {
        let mut c = base.clone();
        if let Some(v) = &self.network {
            c.network = v.clone();
        }
        if let Some(v) = self.subnet_len {
            if v == 0 {
                bail!("--subnet-len: must be at least 1");
            }
            c.subnet_len = v;
        }
        if let Some(v) = &self.subnet_min {
            c.subnet_min = v.clone();
        }
        if let Some(v) = &self.subnet_max {
            c.subnet_max = v.clone();
        }
        if let Some(v) = &self.ipv6_network {
            c.ipv6_network = v.clone();
        }
        if let Some(v) = self.ipv6_subnet_len {
            c.ipv6_subnet_len = v;
        }
        let current = base.backend.as_ref().and_then(|b| b.kind.clone());
        let kind = match self.backend {
            None => current,
            Some(BackendKind::Vxlan) => match current {
                Some(k @ pb::backend::Kind::Vxlan(_)) => Some(k),
                _ => Some(pb::backend::Kind::Vxlan(pb::VxlanBackend::default())),
            },
            Some(BackendKind::HostGw) => Some(pb::backend::Kind::HostGw(pb::HostGwBackend {})),
            Some(BackendKind::Bgp) => match current {
                Some(k @ pb::backend::Kind::Bgp(_)) => Some(k),
                _ => Some(pb::backend::Kind::Bgp(pb::BgpBackend::default())),
            },
        };
        let kind = match kind {
            Some(pb::backend::Kind::Vxlan(mut v)) => {
                if let Some(n) = self.vni {
                    v.vni = n;
                }
                if let Some(p) = self.vxlan_port {
                    v.port = p;
                }
                if let Some(d) = self.direct_routing {
                    v.direct_routing = d;
                }
                Some(pb::backend::Kind::Vxlan(v))
            }
            Some(pb::backend::Kind::Bgp(mut b)) => {
                if let Some(a) = self.bgp_asn {
                    b.asn = a;
                }
                if let Some(m) = self.bgp_mesh {
                    b.no_mesh = !m;
                }
                if let Some(r) = &self.bgp_route_reflectors {
                    b.route_reflectors = r
                        .split(',')
                        .map(|n| n.trim().to_string())
                        .filter(|n| !n.is_empty())
                        .collect();
                }
                if let Some(c) = &self.bgp_cluster_id {
                    b.cluster_id = c.clone();
                }
                if let Some(h) = self.bgp_hold_time {
                    b.hold_time = h;
                }
                if !self.bgp_peers.is_empty() {
                    b.peers = self.bgp_peers.clone();
                }
                if !self.bgp_node_asn.is_empty() {
                    b.node_asn = self.bgp_node_asn.iter().cloned().collect();
                }
                if !self.bgp_allow.is_empty() {
                    b.allowed_prefixes = self.bgp_allow.clone();
                }
                if self.vni.is_some() || self.vxlan_port.is_some() || self.direct_routing.is_some()
                {
                    bail!(
                        "--vni, --vxlan-port and --direct-routing apply to the vxlan backend only"
                    );
                }
                Some(pb::backend::Kind::Bgp(b))
            }
            other => {
                if self.vni.is_some() || self.vxlan_port.is_some() || self.direct_routing.is_some()
                {
                    bail!(
                        "--vni, --vxlan-port and --direct-routing apply to the vxlan backend only"
                    );
                }
                if self.any_bgp() {
                    bail!("the --bgp-* flags apply to the bgp backend only");
                }
                other
            }
        };
        if matches!(kind, Some(pb::backend::Kind::Vxlan(_))) && self.any_bgp() {
            bail!("the --bgp-* flags apply to the bgp backend only");
        }
        c.backend = kind.map(|k| pb::Backend { kind: Some(k) });
        if let Some(t) = self.lease_ttl {
            c.lease_ttl_ms = t.as_millis().try_into().unwrap_or(u64::MAX);
        }
        Ok(c)
    }

    pub fn is_empty(&self) -> bool {
        self.network.is_none()
            && self.subnet_len.is_none()
            && self.subnet_min.is_none()
            && self.subnet_max.is_none()
            && self.ipv6_network.is_none()
            && self.ipv6_subnet_len.is_none()
            && self.backend.is_none()
            && self.vni.is_none()
            && self.vxlan_port.is_none()
            && self.direct_routing.is_none()
            && !self.any_bgp()
            && self.lease_ttl.is_none()
    }
}

/// Durations as operators write them: `500ms`, `30s`, `90m`, `24h`, `7d`, or combined (`1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?}: expected a number, e.g. 30s, 90m, 24h"));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{s:?}: missing unit (ms, s, m, h or d)")),
            u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m, h or d)")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too long"))?;
    }
    let ms: u64 = total.try_into().map_err(|_| format!("{s:?}: too long"))?;
    Ok(Duration::from_millis(ms))
}

/// The shortest exact spelling of a duration in the units [`parse_duration`] reads.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_keys_come_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("tor.key");
        std::fs::write(&key, "s3cret\nignored\n").expect("write");
        let p = parse_bgp_peer(&format!("192.0.2.1=64500,password-file={}", key.display()))
            .expect("valid");
        assert_eq!(p.password, "s3cret");
        std::env::set_var("TWILL_TEST_BGP_KEY", "from-env");
        let p = parse_bgp_peer("192.0.2.1=64500,password-env=TWILL_TEST_BGP_KEY,node=n1")
            .expect("valid");
        assert_eq!((p.password.as_str(), p.node.as_str()), ("from-env", "n1"));
        let e = parse_bgp_peer("192.0.2.1=64500,password-env=TWILL_TEST_NO_SUCH_VAR").unwrap_err();
        assert!(e.contains("no such environment variable"), "{e}");
        let missing = dir.path().join("none");
        let e = parse_bgp_peer(&format!(
            "192.0.2.1=64500,password-file={}",
            missing.display()
        ))
        .unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");
        std::fs::write(&key, "\n").expect("write");
        let e = parse_bgp_peer(&format!("192.0.2.1=64500,password-file={}", key.display()))
            .unwrap_err();
        assert!(e.contains("first line is empty"), "{e}");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5 years").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "90m");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
    }

    #[test]
    fn overlay_switches_backend_and_keeps_the_rest() {
        let base = pb::NetworkConfig {
            network: "10.244.0.0/16".into(),
            subnet_len: 24,
            backend: Some(pb::Backend {
                kind: Some(pb::backend::Kind::Vxlan(pb::VxlanBackend {
                    vni: 7,
                    port: 4789,
                    direct_routing: false,
                })),
            }),
            ..Default::default()
        };
        let f = NetworkFlags {
            direct_routing: Some(true),
            ..Default::default()
        };
        let c = f.overlay(&base).unwrap();
        assert_eq!(c.network, "10.244.0.0/16");
        match c.backend.and_then(|b| b.kind) {
            Some(pb::backend::Kind::Vxlan(v)) => {
                assert_eq!((v.vni, v.port, v.direct_routing), (7, 4789, true))
            }
            other => panic!("unexpected backend {other:?}"),
        }
        let f = NetworkFlags {
            backend: Some(BackendKind::HostGw),
            vni: Some(3),
            ..Default::default()
        };
        assert!(
            f.overlay(&base).is_err(),
            "--vni with host-gw must be refused"
        );
    }
}
