//! The VTEP MAC: derived from the node's name, so it is the same after every restart (peers keep
//! valid FDB and neighbour entries) and different between nodes (two VTEPs sharing a MAC
//! blackhole each other's traffic).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address like 0a:1b:2c:3d:4e:5f")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if p.len() != 2 {
                return Err(BadMac(s.into()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(Mac(out))
    }
}

/// 64-bit FNV-1a: tiny, stable across builds and platforms (unlike std's hasher).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The node's VTEP MAC: locally administered, unicast, from a hash of the node name.
pub fn derive(node_name: &str) -> Mac {
    let h = fnv1a(node_name.as_bytes()).to_be_bytes();
    let mut m = [h[2], h[3], h[4], h[5], h[6], h[7]];
    m[0] = (m[0] & 0xfe) | 0x02;
    Mac(m)
}

/// The MAC of the node's IPv6 VXLAN device: derived the same way from a name no node can
/// have (node names never contain '/'), so it differs from every IPv4 VTEP MAC too.
pub fn derive_v6(node_name: &str) -> Mac {
    derive(&format!("{node_name}/v6"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_unicast_local_and_distinct() {
        let a = derive("node-a");
        // Pinned: a different derivation after an upgrade would strand every peer's entries.
        assert_eq!(a.to_string(), "1e:c2:20:78:cb:53");
        assert_eq!(a.0[0] & 0x01, 0, "multicast bit set");
        assert_eq!(a.0[0] & 0x02, 0x02, "not locally administered");
        let all: std::collections::BTreeSet<Mac> =
            (0..5000).map(|i| derive(&format!("node-{i}"))).collect();
        assert_eq!(all.len(), 5000, "two of 5000 node names share a MAC");
        let v6: std::collections::BTreeSet<Mac> =
            (0..5000).map(|i| derive_v6(&format!("node-{i}"))).collect();
        assert!(v6.is_disjoint(&all) && v6.len() == 5000);
    }

    #[test]
    fn macs_print_and_parse() {
        let m: Mac = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!("0a:1b:2c:3d:4e".parse::<Mac>().is_err());
        assert!("0a:1b:2c:3d:4e:5f:00".parse::<Mac>().is_err());
        assert!("zz:1b:2c:3d:4e:5f".parse::<Mac>().is_err());
    }
}
