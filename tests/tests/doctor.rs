//! `twill doctor` on sandbox nodes: healthy says so and exits 0; a deleted route, a pod with
//! the wrong MTU, a stopped peer agent and a host-gw next hop that does not answer are each
//! named, with exit 1; `--json` parses; a node without agent state exits 2. Needs root for
//! the namespaces; in CI a missing root fails the tests.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_tests::netns::{ip, root_or_skip, Topology};
use twill_tests::{cni_binary, twill_binary};

/// The reference plugins twill-cni delegates to (Debian's containernetworking-plugins).
const CNI_PATH: &str = "/usr/lib/cni";

struct Run {
    code: i32,
    out: String,
    err: String,
}

/// `twill doctor` inside node `i`'s namespace, pointed only at the agent's state directory:
/// everything else comes from what the agent saved there.
fn doctor(t: &Topology, i: usize, json: bool) -> Run {
    let n = &t.nodes[i];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &n.ns])
        .arg(twill_binary().expect("twill"))
        .arg("doctor")
        .arg("--state-dir")
        .arg(n.dir.join("state"));
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run twill doctor");
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the doctor until `done` holds for a run, or fails with the last output.
fn doctor_until(t: &Topology, i: usize, within: Duration, done: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + within;
    loop {
        let r = doctor(t, i, false);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "doctor never got there within {within:?}; last run (exit {}):\n{}{}",
            r.code,
            r.out,
            r.err
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn problems(json: &Value) -> Vec<(String, String)> {
    json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == "problem")
        .map(|f| {
            (
                f["check"].as_str().unwrap_or_default().to_string(),
                f["what"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The subnet of a FLANNEL_SUBNET value (10.244.2.1/24 → 10.244.2.0/24).
fn subnet_of(flannel_subnet: &str) -> String {
    let (addr, len) = flannel_subnet.split_once('/').expect("CIDR");
    let (head, _) = addr.rsplit_once('.').expect("IPv4");
    format!("{head}.0/{len}")
}

fn start(tag: &str, nodes: usize, controller: &[&str]) -> (Topology, Vec<String>) {
    let bin = twill_binary().expect("twill");
    let mut t = Topology::new(tag, nodes, &bin).expect("topology");
    // Stale after three missed reports: 3 s instead of 30.
    t.agent_extra = vec!["--health-interval".into(), "1s".into()];
    t.start_controller(controller).expect("controller");
    for i in 0..nodes {
        t.start_agent(i).expect("agent");
    }
    let subnets = (0..nodes)
        .map(|i| t.wait_subnet(i, Duration::from_secs(30)).expect("subnet"))
        .collect();
    (t, subnets)
}

#[test]
fn doctor_names_a_deleted_route_a_wrong_pod_mtu_and_a_stopped_peer() {
    if !root_or_skip("doctor_names_a_deleted_route_a_wrong_pod_mtu_and_a_stopped_peer") {
        return;
    }
    let cni = cni_binary().expect("twill-cni");
    let (mut t, subnets) = start("dr", 3, &[]);
    for i in 0..3 {
        t.add_pod(i, 0, &cni, CNI_PATH).expect("pod");
    }

    // Healthy once every agent has reported and every pod is wired.
    let r = doctor_until(&t, 0, Duration::from_secs(30), |r| r.code == 0);
    assert!(r.out.ends_with("healthy\n"), "{}", r.out);
    assert!(
        r.out.contains("subnet.env 1450, cni0 1450, 1 pod 1450"),
        "the MTU chain is checked: {}",
        r.out
    );
    let j = doctor(&t, 0, true);
    assert_eq!(j.code, 0, "{}{}", j.out, j.err);
    let v: Value = serde_json::from_str(&j.out).expect("--json parses");
    assert_eq!(v["healthy"], Value::Bool(true), "{}", j.out);

    // This node's agent would put a deleted route back at once (it follows netlink events),
    // so it is stopped first; its settings and certificate stay in its state directory.
    t.stop_agent(0);
    let peer_subnet = subnet_of(&subnets[1]);
    ip(&["-n", &t.nodes[0].ns, "route", "del", &peer_subnet]).expect("delete the route");
    ip(&["-n", &t.pods[0].ns, "link", "set", "eth0", "mtu", "1500"]).expect("pod MTU");
    t.stop_agent(2);

    // Both agents were killed moments apart, but each last reported at its own point of its
    // 1 s cycle: either may go stale first, so the doctor is asked until it names both.
    let r = doctor_until(&t, 0, Duration::from_secs(30), |r| {
        r.out.contains("node3's agent last reported")
            && r.out.contains("this node's agent (node1) last reported")
    });
    assert_eq!(r.code, 1, "{}{}", r.out, r.err);
    assert!(
        r.out.contains(&format!(
            "missing: route {peer_subnet} via {} dev twill.1 onlink (node2's subnet)",
            peer_subnet.split('/').next().unwrap_or_default()
        )),
        "{}",
        r.out
    );
    assert!(
        r.out.contains("has MTU 1500, subnet.env says 1450"),
        "{}",
        r.out
    );
    assert!(r.out.contains("(stale"), "{}", r.out);

    let j = doctor(&t, 0, true);
    assert_eq!(j.code, 1, "{}{}", j.out, j.err);
    let v: Value = serde_json::from_str(&j.out).expect("--json parses");
    assert_eq!(v["healthy"], Value::Bool(false));
    let p = problems(&v);
    let has = |check: &str, needle: &str| p.iter().any(|(c, w)| c == check && w.contains(needle));
    assert!(has("routes", &format!("{peer_subnet} ")), "{p:?}");
    assert!(has("mtu", "MTU 1500, subnet.env says 1450"), "{p:?}");
    assert!(has("peer-agent", "node3's agent"), "{p:?}");
    // And this node's own agent, stopped too, is named as well.
    assert!(has("agent", "node1"), "{p:?}");
    // Each problem says what to do.
    assert!(v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == "problem")
        .all(|f| !f["advice"].as_str().unwrap_or_default().is_empty()));
}

#[test]
fn doctor_on_host_gw_names_a_next_hop_that_does_not_answer() {
    if !root_or_skip("doctor_on_host_gw_names_a_next_hop_that_does_not_answer") {
        return;
    }
    let (t, _) = start("dh", 2, &["--backend", "host-gw"]);
    let r = doctor_until(&t, 0, Duration::from_secs(30), |r| r.code == 0);
    assert!(
        r.out
            .contains("node2 at 192.0.2.2, its host-gw next hop (ARP and ICMP echo on the segment) out of eth0: answers"),
        "{}",
        r.out
    );

    // node2's underlay link goes down: its lease stays, the route via it is dead.
    ip(&["-n", &t.nodes[1].ns, "link", "set", "eth0", "down"]).expect("link down");
    let r = doctor_until(&t, 0, Duration::from_secs(20), |r| {
        r.out.contains("out of eth0: no answer")
    });
    assert_eq!(r.code, 1, "{}{}", r.out, r.err);
    assert!(
        r.out.contains("PROBLEM  peer-underlay  node2 at 192.0.2.2"),
        "{}",
        r.out
    );
    assert!(r.out.contains("ip neigh show 192.0.2.2"), "{}", r.out);
}

#[test]
fn doctor_without_agent_state_cannot_examine_the_node() {
    // As root: no settings in the directory; otherwise: not root. Exit 2 either way, never 0
    // or the 1 of "problems found".
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(twill_binary().expect("twill"))
        .arg("doctor")
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("run twill doctor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot examine this node"), "{err}");
    let root = twill_tests::netns::is_root();
    assert!(
        if root {
            err.contains("settings.json") && err.contains("has twill agent run")
        } else {
            err.contains("must run as root")
        },
        "{err}"
    );
}
