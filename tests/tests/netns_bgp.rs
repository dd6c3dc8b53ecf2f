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

/// Node `i`'s sessions from `twill bgp status --json`: peer → (state, since).
fn sessions_of(t: &Topology, i: usize) -> std::collections::BTreeMap<String, (String, u64)> {
    let out = std::process::Command::new(twill_binary().expect("twill"))
        .args(["bgp", "status", "--json", "--state-dir"])
        .arg(t.nodes[i].dir.join("state"))
        .output()
        .expect("twill bgp status");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter()
        .map(|r| {
            (
                r["peer"].as_str().unwrap_or_default().to_string(),
                (
                    r["state"].as_str().unwrap_or_default().to_string(),
                    r["since"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// A BGP settings change reaches every agent through the controller and is applied to the
/// running speaker: a new outside peer appears, the node sessions stay up untouched.
fn change_settings_without_resets(t: &Topology, n: usize) {
    let before: Vec<_> = (0..n).map(|i| sessions_of(t, i)).collect();
    t.twill(&["config", "set", "--bgp-peer", "192.0.2.250=64500"])
        .expect("config set");
    for (i, before) in before.iter().enumerate() {
        wait_until(
            "the new peer on every node",
            Duration::from_secs(20),
            || sessions_of(t, i).contains_key("192.0.2.250"),
        );
        let now = sessions_of(t, i);
        for (peer, (state, since)) in before {
            assert_eq!(
                now.get(peer),
                Some(&(state.clone(), *since)),
                "node{}: the session to {peer} was reset by an unrelated change",
                i + 1
            );
        }
    }
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
    change_settings_without_resets(&t, n);

    // The last node leaves: its agent stops and its lease is released. A stopped agent alone
    // keeps its routes on the peers (graceful restart); the lease gone removes the peer.
    let last = n - 1;
    let gone = subnets[last]
        .parse::<ipnet::Ipv4Net>()
        .expect("FLANNEL_SUBNET")
        .trunc()
        .to_string();
    t.stop_agent(last);
    t.twill(&["release", &t.nodes[last].name.clone()])
        .expect("release");
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

/// Graceful restart: a node's agent is killed and started again while pods on another node
/// ping it. Its peers keep its routes (stale) while it is away, and the restarted agent keeps
/// the routes it finds in the kernel until its peers have resent their tables, so traffic
/// keeps flowing; without either, the route disappears for the whole outage.
#[test]
fn bgp_agent_restart_keeps_pod_traffic_flowing() {
    if !root_or_skip("bgp_agent_restart_keeps_pod_traffic_flowing") {
        return;
    }
    let n = 3;
    let mut t = Topology::new("bgr", n, &twill_binary().expect("twill binary")).expect("topology");
    let subnets = t
        .start_nodes_with_pod_bridges(&["--backend", "bgp", "--bgp-asn", "64512"])
        .expect("controller, agents and pod bridges");
    for i in 0..n {
        wait_until("routes", Duration::from_secs(30), || {
            t.routes(i).len() == n - 1
        });
    }
    wait_until(
        "node1 reaches node3's pods",
        Duration::from_secs(20),
        || t.ping(0, gw_addr(&subnets[0]), gw_addr(&subnets[2])),
    );
    // 10 s of pings, 20 a second; the restart happens in the middle.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.nodes[0].ns,
            "ping",
            "-q",
            "-i",
            "0.05",
            "-c",
            "200",
            "-W",
            "1",
            "-I",
        ])
        .arg(gw_addr(&subnets[0]))
        .arg(gw_addr(&subnets[2]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_secs(3));
    t.stop_agent(2); // SIGKILL: the sessions drop without a NOTIFICATION
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        t.routes(0).len(),
        n - 1,
        "node1 dropped the route of a gracefully restarting peer"
    );
    t.start_agent(2).expect("agent back");
    let out = ping.wait_with_output().expect("ping result");
    let text = String::from_utf8_lossy(&out.stdout);
    let received: u32 = text
        .split(',')
        .find_map(|f| f.trim().strip_suffix(" received"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    println!("across the agent restart: {received} of 200 replies");
    assert!(
        received >= 190,
        "{received} of 200 replies across an agent restart (at most a few may be lost):\n{text}"
    );
    // And the sessions are back, with nothing stale left behind.
    for i in 0..n {
        wait_until(
            "sessions back after the restart",
            Duration::from_secs(30),
            || t.routes(i).len() == n - 1,
        );
    }
}

/// Kills the BIRD a test started, whatever happens to the test.
struct BirdGuard(std::path::PathBuf);

impl Drop for BirdGuard {
    fn drop(&mut self) {
        twill_tests::bgp::kill_pid_file(&self.0);
    }
}

/// Nodes peer only with a top-of-rack router (BIRD, eBGP with an AS per node, no node mesh;
/// with one AS for all, each node would rightly refuse the others' paths, its AS being on
/// them already): each node's subnet reaches the other node through the ToR's announcements,
/// BIRD's own prefix inside the pod network is installed
/// by twill, and a prefix outside the pod network is not (no route leaks). Pods ping across.
#[test]
fn agents_peer_with_a_tor_router_and_install_only_pod_routes() {
    if !root_or_skip("agents_peer_with_a_tor_router_and_install_only_pod_routes") {
        return;
    }
    // Node namespaces 1 and 2 run agents; namespace 3 (192.0.2.3) is the ToR.
    let mut t = Topology::new("btor", 3, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(&[
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--bgp-mesh",
        "false",
        "--bgp-peer",
        "192.0.2.3=64600",
        "--bgp-node-asn",
        "node1=64601",
        "--bgp-node-asn",
        "node2=64602",
    ])
    .expect("controller");
    let dir = t.dir.join("tor");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut conf = String::from(
        "router id 192.0.2.3;\nprotocol device {}\nprotocol direct { ipv4; interface \"eth0\"; }\nprotocol kernel { ipv4 { export where source = RTS_BGP; }; }\nprotocol static own { ipv4; route 10.244.200.0/24 blackhole; route 192.168.77.0/24 blackhole; }\n",
    );
    for n in [1, 2] {
        conf.push_str(&format!(
            "protocol bgp node{n} {{ local 192.0.2.3 as 64600; neighbor 192.0.2.{n} as 6460{n}; ipv4 {{ import all; export all; }}; }}\n"
        ));
    }
    std::fs::write(dir.join("bird.conf"), conf).expect("conf");
    let tor = t.nodes[2].ns.clone();
    twill_tests::netns::ip(&[
        "netns",
        "exec",
        &tor,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])
    .expect("forwarding on the ToR");
    let ok = std::process::Command::new("ip")
        .args(["netns", "exec", &tor, "bird", "-c"])
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .status()
        .expect("bird");
    assert!(ok.success(), "bird did not start");
    let _bird = BirdGuard(dir.join("bird.pid"));
    t.agent_extra = vec!["--metrics-addr".into(), "127.0.0.1:9421".into()];
    let mut subnets = Vec::new();
    for i in 0..2 {
        t.start_agent(i).expect("agent");
    }
    for i in 0..2 {
        let s = t
            .wait_subnet(i, Duration::from_secs(30))
            .expect("subnet.env");
        t.add_pod_bridge(i, &s).expect("pod bridge");
        subnets.push(s);
    }
    let net = |s: &str| {
        s.parse::<ipnet::Ipv4Net>()
            .expect("FLANNEL_SUBNET")
            .trunc()
            .to_string()
    };
    for (i, j) in [(0, 1), (1, 0)] {
        // BIRD passes the other node's own address on as next hop (it is on the same segment,
        // RFC 4271 §5.1.3), and its own prefix with itself as next hop.
        let want = [
            format!("{} via 192.0.2.{} ", net(&subnets[j]), j + 1),
            "10.244.200.0/24 via 192.0.2.3 ".to_string(),
        ];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = t.routes(i);
            if want
                .iter()
                .all(|w| r.iter().any(|l| l.starts_with(w.as_str())))
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                let bird = twill_tests::bgp::output_of(
                    std::process::Command::new("birdc")
                        .arg("-s")
                        .arg(dir.join("bird.ctl"))
                        .args(["show", "route", "all"]),
                );
                panic!(
                    "node{} has {r:?}, wants {want:?}; its sessions {:?}; BIRD's routes:\n{bird}",
                    i + 1,
                    sessions_of(&t, i)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let all = twill_tests::netns::ip_out(&["-n", &t.nodes[i].ns, "route", "show"]);
        assert!(
            !all.contains("192.168.77.0"),
            "a route outside the pod network leaked in:\n{all}"
        );
    }
    // BIRD has the nodes' subnets in its kernel table, from twill.
    let bird_kernel = twill_tests::netns::ip_out(&["-n", &tor, "route", "show", &net(&subnets[0])]);
    assert!(
        bird_kernel.contains("via 192.0.2.1") && bird_kernel.contains("proto bird"),
        "BIRD did not install node1's subnet: {bird_kernel:?}"
    );
    wait_until(
        "pods reach each other on routes from the ToR",
        Duration::from_secs(20),
        || t.ping(0, gw_addr(&subnets[0]), gw_addr(&subnets[1])),
    );
    // Per-peer metrics: the session, and what came from the ToR (its outside prefix was
    // refused on the way in, so two: the other node's subnet and BIRD's pod prefix).
    let ns1 = t.nodes[0].ns.clone();
    wait_until("per-peer BGP metrics", Duration::from_secs(10), || {
        let m = twill_tests::netns::agent_http_get(&ns1, "/metrics");
        m.contains("twill_bgp_session_established{peer=\"192.0.2.3\",asn=\"64600\"} 1")
            && m.contains("twill_bgp_prefixes_received{peer=\"192.0.2.3\",asn=\"64600\"} 2")
            && m.contains("twill_bgp_prefixes_advertised{peer=\"192.0.2.3\",asn=\"64600\"} 1")
    });
    wait_until(
        "twill bgp status shows the ToR session",
        Duration::from_secs(10),
        || sessions_of(&t, 0).get("192.0.2.3").map(|s| s.0.as_str()) == Some("established"),
    );
}
