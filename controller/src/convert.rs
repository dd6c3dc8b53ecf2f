//! The public API's messages to and from the allocator's types, and allocator errors to gRPC
//! statuses. Everything parsed from the wire is checked here, so the state machine only ever
//! sees well-formed commands.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use tonic::{Code, Status};
use twill_proto::defaults::{VXLAN_PORT, VXLAN_VNI};
use twill_proto::names::{quote, validate_node_name};
use twill_proto::settings::{bgp_from_proto, bgp_to_proto};
use twill_proto::v1;
use twill_proto::{MAX_BACKEND_ENTRIES, MAX_BACKEND_KEY, MAX_BACKEND_VALUE, MAX_REQUEST_ID};

use crate::allocator::{
    AcquireArgs, AllocError, Backend, Event, Ipv6Config, Lease, NetworkConfig, RevEvent,
    DEFAULT_LEASE_TTL_MS,
};
use crate::trust::TrustError;

#[derive(Debug, thiserror::Error)]
#[error("{field}: {why}")]
pub struct InputError {
    pub field: &'static str,
    pub why: String,
}

impl From<InputError> for Status {
    fn from(e: InputError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

fn bad(field: &'static str, why: impl Into<String>) -> InputError {
    InputError {
        field,
        why: why.into(),
    }
}

fn cidr4(field: &'static str, s: &str) -> Result<Ipv4Net, InputError> {
    s.trim().parse::<Ipv4Net>().map_err(|_| {
        bad(
            field,
            format!("{} is not an IPv4 CIDR like 10.244.0.0/16", quote(s)),
        )
    })
}

fn cidr6(field: &'static str, s: &str) -> Result<Ipv6Net, InputError> {
    s.trim().parse::<Ipv6Net>().map_err(|_| {
        bad(
            field,
            format!("{} is not an IPv6 CIDR like fd00:10:244::/56", quote(s)),
        )
    })
}

fn opt<T>(s: &str, f: impl FnOnce(&str) -> Result<T, InputError>) -> Result<Option<T>, InputError> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        f(s).map(Some)
    }
}

/// Zero values stand for defaults (proto3 cannot tell unset from zero): /24 subnets, a day's
/// lease, VXLAN with flannel's VNI and port ([`twill_proto::defaults`]).
pub fn config_from_proto(p: &v1::NetworkConfig) -> Result<NetworkConfig, InputError> {
    if p.network.trim().is_empty() {
        return Err(bad("network", "required (e.g. 10.244.0.0/16)"));
    }
    let network = cidr4("network", &p.network)?;
    let addr4 = |field: &'static str| {
        move |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(field, format!("{} is not an IPv4 address", quote(s))))
        }
    };
    let subnet_len = match p.subnet_len {
        0 => 24,
        n if n > 32 => {
            return Err(bad(
                "subnet_len",
                format!("/{n} is not an IPv4 prefix length"),
            ))
        }
        n => n as u8,
    };
    let ipv6 = match opt(&p.ipv6_network, |s| cidr6("ipv6_network", s))? {
        None => None,
        Some(net) => Some(Ipv6Config {
            network: net,
            subnet_len: match p.ipv6_subnet_len {
                0 => 64,
                n if n > 128 => {
                    return Err(bad(
                        "ipv6_subnet_len",
                        format!("/{n} is not an IPv6 prefix length"),
                    ))
                }
                n => n as u8,
            },
        }),
    };
    let backend = match p.backend.as_ref().and_then(|b| b.kind.as_ref()) {
        None => Backend::Vxlan {
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            direct_routing: false,
        },
        Some(v1::backend::Kind::Vxlan(v)) => Backend::Vxlan {
            vni: if v.vni == 0 { VXLAN_VNI } else { v.vni },
            port: match v.port {
                0 => VXLAN_PORT,
                p if p > 65535 => {
                    return Err(bad("backend.vxlan.port", format!("{p} is not a UDP port")))
                }
                p => p as u16,
            },
            direct_routing: v.direct_routing,
        },
        Some(v1::backend::Kind::HostGw(_)) => Backend::HostGw,
        Some(v1::backend::Kind::Bgp(b)) => {
            Backend::Bgp(bgp_from_proto(b).map_err(|e| bad("backend.bgp", e.to_string()))?)
        }
    };
    let cfg = NetworkConfig {
        network,
        subnet_len,
        subnet_min: opt(&p.subnet_min, addr4("subnet_min"))?,
        subnet_max: opt(&p.subnet_max, addr4("subnet_max"))?,
        ipv6,
        backend,
        lease_ttl_ms: if p.lease_ttl_ms == 0 {
            DEFAULT_LEASE_TTL_MS
        } else {
            p.lease_ttl_ms
        },
    };
    cfg.validate().map_err(|e| bad("config", e.to_string()))?;
    Ok(cfg)
}

pub fn config_to_proto(c: &NetworkConfig) -> v1::NetworkConfig {
    let kind = match &c.backend {
        Backend::Vxlan {
            vni,
            port,
            direct_routing,
        } => v1::backend::Kind::Vxlan(v1::VxlanBackend {
            vni: *vni,
            port: *port as u32,
            direct_routing: *direct_routing,
        }),
        Backend::HostGw => v1::backend::Kind::HostGw(v1::HostGwBackend {}),
        Backend::Bgp(b) => v1::backend::Kind::Bgp(bgp_to_proto(b)),
    };
    v1::NetworkConfig {
        network: c.network.to_string(),
        subnet_len: c.subnet_len as u32,
        subnet_min: c.subnet_min.map(|a| a.to_string()).unwrap_or_default(),
        subnet_max: c.subnet_max.map(|a| a.to_string()).unwrap_or_default(),
        ipv6_network: c
            .ipv6
            .as_ref()
            .map(|v| v.network.to_string())
            .unwrap_or_default(),
        ipv6_subnet_len: c
            .ipv6
            .as_ref()
            .map(|v| v.subnet_len as u32)
            .unwrap_or_default(),
        backend: Some(v1::Backend { kind: Some(kind) }),
        lease_ttl_ms: c.lease_ttl_ms,
    }
}

pub fn lease_to_proto(l: &Lease) -> v1::Lease {
    v1::Lease {
        node: l.node.clone(),
        subnet: l.subnet.to_string(),
        ipv6_subnet: l.ipv6_subnet.map(|s| s.to_string()).unwrap_or_default(),
        public_ip: l.public_ip.to_string(),
        public_ipv6: l.public_ipv6.map(|s| s.to_string()).unwrap_or_default(),
        backend_data: l.backend_data.clone().into_iter().collect(),
        expires_at_ms: l.expires_at,
        create_revision: l.create_revision,
        mod_revision: l.mod_revision,
        acquired_at_ms: l.acquired_at,
        reason: l.reason.to_string(),
    }
}

pub fn event_to_proto(e: &RevEvent) -> v1::LeaseEvent {
    let mut out = v1::LeaseEvent {
        revision: e.revision,
        ..Default::default()
    };
    match &e.event {
        // A renewal is a PUT on the wire; watchers that asked to omit them are not sent it.
        Event::Put(l) | Event::Renewed(l) => {
            out.kind = v1::EventKind::Put as i32;
            out.lease = Some(lease_to_proto(l));
        }
        Event::Delete { lease, reason } => {
            out.kind = v1::EventKind::Delete as i32;
            out.lease = Some(lease_to_proto(lease));
            out.reason = reason.to_string();
        }
        Event::Config(c) => {
            out.kind = v1::EventKind::Config as i32;
            out.config = Some(config_to_proto(c));
        }
    }
    out
}

/// A node name that may create state (a lease, a reservation), checked before it is proposed
/// so a bad one never reaches the Raft log; the allocator checks it again when applying.
pub fn node_name(s: &str) -> Result<&str, InputError> {
    if s.trim().is_empty() {
        return Err(bad("node", "required"));
    }
    validate_node_name(s).map_err(|e| bad("node", e.to_string()))?;
    Ok(s)
}

pub fn acquire_args(r: &v1::AcquireRequest) -> Result<AcquireArgs, InputError> {
    node_name(&r.node)?;
    let public_ip = r.public_ip.trim().parse::<Ipv4Addr>().map_err(|_| {
        bad(
            "public_ip",
            format!("{} is not an IPv4 address", quote(&r.public_ip)),
        )
    })?;
    let public_ipv6 = opt(&r.public_ipv6, |s| {
        s.trim().parse::<Ipv6Addr>().map_err(|_| {
            bad(
                "public_ipv6",
                format!("{} is not an IPv6 address", quote(s)),
            )
        })
    })?;
    Ok(AcquireArgs {
        node: r.node.clone(),
        public_ip,
        public_ipv6,
        backend_data: backend_data(&r.backend_data)?,
        wanted_subnet: opt(&r.wanted_subnet, |s| cidr4("wanted_subnet", s))?,
        wanted_ipv6_subnet: opt(&r.wanted_ipv6_subnet, |s| cidr6("wanted_ipv6_subnet", s))?,
    })
}

/// The asking agent's instance id ("" for an agent that names none): short and plain, since it
/// is kept in the replicated state for as long as the lease lives.
pub fn instance(s: &str) -> Result<String, InputError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if s.len() > 64 || !s.chars().all(plain) {
        return Err(bad(
            "instance",
            format!("{} is not 1-64 of A-Z, a-z, 0-9, '-' and '_'", quote(s)),
        ));
    }
    Ok(s.to_string())
}

/// Backend data is opaque to the controller but copied into every lease and event: bounded in
/// entries and bytes, keys shaped like Kubernetes label names so they print cleanly.
fn backend_data(
    m: &std::collections::HashMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, InputError> {
    if m.len() > MAX_BACKEND_ENTRIES {
        return Err(bad(
            "backend_data",
            format!("{} entries; at most {MAX_BACKEND_ENTRIES}", m.len()),
        ));
    }
    for (k, v) in m {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_BACKEND_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(bad(
                "backend_data",
                format!(
                    "key {} is not 1 to {MAX_BACKEND_KEY} bytes of letters, digits, '-', '_' and '.'",
                    quote(k)
                ),
            ));
        }
        if v.len() > MAX_BACKEND_VALUE {
            return Err(bad(
                "backend_data",
                format!(
                    "the value of {} is {} bytes; at most {MAX_BACKEND_VALUE}",
                    quote(k),
                    v.len()
                ),
            ));
        }
    }
    Ok(m.clone().into_iter().collect())
}

/// A retry's request id; kept in the replicated dedupe table, so bounded. Empty: none.
pub fn request_id(s: &str) -> Result<Option<String>, InputError> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_REQUEST_ID || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "request_id",
            format!(
                "{} is not 1 to {MAX_REQUEST_ID} bytes of printable ASCII",
                quote(s)
            ),
        ));
    }
    Ok(Some(s.to_string()))
}

pub fn reserve_subnet(s: &str) -> Result<Ipv4Net, InputError> {
    cidr4("subnet", s)
}

/// The gRPC code that tells a client what to do about an allocator error.
pub fn alloc_status(e: &AllocError) -> Status {
    let code = match e {
        AllocError::NoConfig
        | AllocError::WouldOrphan(_)
        | AllocError::LeaseMismatch { .. }
        | AllocError::HeldByAnother { .. } => Code::FailedPrecondition,
        AllocError::Config(_)
        | AllocError::NodeName(_)
        | AllocError::PublicIp(_)
        | AllocError::WantedSubnet { .. }
        | AllocError::ReserveSubnet { .. } => Code::InvalidArgument,
        AllocError::Exhausted { .. } | AllocError::Exhausted6(_) => Code::ResourceExhausted,
        AllocError::NoLease(_) | AllocError::NoReservation(_) => Code::NotFound,
        AllocError::SubnetHeld { .. } | AllocError::SubnetReserved { .. } => Code::AlreadyExists,
        AllocError::Trust(t) => match t {
            TrustError::Exists(_) => Code::AlreadyExists,
            TrustError::TooMany => Code::ResourceExhausted,
            _ => Code::Unauthenticated,
        },
    };
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_instance_id_is_refused_before_it_is_proposed() {
        assert_eq!(
            instance("").ok().as_deref(),
            Some(""),
            "an older agent names none"
        );
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(instance(id).ok().as_deref(), Some(id));
        let e = instance(&"a".repeat(5 << 20)).expect_err("5 MB");
        assert_eq!(e.field, "instance");
        assert!(
            e.to_string().len() < 600,
            "the answer quotes only the start"
        );
        assert!(instance(&"a".repeat(65)).is_err());
        assert!(instance("id with space").is_err());
        assert!(instance("id\u{0}").is_err());
    }

    #[test]
    fn a_bad_node_name_is_refused_before_it_is_proposed() {
        let r = |node: String| v1::AcquireRequest {
            node,
            public_ip: "192.0.2.1".into(),
            ..Default::default()
        };
        let e = acquire_args(&r("x".repeat(5 << 20))).expect_err("too long");
        assert_eq!(e.field, "node");
        assert!(e.to_string().len() < 600, "{e}");
        let e = acquire_args(&r("Node_1".into())).expect_err("not DNS-1123");
        assert!(e.to_string().contains("\"Node_1\""), "{e}");
        assert_eq!(
            acquire_args(&r("n1".into())).map(|a| a.node).ok(),
            Some("n1".into())
        );
    }

    #[test]
    fn bgp_mistakes_name_the_field() {
        let cfg = v1::NetworkConfig {
            network: "10.244.0.0/16".into(),
            backend: Some(v1::Backend {
                kind: Some(v1::backend::Kind::Bgp(v1::BgpBackend {
                    asn: 64512,
                    peers: vec![v1::BgpPeer {
                        address: "192.0.2.300".into(),
                        asn: 64500,
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let e = config_from_proto(&cfg).expect_err("bad peer address");
        assert_eq!(
            e.to_string(),
            "backend.bgp: peers.address: \"192.0.2.300\" is not an IP address"
        );
    }

    #[test]
    fn bgp_settings_survive_the_round_trip() {
        let b = v1::BgpBackend {
            asn: 64512,
            route_reflectors: vec!["rr-1".into()],
            hold_time: 30,
            ..Default::default()
        };
        let cfg = v1::NetworkConfig {
            network: "10.244.0.0/16".into(),
            backend: Some(v1::Backend {
                kind: Some(v1::backend::Kind::Bgp(b.clone())),
            }),
            ..Default::default()
        };
        let typed = config_from_proto(&cfg).expect("valid");
        let back = config_to_proto(&typed);
        assert_eq!(
            back.backend.and_then(|k| k.kind),
            Some(v1::backend::Kind::Bgp(b))
        );
    }
}
