//! Interface selection on two-homed nodes: each node has the sandbox underlay (where the
//! controller is) and `eth1` on a second network, 198.51.100.0/24, in a bridge namespace of
//! this test. The underlay interface is renamed `ul0`, so the sandbox's own `--iface eth0`
//! finds nothing and, as in flannel, the next flags decide: `--iface-regex`,
//! `--iface-can-reach`, `--iface <address>`. Each choice is read back from the lease and from
//! `/metrics`; then the chosen address is changed at run time and the lease, the VXLAN device
//! and the peer's FDB follow it, with the subnet kept. Needs root; in CI a missing root fails.

use std::time::Duration;

use serde_json::Value;
use twill_tests::netns::{agent_http_get, gw_addr, ip, ip_out, root_or_skip, wait_until, Topology};
use twill_tests::twill_binary;

/// The second network's bridge namespace, removed on drop.
struct Net2(String);

impl Drop for Net2 {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

/// Renames every node's `eth0` to `ul0` and gives it `eth1` = 198.51.100.<n>/24 on a bridge
/// in a namespace of its own.
fn second_network(t: &Topology) -> Net2 {
    let net = Net2(format!("tw-ul2-{}", t.tag));
    ip(&["netns", "add", &net.0]).expect("second bridge namespace");
    ip(&["-n", &net.0, "link", "add", "br0", "type", "bridge"]).expect("bridge");
    ip(&["-n", &net.0, "link", "set", "br0", "up"]).expect("bridge up");
    for (i, n) in t.nodes.iter().enumerate() {
        let port = format!("q{}", i + 1);
        let addr = format!("198.51.100.{}/24", i + 1);
        for args in [
            &["link", "set", "eth0", "down"][..],
            &["link", "set", "eth0", "name", "ul0"],
            &["link", "set", "ul0", "up"],
            &[
                "link", "add", "eth1", "type", "veth", "peer", "name", &port, "netns", &net.0,
            ],
            &["addr", "add", &addr, "dev", "eth1"],
            &["link", "set", "eth1", "up"],
        ] {
            ip(&[&["-n", n.ns.as_str()][..], args].concat()).expect("second interface");
        }
        ip(&["-n", &net.0, "link", "set", &port, "master", "br0"]).expect("port");
        ip(&["-n", &net.0, "link", "set", &port, "up"]).expect("port up");
    }
    net
}

/// Node `name`'s lease as `twill leases --json` prints it.
fn lease(t: &Topology, name: &str) -> Option<Value> {
    let out = t.twill(&["leases", "--json"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v["leases"]
        .as_array()?
        .iter()
        .find(|l| l["node"] == name)
        .cloned()
}

/// Waits until node1's lease publishes `public_ip` and `reason`; returns its subnet.
fn lease_shows(t: &Topology, public_ip: &str, iface: &str, addr: &str, reason: &str) -> String {
    let mut last = None;
    let ok = |l: &Value| {
        l["public_ip"] == public_ip
            && l["backend_data"]["public_iface"] == iface
            && l["backend_data"]["public_iface_addr"] == addr
            && l["backend_data"]["public_iface_reason"] == reason
    };
    wait_until(
        &format!("lease with {public_ip} by {reason}"),
        Duration::from_secs(20),
        || {
            last = lease(t, "node1");
            last.as_ref().is_some_and(ok)
        },
    );
    last.and_then(|l| l["subnet"].as_str().map(str::to_string))
        .expect("subnet")
}

/// The agent's `twill_agent_public_interface` series: exactly this one.
fn metrics_show(t: &Topology, iface: &str, addr: &str, public_ip: &str, reason: &str) {
    let want = format!(
        "twill_agent_public_interface{{iface=\"{iface}\",address=\"{addr}\",public_ip=\"{public_ip}\",reason=\"{reason}\"}} 1"
    );
    let mut got = String::new();
    wait_until(&format!("metrics {want}"), Duration::from_secs(10), || {
        got = agent_http_get(&t.nodes[0].ns, "/metrics");
        got.contains(&want)
    });
    let series = got
        .lines()
        .filter(|l| l.starts_with("twill_agent_public_interface{"))
        .count();
    assert_eq!(series, 1, "one choice at a time: {got}");
}

/// Restarts node1's agent with `flags` after the sandbox's `--iface eth0`.
fn restart_node1(t: &mut Topology, flags: &[&str]) {
    t.stop_agent(0);
    t.agent_extra = ["--metrics-addr", "127.0.0.1:9421"]
        .iter()
        .chain(flags)
        .map(|s| s.to_string())
        .collect();
    t.start_agent(0).expect("start node1");
}

fn fdb_on_node2(t: &Topology) -> String {
    let out = std::process::Command::new("bridge")
        .args(["-n", &t.nodes[1].ns, "fdb", "show", "dev", "twill.1"])
        .output()
        .expect("bridge");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vxlan_local_on_node1(t: &Topology) -> String {
    ip_out(&["-n", &t.nodes[0].ns, "-d", "link", "show", "twill.1"])
}

#[test]
fn two_homed_node_selects_and_follows_its_address() {
    if !root_or_skip("two_homed_node_selects_and_follows_its_address") {
        return;
    }
    let mut t =
        Topology::new("ifsel", 2, &twill_binary().expect("twill binary")).expect("topology");
    let _net2 = second_network(&t);
    t.start_controller(&["--backend", "vxlan"])
        .expect("controller");
    // node2 chooses eth1 by name pattern, as node1 does first.
    t.agent_extra = vec!["--iface-regex".into(), "^eth1$".into()];
    t.start_agent(1).expect("node2");
    restart_node1(&mut t, &["--iface-regex", "^eth1$"]);
    let gws: Vec<String> = (0..2)
        .map(|i| {
            let s = t
                .wait_subnet(i, Duration::from_secs(30))
                .expect("subnet.env");
            t.add_pod_bridge(i, &s).expect("pod bridge");
            gw_addr(&s).to_string()
        })
        .collect();
    let across = |t: &Topology| t.ping(0, &gws[0], &gws[1]) && t.ping(1, &gws[1], &gws[0]);

    // --iface-regex: the sandbox's --iface eth0 is missing, the pattern picks eth1.
    let r = "--iface-regex ^eth1$";
    let subnet = lease_shows(&t, "198.51.100.1", "eth1", "198.51.100.1", r);
    metrics_show(&t, "eth1", "198.51.100.1", "198.51.100.1", r);
    wait_until("pods across eth1", Duration::from_secs(20), || across(&t));
    assert!(fdb_on_node2(&t).contains("dst 198.51.100.1 "));

    // Each way of choosing, after a restart: --iface-can-reach (the route to node2's eth1
    // address leaves through eth1), --iface <address> (the interface holding it), and the
    // pattern again, whose agent then sees its address change.
    for (flags, r) in [
        (
            &["--iface-can-reach", "198.51.100.2"][..],
            "--iface-can-reach 198.51.100.2",
        ),
        (&["--iface", "198.51.100.1"], "--iface 198.51.100.1"),
        (&["--iface-regex", "^eth1$"], "--iface-regex ^eth1$"),
    ] {
        restart_node1(&mut t, flags);
        let s = lease_shows(&t, "198.51.100.1", "eth1", "198.51.100.1", r);
        assert_eq!(s, subnet, "{r}: the node keeps its subnet");
        metrics_show(&t, "eth1", "198.51.100.1", "198.51.100.1", r);
        wait_until(
            &format!("pods across, {r}"),
            Duration::from_secs(20),
            || across(&t),
        );
    }

    // The chosen address changes at run time: everything follows, the subnet stays.
    let ns1 = t.nodes[0].ns.clone();
    ip(&["-n", &ns1, "addr", "del", "198.51.100.1/24", "dev", "eth1"]).expect("del");
    // For a few resyncs no interface matches: the old choice is kept, nothing is removed.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lease(&t, "node1").map(|l| l["public_ip"].clone()),
        Some("198.51.100.1".into())
    );
    assert_eq!((t.routes(0).len(), t.routes(1).len()), (1, 1));
    ip(&["-n", &ns1, "addr", "add", "198.51.100.11/24", "dev", "eth1"]).expect("add");
    assert_eq!(
        lease_shows(&t, "198.51.100.11", "eth1", "198.51.100.11", r),
        subnet,
        "the lease follows the address and keeps its subnet"
    );
    metrics_show(&t, "eth1", "198.51.100.11", "198.51.100.11", r);
    wait_until(
        "node1's VXLAN device local",
        Duration::from_secs(10),
        || vxlan_local_on_node1(&t).contains("local 198.51.100.11 "),
    );
    wait_until("node2's FDB toward node1", Duration::from_secs(10), || {
        let f = fdb_on_node2(&t);
        f.contains("dst 198.51.100.11 ") && !f.contains("dst 198.51.100.1 ")
    });
    wait_until(
        "pods across the new address",
        Duration::from_secs(20),
        || across(&t),
    );

    // A NAT'd --public-ip: published, while the VXLAN device keeps the local address.
    restart_node1(&mut t, &["--iface", "eth1", "--public-ip", "203.0.113.1"]);
    assert_eq!(
        lease_shows(&t, "203.0.113.1", "eth1", "198.51.100.11", "--iface eth1"),
        subnet
    );
    metrics_show(&t, "eth1", "198.51.100.11", "203.0.113.1", "--iface eth1");
    assert!(vxlan_local_on_node1(&t).contains("local 198.51.100.11 "));
    wait_until(
        "node2's FDB toward the public IP",
        Duration::from_secs(10),
        || fdb_on_node2(&t).contains("dst 203.0.113.1 "),
    );
}

#[test]
fn contradictory_or_bad_interface_flags_are_refused_at_parse_time() {
    // No root needed: clap refuses these before anything runs.
    let bin = twill_binary().expect("twill binary");
    let cases: &[(&[&str], &str)] = &[
        (&["--iface-regex", "("], "not a valid regular expression"),
        (&["--iface-regex", ""], "empty pattern"),
        (
            &["--iface", "a/b"],
            "neither an IPv4 address nor an interface name",
        ),
        (&["--iface-can-reach", "0.0.0.0"], "not a host's address"),
        (&["--iface-can-reach", "eth0"], "is not an IPv4 address"),
        (&["--public-ip", "224.0.0.1"], "not a host's address"),
        (
            &[
                "--iface-can-reach",
                "192.0.2.1",
                "--iface-can-reach",
                "192.0.2.2",
            ],
            "cannot be used multiple times",
        ),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(&bin)
            .arg("agent")
            .args(*args)
            .output()
            .expect("run twill");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
}
