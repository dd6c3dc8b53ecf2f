//! `twill-cni` with Debian's reference plugins (containernetworking-plugins, /usr/lib/cni):
//! ADD gives pods addresses from the node's subnet on cni0, pods reach each other, CHECK
//! passes, DEL removes and is idempotent. Needs root; in CI a missing root fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use twill_tests::cni_binary;
use twill_tests::netns::{ip, ip_out, root_or_skip};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The plugin binary: `TWILL_CNI_BIN` when set (a `cargo build -p twill-agent --bin
/// twill-cni` made beforehand, so running only these tests does not build the whole
/// workspace), else the suite's own build.
fn plugin() -> PathBuf {
    match std::env::var_os("TWILL_CNI_BIN") {
        Some(p) => PathBuf::from(p),
        None => cni_binary().expect("twill-cni"),
    }
}

/// Runs twill-cni as a runtime would: in `node_ns` when given, for attachment `(id, ifname)`
/// of the pod namespace `pod_ns` (each left out of the environment when empty). Returns
/// success and the JSON on stdout.
fn cni_env(
    node_ns: Option<&str>,
    cmd: &str,
    (id, ifname): (&str, &str),
    pod_ns: &str,
    cni_path: Option<&str>,
    conf: &Value,
) -> (bool, Value) {
    let plugin = plugin();
    let dir = plugin.parent().expect("dir").display().to_string();
    let mut command = match node_ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&plugin);
            c
        }
        None => Command::new(&plugin),
    };
    command
        .env("CNI_COMMAND", cmd)
        .env(
            "CNI_PATH",
            cni_path.map_or_else(|| format!("/usr/lib/cni:{dir}"), str::to_string),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in [
        ("CNI_CONTAINERID", id.to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_NETNS", format!("/var/run/netns/{pod_ns}")),
    ] {
        if !v.is_empty() && !v.ends_with('/') {
            command.env(k, v);
        }
    }
    let mut child = command.spawn().expect("run twill-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write conf");
    let out = child.wait_with_output().expect("wait");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

fn cni(node_ns: &str, cmd: &str, id: &str, pod_ns: &str, conf: &Value) -> (bool, Value) {
    cni_env(Some(node_ns), cmd, (id, "eth0"), pod_ns, None, conf)
}

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

/// A node namespace and `pods` pod namespaces named after the test and the process, a
/// `subnet.env`, and a configuration whose data dirs (twill-cni's and host-local's) are all in
/// a temporary directory.
struct Net {
    node: String,
    pods: Vec<String>,
    tmp: tempfile::TempDir,
    conf: Value,
    _ns: Namespaces,
}

impl Net {
    fn new(tag: &str, pods: usize, subnet_env: &str, version: &str) -> Net {
        assert!(
            Path::new("/usr/lib/cni/bridge").exists(),
            "Debian's containernetworking-plugins are not installed (scripts/test installs them)"
        );
        let id = std::process::id();
        let node = format!("tw-cni-{tag}-n{id}");
        let pods: Vec<String> = (0..pods)
            .map(|i| format!("tw-cni-{tag}-p{i}-{id}"))
            .collect();
        let ns = Namespaces(std::iter::once(node.clone()).chain(pods.clone()).collect());
        for n in &ns.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", n]).expect("netns");
            ip(&["-n", n, "link", "set", "lo", "up"]).expect("lo");
        }
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("subnet.env"), subnet_env).expect("subnet.env");
        let conf = json!({
            "cniVersion": version,
            "name": format!("twill-{tag}-{id}"),
            "type": "twill-cni",
            "subnetFile": tmp.path().join("subnet.env"),
            "dataDir": tmp.path().join("data"),
            "ipamDataDir": tmp.path().join("ipam"),
        });
        Net {
            node,
            pods,
            tmp,
            conf,
            _ns: ns,
        }
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn cni(&self, cmd: &str, (id, ifname): (&str, &str), pod: usize) -> (bool, Value) {
        cni_env(
            Some(&self.node),
            cmd,
            (id, ifname),
            &self.pods[pod],
            None,
            &self.conf,
        )
    }

    /// The veth ends on the node (on cni0, one per attachment).
    fn veths(&self) -> usize {
        ip_out(&["-n", &self.node, "-o", "link", "show", "type", "veth"])
            .lines()
            .count()
    }

    /// The addresses host-local holds (one file per address in its store).
    fn allocations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for net in std::fs::read_dir(self.tmp.path().join("ipam"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    out.push(name);
                }
            }
        }
        out
    }

    fn records(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.data())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    fn pod_links(&self, pod: usize) -> String {
        ip_out(&["-n", &self.pods[pod], "-o", "link"])
    }
}

#[test]
fn add_check_del_with_the_reference_plugins() {
    if !root_or_skip("add_check_del_with_the_reference_plugins") {
        return;
    }
    assert!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "Debian's containernetworking-plugins are not installed (scripts/test installs them)"
    );
    let id = std::process::id();
    let (node, p1, p2) = (
        format!("tw-cni-n{id}"),
        format!("tw-cni-a{id}"),
        format!("tw-cni-b{id}"),
    );
    let _guard = Namespaces(vec![node.clone(), p1.clone(), p2.clone()]);
    for ns in [&node, &p1, &p2] {
        ip(&["netns", "add", ns]).expect("netns");
        ip(&["-n", ns, "link", "set", "lo", "up"]).expect("lo");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let subnet_file = tmp.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("subnet.env");
    let name = format!("twill-test-{id}");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "twill-cni",
        "subnetFile": subnet_file,
        "dataDir": tmp.path().join("data"),
        "ipamDataDir": tmp.path().join("ipam"),
    });

    let (ok, v) = cni(&node, "VERSION", "", &p1, &json!({}));
    assert!(
        ok && v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("1.0.0"))),
        "{v}"
    );

    let (ok, r1) = cni(&node, "ADD", "c1", &p1, &conf);
    assert!(ok, "ADD failed: {r1}");
    let (ok, r2) = cni(&node, "ADD", "c2", &p2, &conf);
    assert!(ok, "ADD failed: {r2}");
    let addr = |r: &Value| r["ips"][0]["address"].as_str().unwrap_or("").to_string();
    for r in [&r1, &r2] {
        assert!(
            addr(r).starts_with("10.244.5.") && addr(r).ends_with("/24"),
            "{r}"
        );
        assert_eq!(r["ips"][0]["gateway"], "10.244.5.1", "{r}");
    }
    let bridge = ip_out(&["-n", &node, "addr", "show", "cni0"]);
    assert!(
        bridge.contains("10.244.5.1/24") && bridge.contains("mtu 1450"),
        "{bridge}"
    );
    let pod_routes = ip_out(&["-n", &p1, "route"]);
    assert!(
        pod_routes.contains("10.244.0.0/16 via 10.244.5.1"),
        "{pod_routes}"
    );
    let target = addr(&r2).split('/').next().unwrap_or("").to_string();
    let ping = Command::new("ip")
        .args(["netns", "exec", &p1, "ping", "-c", "1", "-W", "2", &target])
        .status()
        .expect("ping");
    assert!(ping.success(), "pod-to-pod ping on the node failed");

    let mut check = conf.clone();
    check["prevResult"] = r1.clone();
    let (ok, v) = cni(&node, "CHECK", "c1", &p1, &check);
    assert!(ok, "CHECK failed: {v}");

    for (c, ns) in [("c1", &p1), ("c2", &p2)] {
        let (ok, v) = cni(&node, "DEL", c, ns, &conf);
        assert!(ok, "DEL failed: {v}");
        assert!(
            !ip_out(&["-n", ns, "link"]).contains("eth0"),
            "pod interface left behind"
        );
        let (ok, v) = cni(&node, "DEL", c, ns, &conf);
        assert!(ok, "a second DEL must succeed: {v}");
    }

    // No subnet.env: a CNI error object saying what to do, "try again later".
    std::fs::remove_file(&subnet_file).expect("rm");
    let (ok, v) = cni(&node, "ADD", "c3", &p1, &conf);
    assert!(!ok);
    assert_eq!(v["code"], 11, "{v}");
    assert!(
        v["msg"].as_str().unwrap_or("").contains("twill agent"),
        "{v}"
    );
}

/// The spec keys state by `(CNI_CONTAINERID, CNI_IFNAME)`: a pod with eth0 and net1 on this
/// network, net1 deleted first, then eth0, must end with both veths gone from the node and no
/// address left in host-local's store. With records keyed by container only, deleting net1
/// removed the one record and eth0 leaked for good.
#[test]
fn two_interfaces_of_one_pod_are_two_attachments() {
    if !root_or_skip("two_interfaces_of_one_pod_are_two_attachments") {
        return;
    }
    let net = Net::new("ifn", 1, SUBNET_ENV, "1.0.0");
    for ifname in ["eth0", "net1"] {
        let (ok, v) = net.cni("ADD", ("c1", ifname), 0);
        assert!(ok, "ADD {ifname} failed: {v}");
    }
    assert_eq!((net.veths(), net.allocations().len()), (2, 2));

    let (ok, v) = net.cni("DEL", ("c1", "net1"), 0);
    assert!(ok, "DEL net1 failed: {v}");
    let links = net.pod_links(0);
    assert!(links.contains("eth0") && !links.contains("net1"), "{links}");
    assert_eq!((net.veths(), net.allocations().len()), (1, 1));

    let (ok, v) = net.cni("DEL", ("c1", "eth0"), 0);
    assert!(ok, "DEL eth0 failed: {v}");
    assert!(!net.pod_links(0).contains("eth0"), "eth0 left in the pod");
    assert_eq!(net.veths(), 0, "veth left on the node");
    assert_eq!(
        net.allocations(),
        Vec::<String>::new(),
        "address left allocated"
    );
    assert!(net.records().is_empty(), "{:?}", net.records());

    // An interface name the kernel would refuse is the runtime's error, code 4.
    let (ok, v) = net.cni("ADD", ("c1", "much-too-long-name"), 0);
    assert!(!ok);
    assert_eq!(v["code"], 4, "{v}");
}

/// DEL must not fail forever on a record it cannot read (a crash right after ADD wrote it, a
/// bad disk): it deletes with the current subnet.env's configuration and succeeds. A record of
/// the old per-container layout is still used, so an upgrade leaks nothing.
#[test]
fn damaged_and_old_layout_records_are_deleted() {
    if !root_or_skip("damaged_and_old_layout_records_are_deleted") {
        return;
    }
    let net = Net::new("dmg", 1, SUBNET_ENV, "1.0.0");
    let (ok, v) = net.cni("ADD", ("c1", "eth0"), 0);
    assert!(ok, "ADD failed: {v}");
    let record = net.data().join(&net.records()[0]);
    let text = std::fs::read(&record).expect("record");
    std::fs::write(&record, &text[..text.len() / 2]).expect("truncate");
    let (ok, v) = net.cni("DEL", ("c1", "eth0"), 0);
    assert!(ok, "DEL with a cut-short record failed: {v}");
    assert_eq!(net.veths(), 0, "veth left on the node");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.records().is_empty(), "{:?}", net.records());

    // The old layout: the record named by the container id alone.
    let (ok, added) = net.cni("ADD", ("c2", "eth0"), 0);
    assert!(ok, "ADD failed: {added}");
    std::fs::rename(net.data().join("c2:eth0"), net.data().join("c2")).expect("rename");
    let mut check = net.conf.clone();
    check["prevResult"] = added;
    let (ok, v) = cni_env(
        Some(&net.node),
        "CHECK",
        ("c2", "eth0"),
        &net.pods[0],
        None,
        &check,
    );
    assert!(ok, "CHECK of an old-layout record failed: {v}");
    let (ok, v) = net.cni("DEL", ("c2", "eth0"), 0);
    assert!(ok, "DEL of an old-layout record failed: {v}");
    assert_eq!(net.veths(), 0, "veth left on the node");
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.records().is_empty(), "{:?}", net.records());

    // Empty record and no subnet.env: nothing to delete with, still a success, record gone.
    std::fs::write(net.data().join("c3:eth0"), "").expect("empty record");
    std::fs::remove_file(net.tmp.path().join("subnet.env")).expect("rm");
    let (ok, v) = net.cni("DEL", ("c3", "eth0"), 0);
    assert!(ok, "DEL with an empty record and no subnet.env failed: {v}");
    assert!(net.records().is_empty(), "{:?}", net.records());
}

/// An ADD the delegate fails after creating the veth (the bridge plugin leaves it on cni0)
/// is undone with the delegate's DEL: no veth on the node, no address held, no record, and
/// the delegate's own error is the answer.
#[test]
fn a_failed_add_leaves_nothing_behind() {
    if !root_or_skip("a_failed_add_leaves_nothing_behind") {
        return;
    }
    let net = Net::new("rbk", 2, SUBNET_ENV, "1.0.0");
    let ipam_dir = net.tmp.path().join("ipam");
    // A range of one address: the second pod's ADD fails in host-local.
    let mut one = net.conf.clone();
    one["delegate"] = json!({"ipam": {
        "type": "host-local",
        "dataDir": ipam_dir,
        "ranges": [[{"subnet": "10.244.5.0/24", "rangeStart": "10.244.5.10",
                     "rangeEnd": "10.244.5.10", "gateway": "10.244.5.1"}]],
    }});
    let (ok, v) = cni_env(
        Some(&net.node),
        "ADD",
        ("c1", "eth0"),
        &net.pods[0],
        None,
        &one,
    );
    assert!(ok, "ADD failed: {v}");
    let (ok, v) = cni_env(
        Some(&net.node),
        "ADD",
        ("c2", "eth0"),
        &net.pods[1],
        None,
        &one,
    );
    assert!(!ok, "ADD with an exhausted range succeeded: {v}");
    assert!(
        v["msg"].as_str().unwrap_or("").contains("no IP addresses"),
        "the delegate's error is the answer: {v}"
    );
    assert_eq!(net.veths(), 1, "the failed ADD's veth is left on cni0");
    assert!(!net.pod_links(1).contains("eth0"), "{}", net.pod_links(1));
    assert_eq!(net.records(), ["c1:eth0"]);

    // A route the pod cannot install: host-local allocated, the bridge plugin fails after.
    let mut unreachable = net.conf.clone();
    unreachable["delegate"] = json!({"ipam": {
        "type": "host-local",
        "dataDir": ipam_dir,
        "ranges": [[{"subnet": "10.244.5.0/24", "rangeStart": "10.244.5.20",
                     "rangeEnd": "10.244.5.30", "gateway": "10.244.5.1"}]],
        "routes": [{"dst": "10.99.0.0/16", "gw": "10.200.0.1"}],
    }});
    let (ok, v) = cni_env(
        Some(&net.node),
        "ADD",
        ("c3", "eth0"),
        &net.pods[1],
        None,
        &unreachable,
    );
    assert!(!ok, "ADD with an unreachable route succeeded: {v}");
    assert_eq!(net.veths(), 1, "the failed ADD's veth is left on cni0");
    assert!(!net.pod_links(1).contains("eth0"), "{}", net.pod_links(1));
    assert_eq!(
        net.allocations(),
        ["10.244.5.10"],
        "only c1's address is held"
    );
    assert_eq!(net.records(), ["c1:eth0"]);

    let (ok, v) = cni_env(
        Some(&net.node),
        "DEL",
        ("c1", "eth0"),
        &net.pods[0],
        None,
        &one,
    );
    assert!(ok, "DEL failed: {v}");
    assert_eq!((net.veths(), net.allocations().len()), (0, 0));
}

const DUAL_SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n\
    FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64\n\
    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

/// A dual-stack subnet.env gives each pod an IPv4 and an IPv6 address with a route to each
/// cluster network, and pods on one cni0 reach each other over IPv6.
#[test]
fn dual_stack_pods_get_both_families() {
    if !root_or_skip("dual_stack_pods_get_both_families") {
        return;
    }
    let net = Net::new("v6", 2, DUAL_SUBNET_ENV, "1.0.0");
    // No duplicate address detection: addresses are usable at once, not seconds later.
    for ns in std::iter::once(&net.node).chain(&net.pods) {
        for key in ["all", "default"] {
            let ok = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{key}.accept_dad=0"))
                .status()
                .expect("sysctl");
            assert!(ok.success(), "sysctl in {ns}");
        }
    }
    let mut v6 = Vec::new();
    for (pod, id) in [(0, "c1"), (1, "c2")] {
        let (ok, r) = net.cni("ADD", (id, "eth0"), pod);
        assert!(ok, "ADD failed: {r}");
        let addrs = ip_out(&["-n", &net.pods[pod], "addr", "show", "eth0"]);
        assert!(addrs.contains("inet 10.244.5."), "{addrs}");
        assert!(addrs.contains("inet6 fd00:10:244:5::"), "{addrs}");
        let ips = r["ips"].as_array().cloned().unwrap_or_default();
        let six = ips
            .iter()
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains(':'))
            .unwrap_or_else(|| panic!("no IPv6 address in {r}"));
        v6.push(six.split('/').next().unwrap_or("").to_string());
    }
    let routes = ip_out(&["-n", &net.pods[0], "-6", "route"]);
    assert!(
        routes.contains("fd00:10:244::/56 via fd00:10:244:5::1"),
        "{routes}"
    );
    let bridge = ip_out(&["-n", &net.node, "addr", "show", "cni0"]);
    assert!(bridge.contains("fd00:10:244:5::1/64"), "{bridge}");
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.pods[0],
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "2",
        ])
        .arg(&v6[1])
        .status()
        .expect("ping");
    assert!(ping.success(), "pod-to-pod ping over IPv6 failed");
    for (pod, id) in [(0, "c1"), (1, "c2")] {
        let (ok, v) = net.cni("DEL", (id, "eth0"), pod);
        assert!(ok, "DEL failed: {v}");
    }
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
}

/// subnet.env of bytes that are not text is an invalid configuration (7), the same answer as
/// any other garbage in it, and ADD saves nothing. Needs no root: it fails before any delegate.
#[test]
fn a_subnet_env_of_non_text_is_code_7() {
    let tmp = tempfile::tempdir().expect("tmp");
    let subnet_file = tmp.path().join("subnet.env");
    let mut bytes = SUBNET_ENV.as_bytes().to_vec();
    bytes.extend_from_slice(b"FLANNEL_\xff\xfe=1\n");
    std::fs::write(&subnet_file, bytes).expect("subnet.env");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "twill-non-text",
        "type": "twill-cni",
        "subnetFile": subnet_file,
        "dataDir": tmp.path().join("data"),
        "ipamDataDir": tmp.path().join("ipam"),
    });
    let (ok, v) = cni_env(None, "ADD", ("c1", "eth0"), "", None, &conf);
    assert!(!ok);
    assert_eq!(v["code"], 7, "{v}");
    assert!(!tmp.path().join("data").join("c1:eth0").exists());
}
