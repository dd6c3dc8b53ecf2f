//! The `twill-cni` plugin's logic: read `subnet.env`, turn the node's subnet into a
//! configuration for the standard `bridge` plugin with `host-local` IPAM, and delegate to it,
//! as flannel's CNI plugin does. The delegate configuration is saved per container so DEL
//! works even after `subnet.env` changed or vanished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/twill";

/// A CNI error: printed as the spec's error object on stdout, with a non-zero exit.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// Codes from the CNI spec.
pub const ERR_INCOMPATIBLE_VERSION: u32 = 1;
pub const ERR_INVALID_ENV: u32 = 4;
pub const ERR_IO: u32 = 5;
pub const ERR_DECODE: u32 = 6;
pub const ERR_INVALID_CONFIG: u32 = 7;
pub const ERR_TRY_LATER: u32 = 11;

/// The keys of `subnet.env` the plugin uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSubnet {
    pub network: Ipv4Net,
    /// The gateway form flannel writes: first host address with the subnet's length.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
}

pub fn parse_subnet_env(text: &str) -> Result<NodeSubnet, CniError> {
    let kv: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| {
        kv.get(k)
            .copied()
            .ok_or_else(|| CniError::new(ERR_INVALID_CONFIG, format!("subnet.env has no {k}"), ""))
    };
    let bad = |k: &str, v: &str| {
        CniError::new(
            ERR_INVALID_CONFIG,
            format!("subnet.env: {k}={v} does not parse"),
            "",
        )
    };
    let network = get("FLANNEL_NETWORK")?;
    let subnet = get("FLANNEL_SUBNET")?;
    let mtu = get("FLANNEL_MTU")?;
    Ok(NodeSubnet {
        network: network
            .parse()
            .map_err(|_| bad("FLANNEL_NETWORK", network))?,
        subnet: subnet.parse().map_err(|_| bad("FLANNEL_SUBNET", subnet))?,
        mtu: mtu.parse().map_err(|_| bad("FLANNEL_MTU", mtu))?,
        ipmasq: kv.get("FLANNEL_IPMASQ").is_some_and(|v| *v == "true"),
    })
}

/// The delegate's configuration: a `bridge` on `cni0` as the pods' gateway, `host-local` IPAM
/// over the node's subnet, a route to the whole cluster network through the gateway. Settings
/// under `delegate` in the plugin's own configuration override these.
pub fn delegate_config(netconf: &Value, s: &NodeSubnet) -> Value {
    let version = netconf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.0.0");
    let name = netconf
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("twill");
    let mut d = json!({
        "cniVersion": version,
        "name": name,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "isDefaultGateway": false,
        "hairpinMode": true,
        // Never the bridge plugin's masquerade: it would NAT pod-to-pod traffic between nodes,
        // which must keep its pod source address. Outbound masquerade is the node's job.
        "ipMasq": false,
        "mtu": s.mtu,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": s.subnet.trunc().to_string(), "gateway": s.subnet.addr().to_string()}]],
            // With the gateway spelled out, CHECK finds the route exactly as ADD installed it.
            "routes": [{"dst": s.network.to_string(), "gw": s.subnet.addr().to_string()}],
        },
    });
    if let (Some(over), Some(obj)) = (
        netconf.get("delegate").and_then(Value::as_object),
        d.as_object_mut(),
    ) {
        for (k, v) in over {
            obj.insert(k.clone(), v.clone());
        }
    }
    d
}

pub fn saved_path(data_dir: &Path, container_id: &str) -> Result<PathBuf, CniError> {
    if container_id.is_empty()
        || container_id.contains(['/', '\0'])
        || container_id.starts_with('.')
    {
        return Err(CniError::new(
            ERR_INVALID_ENV,
            format!("invalid CNI_CONTAINERID {container_id:?}"),
            "",
        ));
    }
    Ok(data_dir.join(container_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegates_to_bridge_with_the_node_subnet() {
        let s = parse_subnet_env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let conf = json!({"cniVersion": "1.0.0", "name": "podnet", "type": "twill-cni", "delegate": {"hairpinMode": false}});
        let d = delegate_config(&conf, &s);
        assert_eq!(d["type"], "bridge");
        assert_eq!(d["name"], "podnet");
        assert_eq!(d["bridge"], "cni0");
        assert_eq!(d["mtu"], 1450);
        assert_eq!(
            d["ipMasq"], false,
            "pod-to-pod traffic must not be masqueraded"
        );
        assert_eq!(d["hairpinMode"], false, "delegate overrides apply");
        assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24");
        assert_eq!(d["ipam"]["ranges"][0][0]["gateway"], "10.244.7.1");
        assert_eq!(d["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
        assert_eq!(d["ipam"]["routes"][0]["gw"], "10.244.7.1");
    }

    #[test]
    fn bad_subnet_env_and_container_ids_are_errors() {
        assert_eq!(
            parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n")
                .unwrap_err()
                .code,
            ERR_INVALID_CONFIG
        );
        assert!(parse_subnet_env(
            "FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_MTU=1450"
        )
        .is_err());
        assert!(saved_path(Path::new("/d"), "../etc").is_err());
        assert!(saved_path(Path::new("/d"), "").is_err());
        assert_eq!(
            saved_path(Path::new("/d"), "abc").unwrap(),
            Path::new("/d/abc")
        );
    }
}
