//! Choosing the node's public interface and address, as flannel does: each `--iface` (a name
//! or an IPv4 address) in the order given, then each `--iface-regex` in order, then the route
//! to `--iface-can-reach`; the first that finds an interface with an IPv4 address wins, and
//! when some were given and none finds one, that is an error. With none of them, the
//! interface holding `--public-ip`, else the interface of the default route.
//!
//! `--public-ip` is what other nodes use to reach this one (published in the lease). It may be
//! on no local interface (a NAT'd host); then the chosen interface's own address is still the
//! local one (the VXLAN device's `local`, the on-segment checks).
//!
//! The choice is re-run when the kernel's addresses change and at every resync, so the node
//! follows a changed address (see the agent). The choosing itself is [`choose`], a plain
//! function of the interfaces and route lookups; [`discover`] feeds it from the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use regex::Regex;
use rtnetlink::RouteMessageBuilder;

use crate::desired::{FactsV6, LocalFacts};
use crate::reconcile::{is_twill_device, Kernel, KernelError};

/// An interface as [`Kernel::interfaces`] reports it: name, MTU, IPv4 prefixes.
pub type Iface = (String, u32, Vec<Ipv4Net>);

/// The agent's interface flags.
#[derive(Clone, Debug, Default)]
pub struct Choice {
    /// `--iface`: interface names or IPv4 addresses, tried in order.
    pub iface: Vec<String>,
    /// `--iface-regex`: patterns tried in order, each against addresses, then names.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`: the interface the kernel would use to reach this address.
    pub can_reach: Option<Ipv4Addr>,
    /// `--public-ip`: the address published for other nodes.
    pub public_ip: Option<Ipv4Addr>,
}

impl Choice {
    /// Whether a flag names what to look for (otherwise the default route decides).
    fn selects(&self) -> bool {
        !self.iface.is_empty() || !self.iface_regex.is_empty() || self.can_reach.is_some()
    }
}

/// Why the interface was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// This `--iface` value (a name or an address) matched.
    Iface(String),
    /// This `--iface-regex` matched a name or an address.
    IfaceRegex(String),
    /// The route to this `--iface-can-reach` address leaves through it.
    CanReach(Ipv4Addr),
    /// It holds `--public-ip`.
    PublicIp,
    /// The default route leaves through it.
    DefaultRoute,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Iface(v) => write!(f, "--iface {v}"),
            Reason::IfaceRegex(r) => write!(f, "--iface-regex {r}"),
            Reason::CanReach(ip) => write!(f, "--iface-can-reach {ip}"),
            Reason::PublicIp => f.write_str("--public-ip"),
            Reason::DefaultRoute => f.write_str("default route"),
        }
    }
}

/// The outcome: the facts the dataplane uses, and why this interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub facts: LocalFacts,
    pub reason: Reason,
}

/// The lease's backend_data keys that carry the choice (the controller takes values up to
/// 256 bytes; a long regex in the reason is cut to stay well inside that).
pub const KEY_IFACE: &str = "public_iface";
pub const KEY_ADDR: &str = "public_iface_addr";
pub const KEY_REASON: &str = "public_iface_reason";
const MAX_REASON: usize = 160;

impl Selection {
    /// The lease's backend_data entries describing the choice.
    pub fn backend_data(&self) -> BTreeMap<String, String> {
        let mut reason = self.reason.to_string();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON - 3;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push_str("...");
        }
        [
            (KEY_IFACE, self.facts.iface.clone()),
            (KEY_ADDR, self.facts.local_ip.to_string()),
            (KEY_REASON, reason),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Labels of the `twill_agent_public_interface` info gauge.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("iface", self.facts.iface.clone()),
            ("address", self.facts.local_ip.to_string()),
            ("public_ip", self.facts.public_ip.to_string()),
            ("reason", self.reason.to_string()),
        ]
    }

    /// Logs the choice at INFO with `what` as the message.
    pub fn log(&self, what: &str) {
        let f = &self.facts;
        tracing::info!(iface = %f.iface, address = %f.local_ip, public_ip = %f.public_ip, mtu = f.mtu, reason = %self.reason, "{what}");
    }
}

/// Where the kernel would send traffic for an address (`ip route get`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteHit {
    pub iface: String,
    /// The preferred source address (`src` in `ip route get`'s answer).
    pub src: Option<Ipv4Addr>,
}

/// What a choice may need from the kernel besides the interfaces.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// The route to `--iface-can-reach`'s address, or why there is none.
    pub can_reach: Option<Result<RouteHit, String>>,
    /// The default route's interface.
    pub default_iface: Option<String>,
}

/// One flag value that found nothing, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    NoSuchInterface(String),
    NoAddress(String),
    NoSuchAddress(Ipv4Addr),
    NoMatch(String),
    Unreachable { ip: Ipv4Addr, why: String },
    Local(Ipv4Addr),
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::NoSuchInterface(n) => write!(f, "interface {n:?} does not exist"),
            Miss::NoAddress(n) => write!(f, "interface {n:?} has no IPv4 address"),
            Miss::NoSuchAddress(ip) => write!(f, "no interface has the address {ip}"),
            Miss::NoMatch(re) => write!(
                f,
                "no interface matches --iface-regex {re:?} (by IPv4 address or name)"
            ),
            Miss::Unreachable { ip, why } => {
                write!(f, "--iface-can-reach {ip}: no route ({why})")
            }
            Miss::Local(ip) => write!(
                f,
                "--iface-can-reach {ip} is an address of this node; give another node's"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("no interface for node-to-node traffic: {}", join(.0))]
    NoInterface(Vec<Miss>),
    #[error("--iface-regex {0:?} is not a valid pattern: {1}")]
    BadRegex(String, String),
    #[error("public IP {ip} is on interface {holder}, not on the chosen interface {iface} ({reason}); choose {holder}, or give an address that is on no interface of this node (a NAT'd address)")]
    PublicIpNotOnIface {
        ip: Ipv4Addr,
        iface: String,
        holder: String,
        reason: Reason,
    },
    #[error("no default route to pick the public interface from; give --iface, --iface-regex, --iface-can-reach or --public-ip")]
    NoDefaultRoute,
}

fn join(m: &[Miss]) -> String {
    m.iter().map(Miss::to_string).collect::<Vec<_>>().join("; ")
}

/// Compiles the patterns in order; the first bad one is the error.
pub fn compile(patterns: &[String]) -> Result<Vec<Regex>, FactsError> {
    patterns
        .iter()
        .map(|p| Regex::new(p).map_err(|e| FactsError::BadRegex(p.clone(), e.to_string())))
        .collect()
}

/// An interface and, when the flag named one, the address on it to use.
struct Pick<'a> {
    iface: &'a Iface,
    addr: Option<Ipv4Addr>,
    reason: Reason,
}

fn holding(ifaces: &[Iface], ip: Ipv4Addr) -> Option<&Iface> {
    ifaces
        .iter()
        .find(|(_, _, nets)| nets.iter().any(|n| n.addr() == ip))
}

/// The interface called `name` if it has an IPv4 address; otherwise why not.
fn named<'a>(ifaces: &'a [Iface], name: &str) -> Result<&'a Iface, Miss> {
    match ifaces.iter().find(|i| i.0 == name) {
        None => Err(Miss::NoSuchInterface(name.to_string())),
        Some(i) if i.2.is_empty() => Err(Miss::NoAddress(name.to_string())),
        Some(i) => Ok(i),
    }
}

/// `--iface`: the first value that is an interface with an IPv4 address, or an address of one.
fn by_iface<'a>(
    ifaces: &'a [Iface],
    values: &[String],
    misses: &mut Vec<Miss>,
) -> Option<Pick<'a>> {
    for v in values {
        let found = match v.parse::<Ipv4Addr>() {
            Ok(ip) => holding(ifaces, ip)
                .map(|i| (i, Some(ip)))
                .ok_or(Miss::NoSuchAddress(ip)),
            Err(_) => named(ifaces, v).map(|i| (i, None)),
        };
        match found {
            Ok((iface, addr)) => {
                return Some(Pick {
                    iface,
                    addr,
                    reason: Reason::Iface(v.clone()),
                })
            }
            Err(m) => misses.push(m),
        }
    }
    None
}

/// Interfaces a pattern may pick: never loopback, never twill's own devices.
fn candidates(ifaces: &[Iface]) -> impl Iterator<Item = &Iface> {
    ifaces
        .iter()
        .filter(|i| i.0 != "lo" && !is_twill_device(&i.0) && !i.2.is_empty())
}

/// `--iface-regex`: per pattern in order, the first address it matches, else the first name.
fn by_regex<'a>(
    ifaces: &'a [Iface],
    patterns: &[Regex],
    misses: &mut Vec<Miss>,
) -> Option<Pick<'a>> {
    for re in patterns {
        let reason = || Reason::IfaceRegex(re.as_str().to_string());
        let by_addr = candidates(ifaces).find_map(|i| {
            i.2.iter()
                .map(|n| n.addr())
                .find(|a| !a.is_loopback() && re.is_match(&a.to_string()))
                .map(|a| (i, a))
        });
        if let Some((iface, a)) = by_addr {
            return Some(Pick {
                iface,
                addr: Some(a),
                reason: reason(),
            });
        }
        if let Some(iface) = candidates(ifaces).find(|i| re.is_match(&i.0)) {
            return Some(Pick {
                iface,
                addr: None,
                reason: reason(),
            });
        }
        misses.push(Miss::NoMatch(re.as_str().to_string()));
    }
    None
}

/// `--iface-can-reach`: the interface of the route to the address, with its source address.
fn by_route<'a>(
    ifaces: &'a [Iface],
    ip: Option<Ipv4Addr>,
    hit: Option<&Result<RouteHit, String>>,
    misses: &mut Vec<Miss>,
) -> Option<Pick<'a>> {
    let ip = ip?;
    let found = match hit {
        None => Err(Miss::Unreachable {
            ip,
            why: "not looked up".into(),
        }),
        Some(Err(why)) => Err(Miss::Unreachable {
            ip,
            why: why.clone(),
        }),
        Some(Ok(h)) if h.iface == "lo" => Err(Miss::Local(ip)),
        Some(Ok(h)) => named(ifaces, &h.iface).map(|i| (i, h.src)),
    };
    match found {
        Ok((iface, src)) => Some(Pick {
            iface,
            addr: src.filter(|s| iface.2.iter().any(|n| n.addr() == *s)),
            reason: Reason::CanReach(ip),
        }),
        Err(m) => {
            misses.push(m);
            None
        }
    }
}

/// Chooses the interface and addresses from the node's interfaces and route lookups.
pub fn choose(ifaces: &[Iface], c: &Choice, routes: &Routes) -> Result<Selection, FactsError> {
    let patterns = compile(&c.iface_regex)?;
    let mut misses = Vec::new();
    let mut pick = by_iface(ifaces, &c.iface, &mut misses);
    if pick.is_none() {
        pick = by_regex(ifaces, &patterns, &mut misses);
    }
    if pick.is_none() {
        pick = by_route(ifaces, c.can_reach, routes.can_reach.as_ref(), &mut misses);
    }
    let pick = match pick {
        Some(p) => p,
        None if c.selects() => return Err(FactsError::NoInterface(misses)),
        None => match c.public_ip.and_then(|ip| holding(ifaces, ip)) {
            Some(iface) => Pick {
                iface,
                addr: c.public_ip,
                reason: Reason::PublicIp,
            },
            None => {
                let name = routes
                    .default_iface
                    .as_deref()
                    .ok_or(FactsError::NoDefaultRoute)?;
                Pick {
                    iface: named(ifaces, name).map_err(|m| FactsError::NoInterface(vec![m]))?,
                    addr: None,
                    reason: Reason::DefaultRoute,
                }
            }
        },
    };
    finish(ifaces, pick, c.public_ip)
}

/// The local and public addresses for the picked interface.
fn finish(
    ifaces: &[Iface],
    pick: Pick<'_>,
    public_ip: Option<Ipv4Addr>,
) -> Result<Selection, FactsError> {
    let (name, mtu, nets) = pick.iface;
    let on_iface = |ip: Ipv4Addr| nets.iter().any(|n| n.addr() == ip);
    if let Some(ip) = public_ip.filter(|ip| !on_iface(*ip)) {
        if let Some(other) = holding(ifaces, ip) {
            return Err(FactsError::PublicIpNotOnIface {
                ip,
                iface: name.clone(),
                holder: other.0.clone(),
                reason: pick.reason,
            });
        }
    }
    let local_ip = pick
        .addr
        .or(public_ip.filter(|ip| on_iface(*ip)))
        .or(nets.first().map(|n| n.addr()))
        .ok_or_else(|| FactsError::NoInterface(vec![Miss::NoAddress(name.clone())]))?;
    Ok(Selection {
        facts: LocalFacts {
            iface: name.clone(),
            mtu: *mtu,
            local_ip,
            public_ip: public_ip.unwrap_or(local_ip),
            connected: nets.iter().map(|n| n.trunc()).collect(),
            // Filled from the kernel by `discover`: addresses of the other family.
            v6: None,
        },
        reason: pick.reason,
    })
}

/// Reads the interfaces and the routes the flags need from the kernel, and chooses.
pub async fn discover(k: &Kernel, c: &Choice) -> Result<Selection, FactsError> {
    let ifaces = k.interfaces().await?;
    let routes = Routes {
        can_reach: match c.can_reach {
            Some(ip) => Some(route_to(ip).await),
            None => None,
        },
        default_iface: if c.selects() {
            None
        } else {
            k.default_route_iface().await?
        },
    };
    let mut selection = choose(&ifaces, c, &routes)?;
    selection.facts.v6 = ipv6_side(k, &selection.facts.iface).await?;
    Ok(selection)
}

/// The chosen interface's IPv6 side: its first global IPv6 address and connected prefixes, or
/// `None` when it has none (the node then takes part in IPv4 only).
pub async fn ipv6_side(k: &Kernel, iface: &str) -> Result<Option<FactsV6>, FactsError> {
    let nets = k.ipv6_addresses(iface).await?;
    Ok(nets.first().map(|first| FactsV6 {
        public_ip: first.addr(),
        connected: nets.iter().map(|n| n.trunc()).collect(),
    }))
}

/// `ip route get <dst>`: a route lookup (RTM_GETROUTE with the destination), on a connection
/// of its own so the reconciler's is not shared.
pub async fn route_to(dst: Ipv4Addr) -> Result<RouteHit, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let hit = async {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let routes: Vec<_> = handle.route().get(msg).execute().try_collect().await?;
        let attrs = routes.iter().flat_map(|r| r.attributes.iter());
        let (mut oif, mut src) = (None, None);
        for a in attrs {
            match a {
                RouteAttribute::Oif(i) => oif = oif.or(Some(*i)),
                RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = src.or(Some(*ip)),
                _ => {}
            }
        }
        let Some(oif) = oif else {
            return Ok(None);
        };
        let link = handle
            .link()
            .get()
            .match_index(oif)
            .execute()
            .try_next()
            .await?;
        let iface = link.and_then(|l| {
            l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        });
        Ok::<_, rtnetlink::Error>(iface.map(|iface| RouteHit { iface, src }))
    }
    .await;
    task.abort();
    match hit {
        Ok(Some(h)) => Ok(h),
        Ok(None) => Err("the kernel answered without an interface".into()),
        Err(rtnetlink::Error::NetlinkError(m)) => Err(m.to_io().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The kernel's rule for interface names: 1 to 15 bytes, no '/', ':' or whitespace, not "." or
/// "..".
pub fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// clap's check of an `--iface` value: an IPv4 address or a possible interface name.
pub fn parse_iface(s: &str) -> Result<String, String> {
    if s.parse::<Ipv4Addr>().is_ok() {
        return Ok(s.to_string());
    }
    if is_ifname(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is neither an IPv4 address nor an interface name (1 to 15 bytes, no '/', ':' or spaces)"
        ))
    }
}

/// clap's check of an `--iface-regex` value.
pub fn parse_regex(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("an empty pattern would match every interface; give one".into());
    }
    Regex::new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a valid regular expression: {e}"))
}

/// clap's check of an address that must name one host (`--public-ip`, `--iface-can-reach`).
pub fn parse_host(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(format!(
            "{ip} is not a host's address (unspecified, loopback, multicast or broadcast)"
        ));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifaces() -> Vec<Iface> {
        let i = |name: &str, nets: &[&str]| -> Iface {
            (
                name.to_string(),
                1500,
                nets.iter().map(|n| n.parse().unwrap()).collect(),
            )
        };
        vec![
            i("lo", &["127.0.0.1/8"]),
            i("eth0", &["192.0.2.1/24"]),
            i("eth1", &["198.51.100.1/24", "198.51.100.7/24"]),
            i("ens5", &[]),
            i("twill.1", &["10.244.1.0/32"]),
            i("cni0", &["10.244.1.1/24"]),
        ]
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The choice as "iface local public (reason)", or the error's message.
    fn pick(c: &Choice) -> Result<String, String> {
        let hit = |iface: &str, src: &str| {
            Ok(RouteHit {
                iface: iface.into(),
                src: Some(ip(src)),
            })
        };
        let routes = Routes {
            can_reach: c.can_reach.map(|t| match t.to_string().as_str() {
                "203.0.113.1" => Err("Network is unreachable".to_string()),
                "192.0.2.1" => hit("lo", "192.0.2.1"),
                _ => hit("eth1", "198.51.100.7"),
            }),
            default_iface: Some("eth0".into()),
        };
        choose(&ifaces(), c, &routes)
            .map(|s| {
                let f = &s.facts;
                format!("{} {} {} ({})", f.iface, f.local_ip, f.public_ip, s.reason)
            })
            .map_err(|e| e.to_string())
    }

    fn ok(c: Choice) -> String {
        pick(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"))
    }

    fn err(c: Choice) -> String {
        pick(&c).expect_err("no choice")
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn ifc(vals: &[&str]) -> Choice {
        Choice {
            iface: v(vals),
            ..Default::default()
        }
    }

    fn regex(vals: &[&str]) -> Choice {
        Choice {
            iface_regex: v(vals),
            ..Default::default()
        }
    }

    fn reach(t: &str) -> Choice {
        Choice {
            can_reach: Some(ip(t)),
            ..Default::default()
        }
    }

    fn public(p: &str, c: Choice) -> Choice {
        Choice {
            public_ip: Some(ip(p)),
            ..c
        }
    }

    #[test]
    fn nothing_given_is_the_default_route() {
        assert_eq!(
            ok(Choice::default()),
            "eth0 192.0.2.1 192.0.2.1 (default route)"
        );
        let none = Routes::default();
        assert!(matches!(
            choose(&ifaces(), &Choice::default(), &none),
            Err(FactsError::NoDefaultRoute)
        ));
    }

    #[test]
    fn iface_values_are_names_or_addresses_tried_in_order() {
        assert_eq!(
            ok(ifc(&["eth1"])),
            "eth1 198.51.100.1 198.51.100.1 (--iface eth1)",
            "a name: its first address"
        );
        assert_eq!(
            ok(ifc(&["nope0", "ens5", "198.51.100.7", "eth0"])),
            "eth1 198.51.100.7 198.51.100.7 (--iface 198.51.100.7)",
            "a missing name and one without IPv4 are skipped; an address picks its interface and itself"
        );
        let e = err(ifc(&["nope0", "ens5", "203.0.113.5"]));
        assert!(
            e.contains("interface \"nope0\" does not exist")
                && e.contains("interface \"ens5\" has no IPv4 address")
                && e.contains("no interface has the address 203.0.113.5"),
            "{e}"
        );
    }

    #[test]
    fn regex_matches_addresses_then_names_never_lo_or_twill_devices() {
        assert_eq!(
            ok(regex(&["^eth"])),
            "eth0 192.0.2.1 192.0.2.1 (--iface-regex ^eth)",
            "the first name in kernel order"
        );
        assert_eq!(
            ok(regex(&[r"^198\.51\.100\.7$"])),
            r"eth1 198.51.100.7 198.51.100.7 (--iface-regex ^198\.51\.100\.7$)"
        );
        assert!(ok(regex(&["^zz", "1$"])).ends_with("(--iface-regex 1$)"));
        // "lo", 127.0.0.1, "twill.1" and 10.244.1.0 are never candidates; ens5 has no address.
        for re in ["^lo$", "^127", r"^twill\.", r"^10\.244\.1\.0$", "^ens"] {
            let e = err(regex(&[re]));
            assert!(
                e.contains("no interface matches --iface-regex"),
                "{re}: {e}"
            );
        }
        assert!(err(regex(&["("])).contains("is not a valid pattern"));
    }

    #[test]
    fn can_reach_takes_the_routes_interface_and_source() {
        assert_eq!(
            ok(reach("198.51.100.9")),
            "eth1 198.51.100.7 198.51.100.7 (--iface-can-reach 198.51.100.9)"
        );
        assert!(err(reach("203.0.113.1")).contains("no route (Network is unreachable)"));
        assert!(err(reach("192.0.2.1")).contains("is an address of this node"));
    }

    #[test]
    fn precedence_is_iface_then_regex_then_can_reach_and_given_flags_never_fall_to_default() {
        let all = |i: &[&str], r: &[&str], t: &str| Choice {
            iface: v(i),
            iface_regex: v(r),
            ..reach(t)
        };
        let reason = |c: Choice| ok(c).split_once(" (").map(|x| x.1.to_string());
        let r = reason(all(&["eth0"], &["^eth1"], "198.51.100.9"));
        assert_eq!(r.as_deref(), Some("--iface eth0)"));
        let r = reason(all(&["nope0"], &["^eth1"], "198.51.100.9"));
        assert_eq!(r.as_deref(), Some("--iface-regex ^eth1)"));
        let r = reason(all(&["nope0"], &["^zz"], "198.51.100.9"));
        assert_eq!(r.as_deref(), Some("--iface-can-reach 198.51.100.9)"));
        let e = err(all(&["nope0"], &["^zz"], "203.0.113.1"));
        assert!(
            e.starts_with("no interface for node-to-node traffic: interface \"nope0\"")
                && e.contains("^zz")
                && e.contains("203.0.113.1"),
            "every miss is named, and the default route is not used: {e}"
        );
        // A bad pattern is an error even when --iface would have matched first.
        let e = err(all(&["eth0"], &["[a-"], "198.51.100.9"));
        assert!(e.contains("is not a valid pattern"), "{e}");
    }

    #[test]
    fn public_ip_is_published_and_may_be_on_no_interface() {
        // On the chosen interface: it is also the local address.
        assert_eq!(
            ok(public("198.51.100.7", ifc(&["eth1"]))),
            "eth1 198.51.100.7 198.51.100.7 (--iface eth1)"
        );
        // NAT'd: local stays the interface's, the lease gets the public one.
        assert_eq!(
            ok(public("203.0.113.9", ifc(&["eth1"]))),
            "eth1 198.51.100.1 203.0.113.9 (--iface eth1)"
        );
        // Alone: the interface holding it, else the default route's.
        assert_eq!(
            ok(public("198.51.100.7", Choice::default())),
            "eth1 198.51.100.7 198.51.100.7 (--public-ip)"
        );
        assert_eq!(
            ok(public("203.0.113.9", Choice::default())),
            "eth0 192.0.2.1 203.0.113.9 (default route)"
        );
    }

    #[test]
    fn a_public_ip_on_another_local_interface_contradicts_the_choice() {
        let e = err(public("198.51.100.7", regex(&["^eth0$"])));
        assert!(
            e.contains("public IP 198.51.100.7 is on interface eth1, not on the chosen interface eth0 (--iface-regex ^eth0$)"),
            "{e}"
        );
    }

    #[test]
    fn backend_data_stays_within_the_controllers_limits() {
        let long = format!("^({})$", "eth0|".repeat(200));
        let s = choose(&ifaces(), &regex(&[&long]), &Routes::default()).unwrap();
        let d = s.backend_data();
        assert_eq!(d[KEY_IFACE], "eth0");
        assert_eq!(d[KEY_ADDR], "192.0.2.1");
        assert!(
            d[KEY_REASON].starts_with("--iface-regex ^(eth0|") && d[KEY_REASON].ends_with("...")
        );
        for (k, v) in &d {
            assert!(k.len() <= twill_proto::MAX_BACKEND_KEY && v.len() <= MAX_REASON);
        }
        assert!(d.len() < twill_proto::MAX_BACKEND_ENTRIES, "with vtep_mac");
    }

    #[test]
    fn flag_values_are_checked_when_parsed() {
        assert!(parse_iface("eth0").is_ok() && parse_iface("192.0.2.1").is_ok());
        for bad in ["", "a/b", "way-too-long-name0", "eth 0"] {
            assert!(parse_iface(bad).is_err(), "{bad:?}");
        }
        assert!(parse_regex("^ens[0-9]+").is_ok());
        assert!(parse_regex("(")
            .unwrap_err()
            .contains("not a valid regular expression"));
        assert!(parse_regex("").is_err());
        assert_eq!(parse_host("192.0.2.9"), Ok(ip("192.0.2.9")));
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "eth0",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }
}
