//! Faults around the agents, in real namespaces.
//!
//! An agent cut off from the controller (its packets to and from the controller dropped by
//! nftables in its node's namespace), for less and for more than the lease TTL. Shorter: the
//! lease stays, pods keep talking across the nodes throughout, and the agent is ready again
//! once it can renew. Longer: the lease expires, the other nodes take their routes to it away
//! and the agent says the lease expired; once the controller is reachable again it acquires the
//! same subnet back, by itself, and pods talk again. The underlay between two nodes cut: pod
//! traffic between those two fails, nothing else changes, and it heals by itself. An agent
//! restarted with an older state file (another subnet in it) keeps the lease it holds. Needs
//! root; in CI a missing root fails it.

use std::time::{Duration, Instant};

use twill_sandbox::Topology;
use twill_tests::netns::{
    agent_http_get, cut_between, cut_off, lease_of, reconnect, root_or_skip, wait_until,
};
use twill_tests::{cni_binary, twill_binary};

const CNI_PATH: &str = "/usr/lib/cni";

fn readyz(t: &Topology, i: usize) -> String {
    agent_http_get(&t.nodes[i].ns, "/readyz")
}

/// `n` nodes with a pod each, the agents serving /readyz; the controller with `ttl`.
fn nodes(tag: &str, n: usize, ttl: &str) -> Topology {
    let bin = twill_binary().expect("twill");
    let cni = cni_binary().expect("twill-cni");
    let mut t = Topology::new(tag, n, &bin).expect("topology");
    t.agent_extra = vec!["--metrics-addr".into(), "127.0.0.1:9421".into()];
    t.start_controller(&["--lease-ttl", ttl])
        .expect("controller");
    for i in 0..n {
        t.start_agent(i).expect("agent");
    }
    for i in 0..n {
        t.wait_subnet(i, Duration::from_secs(30)).expect("subnet");
        t.add_pod(i, 0, &cni, CNI_PATH).expect("pod");
    }
    wait_until("pods talk", Duration::from_secs(30), || {
        (0..n).all(|a| (0..n).all(|b| a == b || t.pod_ping(a, b)))
    });
    t
}

fn two_nodes(tag: &str, ttl: &str) -> Topology {
    nodes(tag, 2, ttl)
}

#[test]
fn an_agent_cut_off_for_less_than_the_ttl_keeps_its_lease_and_its_pods_talking() {
    if !root_or_skip("an_agent_cut_off_for_less_than_the_ttl_keeps_its_lease_and_its_pods_talking")
    {
        return;
    }
    let t = two_nodes("pcs", "20s");
    let held = lease_of(&t, "node1").expect("node1's lease");
    cut_off(&t.nodes[0].ns).expect("cut node1 off");
    let (mut pings, mut answered) = (0, 0);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        pings += 1;
        if t.pod_ping(0, 1) {
            answered += 1;
        }
    }
    eprintln!("cut off for 8 s of a 20 s TTL: {answered} of {pings} pod pings answered");
    assert_eq!(answered, pings, "pod traffic suffered from the cut");
    assert_eq!(lease_of(&t, "node1"), Some(held.clone()), "the lease moved");
    assert!(
        readyz(&t, 0).starts_with("HTTP/1.1 200"),
        "a lease still valid is still ready: {}",
        readyz(&t, 0)
    );
    reconnect(&t.nodes[0].ns).expect("reconnect node1");
    // It renews through the same lease once it can.
    wait_until("node1 renews", Duration::from_secs(30), || {
        lease_of(&t, "node1").is_some_and(|l| l == held)
            && readyz(&t, 0).starts_with("HTTP/1.1 200")
    });
    assert!(t.pod_ping(0, 1) && t.pod_ping(1, 0));
}

#[test]
fn an_agent_cut_off_past_the_ttl_loses_its_lease_and_gets_the_same_subnet_back() {
    if !root_or_skip("an_agent_cut_off_past_the_ttl_loses_its_lease_and_gets_the_same_subnet_back")
    {
        return;
    }
    let t = two_nodes("pcl", "4s");
    let held = lease_of(&t, "node1").expect("node1's lease");
    let on_node2 = |t: &Topology| t.routes(1).iter().any(|r| r.starts_with(&held.0));
    assert!(
        on_node2(&t),
        "node2 routes to node1's subnet: {:?}",
        t.routes(1)
    );
    cut_off(&t.nodes[0].ns).expect("cut node1 off");

    // The controller expires the lease; node2 takes its route away; node1 says why it is
    // not ready.
    wait_until("node1's lease expires", Duration::from_secs(30), || {
        lease_of(&t, "node1").is_none()
    });
    wait_until(
        "node2 drops its route to node1",
        Duration::from_secs(30),
        || !on_node2(&t),
    );
    let mut why = String::new();
    wait_until("node1 is not ready", Duration::from_secs(30), || {
        why = readyz(&t, 0);
        why.starts_with("HTTP/1.1 503")
    });
    assert!(
        why.contains("lease expired") || why.contains("no lease held"),
        "{why}"
    );

    // Back in touch: the same subnet (from its state file, nobody took it meanwhile), a new
    // lease instance; node2 routes to it again and the pods talk.
    reconnect(&t.nodes[0].ns).expect("reconnect node1");
    wait_until("node1 holds a lease again", Duration::from_secs(60), || {
        lease_of(&t, "node1").is_some()
    });
    let again = lease_of(&t, "node1").expect("lease");
    assert_eq!(again.0, held.0, "another subnet");
    assert!(
        again.1 > held.1,
        "not a new lease: {again:?} after {held:?}"
    );
    wait_until(
        "node2 routes to node1 again",
        Duration::from_secs(30),
        || on_node2(&t),
    );
    wait_until("node1 ready again", Duration::from_secs(30), || {
        readyz(&t, 0).starts_with("HTTP/1.1 200")
    });
    wait_until("pods talk again", Duration::from_secs(30), || {
        t.pod_ping(0, 1) && t.pod_ping(1, 0)
    });
}

#[test]
fn a_cut_underlay_between_two_nodes_stops_only_their_pods_and_heals_by_itself() {
    if !root_or_skip("a_cut_underlay_between_two_nodes_stops_only_their_pods_and_heals_by_itself") {
        return;
    }
    let t = nodes("pcu", 3, "20s");
    let leases: Vec<_> = (1..=3).map(|i| lease_of(&t, &format!("node{i}"))).collect();
    let routes: Vec<_> = (0..3).map(|i| t.routes(i)).collect();
    cut_between(&t.nodes[0].ns, "192.0.2.2").expect("cut node1 from node2");
    // Pod traffic between node1 and node2 fails; between node3 and either it goes on.
    assert!(
        !t.pod_ping(0, 1) && !t.pod_ping(1, 0),
        "traffic crossed the cut"
    );
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        assert!(
            t.pod_ping(a, b),
            "pod {a} to pod {b} failed with only node1-node2 cut"
        );
    }
    // Nothing else changes for as long as it lasts: leases, routes, readiness.
    std::thread::sleep(Duration::from_secs(3));
    for (i, l) in leases.iter().enumerate() {
        assert_eq!(
            &lease_of(&t, &format!("node{}", i + 1)),
            l,
            "a lease changed"
        );
    }
    for (i, r) in routes.iter().enumerate() {
        assert_eq!(&t.routes(i), r, "node{}'s routes changed", i + 1);
        assert!(
            readyz(&t, i).starts_with("HTTP/1.1 200"),
            "node{} not ready",
            i + 1
        );
    }
    // The cut heals; so does the traffic, with nothing done to twill.
    reconnect(&t.nodes[0].ns).expect("reconnect node1");
    wait_until(
        "node1 and node2's pods talk again",
        Duration::from_secs(30),
        || t.pod_ping(0, 1) && t.pod_ping(1, 0),
    );
}

#[test]
fn an_agent_restarted_with_an_older_state_file_keeps_the_lease_it_holds() {
    if !root_or_skip("an_agent_restarted_with_an_older_state_file_keeps_the_lease_it_holds") {
        return;
    }
    let mut t = two_nodes("pso", "20s");
    let held = lease_of(&t, "node1").expect("node1's lease");
    let state = t.nodes[0].dir.join("state").join("subnet");
    let saved = std::fs::read_to_string(&state).expect("state file");
    assert_eq!(saved.trim(), held.0, "the state file names the lease");
    // A backup from another era: another subnet of the network, free.
    let older = if held.0 == "10.244.9.0/24" {
        "10.244.8.0/24"
    } else {
        "10.244.9.0/24"
    };
    t.stop_agent(0);
    std::fs::write(&state, format!("{older}\n")).expect("older state");
    t.start_agent(0).expect("agent again");
    wait_until("node1 ready again", Duration::from_secs(30), || {
        readyz(&t, 0).starts_with("HTTP/1.1 200")
    });
    assert_eq!(lease_of(&t, "node1"), Some(held.clone()), "the lease moved");
    assert_eq!(
        std::fs::read_to_string(&state).expect("state file").trim(),
        held.0,
        "the state file names the lease again"
    );
    assert!(t.pod_ping(0, 1) && t.pod_ping(1, 0));
}
