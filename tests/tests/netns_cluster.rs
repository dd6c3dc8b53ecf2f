//! Three node namespaces on one underlay, a controller and three `twill agent` processes: pod
//! reachability across nodes, the exact kernel objects, a node leaving and coming back.
//! Needs root; in CI a missing root fails the test.

use std::time::Duration;

use twill_tests::netns::{gw_addr, ip_out, root_or_skip, wait_until, Topology};
use twill_tests::twill_binary;

fn run(tag: &str, backend: &[&str], vxlan: bool, n: usize) {
    let mut t = Topology::new(tag, n, &twill_binary().expect("twill binary")).expect("topology");
    let subnets = t
        .start_nodes_with_pod_bridges(backend)
        .expect("controller, agents and pod bridges");
    let matrix_ok = |t: &Topology| {
        (0..n).all(|i| {
            (0..n)
                .filter(|j| *j != i)
                .all(|j| t.ping(i, gw_addr(&subnets[i]), gw_addr(&subnets[j])))
        })
    };
    wait_until("full pod ping matrix", Duration::from_secs(20), || {
        matrix_ok(&t)
    });

    // Exactly one route per peer, and for VXLAN one neighbour and one FDB entry per peer.
    for i in 0..n {
        wait_until("routes settle", Duration::from_secs(10), || {
            t.routes(i).len() == n - 1
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
                n - 1,
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
                n - 1,
                "fdb {fdb}"
            );
        }
    }

    // node3 leaves: its lease is released, every other node removes its entries.
    t.stop_agent(2);
    t.twill(&["release", "node3"]).expect("release");
    for i in 0..2 {
        wait_until("peer removal", Duration::from_secs(10), || {
            t.routes(i).len() == n - 2
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
    for i in 0..n {
        wait_until("peer re-added", Duration::from_secs(10), || {
            t.routes(i).len() == n - 1
        });
    }
    wait_until("ping matrix after rejoin", Duration::from_secs(20), || {
        matrix_ok(&t)
    });

    // Drift: a route flush is repaired by the agent's resync.
    let ns0 = t.nodes[0].ns.clone();
    twill_tests::netns::ip(&["-n", &ns0, "route", "flush", "proto", "151"]).expect("flush");
    wait_until(
        "routes restored after a flush",
        Duration::from_secs(5),
        || t.routes(0).len() == n - 1,
    );
    if vxlan {
        twill_tests::netns::ip(&["-n", &ns0, "link", "del", "twill.1"]).expect("delete device");
        wait_until("device and peers replayed", Duration::from_secs(5), || {
            t.routes(0).len() == n - 1
        });
    }
    wait_until("ping matrix after drift", Duration::from_secs(20), || {
        matrix_ok(&t)
    });

    // A peer vanishes while node1's agent is down: at its start node1 removes the stale entries,
    // keeps its own subnet, and adds nothing twice.
    t.stop_agent(0);
    t.stop_agent(2);
    t.twill(&["release", "node3"]).expect("release");
    t.start_agent(0).expect("restart node1");
    wait_until(
        "stale peer removed at start",
        Duration::from_secs(10),
        || t.routes(0).len() == n - 2,
    );
    assert_eq!(
        t.wait_subnet(0, Duration::from_secs(5)).expect("subnet"),
        subnets[0]
    );

    // The controller goes away: the dataplane stays; it comes back: the agents catch up.
    t.stop_controller();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        t.routes(0).len(),
        n - 2,
        "routes removed while the controller was down"
    );
    assert!(
        t.ping(0, gw_addr(&subnets[0]), gw_addr(&subnets[1])),
        "dataplane broken while the controller was down"
    );
    t.start_controller(backend).expect("controller again");
    t.start_agent(2).expect("node3 back");
    for i in 0..n {
        wait_until(
            "catch-up after the controller outage",
            Duration::from_secs(30),
            || t.routes(i).len() == n - 1,
        );
    }
}

#[test]
fn three_nodes_vxlan() {
    if root_or_skip("three_nodes_vxlan") {
        run("vx", &["--backend", "vxlan"], true, 3);
    }
}

#[test]
fn three_nodes_host_gw() {
    if root_or_skip("three_nodes_host_gw") {
        run("gw", &["--backend", "host-gw"], false, 3);
    }
}

#[test]
fn three_nodes_vxlan_direct_routing() {
    // All nodes share the underlay segment, so direct routing makes every peer a plain route.
    if root_or_skip("three_nodes_vxlan_direct_routing") {
        run("dr", &["--backend", "vxlan", "--direct-routing"], false, 3);
    }
}

#[test]
fn bad_agent_input_fails_clearly_and_programs_nothing() {
    if !root_or_skip("bad_agent_input_fails_clearly_and_programs_nothing") {
        return;
    }
    let mut t = Topology::new("bad", 1, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(&[]).expect("controller");
    let cases: &[(&[&str], &str)] = &[
        (&["--iface", "nope0"], "interface \"nope0\" does not exist"),
        (
            &["--iface", "203.0.113.9"],
            "no interface has the address 203.0.113.9",
        ),
        (
            &["--iface", "lo", "--public-ip", "192.0.2.1"],
            "public IP 192.0.2.1 is on interface eth0, not on the chosen interface lo",
        ),
        (&["--iface-regex", "^zz"], "no interface matches"),
        (
            &["--iface", "eth0", "--metrics-addr", "203.0.113.9:9421"],
            "cannot serve metrics on 203.0.113.9:9421",
        ),
    ];
    for (args, want) in cases {
        let out = t.agent_once(0, args).expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(want),
            "{args:?}: expected {want:?} in {stderr}"
        );
        let links = ip_out(&["-n", &t.nodes[0].ns, "link", "show"]);
        assert!(
            !links.contains("twill."),
            "{args:?} left a twill device behind: {links}"
        );
        assert!(t.routes(0).is_empty(), "{args:?} left routes behind");
    }
}

#[test]
fn five_nodes_vxlan() {
    if root_or_skip("five_nodes_vxlan") {
        run("vx5", &["--backend", "vxlan"], true, 5);
    }
}

#[test]
fn five_nodes_host_gw() {
    if root_or_skip("five_nodes_host_gw") {
        run("gw5", &["--backend", "host-gw"], false, 5);
    }
}

#[test]
fn five_nodes_vxlan_direct_routing() {
    if root_or_skip("five_nodes_vxlan_direct_routing") {
        run("dr5", &["--backend", "vxlan", "--direct-routing"], false, 5);
    }
}

/// With the resync timer out of the way (an hour), only the netlink monitor can repair.
#[test]
fn drift_is_repaired_by_the_netlink_monitor() {
    if !root_or_skip("drift_is_repaired_by_the_netlink_monitor") {
        return;
    }
    let mut t = Topology::new("mon", 2, &twill_binary().expect("twill binary")).expect("topology");
    t.agent_resync = "1h".into();
    t.start_controller(&["--backend", "vxlan"])
        .expect("controller");
    t.start_agent(0).expect("agent");
    t.start_agent(1).expect("agent");
    t.wait_subnet(0, Duration::from_secs(30)).expect("subnet");
    t.wait_subnet(1, Duration::from_secs(30)).expect("subnet");
    wait_until("first route", Duration::from_secs(10), || {
        t.routes(0).len() == 1
    });
    let ns = t.nodes[0].ns.clone();
    let neigh = || {
        ip_out(&[
            "-n",
            &ns,
            "neigh",
            "show",
            "dev",
            "twill.1",
            "nud",
            "permanent",
        ])
    };
    let fdb = || {
        let o = std::process::Command::new("bridge")
            .args(["-n", &ns, "fdb", "show", "dev", "twill.1"])
            .output()
            .expect("bridge");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(" dst "))
            .count()
    };

    twill_tests::netns::ip(&["-n", &ns, "route", "flush", "proto", "151"]).expect("flush");
    wait_until("route repaired", Duration::from_secs(3), || {
        t.routes(0).len() == 1
    });
    twill_tests::netns::ip(&[
        "-n",
        &ns,
        "neigh",
        "flush",
        "dev",
        "twill.1",
        "nud",
        "permanent",
    ])
    .expect("flush");
    wait_until("neighbour repaired", Duration::from_secs(3), || {
        neigh().lines().count() == 1
    });
    let mac = neigh()
        .split_whitespace()
        .nth(2)
        .expect("lladdr")
        .to_string();
    let mac = if mac == "lladdr" {
        neigh().split_whitespace().nth(3).expect("mac").to_string()
    } else {
        mac
    };
    let dst = t.nodes[1].addr.clone();
    let ok = std::process::Command::new("bridge")
        .args([
            "-n", &ns, "fdb", "del", &mac, "dev", "twill.1", "dst", &dst, "self",
        ])
        .status()
        .expect("bridge");
    assert!(ok.success(), "fdb del {mac}");
    wait_until("fdb repaired", Duration::from_secs(3), || fdb() == 1);
    twill_tests::netns::ip(&["-n", &ns, "link", "del", "twill.1"]).expect("del");
    wait_until("device and peer replayed", Duration::from_secs(3), || {
        t.routes(0).len() == 1 && fdb() == 1
    });
}

/// `/readyz` is derived from the agent's state at every request: not ready without a
/// controller, ready once the lease is held and programmed, not ready again while every
/// reconcile fails (a foreign VXLAN device holding VNI 1 keeps twill from recreating its own)
/// or once the lease has run out with the controller gone, and ready again when healed.
#[test]
fn health_endpoints_follow_readiness() {
    if !root_or_skip("health_endpoints_follow_readiness") {
        return;
    }
    let mut t = Topology::new("hz", 1, &twill_binary().expect("twill binary")).expect("topology");
    t.agent_extra = vec!["--metrics-addr".into(), "127.0.0.1:9421".into()];
    // The operator's token comes from a controller that is then stopped: the agent starts
    // with no controller to join, waits for one, and is alive meanwhile.
    let controller_flags = ["--backend", "vxlan", "--lease-ttl", "4s"];
    t.start_controller(&controller_flags).expect("controller");
    t.join_token().expect("join token");
    t.stop_controller();
    t.start_agent(0).expect("agent");
    let ns = t.nodes[0].ns.clone();
    let get = |path: &'static str| twill_tests::netns::agent_http_get(&ns, path);
    wait_until("healthz up", Duration::from_secs(10), || {
        get("/healthz").starts_with("HTTP/1.1 200")
    });
    // No controller yet: alive, not ready.
    let r = get("/readyz");
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("no lease held"),
        "{r}"
    );
    // Short leases, so that losing the controller shows within the test.
    t.start_controller(&controller_flags).expect("controller");
    let ready = || get("/readyz").starts_with("HTTP/1.1 200");
    wait_until(
        "ready once the lease is held and programmed",
        Duration::from_secs(30),
        ready,
    );
    assert!(
        t.nodes[0].dir.join("subnet.env").exists(),
        "ready before subnet.env was written"
    );
    let m = get("/metrics");
    let scrape = twill_tests::parse_metrics(&m).expect("the agent's scrape parses");
    assert_eq!(
        twill_tests::sample(&scrape, "twill_agent_ready"),
        Some(1.0),
        "{m}"
    );

    // Every reconcile fails while a foreign device holds VNI 1 on port 8472 (the kernel
    // refuses a second one): not ready, saying why; ready again once it is gone.
    twill_tests::netns::foreign_device_takes_twills_vni(&ns, "foreign.1");
    wait_until(
        "not ready while reconciles fail",
        Duration::from_secs(15),
        || {
            let r = get("/readyz");
            r.starts_with("HTTP/1.1 503")
                && r.contains("last reconcile failed")
                && r.contains("device foreign.1 already uses VNI 1 on UDP port 8472")
        },
    );
    let m = get("/metrics");
    let scrape = twill_tests::parse_metrics(&m).expect("the agent's scrape parses");
    assert_eq!(
        twill_tests::sample(&scrape, "twill_agent_ready"),
        Some(0.0),
        "{m}"
    );
    twill_tests::netns::ip(&["-n", &ns, "link", "del", "foreign.1"]).expect("del foreign");
    wait_until(
        "ready again once reconciles succeed",
        Duration::from_secs(15),
        ready,
    );

    // The controller goes away: the lease runs out (4 s) and the agent says so; the controller
    // comes back on the same data and the renewed lease makes it ready again.
    t.stop_controller();
    wait_until(
        "not ready once the lease has expired",
        Duration::from_secs(30),
        || {
            let r = get("/readyz");
            r.starts_with("HTTP/1.1 503") && r.contains("lease expired")
        },
    );
    t.start_controller(&[]).expect("controller again");
    wait_until("ready again after renewing", Duration::from_secs(60), ready);
}

/// Node certificates that last 6 s are renewed every 4 s by running agents. Over 20 s, with the
/// kernel watched through `ip monitor`: no route, neighbour or FDB entry is removed, the leases
/// keep their create revision, and each agent's saved certificate moves on several times.
#[test]
fn certificate_rotation_on_running_agents_drops_nothing() {
    if !root_or_skip("certificate_rotation_on_running_agents_drops_nothing") {
        return;
    }
    let mut t = Topology::new("rot", 2, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(&["--backend", "vxlan", "--node-cert-ttl", "6s"])
        .expect("controller");
    t.start_agent(0).expect("agent");
    t.start_agent(1).expect("agent");
    t.wait_subnet(0, Duration::from_secs(30)).expect("subnet");
    t.wait_subnet(1, Duration::from_secs(30)).expect("subnet");
    wait_until("routes", Duration::from_secs(10), || {
        t.routes(0).len() == 1 && t.routes(1).len() == 1
    });
    let leases = |t: &Topology| -> Vec<(String, u64)> {
        let out = t.twill(&["leases", "--json"]).expect("leases");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let mut l: Vec<(String, u64)> = v["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .map(|x| {
                (
                    x["node"].as_str().unwrap_or_default().to_string(),
                    x["create_revision"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        l.sort();
        l
    };
    let before = leases(&t);
    assert_eq!(before.len(), 2);
    let expiry = |i: usize| {
        twill_pki::Credentials::load(&t.nodes[i].dir.join("state").join("node.pem"))
            .and_then(|c| c.not_after())
            .expect("a saved node certificate")
    };
    let first = [expiry(0), expiry(1)];
    let monitors: Vec<std::process::Child> = t
        .nodes
        .iter()
        .map(|n| {
            std::process::Command::new("ip")
                .args(["-n", &n.ns, "monitor", "route", "neigh", "link"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("ip monitor")
        })
        .collect();
    let bridge_monitors: Vec<std::process::Child> = t
        .nodes
        .iter()
        .map(|n| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &n.ns, "bridge", "monitor", "fdb"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("bridge monitor")
        })
        .collect();
    let mut renewed = [0, 0];
    let mut last = first;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        for (i, l) in last.iter_mut().enumerate() {
            let e = expiry(i);
            if e > *l {
                renewed[i] += 1;
                *l = e;
            }
        }
    }
    let mut seen = String::new();
    for mut m in monitors.into_iter().chain(bridge_monitors) {
        let _ = m.kill();
        let out = m.wait_with_output().expect("monitor output");
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(
        renewed.iter().all(|r| *r >= 3),
        "each agent should renew its 6 s certificate at least 3 times in 20 s: {renewed:?}"
    );
    assert_eq!(leases(&t), before, "a lease was lost or recreated");
    let removed: Vec<&str> = seen.lines().filter(|l| l.starts_with("Deleted")).collect();
    assert!(
        removed.is_empty(),
        "kernel objects removed during rotation: {removed:?}"
    );
    assert_eq!(t.routes(0).len(), 1);
    assert_eq!(t.routes(1).len(), 1);
}
