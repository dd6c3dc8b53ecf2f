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
    nft_script(ns, &script);
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
    // Both nodes run Docker, whose FORWARD chain drops what it is not told to accept.
    let docker = "table ip filter {\n chain FORWARD {\n  type filter hook forward priority filter; policy drop;\n }\n}\n";
    for n in &t.nodes {
        nft_script(&n.ns, docker);
    }

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

    // Someone flushes every table: the agent writes its own again. The agent may do so before
    // the test can look, so the proof is the table's handle: nftables numbers tables in a
    // namespace from a counter that only grows, so a table made again has a new one.
    let ns1 = t.nodes[0].ns.clone();
    let handle = |ns: &str| {
        let (ok, out) = nft(ns, &["-a", "list", "table", "inet", "twill"]);
        ok.then(|| {
            out.lines()
                .next()
                .and_then(|l| l.rsplit_once("# handle "))
                .and_then(|(_, h)| h.trim().parse::<u64>().ok())
        })
        .flatten()
    };
    let first = handle(&ns1).expect("the table and its handle");
    assert!(nft(&ns1, &["flush", "ruleset"]).0);
    eprintln!("{:?}", std::time::Instant::now());
    wait_until("masquerade table restored", Duration::from_secs(10), || {
        handle(&ns1).is_some_and(|h| h != first)
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

    // Without twill's rules in Docker's FORWARD chain, pod traffic is dropped there; the agent
    // puts them back.
    let forward = || nft(&ns1, &["-a", "list", "chain", "ip", "filter", "FORWARD"]).1;
    // `nft flush ruleset` above took Docker's table too: Docker makes it again.
    nft_script(&ns1, docker);
    wait_until(
        "twill's rules in the new FORWARD chain",
        Duration::from_secs(10),
        || forward().matches("comment \"twill: pod network\"").count() == 2,
    );
    assert!(ping_from(&pod1, &a2), "pod-to-pod through Docker's chain");
    t.stop_agent(0);
    for handle in forward()
        .lines()
        .filter(|l| l.contains("twill: pod network"))
        .filter_map(|l| {
            l.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
        })
    {
        assert!(
            nft(
                &ns1,
                &["delete", "rule", "ip", "filter", "FORWARD", "handle", &handle]
            )
            .0
        );
    }
    assert!(
        !ping_from(&pod1, &a2),
        "Docker's FORWARD chain let pod traffic through by itself"
    );
    t.start_agent(0).expect("agent back");
    wait_until(
        "pod traffic through Docker's FORWARD chain again",
        Duration::from_secs(20),
        || ping_from(&pod1, &a2),
    );
    assert!(forward().contains("policy drop"), "Docker's policy changed");
}

/// `ip -n NS <words>`, which must succeed.
fn ipn(ns: &str, words: &str) {
    let mut args = vec!["-n", ns];
    args.extend(words.split_whitespace());
    ip(&args).unwrap_or_else(|e| panic!("ip -n {ns} {words}: {e}"));
}

/// Runs `script` through `nft -f -` in `ns`; a failure fails the test.
fn nft_script(ns: &str, script: &str) {
    twill_tests::netns::nft_script(ns, script).unwrap_or_else(|e| panic!("{e}"));
}

fn table_routes(ns: &str, table: &str) -> Vec<String> {
    ip_out(&["-n", ns, "route", "show", "table", table, "proto", "151"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The flows a multi-homed node must carry, each one ping from `from` to `to`.
fn flows_ok(flows: &[(&str, &str)]) -> Vec<bool> {
    flows.iter().map(|(from, to)| ping_from(from, to)).collect()
}

/// Node 1 has a second underlay (eth1, 198.51.100.1/24) whose traffic an operator routes by
/// its own table: `from 198.51.100.0/24 lookup 100`, with the connected route and a default
/// via 198.51.100.254 (nothing answers there). A client on that network talks to a pod on
/// node 2 through node 1 (over the overlay) and to a pod on node 1 through node 1's second
/// address (DNAT); the pod on node 1 talks to that address. Every one of those is routed by
/// table 100 on node 1, so each fails until the agent copies the pod routes there.
#[test]
fn per_source_tables_get_the_pod_routes() {
    if !root_or_skip("per_source_tables_get_the_pod_routes") {
        return;
    }
    let mut t =
        Topology::new("mhome", 2, &twill_binary().expect("twill binary")).expect("topology");
    let subnets = t.start_nodes_with_pod_bridges(&[]).expect("cluster");
    let id = std::process::id();
    let (net2, client, pod1, pod2) = (
        format!("tw-ul2-mh{id}"),
        format!("tw-cl-mh{id}"),
        format!("tw-pa-mh{id}"),
        format!("tw-pb-mh{id}"),
    );
    let _gone = Gone(vec![
        net2.clone(),
        client.clone(),
        pod1.clone(),
        pod2.clone(),
    ]);
    let (n1, n2) = (t.nodes[0].ns.clone(), t.nodes[1].ns.clone());
    // The second network: a bridge namespace, node 1's eth1 and the client on it.
    ip(&["netns", "add", &net2]).expect("net2");
    ip(&["-n", &net2, "link", "add", "br0", "type", "bridge"]).expect("br0");
    ip(&["-n", &net2, "link", "set", "br0", "up"]).expect("br0 up");
    ip(&["netns", "add", &client]).expect("client");
    for (ns, port, addr) in [
        (&n1, "pn1", "198.51.100.1/24"),
        (&client, "pcl", "198.51.100.50/24"),
    ] {
        let dev = if ns == &n1 { "eth1" } else { "eth0" };
        ip(&[
            "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", port, "netns", &net2,
        ])
        .expect("veth");
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]).expect("addr");
        ip(&["-n", ns, "link", "set", dev, "up"]).expect("up");
        ip(&["-n", &net2, "link", "set", port, "master", "br0", "up"]).expect("port");
    }
    ip(&[
        "-n",
        &client,
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "198.51.100.1",
    ])
    .expect("client route");
    // Node 2 knows the second network through node 1, as a real underlay's router would.
    ipn(&n2, "route add 198.51.100.0/24 via 192.0.2.1");
    // The operator's own per-source table and rule on node 1.
    ipn(&n1, "route add 198.51.100.0/24 dev eth1 table 100");
    ipn(
        &n1,
        "route add default via 198.51.100.254 dev eth1 onlink table 100",
    );
    ipn(&n1, "rule add from 198.51.100.0/24 lookup 100");
    let a1 = hand_pod(&n1, &pod1, &subnets[0]);
    let a2 = hand_pod(&n2, &pod2, &subnets[1]);
    nft_script(
        &n1,
        &format!(
            "table ip operator {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  iifname \"eth1\" ip daddr 198.51.100.1 icmp type echo-request dnat to {a1}\n }}\n}}\n"
        ),
    );
    let flows = [
        (client.as_str(), a2.as_str()),
        (client.as_str(), "198.51.100.1"),
        (pod1.as_str(), "198.51.100.1"),
    ];
    let sub1 = format!(
        "{}.0/24",
        gw_addr(&subnets[0]).rsplit_once('.').expect("v4").0
    );
    let sub2 = format!(
        "{}.0/24",
        gw_addr(&subnets[1]).rsplit_once('.').expect("v4").0
    );

    wait_until("pod routes in table 100", Duration::from_secs(15), || {
        table_routes(&n1, "100").len() == 2
    });
    let routes = table_routes(&n1, "100");
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with(&format!("{sub2} via ")) && r.contains("dev twill.1")),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with(&format!("{sub1} dev cni0"))),
        "{routes:?}"
    );
    wait_until(
        "every flow through table 100",
        Duration::from_secs(15),
        || flows_ok(&flows) == [true, true, true],
    );

    // Without twill's copies in table 100 (agent stopped, its routes there removed), every flow
    // that table routes is lost.
    t.stop_agent(0);
    ip(&["-n", &n1, "route", "flush", "table", "100", "proto", "151"]).expect("flush ours");
    assert_eq!(
        flows_ok(&flows),
        [false, false, false],
        "the scenario does not need the table"
    );
    t.start_agent(0).expect("agent back");
    wait_until("flows back with the agent", Duration::from_secs(20), || {
        flows_ok(&flows) == [true, true, true]
    });
    // The operator's own routes in the table were never touched.
    let all = ip_out(&["-n", &n1, "route", "show", "table", "100"]);
    assert!(
        all.contains("198.51.100.0/24 dev eth1") && all.contains("default via 198.51.100.254"),
        "{all}"
    );

    // Leases come and go: node 2's subnet leaves table 100 with its lease and comes back.
    t.stop_agent(1);
    t.twill(&["release", "node2"]).expect("release");
    wait_until(
        "released peer leaves table 100",
        Duration::from_secs(10),
        || table_routes(&n1, "100") == [format!("{sub1} dev cni0 scope link")],
    );
    t.start_agent(1).expect("node2 back");
    wait_until("peer back in table 100", Duration::from_secs(20), || {
        table_routes(&n1, "100").len() == 2
    });

    // Drift in the table is repaired.
    ip(&["-n", &n1, "route", "flush", "table", "100", "proto", "151"]).expect("flush");
    wait_until("table 100 repaired", Duration::from_secs(10), || {
        table_routes(&n1, "100").len() == 2
    });

    // The rule goes: twill's routes leave the table; the operator's stay.
    ipn(&n1, "rule del from 198.51.100.0/24 lookup 100");
    wait_until("table 100 cleaned", Duration::from_secs(10), || {
        table_routes(&n1, "100").is_empty()
    });
    assert!(ip_out(&["-n", &n1, "route", "show", "table", "100"])
        .contains("default via 198.51.100.254"));

    // A table twill keeps whole: --source-table eth1=200 makes the rule from the address, the
    // connected and default routes (the gateway from the main table) and the pod routes.
    ipn(&n1, "route add default via 198.51.100.254 dev eth1");
    t.stop_agent(0);
    t.agent_extra = vec!["--source-table".into(), "eth1=200".into()];
    t.start_agent(0).expect("agent with --source-table");
    wait_until("managed table 200", Duration::from_secs(20), || {
        let r = table_routes(&n1, "200");
        r.len() == 4
            && r.contains(&"default via 198.51.100.254 dev eth1".to_string())
            && r.contains(&"198.51.100.0/24 dev eth1 scope link".to_string())
    });
    let rules = ip_out(&["-n", &n1, "rule", "show"]);
    assert!(
        rules.contains("32000:\tfrom 198.51.100.1 lookup 200 proto 151"),
        "{rules}"
    );
    wait_until(
        "pod reaches the second address through table 200",
        Duration::from_secs(10),
        || ping_from(&pod1, "198.51.100.1"),
    );
    // Someone deletes the rule: it comes back.
    ip(&["-n", &n1, "rule", "del", "pref", "32000"]).expect("rule del");
    wait_until("managed rule restored", Duration::from_secs(10), || {
        ip_out(&["-n", &n1, "rule", "show"]).contains("lookup 200 proto 151")
    });

    // `twill agent --cleanup` takes away everything of twill's on the node, and only that,
    // its rules in Docker's FORWARD chain included.
    nft_script(
        &n1,
        "table ip filter {\n chain FORWARD {\n  type filter hook forward priority filter; policy drop;\n }\n}\n",
    );
    let forward = || nft(&n1, &["list", "chain", "ip", "filter", "FORWARD"]).1;
    wait_until(
        "twill's rules in Docker's chain",
        Duration::from_secs(10),
        || forward().contains("twill: pod network"),
    );
    t.stop_agent(0);
    let out = Command::new("ip")
        .args(["netns", "exec", &n1])
        .arg(twill_binary().expect("twill binary"))
        .args(["agent", "--cleanup"])
        .output()
        .expect("run cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for family in ["-4", "-6"] {
        let left = ip_out(&[
            "-n", &n1, family, "route", "show", "table", "all", "proto", "151",
        ]);
        assert_eq!(left.trim(), "", "twill's routes left ({family})");
    }
    assert!(!ip_out(&["-n", &n1, "rule", "show"]).contains("proto 151"));
    assert!(!ip_out(&["-n", &n1, "link", "show"]).contains("twill."));
    assert!(
        !nft(&n1, &["list", "table", "inet", "twill"]).0,
        "masquerade table left"
    );
    assert!(
        nft(&n1, &["list", "table", "ip", "operator"]).0,
        "the operator's table went"
    );
    assert!(
        forward().contains("policy drop") && !forward().contains("twill"),
        "{}",
        forward()
    );
    assert!(ip_out(&["-n", &n1, "route", "show", "table", "100"])
        .contains("default via 198.51.100.254"));
    assert!(ip_out(&["-n", &n1, "route"]).contains("default via 198.51.100.254 dev eth1"));
}

/// Node `i`'s IPv6 pod gateway (FLANNEL_IPV6_SUBNET's address) once subnet.env has it.
fn ipv6_gateway(t: &Topology, i: usize) -> String {
    let path = t.nodes[i].dir.join("subnet.env");
    let mut found = String::new();
    wait_until(
        "FLANNEL_IPV6_SUBNET in subnet.env",
        Duration::from_secs(20),
        || {
            found = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET=").map(str::to_string))
                })
                .unwrap_or_default();
            !found.is_empty()
        },
    );
    found
}

fn ping6(ns: &str, from: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-6", "-c", "1", "-W", "1", "-I", from, to,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Three dual-stack nodes (an IPv6 address on each underlay interface, an IPv6 pod network in
/// the configuration): the IPv4 and the IPv6 ping matrices between the pod bridges both pass.
fn dual_stack(tag: &str, backend: &[&str], device_v6: Option<&str>) {
    let n = 3;
    let mut t = Topology::new(tag, n, &twill_binary().expect("twill binary")).expect("topology");
    for (i, node) in t.nodes.iter().enumerate() {
        ipn(
            &node.ns,
            &format!("addr add 2001:db8::{}/64 dev eth0 nodad", i + 1),
        );
    }
    let mut flags = vec!["--ipv6-network", "fd00:10:244::/56"];
    flags.extend(backend);
    let subnets = t.start_nodes_with_pod_bridges(&flags).expect("cluster");
    let gw6: Vec<String> = (0..n).map(|i| ipv6_gateway(&t, i)).collect();
    for (i, g) in gw6.iter().enumerate() {
        ipn(&t.nodes[i].ns, &format!("addr add {g} dev cni0 nodad"));
    }
    let addr6 = |g: &String| gw_addr(g).to_string();
    let matrix = |t: &Topology| {
        let mut failed = Vec::new();
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                if !t.ping(i, gw_addr(&subnets[i]), gw_addr(&subnets[j])) {
                    failed.push(format!("v4 {i}->{j}"));
                }
                if !ping6(&t.nodes[i].ns, &addr6(&gw6[i]), &addr6(&gw6[j])) {
                    failed.push(format!("v6 {i}->{j}"));
                }
            }
        }
        failed
    };
    let mut last = Vec::new();
    wait_until("both ping matrices", Duration::from_secs(30), || {
        last = matrix(&t);
        last.is_empty()
    });
    // One IPv6 route per peer, in twill's protocol.
    let routes6 = ip_out(&["-n", &t.nodes[0].ns, "-6", "route", "show", "proto", "151"]);
    assert_eq!(routes6.lines().count(), n - 1, "{routes6}");
    if let Some(dev) = device_v6 {
        let link = ip_out(&["-n", &t.nodes[0].ns, "-d", "link", "show", dev]);
        assert!(
            link.contains("local 2001:db8::1") && link.contains("mtu 1430"),
            "underlay MTU 1500 less 70: {link}"
        );
        // Drift on the IPv6 side is repaired like the IPv4 side.
        ipn(&t.nodes[0].ns, &format!("link del {dev}"));
        wait_until("IPv6 device replayed", Duration::from_secs(10), || {
            ip_out(&["-n", &t.nodes[0].ns, "-6", "route", "show", "proto", "151"])
                .lines()
                .count()
                == n - 1
        });
    }
    wait_until(
        "both ping matrices after drift",
        Duration::from_secs(20),
        || {
            last = matrix(&t);
            last.is_empty()
        },
    );
    let env = std::fs::read_to_string(t.nodes[0].dir.join("subnet.env")).expect("subnet.env");
    assert!(
        env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56"),
        "{env}"
    );

    // IPv6 egress is masqueraded too: the outside has no route to the pod network, so only a
    // request that left with the node's IPv6 address is answered.
    let outside = format!("tw-out6-{tag}{}", std::process::id());
    let _gone = Gone(vec![outside.clone()]);
    attach_to_bridge(&outside, 200, &t.underlay).expect("outside namespace");
    ipn(&outside, "addr add 2001:db8::200/64 dev eth0 nodad");
    wait_until(
        "pod network reaches the outside over IPv6",
        Duration::from_secs(10),
        || ping6(&t.nodes[0].ns, &addr6(&gw6[0]), "2001:db8::200"),
    );
    let nat = nft(&t.nodes[0].ns, &["list", "table", "inet", "twill"]).1;
    assert!(
        nat.contains("ip6 saddr fd00:10:244::/56 masquerade fully-random"),
        "{nat}"
    );
}

#[test]
fn dual_stack_vxlan() {
    if !root_or_skip("dual_stack_vxlan") {
        return;
    }
    dual_stack("ds-vx", &[], Some("twill-v6.1"));
}

#[test]
fn dual_stack_host_gw() {
    if !root_or_skip("dual_stack_host_gw") {
        return;
    }
    dual_stack("ds-gw", &["--backend", "host-gw"], None);
}

#[test]
fn dual_stack_bgp() {
    if !root_or_skip("dual_stack_bgp") {
        return;
    }
    // IPv6 subnets travel as IPv6 NLRI (MP_REACH, RFC 4760) with the nodes' IPv6 next hops over
    // the IPv4 sessions.
    dual_stack("ds-bgp", &["--backend", "bgp", "--bgp-asn", "64512"], None);
}
