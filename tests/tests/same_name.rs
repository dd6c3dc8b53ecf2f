//! Two agents under one node name: the second machine (another state directory, another
//! address) is refused the first one's live lease and says why, so it cannot take the first
//! node's traffic; the first agent restarted with its state keeps its lease; once the operator
//! frees the lease, the second gets one. Needs root for the namespaces; in CI a missing root
//! fails the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_sandbox::Topology;
use twill_tests::netns::{agent_http_get, root_or_skip, wait_until};
use twill_tests::twill_binary;

/// node1's lease as `twill leases --json` shows it: (subnet, public IP, create revision).
fn lease_of(t: &Topology, node: &str) -> Option<(String, String, u64)> {
    let v: Value = serde_json::from_str(&t.twill(&["leases", "--json"]).ok()?).ok()?;
    v["leases"].as_array()?.iter().find_map(|l| {
        (l["node"] == node).then(|| {
            (
                l["subnet"].as_str().unwrap_or_default().to_string(),
                l["public_ip"].as_str().unwrap_or_default().to_string(),
                l["create_revision"].as_u64().unwrap_or_default(),
            )
        })
    })
}

/// Kills the second agent when the test ends, however it ends.
struct Impostor(Child);

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_agent_under_a_held_name_is_refused_and_steals_nothing() {
    if !root_or_skip("a_second_agent_under_a_held_name_is_refused_and_steals_nothing") {
        return;
    }
    let bin = twill_binary().expect("twill");
    let mut t = Topology::new("sn", 3, &bin).expect("topology");
    t.agent_extra = vec!["--metrics-addr".into(), "127.0.0.1:9421".into()];
    t.start_controller(&[]).expect("controller");
    for i in 0..3 {
        t.start_agent(i).expect("agent");
    }
    for i in 0..3 {
        t.wait_subnet(i, Duration::from_secs(30)).expect("subnet");
    }
    let held = lease_of(&t, "node1").expect("node1's lease");
    assert_eq!(held.1, "192.0.2.1");
    let ns3 = t.nodes[2].ns.clone();
    let fdb_on_node3 = move || {
        let out = Command::new("bridge")
            .args(["-n", &ns3, "fdb", "show", "dev", "twill.1"])
            .output()
            .expect("bridge fdb");
        String::from_utf8_lossy(&out.stdout).contains("dst 192.0.2.1 ")
    };
    wait_until(
        "node3 sends node1's traffic to 192.0.2.1",
        Duration::from_secs(30),
        &fdb_on_node3,
    );

    // node2's machine is set up again as "node1" (a copied configuration): its own state
    // directory, its own address.
    t.stop_agent(1);
    let (token, hash) = t.join_token().expect("token");
    let ns2 = t.nodes[1].ns.clone();
    let dir = t.dir.join("impostor");
    let impostor = Impostor(
        Command::new("ip")
            .args(["netns", "exec", &ns2])
            .arg(&bin)
            .args(["agent", "--controller", &t.controller_url()])
            .args([
                "--node-name",
                "node1",
                "--iface",
                "eth0",
                "--resync",
                "500ms",
            ])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--subnet-file")
            .arg(dir.join("subnet.env"))
            .args(["--join-token", &token, "--ca-hash", &hash])
            .args(&t.agent_extra)
            .env("TWILL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("second agent"),
    );
    let mut why = String::new();
    wait_until(
        "the second agent says why it has no lease",
        Duration::from_secs(30),
        || {
            why = agent_http_get(&ns2, "/readyz");
            why.contains("no lease held") && why.contains("held by another agent, at 192.0.2.1")
        },
    );
    assert!(why.starts_with("HTTP/1.1 503"), "{why}");
    assert!(why.contains("twill release node1"), "{why}");
    // It keeps asking (its back-off grows to 10 s) and keeps being refused: node1's lease,
    // and where node3 sends node1's traffic, do not move.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            lease_of(&t, "node1").as_ref(),
            Some(&held),
            "the lease moved"
        );
        assert!(
            fdb_on_node3(),
            "node3 no longer sends node1's traffic to node1"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !dir.join("subnet.env").exists(),
        "the second agent wrote a subnet.env"
    );

    // The first agent restarted with its state directory is the same instance: its lease.
    t.stop_agent(0);
    t.start_agent(0).expect("node1's agent again");
    wait_until("node1 ready again", Duration::from_secs(30), || {
        agent_http_get(&t.nodes[0].ns, "/readyz").starts_with("HTTP/1.1 200")
    });
    assert_eq!(lease_of(&t, "node1").as_ref(), Some(&held));

    // The operator retires the first machine and frees the name: the second one gets a lease.
    t.stop_agent(0);
    t.twill(&["release", "node1"]).expect("twill release node1");
    wait_until(
        "the second agent holds node1's lease",
        Duration::from_secs(30),
        || {
            lease_of(&t, "node1").is_some_and(|l| l.1 == "192.0.2.2")
                && agent_http_get(&ns2, "/readyz").starts_with("HTTP/1.1 200")
        },
    );
    drop(impostor);
}
