//! What a speaker takes from its peers and what it passes on: plain rules, decided per route.
//!
//! The import rules know who owns what. Inside a guarded range (a pod network) a prefix is
//! taken only when it is exactly a prefix someone owns (a node's leased subnet) and its next
//! hop is the owner's address; a more-specific of an owned prefix is never taken, whoever sends
//! it. So a router that announces another node's subnet, or a piece of it, cannot pull that
//! node's pod traffic towards itself, and a path that was not from the owner cannot win a
//! tie-break against the owner's.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The import rules of a speaker. The default takes everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// Ranges where only owned prefixes are taken, each only with its owner as next hop.
    pub guarded: Vec<IpNet>,
    /// Owned prefixes, each with the address that owns it.
    pub owners: BTreeMap<IpNet, IpAddr>,
    /// Where prefixes nobody owns may be taken (inside or outside the guarded ranges); `None`
    /// takes every prefix outside the guarded ranges.
    pub allow: Option<Vec<IpNet>>,
}

/// Why an announcement was refused by the import rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Outside every allowed range.
    NotAllowed,
    /// Inside a guarded range, owned by nobody and not allowed.
    Unowned,
    /// A more-specific of an owned prefix.
    MoreSpecific,
    /// An owned prefix with a next hop other than its owner.
    NotFromOwner,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::NotAllowed,
        Refusal::Unowned,
        Refusal::MoreSpecific,
        Refusal::NotFromOwner,
    ];

    /// The reason as `twill bgp status` and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::Unowned => "unowned",
            Refusal::MoreSpecific => "more_specific",
            Refusal::NotFromOwner => "not_from_owner",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn within(ranges: &[IpNet], prefix: &IpNet) -> bool {
    ranges.iter().any(|r| r.contains(prefix))
}

impl Import {
    /// Whether `prefix` announced with `next_hop` may be taken.
    pub fn check(&self, prefix: &IpNet, next_hop: IpAddr) -> Result<(), Refusal> {
        if let Some(owner) = self.owners.get(prefix) {
            return if *owner == next_hop {
                Ok(())
            } else {
                Err(Refusal::NotFromOwner)
            };
        }
        // An owned prefix covering this one is one of its shorter truncations: at most 32
        // (128) lookups, whatever the number of owners.
        let covered = (0..prefix.prefix_len()).any(|len| {
            IpNet::new(prefix.addr(), len)
                .map(|p| self.owners.contains_key(&p.trunc()))
                .unwrap_or(false)
        });
        if covered {
            return Err(Refusal::MoreSpecific);
        }
        let allowed = self.allow.as_deref().map(|a| within(a, prefix));
        if within(&self.guarded, prefix) {
            return match allowed {
                Some(true) => Ok(()),
                _ => Err(Refusal::Unowned),
            };
        }
        match allowed {
            None | Some(true) => Ok(()),
            Some(false) => Err(Refusal::NotAllowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Node A (192.0.2.1) holds 10.244.1.0/24, node B (192.0.2.2) 10.244.2.0/24; the ToR is
    /// 192.0.2.3; 10.96.0.0/12 is allowed besides the pod network.
    fn rules() -> Import {
        Import {
            guarded: vec![net("10.244.0.0/16")],
            owners: [
                (net("10.244.1.0/24"), ip("192.0.2.1")),
                (net("10.244.2.0/24"), ip("192.0.2.2")),
            ]
            .into(),
            allow: Some(vec![net("10.96.0.0/12")]),
        }
    }

    #[test]
    fn a_tor_announcing_what_it_does_not_own_is_refused() {
        let r = rules();
        let tor = ip("192.0.2.3");
        assert_eq!(r.check(&net("0.0.0.0/0"), tor), Err(Refusal::NotAllowed));
        assert_eq!(
            r.check(&net("192.168.77.0/24"), tor),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(r.check(&net("10.244.200.0/24"), tor), Err(Refusal::Unowned));
        assert_eq!(
            r.check(&net("10.244.1.0/25"), tor),
            Err(Refusal::MoreSpecific)
        );
        assert_eq!(
            r.check(&net("10.244.1.128/32"), tor),
            Err(Refusal::MoreSpecific)
        );
        assert_eq!(
            r.check(&net("10.244.2.0/24"), tor),
            Err(Refusal::NotFromOwner)
        );
        assert_eq!(r.check(&net("10.96.0.0/16"), tor), Ok(()));
        // The pod network itself is not owned by anyone.
        assert_eq!(r.check(&net("10.244.0.0/16"), tor), Err(Refusal::Unowned));
    }

    #[test]
    fn an_owned_prefix_is_taken_with_its_owner_as_next_hop_whoever_relays_it() {
        let r = rules();
        assert_eq!(r.check(&net("10.244.2.0/24"), ip("192.0.2.2")), Ok(()));
        assert_eq!(r.check(&net("10.244.1.0/24"), ip("192.0.2.1")), Ok(()));
        // Not even the owner may announce a piece of its subnet.
        assert_eq!(
            r.check(&net("10.244.2.0/25"), ip("192.0.2.2")),
            Err(Refusal::MoreSpecific)
        );
    }

    #[test]
    fn an_allowed_range_inside_the_guarded_one_admits_unowned_prefixes_only() {
        let mut r = rules();
        r.allow = Some(vec![net("10.244.0.0/16")]);
        let tor = ip("192.0.2.3");
        assert_eq!(r.check(&net("10.244.200.0/24"), tor), Ok(()));
        assert_eq!(
            r.check(&net("10.244.1.0/25"), tor),
            Err(Refusal::MoreSpecific)
        );
        assert_eq!(
            r.check(&net("10.244.2.0/24"), tor),
            Err(Refusal::NotFromOwner)
        );
    }

    #[test]
    fn the_default_takes_everything_and_no_allow_list_opens_only_the_outside() {
        assert_eq!(
            Import::default().check(&net("0.0.0.0/0"), ip("192.0.2.9")),
            Ok(())
        );
        let mut r = rules();
        r.allow = None;
        assert_eq!(r.check(&net("192.168.77.0/24"), ip("192.0.2.3")), Ok(()));
        assert_eq!(
            r.check(&net("10.244.200.0/24"), ip("192.0.2.3")),
            Err(Refusal::Unowned)
        );
        assert_eq!(
            r.check(&net("2001:db8::/64"), ip("2001:db8::1")),
            Ok(()),
            "IPv6 outside the guarded range"
        );
    }
}
