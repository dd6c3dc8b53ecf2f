//! Choosing the node's public interface and address, as flannel does: `--iface`, else the
//! first interface matching `--iface-regex`, else the one holding `--public-ip`, else the
//! interface of the default route. Multi-homed nodes are normal; the choice is logged.

use std::net::Ipv4Addr;

use crate::desired::{FactsV6, LocalFacts};
use crate::reconcile::{Kernel, KernelError};

#[derive(Clone, Debug, Default)]
pub struct Choice {
    pub iface: Option<String>,
    pub iface_regex: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0:?} has no IPv4 address")]
    NoAddress(String),
    #[error("--iface-regex {0:?} is not a valid pattern: {1}")]
    BadRegex(String, String),
    #[error("no interface matches --iface-regex {0:?}")]
    NoMatch(String),
    #[error("public IP {0} is on no interface of this node")]
    PublicIpNotLocal(Ipv4Addr),
    #[error("public IP {ip} is not on interface {iface}")]
    PublicIpNotOnIface { ip: Ipv4Addr, iface: String },
    #[error("no default route to pick the public interface from; give --iface or --public-ip")]
    NoDefaultRoute,
}

pub async fn discover(k: &Kernel, c: &Choice) -> Result<LocalFacts, FactsError> {
    let ifaces = k.interfaces().await?;
    let find = |name: &str| ifaces.iter().find(|(n, _, _)| n == name);
    let (name, mtu, nets) = if let Some(i) = &c.iface {
        find(i)
            .ok_or_else(|| FactsError::NoSuchInterface(i.clone()))?
            .clone()
    } else if let Some(re) = &c.iface_regex {
        let rx =
            regex::Regex::new(re).map_err(|e| FactsError::BadRegex(re.clone(), e.to_string()))?;
        ifaces
            .iter()
            .find(|i| i.0 != "lo" && rx.is_match(&i.0) && !i.2.is_empty())
            .cloned()
            .ok_or_else(|| FactsError::NoMatch(re.clone()))?
    } else if let Some(ip) = c.public_ip {
        ifaces
            .iter()
            .find(|(_, _, nets)| nets.iter().any(|n| n.addr() == ip))
            .cloned()
            .ok_or(FactsError::PublicIpNotLocal(ip))?
    } else {
        let name = k
            .default_route_iface()
            .await?
            .ok_or(FactsError::NoDefaultRoute)?;
        find(&name)
            .ok_or(FactsError::NoSuchInterface(name.clone()))?
            .clone()
    };
    let public_ip = match c.public_ip {
        Some(ip) => {
            if !ifaces
                .iter()
                .any(|(_, _, n)| n.iter().any(|n| n.addr() == ip))
            {
                return Err(FactsError::PublicIpNotLocal(ip));
            }
            if !nets.iter().any(|n| n.addr() == ip) {
                return Err(FactsError::PublicIpNotOnIface { ip, iface: name });
            }
            ip
        }
        None => nets
            .first()
            .map(|n| n.addr())
            .ok_or_else(|| FactsError::NoAddress(name.clone()))?,
    };
    let v6 = ipv6_side(k, &name).await?;
    Ok(LocalFacts {
        iface: name,
        mtu,
        public_ip,
        connected: nets.iter().map(|n| n.trunc()).collect(),
        v6,
    })
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
