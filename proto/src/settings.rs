//! The `bgp` backend's settings as typed values, and the one place they are read from the wire.
//!
//! The controller checks them before they enter the Raft log and again when it applies them (it
//! is the state machine); the agent reads them from the configuration it watches. Both go
//! through [`bgp_from_proto`], so a setting the controller accepted means the same thing on
//! every node, and nothing is silently dropped on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::defaults::BGP_HOLD_TIME;
use crate::names::{quote, validate_node_name};
use crate::v1;

/// Linux's TCP_MD5SIG_MAXKEYLEN: a longer RFC 2385 key cannot be installed on the socket.
pub const MAX_MD5_PASSWORD_LEN: usize = 80;

/// Replicated in Raft log entries and snapshots (bincode, which encodes fields by position):
/// the fields, their order and their types are part of the stored format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSettings {
    pub asn: u32,
    /// iBGP between every pair of nodes (ignored when route reflectors are named).
    pub mesh: bool,
    /// Node names, sorted and without repeats.
    pub route_reflectors: Vec<String>,
    /// `None`: one derived from the reflectors' names.
    pub cluster_id: Option<Ipv4Addr>,
    /// Seconds; 0 turns hold timer and keepalives off (RFC 4271 §4.2). The wire cannot say 0:
    /// there it means "unset", which is [`BGP_HOLD_TIME`].
    pub hold_time: u16,
    pub peers: Vec<BgpPeer>,
    pub node_asn: BTreeMap<String, u32>,
    pub allowed_prefixes: Vec<Ipv4Net>,
}

/// What an empty `BgpBackend` message means, AS number aside (which has no default).
impl Default for BgpSettings {
    fn default() -> Self {
        BgpSettings {
            asn: 0,
            mesh: true,
            route_reflectors: Vec::new(),
            cluster_id: None,
            hold_time: BGP_HOLD_TIME,
            peers: Vec::new(),
            node_asn: BTreeMap::new(),
            allowed_prefixes: Vec::new(),
        }
    }
}

/// A router outside the cluster. Stored like [`BgpSettings`]: the field layout is fixed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<String>,
    /// Only this node peers with it; `None`: every node does.
    pub node: Option<String>,
}

/// Configurations get logged; a TCP-MD5 key must not end up in the log with them.
impl fmt::Debug for BgpPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BgpPeer")
            .field("address", &self.address)
            .field("asn", &self.asn)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("node", &self.node)
            .finish()
    }
}

/// A field of the `BgpBackend` message, named as the .proto file spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BgpField {
    Asn,
    RouteReflectors,
    ClusterId,
    HoldTime,
    PeerAddress,
    PeerAsn,
    PeerPassword,
    PeerNode,
    NodeAsn,
    AllowedPrefixes,
}

impl fmt::Display for BgpField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BgpField::Asn => "asn",
            BgpField::RouteReflectors => "route_reflectors",
            BgpField::ClusterId => "cluster_id",
            BgpField::HoldTime => "hold_time",
            BgpField::PeerAddress => "peers.address",
            BgpField::PeerAsn => "peers.asn",
            BgpField::PeerPassword => "peers.password",
            BgpField::PeerNode => "peers.node",
            BgpField::NodeAsn => "node_asn",
            BgpField::AllowedPrefixes => "allowed_prefixes",
        })
    }
}

/// A refused BGP setting: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BgpSettingsError {
    pub field: BgpField,
    pub why: String,
}

fn refuse<T>(field: BgpField, why: impl Into<String>) -> Result<T, BgpSettingsError> {
    Err(BgpSettingsError {
        field,
        why: why.into(),
    })
}

fn node_name(field: BgpField, name: &str) -> Result<(), BgpSettingsError> {
    validate_node_name(name).or_else(|e| refuse(field, e.to_string()))
}

/// Reads and checks the settings from the wire. Zero values mean the defaults (mesh on, hold
/// time [`BGP_HOLD_TIME`], no cluster id); surrounding spaces are ignored.
pub fn bgp_from_proto(b: &v1::BgpBackend) -> Result<BgpSettings, BgpSettingsError> {
    let cluster_id = match b.cluster_id.trim() {
        "" => None,
        s => match s.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                return refuse(
                    BgpField::ClusterId,
                    format!("{} is not an IPv4 address", quote(&b.cluster_id)),
                )
            }
        },
    };
    let hold_time = match b.hold_time {
        0 => BGP_HOLD_TIME,
        h => match u16::try_from(h) {
            Ok(h) => h,
            Err(_) => return refuse(BgpField::HoldTime, format!("{h} s is more than 65535")),
        },
    };
    let mut peers = Vec::with_capacity(b.peers.len());
    for p in &b.peers {
        let Ok(address) = p.address.trim().parse::<IpAddr>() else {
            return refuse(
                BgpField::PeerAddress,
                format!("{} is not an IP address", quote(&p.address)),
            );
        };
        let node = p.node.trim();
        peers.push(BgpPeer {
            address,
            asn: p.asn,
            password: (!p.password.is_empty()).then(|| p.password.clone()),
            node: (!node.is_empty()).then(|| node.to_string()),
        });
    }
    let mut allowed_prefixes = Vec::with_capacity(b.allowed_prefixes.len());
    for a in &b.allowed_prefixes {
        match a.trim().parse::<Ipv4Net>() {
            Ok(n) => allowed_prefixes.push(n),
            Err(_) => {
                return refuse(
                    BgpField::AllowedPrefixes,
                    format!("{} is not an IPv4 CIDR like 192.0.2.0/24", quote(a)),
                )
            }
        }
    }
    let mut route_reflectors: Vec<String> = b
        .route_reflectors
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    route_reflectors.sort();
    route_reflectors.dedup();
    let s = BgpSettings {
        asn: b.asn,
        mesh: !b.no_mesh,
        route_reflectors,
        cluster_id,
        hold_time,
        peers,
        node_asn: b.node_asn.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        allowed_prefixes,
    };
    s.validate()?;
    Ok(s)
}

/// The settings on the wire; [`bgp_from_proto`] reads back the same value, except a hold time
/// of 0, which the wire cannot carry.
pub fn bgp_to_proto(s: &BgpSettings) -> v1::BgpBackend {
    v1::BgpBackend {
        asn: s.asn,
        no_mesh: !s.mesh,
        route_reflectors: s.route_reflectors.clone(),
        cluster_id: s.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
        hold_time: u32::from(s.hold_time),
        peers: s
            .peers
            .iter()
            .map(|p| v1::BgpPeer {
                address: p.address.to_string(),
                asn: p.asn,
                password: p.password.clone().unwrap_or_default(),
                node: p.node.clone().unwrap_or_default(),
            })
            .collect(),
        node_asn: s.node_asn.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        allowed_prefixes: s.allowed_prefixes.iter().map(|a| a.to_string()).collect(),
    }
}

impl BgpSettings {
    /// Checks typed settings, however they were made: [`bgp_from_proto`] ends with this, and
    /// the allocator runs it on every configuration it applies.
    pub fn validate(&self) -> Result<(), BgpSettingsError> {
        // AS 0 is reserved and never a speaker's own (RFC 7607).
        if self.asn == 0 {
            return refuse(BgpField::Asn, "AS number must not be 0");
        }
        // RFC 4271 §4.2: a hold time of 1 or 2 seconds is refused in an OPEN.
        if self.hold_time != 0 && self.hold_time < 3 {
            return refuse(
                BgpField::HoldTime,
                format!(
                    "{} s: RFC 4271 allows 0 (no keepalives) or at least 3",
                    self.hold_time
                ),
            );
        }
        for n in &self.route_reflectors {
            node_name(BgpField::RouteReflectors, n)?;
        }
        for (node, asn) in &self.node_asn {
            node_name(BgpField::NodeAsn, node)?;
            if *asn == 0 {
                return refuse(
                    BgpField::NodeAsn,
                    format!("node {node}: AS number must not be 0"),
                );
            }
        }
        // Sessions are keyed by address: a second entry for the same router on the same node
        // would replace the first rather than add a session.
        let mut seen: BTreeMap<IpAddr, (bool, BTreeSet<&str>)> = BTreeMap::new();
        for p in &self.peers {
            let a = p.address;
            if p.asn == 0 {
                return refuse(
                    BgpField::PeerAsn,
                    format!("peer {a}: AS number must not be 0"),
                );
            }
            if p.password
                .as_ref()
                .is_some_and(|k| k.len() > MAX_MD5_PASSWORD_LEN)
            {
                return refuse(
                    BgpField::PeerPassword,
                    format!("peer {a}: TCP-MD5 passwords are at most {MAX_MD5_PASSWORD_LEN} bytes"),
                );
            }
            let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
            if a.is_unspecified() || a.is_multicast() || broadcast {
                return refuse(
                    BgpField::PeerAddress,
                    format!("peer {a} is not a unicast address"),
                );
            }
            if let Some(n) = &p.node {
                node_name(BgpField::PeerNode, n)?;
            }
            let (every, nodes) = seen.entry(a).or_default();
            let clash = match p.node.as_deref() {
                None => *every || !nodes.is_empty(),
                Some(n) => *every || !nodes.insert(n),
            };
            if clash {
                return refuse(
                    BgpField::PeerAddress,
                    format!("peer {a} is listed twice for the same node"),
                );
            }
            *every |= p.node.is_none();
        }
        for a in &self.allowed_prefixes {
            if a.addr() != a.network() {
                return refuse(
                    BgpField::AllowedPrefixes,
                    format!("allowed prefix {a} has host bits set"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> v1::BgpBackend {
        v1::BgpBackend {
            asn: 64512,
            ..Default::default()
        }
    }

    fn peer(address: &str, node: &str) -> v1::BgpPeer {
        v1::BgpPeer {
            address: address.into(),
            asn: 64500,
            password: String::new(),
            node: node.into(),
        }
    }

    fn refused(f: impl FnOnce(&mut v1::BgpBackend)) -> BgpSettingsError {
        let mut b = wire();
        f(&mut b);
        bgp_from_proto(&b).expect_err("must be refused")
    }

    #[test]
    fn zero_values_mean_the_defaults() {
        let s = bgp_from_proto(&wire()).expect("valid");
        assert_eq!(
            s,
            BgpSettings {
                asn: 64512,
                ..Default::default()
            }
        );
        assert_eq!(s.hold_time, BGP_HOLD_TIME);
        assert!(s.mesh);
    }

    #[test]
    fn everything_parsed_and_normalised() {
        let mut b = wire();
        b.no_mesh = true;
        b.route_reflectors = vec![" rr-2".into(), "rr-1".into(), "rr-2".into(), " ".into()];
        b.cluster_id = " 10.0.0.1 ".into();
        b.hold_time = 30;
        b.peers = vec![
            v1::BgpPeer {
                password: "k".into(),
                ..peer(" 192.0.2.254", "")
            },
            peer("2001:db8::1", " n3 "),
        ];
        b.node_asn.insert("n2".into(), 64602);
        b.allowed_prefixes = vec!["0.0.0.0/0".into()];
        let s = bgp_from_proto(&b).expect("valid");
        assert!(!s.mesh);
        assert_eq!(s.route_reflectors, ["rr-1", "rr-2"]);
        assert_eq!(s.cluster_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(s.hold_time, 30);
        assert_eq!(s.peers[0].password.as_deref(), Some("k"));
        assert_eq!(s.peers[0].node, None);
        assert_eq!(s.peers[1].node.as_deref(), Some("n3"));
        assert_eq!(s.node_asn.get("n2"), Some(&64602));
        assert_eq!(
            s.allowed_prefixes,
            ["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(bgp_from_proto(&bgp_to_proto(&s)), Ok(s));
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases: Vec<(BgpSettingsError, BgpField, &str)> = vec![
            (
                refused(|b| b.asn = 0),
                BgpField::Asn,
                "AS number must not be 0",
            ),
            (
                refused(|b| b.hold_time = 2),
                BgpField::HoldTime,
                "at least 3",
            ),
            (
                refused(|b| b.hold_time = 70_000),
                BgpField::HoldTime,
                "65535",
            ),
            (
                refused(|b| b.cluster_id = "reflector".into()),
                BgpField::ClusterId,
                "\"reflector\" is not an IPv4 address",
            ),
            (
                refused(|b| b.peers.push(peer("192.0.2.300", ""))),
                BgpField::PeerAddress,
                "\"192.0.2.300\" is not an IP address",
            ),
            (
                refused(|b| b.peers.push(peer("224.0.0.5", ""))),
                BgpField::PeerAddress,
                "not a unicast address",
            ),
            (
                refused(|b| b.peers.push(peer("255.255.255.255", ""))),
                BgpField::PeerAddress,
                "not a unicast address",
            ),
            (
                refused(|b| {
                    b.peers.push(v1::BgpPeer {
                        asn: 0,
                        ..peer("192.0.2.254", "")
                    })
                }),
                BgpField::PeerAsn,
                "AS number must not be 0",
            ),
            (
                refused(|b| {
                    b.peers.push(v1::BgpPeer {
                        password: "x".repeat(81),
                        ..peer("192.0.2.254", "")
                    })
                }),
                BgpField::PeerPassword,
                "at most 80 bytes",
            ),
            (
                refused(|b| b.peers.push(peer("192.0.2.254", "Node_3"))),
                BgpField::PeerNode,
                "invalid node name \"Node_3\"",
            ),
            (
                refused(|b| b.route_reflectors.push("rr 1".into())),
                BgpField::RouteReflectors,
                "invalid node name \"rr 1\"",
            ),
            (
                refused(|b| {
                    b.node_asn.insert("N2".into(), 64602);
                }),
                BgpField::NodeAsn,
                "invalid node name \"N2\"",
            ),
            (
                refused(|b| {
                    b.node_asn.insert("n2".into(), 0);
                }),
                BgpField::NodeAsn,
                "AS number must not be 0",
            ),
            (
                refused(|b| b.allowed_prefixes.push("10.1.2.3/8".into())),
                BgpField::AllowedPrefixes,
                "host bits",
            ),
            (
                refused(|b| b.allowed_prefixes.push("2001:db8::/32".into())),
                BgpField::AllowedPrefixes,
                "not an IPv4 CIDR",
            ),
        ];
        for (e, field, want) in cases {
            assert_eq!(e.field, field, "{e}");
            assert!(e.why.contains(want), "want {want:?}: {e}");
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        }
    }

    #[test]
    fn one_router_twice_for_the_same_node_is_refused() {
        for (a, b) in [("", ""), ("", "n1"), ("n1", ""), ("n1", "n1")] {
            let e = refused(|s| s.peers = vec![peer("192.0.2.254", a), peer("192.0.2.254", b)]);
            assert_eq!(e.field, BgpField::PeerAddress, "{a:?} {b:?}: {e}");
        }
    }

    #[test]
    fn one_address_per_rack_is_accepted_for_different_nodes() {
        let mut b = wire();
        b.peers = vec![peer("192.0.2.254", "n1"), peer("192.0.2.254", "n2")];
        assert!(bgp_from_proto(&b).is_ok());
    }

    #[test]
    fn typed_settings_are_checked_like_wire_ones() {
        let s = BgpSettings {
            asn: 64512,
            route_reflectors: vec!["RR".into()],
            ..Default::default()
        };
        assert_eq!(
            s.validate().map_err(|e| e.field),
            Err(BgpField::RouteReflectors)
        );
        let s = BgpSettings {
            asn: 64512,
            hold_time: 0,
            ..Default::default()
        };
        assert_eq!(s.validate(), Ok(()), "0 turns keepalives off");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let p = BgpPeer {
            address: "192.0.2.254".parse().unwrap(),
            asn: 64500,
            password: Some("s3cret".into()),
            node: None,
        };
        assert!(!format!("{p:?}").contains("s3cret"));
    }
}
