//! Three node namespaces on one underlay, a controller and three `twill agent` processes: pod
//! reachability across nodes, the exact kernel objects, a node leaving and coming back.
//! Needs root; in CI a missing root fails the test.

use std::time::{Duration, Instant};

use twill_tests::netns::{ip_out, root_or_skip, Topology};
use twill_tests::twill_binary;

const N: usize = 3;

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} not reached within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gw_addr(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

fn run(tag: &str, backend: &[&str], vxlan: bool) {
    let mut t = Topology::new(tag, N, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(backend).expect("controller");
    for i in 0..N {
        t.start_agent(i).expect("agent");
    }
    let subnets: Vec<String> = (0..N)
        .map(|i| {
            t.wait_subnet(i, Duration::from_secs(30))
                .expect("subnet.env")
        })
        .collect();
    for (i, s) in subnets.iter().enumerate() {
        t.add_pod_bridge(i, s).expect("pod bridge");
    }
    let matrix_ok = |t: &Topology| {
        (0..N).all(|i| {
            (0..N)
                .filter(|j| *j != i)
                .all(|j| t.ping(i, gw_addr(&subnets[i]), gw_addr(&subnets[j])))
        })
    };
    wait_until("full pod ping matrix", Duration::from_secs(20), || {
        matrix_ok(&t)
    });

    // Exactly one route per peer, and for VXLAN one neighbour and one FDB entry per peer.
    for i in 0..N {
        wait_until("routes settle", Duration::from_secs(10), || {
            t.routes(i).len() == N - 1
        });
        let ns = &t.nodes[i].ns;
        if vxlan {
            let neigh = ip_out(&[
                "-n",
                ns,
                "neigh",
                "show",
                "dev",
                "twill.1",
                "nud",
                "permanent",
            ]);
            assert_eq!(
                neigh.lines().count(),
                N - 1,
                "{}: neighbours {neigh}",
                t.nodes[i].name
            );
            let fdb = std::process::Command::new("bridge")
                .args(["-n", ns, "fdb", "show", "dev", "twill.1"])
                .output()
                .expect("bridge");
            let fdb = String::from_utf8_lossy(&fdb.stdout);
            assert_eq!(
                fdb.lines().filter(|l| l.contains(" dst ")).count(),
                N - 1,
                "fdb {fdb}"
            );
        }
    }

    // node3 leaves: its lease is released, every other node removes its entries.
    t.stop_agent(2);
    t.twill(&["release", "node3"]).expect("release");
    for i in 0..2 {
        wait_until("peer removal", Duration::from_secs(10), || {
            t.routes(i).len() == N - 2
        });
    }
    // It comes back with the same subnet and everyone adds it again.
    t.start_agent(2).expect("restart agent");
    let again = t
        .wait_subnet(2, Duration::from_secs(20))
        .expect("subnet.env");
    assert_eq!(
        again, subnets[2],
        "a returning node must get its subnet back"
    );
    for i in 0..N {
        wait_until("peer re-added", Duration::from_secs(10), || {
            t.routes(i).len() == N - 1
        });
    }
    wait_until("ping matrix after rejoin", Duration::from_secs(20), || {
        matrix_ok(&t)
    });
}

#[test]
fn three_nodes_vxlan() {
    if root_or_skip("three_nodes_vxlan") {
        run("vx", &["--backend", "vxlan"], true);
    }
}

#[test]
fn three_nodes_host_gw() {
    if root_or_skip("three_nodes_host_gw") {
        run("gw", &["--backend", "host-gw"], false);
    }
}

#[test]
fn three_nodes_vxlan_direct_routing() {
    // All nodes share the underlay segment, so direct routing makes every peer a plain route.
    if root_or_skip("three_nodes_vxlan_direct_routing") {
        run("dr", &["--backend", "vxlan", "--direct-routing"], false);
    }
}
