//! `twill-cni` with Debian's reference plugins (containernetworking-plugins, /usr/lib/cni):
//! ADD gives pods addresses from the node's subnet on cni0, pods reach each other, CHECK
//! passes, DEL removes and is idempotent. Needs root; in CI a missing root fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use twill_tests::cni_binary;
use twill_tests::netns::{ip, ip_out, root_or_skip, wait_until};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
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

    fn cni(&self, cmd: &str, att: (&str, &str), pod: usize) -> (bool, Value) {
        self.cni_with(cmd, att, &self.pods[pod], &self.conf)
    }

    /// `cmd` run in the node namespace with another configuration or pod namespace ("" none).
    fn cni_with(&self, cmd: &str, att: (&str, &str), pod_ns: &str, conf: &Value) -> (bool, Value) {
        cni_env(Some(&self.node), cmd, att, pod_ns, None, conf)
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
        pod_routes.contains("10.244.0.0/16 via 10.244.5.1")
            && pod_routes.contains("default via 10.244.5.1"),
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
    let (ok, v) = net.cni_with("CHECK", ("c2", "eth0"), &net.pods[0], &check);
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
    let (ok, v) = net.cni_with("ADD", ("c1", "eth0"), &net.pods[0], &one);
    assert!(ok, "ADD failed: {v}");
    let (ok, v) = net.cni_with("ADD", ("c2", "eth0"), &net.pods[1], &one);
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
    let (ok, v) = net.cni_with("ADD", ("c3", "eth0"), &net.pods[1], &unreachable);
    assert!(!ok, "ADD with an unreachable route succeeded: {v}");
    assert_eq!(net.veths(), 1, "the failed ADD's veth is left on cni0");
    assert!(!net.pod_links(1).contains("eth0"), "{}", net.pod_links(1));
    assert_eq!(
        net.allocations(),
        ["10.244.5.10"],
        "only c1's address is held"
    );
    assert_eq!(net.records(), ["c1:eth0"]);

    let (ok, v) = net.cni_with("DEL", ("c1", "eth0"), &net.pods[0], &one);
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

/// CNI 1.1 end to end with the 1.0.0 reference plugins: ADD answers in 1.1.0, CHECK with a
/// 1.1.0 prevResult passes (the delegate gets it as 1.0.0), and GC deletes every saved
/// attachment not listed (its address released, its record gone, damaged and old-layout
/// records included) and keeps the listed one working. GC without a list deletes nothing.
#[test]
fn gc_keeps_valid_attachments_and_deletes_the_rest() {
    if !root_or_skip("gc_keeps_valid_attachments_and_deletes_the_rest") {
        return;
    }
    let net = Net::new("gc", 2, SUBNET_ENV, "1.1.0");
    let (ok, r1) = net.cni("ADD", ("c1", "eth0"), 0);
    assert!(ok, "ADD failed: {r1}");
    assert_eq!(r1["cniVersion"], "1.1.0", "{r1}");
    let (ok, r2) = net.cni("ADD", ("c2", "eth0"), 1);
    assert!(ok, "ADD failed: {r2}");
    let mut check = net.conf.clone();
    check["prevResult"] = r1.clone();
    let (ok, v) = net.cni_with("CHECK", ("c1", "eth0"), &net.pods[0], &check);
    assert!(ok, "CHECK with a 1.1.0 prevResult failed: {v}");
    // An old-layout record and a damaged one, both of containers the runtime no longer has.
    std::fs::copy(net.data().join("c1:eth0"), net.data().join("c9")).expect("copy");
    std::fs::write(net.data().join("c8:eth0"), "{").expect("damaged");
    // The runtime removed pod 2's namespace, and with it the pod's end of the veth.
    ip(&["netns", "del", &net.pods[1]]).expect("netns del");
    assert_eq!(net.allocations().len(), 2);

    let gc = |conf: &Value| net.cni_with("GC", ("", ""), "", conf);
    let (ok, v) = gc(&net.conf);
    assert!(
        !ok,
        "GC without the list of valid attachments must refuse: {v}"
    );
    assert_eq!(v["code"], 7, "{v}");
    assert_eq!(net.records().len(), 4, "{:?}", net.records());

    let mut conf = net.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (ok, v) = gc(&conf);
    assert!(ok, "GC failed: {v}");
    // The damaged record cannot say which network it is of: GC leaves it to its DEL.
    assert_eq!(net.records(), ["c1:eth0", "c8:eth0"]);
    // Its pod is gone, so no namespace (the delegate must not touch another pod's eth0).
    let (ok, v) = net.cni_with("DEL", ("c8", "eth0"), "", &net.conf);
    assert!(ok, "DEL of the damaged record failed: {v}");
    assert_eq!(net.records(), ["c1:eth0"]);
    let kept = r1["ips"][0]["address"].as_str().unwrap_or("");
    assert_eq!(
        net.allocations(),
        [kept.split('/').next().unwrap_or("")],
        "c2's address must be released, c1's kept"
    );
    // The kernel removes a deleted namespace's veth pairs in the background.
    wait_until(
        "pod 2's veth gone",
        std::time::Duration::from_secs(10),
        || net.veths() == 1,
    );
    let (ok, v) = net.cni_with("CHECK", ("c1", "eth0"), &net.pods[0], &check);
    assert!(ok, "CHECK after GC failed: {v}");

    let (ok, v) = net.cni("DEL", ("c1", "eth0"), 0);
    assert!(ok, "DEL failed: {v}");
    assert!(net.allocations().is_empty() && net.records().is_empty());
}

/// VERSION lists 1.1.0 and answers in the version asked; STATUS succeeds when ADD could work
/// (subnet.env valid, delegates installed) and otherwise answers the spec's 50 saying why.
/// Needs no root: nothing touches a namespace.
#[test]
fn version_and_status() {
    let (ok, v) = cni_env(None, "VERSION", ("", ""), "", None, &json!({}));
    assert!(ok, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0", "{v}");
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("1.1.0")) && a.contains(&json!("1.0.0"))),
        "{v}"
    );
    let (ok, v) = cni_env(
        None,
        "VERSION",
        ("", ""),
        "",
        None,
        &json!({"cniVersion": "1.0.0"}),
    );
    assert!(ok && v["cniVersion"] == "1.0.0", "{v}");

    assert!(
        Path::new("/usr/lib/cni/bridge").exists(),
        "Debian's containernetworking-plugins are not installed (scripts/test installs them)"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let subnet_file = tmp.path().join("subnet.env");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "twill-status",
        "type": "twill-cni",
        "subnetFile": subnet_file,
        "dataDir": tmp.path().join("data"),
    });
    let status = |cni_path: Option<&str>| cni_env(None, "STATUS", ("", ""), "", cni_path, &conf);

    let (ok, v) = status(None);
    assert!(!ok, "STATUS without subnet.env succeeded: {v}");
    assert_eq!(v["code"], 50, "{v}");
    assert!(
        v["msg"].as_str().unwrap_or("").contains("subnet.env"),
        "{v}"
    );

    std::fs::write(&subnet_file, "FLANNEL_NETWORK=10.244.0.0/16\n").expect("subnet.env");
    let (ok, v) = status(None);
    assert!(
        !ok && v["code"] == 50,
        "STATUS with a broken subnet.env: {v}"
    );
    assert!(v["msg"].as_str().unwrap_or("").contains("FLANNEL_"), "{v}");

    std::fs::write(&subnet_file, SUBNET_ENV).expect("subnet.env");
    let (ok, v) = status(None);
    assert!(ok, "STATUS with a valid subnet.env failed: {v}");
    assert_eq!(v, Value::Null, "STATUS prints nothing on success");

    let empty = tmp.path().join("no-plugins");
    std::fs::create_dir(&empty).expect("dir");
    let (ok, v) = status(empty.to_str());
    assert!(
        !ok && v["code"] == 50,
        "STATUS without the bridge plugin: {v}"
    );
    assert!(v["msg"].as_str().unwrap_or("").contains("bridge"), "{v}");
}

/// A stand-in delegate that speaks 1.1.0 and logs every call (command, attachment, namespace,
/// input), for what Debian's 1.0.0 plugins cannot show: GC and STATUS forwarded to the
/// delegate, the order of calls, a GC that carries on past a failed cleanup.
const FAKE_DELEGATE: &str = r#"#!/bin/sh
input=$(cat)
echo "$CNI_COMMAND ${CNI_CONTAINERID:--} ${CNI_IFNAME:--} ${CNI_NETNS:-nonetns} $input" >> "$0.log"
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}' ;;
ADD)
    if [ "$CNI_CONTAINERID" = bad ]; then
        echo '{"cniVersion":"1.0.0","code":999,"msg":"fake refuses"}'; exit 1
    fi
    echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}' ;;
DEL)
    if [ "$CNI_CONTAINERID" = stuck ]; then
        echo '{"cniVersion":"1.0.0","code":999,"msg":"fake cannot delete"}'; exit 1
    fi ;;
esac
"#;

/// The spec's delegation rules, seen from the delegate: a failed ADD is followed by its DEL
/// and leaves no record; GC deletes each unlisted attachment without a namespace, carries on
/// past one that fails (kept, and reported), then forwards GC with the list to a delegate that
/// speaks 1.1.0; STATUS is forwarded too. Needs no root.
#[test]
fn delegation_follows_the_spec() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).expect("dir");
    let fake = plugins.join("fakebr");
    std::fs::write(&fake, FAKE_DELEGATE).expect("fake");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(tmp.path().join("subnet.env"), SUBNET_ENV).expect("subnet.env");
    let mut conf = json!({
        "cniVersion": "1.1.0",
        "name": "twill-fake",
        "type": "twill-cni",
        "subnetFile": tmp.path().join("subnet.env"),
        "dataDir": tmp.path().join("data"),
        "delegate": {"type": "fakebr", "ipam": {"type": "fakebr"}},
    });
    let path = plugins.display().to_string();
    let run = |cmd: &str, id: &str, conf: &Value| {
        cni_env(None, cmd, (id, "eth0"), "fake", Some(&path), conf)
    };
    let log = || -> Vec<String> {
        std::fs::read_to_string(plugins.join("fakebr.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("VERSION"))
            .map(str::to_string)
            .collect()
    };
    let records = || {
        let mut r: Vec<String> = std::fs::read_dir(tmp.path().join("data"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        r.sort();
        r
    };

    let (ok, v) = run("ADD", "c1", &conf);
    assert!(ok, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0", "the runtime's version: {v}");
    assert!(log()[0].contains(r#""cniVersion":"1.0.0""#), "{:?}", log());

    let (ok, v) = run("ADD", "bad", &conf);
    assert!(
        !ok && v["msg"].as_str().unwrap_or("").contains("fake refuses"),
        "{v}"
    );
    let calls = log();
    assert!(
        calls[1].starts_with("ADD bad eth0") && calls[2].starts_with("DEL bad eth0"),
        "a failed ADD is followed by the delegate's DEL: {calls:?}"
    );
    assert_eq!(records(), ["c1:eth0"]);

    for id in ["stuck", "c2"] {
        let (ok, v) = run("ADD", id, &conf);
        assert!(ok, "{v}");
    }
    // Another network sharing the data dir: not this GC's to collect.
    let mut other = conf.clone();
    other["name"] = json!("twill-other");
    let (ok, v) = run("ADD", "o1", &other);
    assert!(ok, "{v}");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let (ok, v) = run("GC", "", &conf);
    assert!(!ok, "a failed cleanup is reported: {v}");
    assert!(v["details"].as_str().unwrap_or("").contains("stuck"), "{v}");
    assert_eq!(
        records(),
        ["c1:eth0", "o1:eth0", "stuck:eth0"],
        "kept for the next GC, and the other network's"
    );
    let calls = log();
    let gc_calls = &calls[6..];
    assert!(!gc_calls.iter().any(|l| l.contains(" o1 ")), "{gc_calls:?}");
    assert!(
        gc_calls
            .iter()
            .any(|l| l.starts_with("DEL c2 eth0 nonetns")),
        "{gc_calls:?}"
    );
    let forwarded = gc_calls
        .iter()
        .find(|l| l.starts_with("GC "))
        .unwrap_or_else(|| panic!("GC not forwarded: {gc_calls:?}"));
    assert!(
        forwarded.contains(r#""cniVersion":"1.1.0""#)
            && forwarded
                .contains(r#""cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]"#),
        "{forwarded}"
    );

    let (ok, v) = run("STATUS", "", &conf);
    assert!(ok, "{v}");
    assert!(
        log().last().is_some_and(|l| l.starts_with("STATUS ")),
        "{:?}",
        log()
    );
}

/// Bad input of every kind is the spec's error object on stdout with exit status 1, never a
/// panic (status 101) or an empty answer. Needs no root.
#[test]
fn bad_input_is_an_error_object_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("subnet.env"), SUBNET_ENV).expect("subnet.env");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "twill-bad-input",
        "type": "twill-cni",
        "subnetFile": tmp.path().join("subnet.env"),
        "dataDir": tmp.path().join("data"),
    })
    .to_string();
    /// What is wrong, the environment, stdin, the expected code.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8], u64);
    let cases: &[Case] = &[
        ("not JSON", &[("CNI_COMMAND", "ADD")], b"{", 6),
        (
            "not UTF-8",
            &[("CNI_COMMAND", "ADD")],
            b"{\"a\": \"\xff\"}",
            6,
        ),
        (
            "version",
            &[("CNI_COMMAND", "ADD")],
            br#"{"cniVersion": "2.0.0"}"#,
            1,
        ),
        ("no command", &[], conf.as_bytes(), 4),
        (
            "unknown command",
            &[("CNI_COMMAND", "FROB")],
            conf.as_bytes(),
            4,
        ),
        (
            "no ifname",
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")],
            conf.as_bytes(),
            4,
        ),
        (
            "bad container id",
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "../x"),
                ("CNI_IFNAME", "eth0"),
            ],
            conf.as_bytes(),
            4,
        ),
        (
            "GC without a list",
            &[("CNI_COMMAND", "GC")],
            conf.as_bytes(),
            7,
        ),
    ];
    for (what, env, stdin, code) in cases {
        let mut child = Command::new(plugin())
            .env_remove("CNI_COMMAND")
            .envs(env.iter().copied())
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run twill-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(1), "{what}");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", out.stdout));
        assert_eq!(v["code"], *code, "{what}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
}
