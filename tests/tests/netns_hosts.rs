//! What real hosts need beyond the sandbox's single flat underlay: pod egress masquerade and
//! nodes with several addresses and per-source routing tables. Node namespaces run real
//! `twill agent` processes; an "outside" namespace on the underlay stands for anything that is
//! not in the cluster network. Needs root; in CI a missing root fails the test.

use std::process::Command;
use std::time::Duration;

use twill_tests::netns::{
    attach_to_bridge, gw_addr, ip, ip_out, root_or_skip, wait_until, Topology,
};
use twill_tests::twill_binary;

/// A pod made by hand on node `node_ns`'s cni0: `<subnet>.10`, default route via the bridge.
fn hand_pod(node_ns: &str, pod_ns: &str, gw_cidr: &str) -> String {
    let gw = gw_addr(gw_cidr);
    let len = gw_cidr.rsplit('/').next().expect("prefix length");
    let addr = format!("{}.10", gw.rsplit_once('.').expect("IPv4").0);
    ip(&["netns", "add", pod_ns]).expect("pod netns");
    ip(&["-n", pod_ns, "link", "set", "lo", "up"]).expect("lo");
    ip(&[
        "-n", node_ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns",
        pod_ns,
    ])
    .expect("veth");
    ip(&["-n", node_ns, "link", "set", "vpod", "master", "cni0", "up"]).expect("on cni0");
    ip(&[
        "-n",
        pod_ns,
        "addr",
        "add",
        &format!("{addr}/{len}"),
        "dev",
        "eth0",
    ])
    .expect("addr");
    ip(&["-n", pod_ns, "link", "set", "eth0", "up"]).expect("up");
    ip(&["-n", pod_ns, "route", "add", "default", "via", gw]).expect("default route");
    addr
}

fn nft(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .expect("run nft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Counts echo requests arriving in `ns` from each of `sources` (an nft table of the test's).
fn count_sources(ns: &str, sources: &[&str]) {
    let mut script = String::from(
        "table ip probe {\n chain input {\n  type filter hook input priority 0; policy accept;\n",
    );
    for s in sources {
        script.push_str(&format!("  ip saddr {s} icmp type echo-request counter\n"));
    }
    script.push_str(" }\n}\n");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("nft").success(), "probe table");
}

/// Echo requests counted from `source` in `ns`.
fn packets_from(ns: &str, source: &str) -> u64 {
    let (_, out) = nft(ns, &["list", "table", "ip", "probe"]);
    out.lines()
        .find(|l| l.contains(&format!("ip saddr {source} ")))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn ping_from(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

struct Gone(Vec<String>);

impl Drop for Gone {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn pods_reach_the_outside_masqueraded_and_each_other_unchanged() {
    if !root_or_skip("pods_reach_the_outside_masqueraded_and_each_other_unchanged") {
        return;
    }
    let mut t = Topology::new("masq", 2, &twill_binary().expect("twill binary")).expect("topology");
    let subnets = t.start_nodes_with_pod_bridges(&[]).expect("cluster");
    let id = std::process::id();
    let (outside, pod1, pod2) = (
        format!("tw-out-masq{id}"),
        format!("tw-pa-masq{id}"),
        format!("tw-pb-masq{id}"),
    );
    let _gone = Gone(vec![outside.clone(), pod1.clone(), pod2.clone()]);
    attach_to_bridge(&outside, 200, &t.underlay).expect("outside namespace");
    let a1 = hand_pod(&t.nodes[0].ns, &pod1, &subnets[0]);
    let a2 = hand_pod(&t.nodes[1].ns, &pod2, &subnets[1]);
    let node1 = t.nodes[0].addr.clone();
    count_sources(&outside, &[&node1, &a1]);
    count_sources(&pod2, &[&node1, &a1]);

    // The outside has no route to the pods: only a masqueraded request gets an answer.
    eprintln!("{:?}", std::time::Instant::now());
    wait_until("pod reaches the outside", Duration::from_secs(20), || {
        ping_from(&pod1, "192.0.2.200")
    });
    assert!(packets_from(&outside, &node1) >= 1);
    assert_eq!(packets_from(&outside, &a1), 0, "pod address leaked");
    eprintln!("{:?}", std::time::Instant::now());
    wait_until(
        "pod reaches the other node's pod",
        Duration::from_secs(20),
        || ping_from(&pod1, &a2),
    );
    assert!(packets_from(&pod2, &a1) >= 1);
    assert_eq!(
        packets_from(&pod2, &node1),
        0,
        "pod-to-pod traffic was NAT'd"
    );
    let env = std::fs::read_to_string(t.nodes[0].dir.join("subnet.env")).expect("subnet.env");
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");

    // Someone flushes every table: the agent writes its own again.
    let ns1 = t.nodes[0].ns.clone();
    assert!(nft(&ns1, &["flush", "ruleset"]).0);
    assert!(!nft(&ns1, &["list", "table", "inet", "twill"]).0);
    eprintln!("{:?}", std::time::Instant::now());
    wait_until("masquerade table restored", Duration::from_secs(10), || {
        nft(&ns1, &["list", "table", "inet", "twill"]).0
    });
    let before = packets_from(&outside, &node1);
    eprintln!("{:?}", std::time::Instant::now());
    wait_until(
        "pod reaches the outside again",
        Duration::from_secs(10),
        || ping_from(&pod1, "192.0.2.200"),
    );
    assert!(packets_from(&outside, &node1) > before);

    // A table of someone else's in the same namespace is left alone by the agent's writes.
    assert!(nft(&ns1, &["add", "table", "ip", "operator"]).0);
    assert!(nft(&ns1, &["delete", "table", "inet", "twill"]).0);
    eprintln!("{:?}", std::time::Instant::now());
    wait_until(
        "masquerade table restored again",
        Duration::from_secs(10),
        || nft(&ns1, &["list", "table", "inet", "twill"]).0,
    );
    assert!(
        nft(&ns1, &["list", "table", "ip", "operator"]).0,
        "foreign table removed"
    );

    // --ip-masq=false: the table goes, subnet.env says so, the outside gets no answerable ping.
    t.stop_agent(0);
    t.agent_extra = vec!["--ip-masq=false".into()];
    t.start_agent(0).expect("agent without masquerade");
    eprintln!("{:?}", std::time::Instant::now());
    wait_until("masquerade table removed", Duration::from_secs(20), || {
        !nft(&ns1, &["list", "table", "inet", "twill"]).0
    });
    eprintln!("{:?}", std::time::Instant::now());
    wait_until(
        "subnet.env says no masquerade",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(t.nodes[0].dir.join("subnet.env"))
                .is_ok_and(|e| e.contains("FLANNEL_IPMASQ=false"))
        },
    );
    assert!(!ping_from(&pod1, "192.0.2.200"));
    assert!(
        packets_from(&outside, &a1) >= 1,
        "unmasqueraded request arrived"
    );
    assert!(ping_from(&pod1, &a2), "pod-to-pod still works");
    let _ = ip_out(&["-n", &ns1, "route"]);
}
