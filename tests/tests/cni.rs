//! `twill-cni` with Debian's reference plugins (containernetworking-plugins, /usr/lib/cni):
//! ADD gives pods addresses from the node's subnet on cni0, pods reach each other, CHECK
//! passes, DEL removes and is idempotent. Needs root; in CI a missing root fails.

use std::io::Write;
use std::path::Path;
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

fn cni(node_ns: &str, cmd: &str, id: &str, pod_ns: &str, conf: &Value) -> (bool, Value) {
    let plugin = cni_binary().expect("twill-cni");
    let dir = plugin.parent().expect("dir").display().to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_ns])
        .arg(&plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", format!("/usr/lib/cni:{dir}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run twill-cni");
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
    let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/{name}"));
}
