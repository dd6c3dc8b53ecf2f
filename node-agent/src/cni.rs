//! The `twill-cni` plugin's logic: read `subnet.env`, turn the node's subnet into a
//! configuration for the standard `bridge` plugin with `host-local` IPAM, and delegate to it,
//! as flannel's CNI plugin does. The delegate configuration is saved per attachment
//! (container id and interface name) so DEL, CHECK and GC work even after `subnet.env`
//! changed or vanished.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest spec version, which VERSION answers with when asked without one.
pub const LATEST: &str = "1.1.0";
/// The newest version the delegates are handed: Debian's reference plugins (v1.1) speak up
/// to 1.0.0, and a 1.0.0 result has the same format as a 1.1.0 one.
pub const DELEGATE_MAX: &str = "1.0.0";
/// The key of GC's list of attachments to keep, and the name libcni also sets (an early
/// spec text's).
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
const VALID_ATTACHMENTS_OLD: &str = "cni.dev/attachments";
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
/// STATUS: the plugin cannot service ADD requests.
pub const ERR_NOT_AVAILABLE: u32 = 50;

/// The version to hand the delegates for the runtime's `version`.
pub fn delegate_version(version: &str) -> &str {
    if version == "1.1.0" {
        DELEGATE_MAX
    } else {
        version
    }
}

/// VERSION's answer: the version asked in, if it is one of ours, else the newest.
pub fn version_answer(input: &Value) -> Value {
    let asked = input.get("cniVersion").and_then(Value::as_str);
    let version = asked.filter(|v| SUPPORTED.contains(v)).unwrap_or(LATEST);
    json!({"cniVersion": version, "supportedVersions": SUPPORTED})
}

/// A delegate's result (or a runtime's `prevResult`) restated in `version`: between 1.0.0
/// and 1.1.0 only the `cniVersion` field differs, and a 1.0.0 plugin refuses a `prevResult`
/// that says 1.1.0.
pub fn in_version(result: &Value, version: &str) -> Value {
    let mut r = result.clone();
    if let Some(obj) = r.as_object_mut() {
        obj.insert("cniVersion".into(), json!(version));
    }
    r
}

/// The keys of `subnet.env` the plugin uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSubnet {
    pub network: Ipv4Net,
    /// The gateway form flannel writes: first host address with the subnet's length.
    pub subnet: Ipv4Net,
    /// FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET (same gateway form), both or neither.
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// Reads `subnet.env`. A missing or unreadable file means the agent has not written it yet:
/// try again later. Bytes that are not text are a broken file like any other garbage.
pub fn read_subnet_env(path: &Path) -> Result<NodeSubnet, CniError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CniError::new(
            ERR_TRY_LATER,
            format!("cannot read {} (is twill agent running?)", path.display()),
            e.to_string(),
        )
    })?;
    parse_subnet_env_bytes(&bytes)
}

pub fn parse_subnet_env_bytes(bytes: &[u8]) -> Result<NodeSubnet, CniError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        CniError::new(
            ERR_INVALID_CONFIG,
            "subnet.env is not UTF-8 text",
            e.to_string(),
        )
    })?;
    parse_subnet_env(text)
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
    let v6 = |k: &str| -> Result<Option<Ipv6Net>, CniError> {
        kv.get(k)
            .map(|v| v.parse().map_err(|_| bad(k, v)))
            .transpose()
    };
    let (ipv6_network, ipv6_subnet) = (v6("FLANNEL_IPV6_NETWORK")?, v6("FLANNEL_IPV6_SUBNET")?);
    if ipv6_network.is_some() != ipv6_subnet.is_some() {
        return Err(CniError::new(
            ERR_INVALID_CONFIG,
            "subnet.env has only one of FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET",
            "",
        ));
    }
    Ok(NodeSubnet {
        ipv6_network,
        ipv6_subnet,
        network: network
            .parse()
            .map_err(|_| bad("FLANNEL_NETWORK", network))?,
        subnet: subnet.parse().map_err(|_| bad("FLANNEL_SUBNET", subnet))?,
        mtu: mtu.parse().map_err(|_| bad("FLANNEL_MTU", mtu))?,
        ipmasq: kv.get("FLANNEL_IPMASQ").is_some_and(|v| *v == "true"),
    })
}

/// The network a delegate configuration made from `netconf` belongs to: the runtime's name,
/// unless `delegate` overrides it. GC compares it with saved records', so networks sharing a
/// data dir never collect each other's attachments.
pub fn network_name(netconf: &Value) -> &str {
    netconf
        .get("delegate")
        .and_then(|d| d.get("name"))
        .or_else(|| netconf.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("twill")
}

/// The delegate's configuration: a `bridge` on `cni0` as the pods' gateway and their default
/// route (as flannel's stock configuration has it: services and the outside are reached through
/// the node, which masquerades), `host-local` IPAM over the node's subnet, a route to the whole
/// cluster network through the gateway. Settings under `delegate` in the plugin's own
/// configuration override these.
pub fn delegate_config(netconf: &Value, s: &NodeSubnet) -> Value {
    let version = delegate_version(
        netconf
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("1.0.0"),
    );
    let name = network_name(netconf);
    let mut d = json!({
        "cniVersion": version,
        "name": name,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "isDefaultGateway": true,
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
    // Dual stack: a second range set, so host-local gives every pod one address of each family,
    // and the IPv6 cluster network through the IPv6 gateway.
    if let (Some(net6), Some(sub6)) = (s.ipv6_network, s.ipv6_subnet) {
        let gw6 = sub6.addr().to_string();
        if let Some(ranges) = d["ipam"]["ranges"].as_array_mut() {
            ranges.push(json!([{"subnet": sub6.trunc().to_string(), "gateway": gw6}]));
        }
        if let Some(routes) = d["ipam"]["routes"].as_array_mut() {
            routes.push(json!({"dst": net6.to_string(), "gw": gw6}));
        }
    }
    // Where host-local keeps its allocations, without replacing the whole `ipam` object through
    // `delegate` (which would drop the node's ranges): tests and sandboxes keep them private.
    if let Some(dir) = netconf.get("ipamDataDir").and_then(Value::as_str) {
        d["ipam"]["dataDir"] = json!(dir);
    }
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

/// The longest container id accepted: the record's file name (`<id>:<ifname>`, and the
/// `.<name>.tmp` it is written as) must fit the file-system's 255-byte name limit.
pub const MAX_CONTAINER_ID: usize = 224;
/// Linux's IFNAMSIZ less the terminating NUL.
pub const MAX_IFNAME: usize = 15;

fn invalid_env(var: &str, value: &str, why: &str) -> CniError {
    CniError::new(
        ERR_INVALID_ENV,
        format!("invalid {var} {value:?}: {why}"),
        "",
    )
}

/// A container id usable as part of a file name in the data dir. The spec asks for
/// `[A-Za-z0-9][A-Za-z0-9_.-]*`; only what would break the record's name is refused, so
/// runtimes that are lax about it keep working.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let why = if id.is_empty() {
        "empty"
    } else if id.contains(['/', '\0', ':']) {
        "contains '/', ':' or NUL"
    } else if id.starts_with('.') {
        "starts with '.'"
    } else if id.len() > MAX_CONTAINER_ID {
        "too long"
    } else {
        return Ok(());
    };
    Err(invalid_env("CNI_CONTAINERID", id, why))
}

/// The kernel's rules for an interface name (the spec defers to them): non-empty, at most 15
/// bytes, not `.` or `..`, no `/`, `:`, whitespace or NUL.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_IFNAME {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        "contains '/', ':', whitespace or NUL"
    } else {
        return Ok(());
    };
    Err(invalid_env("CNI_IFNAME", name, why))
}

/// One attachment: the spec's key for state, `(CNI_CONTAINERID, CNI_IFNAME)` (the network is
/// the data dir).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: &str, ifname: &str) -> Result<Self, CniError> {
        validate_container_id(container_id)?;
        validate_ifname(ifname)?;
        Ok(Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        })
    }

    /// `<container id>:<ifname>`: unambiguous, as neither may contain `:`.
    pub fn record_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(format!("{}:{}", self.container_id, self.ifname))
    }

    /// Where versions before per-interface records saved this container's configuration.
    pub fn legacy_record_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(&self.container_id)
    }
}

/// A file in the data dir, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKey {
    Attachment(Attachment),
    /// The old layout, one record per container, written without the interface name.
    Legacy(String),
}

impl RecordKey {
    /// None for temporary files and names this plugin never writes.
    pub fn parse(file_name: &str) -> Option<RecordKey> {
        if file_name.starts_with('.') {
            return None;
        }
        match file_name.rsplit_once(':') {
            Some((id, ifname)) => Attachment::new(id, ifname).ok().map(RecordKey::Attachment),
            None => validate_container_id(file_name)
                .ok()
                .map(|_| RecordKey::Legacy(file_name.into())),
        }
    }

    /// Whether GC keeps this record. An old-layout record does not say its interface, so any
    /// valid attachment of its container keeps it.
    pub fn is_valid(&self, valid: &BTreeSet<Attachment>) -> bool {
        match self {
            RecordKey::Attachment(a) => valid.contains(a),
            RecordKey::Legacy(id) => valid.iter().any(|a| &a.container_id == id),
        }
    }

    /// The attachment to delete; an old-layout record's is guessed as `eth0`, the name
    /// runtimes give a pod's first interface (host-local releases by container and name).
    pub fn attachment(&self) -> Attachment {
        match self {
            RecordKey::Attachment(a) => a.clone(),
            RecordKey::Legacy(id) => Attachment {
                container_id: id.clone(),
                ifname: "eth0".into(),
            },
        }
    }
}

/// GC's list of attachments to keep. A missing or malformed list is an error, never read as
/// "keep nothing": that would delete every pod's network.
pub fn valid_attachments(netconf: &Value) -> Result<BTreeSet<Attachment>, CniError> {
    let bad = |why: &str| {
        CniError::new(
            ERR_INVALID_CONFIG,
            format!("GC needs {VALID_ATTACHMENTS}: {why}"),
            "",
        )
    };
    let list = netconf
        .get(VALID_ATTACHMENTS)
        .or_else(|| netconf.get(VALID_ATTACHMENTS_OLD))
        .ok_or_else(|| bad("missing"))?
        .as_array()
        .ok_or_else(|| bad("not a list"))?;
    let mut out = BTreeSet::new();
    for item in list {
        let field = |k: &str| item.get(k).and_then(Value::as_str);
        match (field("containerID"), field("ifname")) {
            (Some(id), Some(ifname)) => {
                out.insert(Attachment {
                    container_id: id.into(),
                    ifname: ifname.into(),
                });
            }
            _ => return Err(bad(&format!("{item} is not {{containerID, ifname}}"))),
        }
    }
    Ok(out)
}

/// A saved delegate configuration, as found on disk.
#[derive(Debug)]
pub enum Record {
    Missing,
    /// Unreadable, empty, cut short or not a delegate configuration; says why.
    Damaged(String),
    Saved(Value),
}

pub fn read_record(path: &Path) -> Record {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::Missing,
        Err(e) => Record::Damaged(format!("cannot read {}: {e}", path.display())),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.get("type").and_then(Value::as_str).is_some() => Record::Saved(v),
            Ok(_) => Record::Damaged(format!("{} has no delegate type", path.display())),
            Err(e) => Record::Damaged(format!("{} is damaged: {e}", path.display())),
        },
    }
}

/// Saves `conf` so a crash leaves the old record or the new one, never a partial file: a
/// temporary file in the same directory, synced, renamed over. Records may hold credentials
/// from the network configuration, so the directory is 0700 and the files 0600.
pub fn write_record(data_dir: &Path, path: &Path, conf: &Value) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let tmp = data_dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, conf.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Every record in the data dir with its path; none if the directory does not exist.
pub fn list_records(data_dir: &Path) -> std::io::Result<Vec<(RecordKey, PathBuf)>> {
    let entries = match std::fs::read_dir(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some(key) = entry.file_name().to_str().and_then(RecordKey::parse) {
            out.push((key, entry.path()));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
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
        let conf = json!({"cniVersion": "1.0.0", "name": "podnet", "type": "twill-cni", "ipamDataDir": "/x", "delegate": {"hairpinMode": false}});
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
        assert_eq!(
            d["isDefaultGateway"], true,
            "pods reach services and the outside through the node"
        );
        assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24");
        assert_eq!(d["ipam"]["ranges"][0][0]["gateway"], "10.244.7.1");
        assert_eq!(d["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
        assert_eq!(d["ipam"]["routes"][0]["gw"], "10.244.7.1");
        assert_eq!(d["ipam"]["dataDir"], "/x");
    }

    /// Both families: a second host-local range set for the IPv6 subnet (gateway as written,
    /// like IPv4) and a route to the IPv6 cluster network; without the IPv6 keys, one family.
    #[test]
    fn dual_stack_subnet_env_gives_a_range_set_per_family() {
        let v4 = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n";
        let dual = format!(
            "{v4}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
        );
        let conf = json!({"cniVersion": "1.0.0", "name": "podnet", "type": "twill-cni"});
        let d = delegate_config(&conf, &parse_subnet_env(&dual).unwrap());
        let ranges = d["ipam"]["ranges"].as_array().unwrap();
        assert_eq!(ranges.len(), 2, "{d}");
        assert_eq!(ranges[0][0]["subnet"], "10.244.7.0/24");
        assert_eq!(ranges[1][0]["subnet"], "fd00:10:244:7::/64");
        assert_eq!(ranges[1][0]["gateway"], "fd00:10:244:7::1");
        let routes = d["ipam"]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2, "{d}");
        assert_eq!(routes[1]["dst"], "fd00:10:244::/56");
        assert_eq!(routes[1]["gw"], "fd00:10:244:7::1");

        let d = delegate_config(&conf, &parse_subnet_env(v4).unwrap());
        assert_eq!(d["ipam"]["ranges"].as_array().unwrap().len(), 1);
        assert_eq!(d["ipam"]["routes"].as_array().unwrap().len(), 1);

        let half = format!("{v4}FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n");
        assert_eq!(
            parse_subnet_env(&half).unwrap_err().code,
            ERR_INVALID_CONFIG
        );
        let bad = format!("{v4}FLANNEL_IPV6_NETWORK=x\nFLANNEL_IPV6_SUBNET=fd00::1/64\n");
        assert_eq!(parse_subnet_env(&bad).unwrap_err().code, ERR_INVALID_CONFIG);
    }

    /// Bytes that are not UTF-8 are an invalid configuration (7), like other garbage; a missing
    /// file is "try again later" (11).
    #[test]
    fn a_subnet_env_of_non_text_is_invalid_configuration() {
        let mut bytes = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n".to_vec();
        bytes.extend_from_slice(b"FLANNEL_MTU=14\xff\xfe50\n");
        assert_eq!(
            parse_subnet_env_bytes(&bytes).unwrap_err().code,
            ERR_INVALID_CONFIG
        );
        let dir = scratch("subnet-env");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("subnet.env");
        assert_eq!(read_subnet_env(&path).unwrap_err().code, ERR_TRY_LATER);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_subnet_env(&path).unwrap_err().code, ERR_INVALID_CONFIG);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// CNI 1.1: advertised and answered; the delegates get 1.0.0, and results and
    /// `prevResult` are restated in the version each side speaks.
    #[test]
    fn version_1_1_0_is_spoken_and_delegates_get_1_0_0() {
        assert!(SUPPORTED.contains(&"1.1.0"));
        assert_eq!(version_answer(&json!({}))["cniVersion"], "1.1.0");
        assert_eq!(
            version_answer(&json!({"cniVersion": "0.4.0"}))["cniVersion"],
            "0.4.0"
        );
        assert_eq!(
            version_answer(&json!({"cniVersion": "9.9.9"}))["cniVersion"],
            "1.1.0"
        );
        let s = parse_subnet_env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        let conf = |v: &str| json!({"cniVersion": v, "name": "n", "type": "twill-cni"});
        assert_eq!(delegate_config(&conf("1.1.0"), &s)["cniVersion"], "1.0.0");
        assert_eq!(delegate_config(&conf("0.4.0"), &s)["cniVersion"], "0.4.0");
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.7.2/24"}]});
        let back = in_version(&r, "1.1.0");
        assert_eq!(back["cniVersion"], "1.1.0");
        assert_eq!(back["ips"], r["ips"]);
    }

    /// GC keeps exactly the listed attachments (an old-layout record by its container), and a
    /// missing or malformed list is refused rather than read as "keep nothing".
    #[test]
    fn gc_keeps_only_valid_attachments() {
        let conf = json!({VALID_ATTACHMENTS: [{"containerID": "c1", "ifname": "eth0"}]});
        let valid = valid_attachments(&conf).unwrap();
        let keep = |name: &str| RecordKey::parse(name).unwrap().is_valid(&valid);
        assert!(keep("c1:eth0"));
        assert!(!keep("c1:net1"));
        assert!(!keep("c2:eth0"));
        assert!(keep("c1"), "old-layout record of a valid container");
        assert!(!keep("c2"));
        assert_eq!(
            RecordKey::parse("c2").unwrap().attachment(),
            Attachment::new("c2", "eth0").unwrap()
        );
        // Records of another network sharing the data dir are told apart by name.
        assert_eq!(network_name(&json!({"name": "a"})), "a");
        assert_eq!(
            network_name(&json!({"name": "a", "delegate": {"name": "b"}})),
            "b"
        );
        let old_key = json!({"cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]});
        assert_eq!(valid_attachments(&old_key).unwrap(), valid);
        assert!(valid_attachments(&json!({VALID_ATTACHMENTS: []}))
            .unwrap()
            .is_empty());
        for bad in [
            json!({}),
            json!({VALID_ATTACHMENTS: "c1"}),
            json!({VALID_ATTACHMENTS: [{"containerID": "c1"}]}),
        ] {
            assert_eq!(
                valid_attachments(&bad).unwrap_err().code,
                ERR_INVALID_CONFIG,
                "{bad}"
            );
        }
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
        for id in ["../etc", "", ".hidden", "a/b", "a:b", "a\0b"] {
            assert_eq!(
                validate_container_id(id).unwrap_err().code,
                ERR_INVALID_ENV,
                "{id:?}"
            );
        }
        assert!(validate_container_id(&"a".repeat(MAX_CONTAINER_ID + 1)).is_err());
        assert!(validate_container_id(&"a".repeat(64)).is_ok());
    }

    /// The kernel's interface-name rules, which the spec defers to.
    #[test]
    fn interface_names_are_validated() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
            "sixteen-bytes-xx",
        ] {
            let e = validate_ifname(name).unwrap_err();
            assert_eq!(e.code, ERR_INVALID_ENV, "{name:?}");
            assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        }
        for name in ["eth0", "net1", "fifteen-bytes-x", ".x"] {
            assert!(validate_ifname(name).is_ok(), "{name:?}");
        }
    }

    /// Two interfaces of one container are two records, and each name maps back to its
    /// attachment; a file of the old per-container layout is recognised as such.
    #[test]
    fn records_are_keyed_by_container_and_interface() {
        let dir = Path::new("/d");
        let eth0 = Attachment::new("c1", "eth0").unwrap();
        let net1 = Attachment::new("c1", "net1").unwrap();
        assert_ne!(eth0.record_path(dir), net1.record_path(dir));
        assert_eq!(eth0.record_path(dir), Path::new("/d/c1:eth0"));
        assert_eq!(eth0.legacy_record_path(dir), Path::new("/d/c1"));
        assert_eq!(
            RecordKey::parse("c1:net1"),
            Some(RecordKey::Attachment(net1))
        );
        assert_eq!(RecordKey::parse("c1"), Some(RecordKey::Legacy("c1".into())));
        assert_eq!(RecordKey::parse(".c1:eth0.tmp"), None);
        assert_eq!(RecordKey::parse("c1:bad name"), None);
        assert!(Attachment::new("c1", "").is_err());
        assert!(Attachment::new("", "eth0").is_err());
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("twill-cni-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Records are written whole (no temporary left), private, and read back; a cut-short or
    /// empty record is reported as damaged rather than as an error to fail on.
    #[test]
    fn records_are_atomic_private_and_damage_is_recognised() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("records").join("data");
        let att = Attachment::new("c1", "eth0").unwrap();
        let path = att.record_path(&dir);
        assert!(matches!(read_record(&path), Record::Missing));
        let conf = json!({"cniVersion": "1.0.0", "type": "bridge", "name": "n"});
        write_record(&dir, &path, &conf).unwrap();
        write_record(&dir, &path, &conf).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(matches!(read_record(&path), Record::Saved(v) if v == conf));
        let listed = list_records(&dir).unwrap();
        assert_eq!(listed, vec![(RecordKey::Attachment(att), path.clone())]);
        for damaged in ["", "{\"cniVersion\": \"1.0", "{}"] {
            std::fs::write(&path, damaged).unwrap();
            assert!(
                matches!(read_record(&path), Record::Damaged(_)),
                "{damaged:?}"
            );
        }
        assert!(list_records(&dir.join("absent")).unwrap().is_empty());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
