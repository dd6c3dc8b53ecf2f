//! The bgp backend end to end: a controller and `twill agent`s in node namespaces, each agent's
//! speaker originating its node's subnet and installing what it learns. Full mesh and route
//! reflection on 3 and 5 nodes: the pod ping matrix over BGP-installed routes, `twill bgp
//! status`, a node leaving (its routes withdrawn everywhere) and coming back. Needs root.

use std::time::Duration;

use twill_tests::netns::{gw_addr, root_or_skip, wait_until, Topology};
use twill_tests::twill_binary;

/// Established sessions in node `i`'s `twill bgp status`.
fn established(t: &Topology, i: usize) -> usize {
    let out = std::process::Command::new(twill_binary().expect("twill"))
        .args(["bgp", "status", "--state-dir"])
        .arg(t.nodes[i].dir.join("state"))
        .output()
        .expect("twill bgp status");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" established "))
        .count()
}

fn cluster(tag: &str, n: usize, extra: &[&str], sessions: impl Fn(usize) -> usize) {
    let mut t = Topology::new(tag, n, &twill_binary().expect("twill binary")).expect("topology");
    let mut flags = vec![
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--bgp-hold-time",
        "9",
    ];
    flags.extend_from_slice(extra);
    let subnets = t
        .start_nodes_with_pod_bridges(&flags)
        .expect("controller, agents and pod bridges");
    for i in 0..n {
        wait_until(
            "a BGP route to every other node",
            Duration::from_secs(30),
            || t.routes(i).len() == n - 1,
        );
        // Plain routes via the peer's address on the underlay: what BGP gave as next hop.
        for r in t.routes(i) {
            assert!(r.contains(" via 192.0.2.") && r.contains("dev eth0"), "{r}");
        }
    }
    let matrix_ok = |t: &Topology, live: &[usize]| {
        live.iter().all(|i| {
            live.iter()
                .filter(|j| *j != i)
                .all(|j| t.ping(*i, gw_addr(&subnets[*i]), gw_addr(&subnets[*j])))
        })
    };
    let all: Vec<usize> = (0..n).collect();
    wait_until(
        "full pod ping matrix over BGP routes",
        Duration::from_secs(20),
        || matrix_ok(&t, &all),
    );
    for i in 0..n {
        wait_until(
            "twill bgp status shows the sessions",
            Duration::from_secs(10),
            || established(&t, i) == sessions(i),
        );
    }

    // The last node's agent stops: its speaker is gone, so every node drops its route (the
    // lease itself stays until its TTL).
    let last = n - 1;
    let gone = subnets[last]
        .parse::<ipnet::Ipv4Net>()
        .expect("FLANNEL_SUBNET")
        .trunc()
        .to_string();
    t.stop_agent(last);
    for i in 0..last {
        wait_until(
            "the leaving node's route withdrawn",
            Duration::from_secs(30),
            || {
                !t.routes(i)
                    .iter()
                    .any(|r| r.starts_with(&format!("{gone} ")))
            },
        );
    }
    t.start_agent(last).expect("agent back");
    for i in 0..n {
        wait_until(
            "routes back after the node returns",
            Duration::from_secs(30),
            || t.routes(i).len() == n - 1,
        );
    }
    wait_until(
        "ping matrix after the return",
        Duration::from_secs(20),
        || matrix_ok(&t, &all),
    );
}

#[test]
fn bgp_full_mesh_three_nodes() {
    if root_or_skip("bgp_full_mesh_three_nodes") {
        cluster("bm3", 3, &[], |_| 2);
    }
}

#[test]
fn bgp_full_mesh_five_nodes() {
    if root_or_skip("bgp_full_mesh_five_nodes") {
        cluster("bm5", 5, &[], |_| 4);
    }
}

#[test]
fn bgp_route_reflector_three_nodes() {
    if root_or_skip("bgp_route_reflector_three_nodes") {
        // node1 reflects: it has a session to each client, each client one to node1.
        cluster("br3", 3, &["--bgp-route-reflectors", "node1"], |i| {
            if i == 0 {
                2
            } else {
                1
            }
        });
    }
}

#[test]
fn bgp_route_reflectors_five_nodes() {
    if root_or_skip("bgp_route_reflectors_five_nodes") {
        // node1 and node2 reflect (one cluster id); clients peer with both.
        cluster("br5", 5, &["--bgp-route-reflectors", "node1,node2"], |i| {
            if i < 2 {
                4
            } else {
                2
            }
        });
    }
}
