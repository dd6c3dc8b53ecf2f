//! flannel's `subnet.env`: the file CNI plugins and other consumers read to learn the node's pod
//! subnet. Same keys and format as flannel, so its consumers work unchanged.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// The first host address of a subnet with the subnet's length: flannel's FLANNEL_SUBNET form
/// (10.244.1.1/24 for 10.244.1.0/24), which is the pod bridge's address.
pub fn first_host(n: Ipv4Net) -> Ipv4Net {
    let a = Ipv4Addr::from(u32::from(n.network()).saturating_add(1));
    Ipv4Net::new(a, n.prefix_len()).unwrap_or(n)
}

fn first_host6(n: Ipv6Net) -> Ipv6Net {
    let a = std::net::Ipv6Addr::from(u128::from(n.network()).saturating_add(1));
    Ipv6Net::new(a, n.prefix_len()).unwrap_or(n)
}

impl SubnetEnv {
    pub fn render(&self) -> String {
        let mut s = format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
            self.network,
            first_host(self.subnet)
        );
        if let Some(n) = self.ipv6_network {
            s.push_str(&format!("FLANNEL_IPV6_NETWORK={n}\n"));
        }
        if let Some(n) = self.ipv6_subnet {
            s.push_str(&format!("FLANNEL_IPV6_SUBNET={}\n", first_host6(n)));
        }
        s.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        s
    }

    /// Writes the file so a reader sees the old or the new content, never a mix: a temporary
    /// file in the same directory, synced, then renamed over the old one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("subnet.env")
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannel_keys() {
        let e = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.7.0/24".parse().unwrap(),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: true,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dual = SubnetEnv {
            ipv6_network: Some("fd00:10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:244:7::/64".parse().unwrap()),
            ..e
        };
        assert!(dual.render().contains(
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
        ));
    }

    #[test]
    fn write_replaces_atomically() {
        let dir = std::env::temp_dir().join(format!("twill-subnet-env-{}", std::process::id()));
        let path = dir.join("run/flannel/subnet.env");
        let mut e = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: false,
        };
        e.write(&path).unwrap();
        e.subnet = "10.244.2.0/24".parse().unwrap();
        e.write(&path).unwrap();
        let got = std::fs::read_to_string(&path).unwrap();
        assert!(got.contains("FLANNEL_SUBNET=10.244.2.1/24"));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
