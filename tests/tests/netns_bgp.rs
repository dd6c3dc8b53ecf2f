//! The bgp backend end to end: a controller and `twill agent`s in node namespaces, each agent's
//! speaker originating its node's subnet and installing what it learns. Full mesh and route
//! reflection on 3 and 5 nodes: the pod ping matrix over BGP-installed routes, `twill bgp
//! status`, a node leaving (its routes withdrawn everywhere) and coming back. Needs root.

use std::collections::BTreeSet;
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

/// Node `i`'s `twill bgp status --json`, one row per peer.
fn status_json(t: &Topology, i: usize) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(twill_binary().expect("twill"))
        .args(["bgp", "status", "--json", "--state-dir"])
        .arg(t.nodes[i].dir.join("state"))
        .output()
        .expect("twill bgp status");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Node `i`'s sessions from `twill bgp status --json`: peer → (state, since).
fn sessions_of(t: &Topology, i: usize) -> std::collections::BTreeMap<String, (String, u64)> {
    status_json(t, i)
        .iter()
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

/// Starts BIRD with `conf` in node namespace `i`, its files in `dir`; killed when the guard
/// goes.
fn start_tor(t: &Topology, i: usize, dir: &std::path::Path, conf: &str) -> BirdGuard {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("bird.conf"), conf).expect("conf");
    run_bird(&t.nodes[i].ns, dir, &[])
}

/// Runs BIRD in namespace `ns` on `dir/bird.conf`, with `extra` flags.
fn run_bird(ns: &str, dir: &std::path::Path, extra: &[&str]) -> BirdGuard {
    let ok = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "bird"])
        .args(extra)
        .arg("-c")
        .arg(dir.join("bird.conf"))
        .arg("-s")
        .arg(dir.join("bird.ctl"))
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .status()
        .expect("bird");
    assert!(ok.success(), "bird did not start");
    BirdGuard(dir.join("bird.pid"))
}

/// SIGKILLs the daemon of `pid_file`, so that its sessions end without a NOTIFICATION (SIGTERM
/// would send a Cease, which ends graceful restart), and counts how often `ok` failed while
/// checked every 50 ms over the next 2 s.
fn kill_and_watch(pid_file: &std::path::Path, ok: impl Fn() -> bool + Send + 'static) -> u32 {
    let pid = std::fs::read_to_string(pid_file).expect("pid file");
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 {pid}");
    let w = Watch::start(ok);
    std::thread::sleep(Duration::from_secs(2));
    w.finish().1
}

/// `birdc` on the ToR's control socket.
fn birdc(dir: &std::path::Path, args: &[&str]) -> String {
    twill_tests::bgp::output_of(
        std::process::Command::new("birdc")
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .args(args),
    )
}

/// The prefixes in `birdc show route` output.
fn bird_prefixes(out: &str) -> std::collections::BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains('/') && w.parse::<ipnet::IpNet>().is_ok())
        .map(str::to_string)
        .collect()
}

/// A hostile top-of-rack router (BIRD, AS 64600) peers with two nodes (AS 64601 and 64602, the
/// node mesh on) and announces a default route, a prefix outside the pod network, a pod-network
/// /24 that no node holds, a /25 inside node 1's subnet and node 2's exact subnet, all with
/// itself as next hop. The lease-validated import takes none of them: each node reaches the
/// other's subnet via that node, pods ping across. No transit: BIRD hears from each node
/// that node's subnet and nothing else. `twill bgp status` and `/metrics` count the refusals by
/// reason.
#[test]
fn agents_refuse_what_a_tor_announces_for_others_and_give_it_no_transit() {
    if !root_or_skip("agents_refuse_what_a_tor_announces_for_others_and_give_it_no_transit") {
        return;
    }
    // Node namespaces 1 and 2 run agents; namespace 3 (192.0.2.3) is the ToR.
    let mut t = Topology::new("btor", 3, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(&[
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--bgp-peer",
        "192.0.2.3=64600",
        "--bgp-node-asn",
        "node1=64601",
        "--bgp-node-asn",
        "node2=64602",
    ])
    .expect("controller");
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
    let net = |s: &str| s.parse::<ipnet::Ipv4Net>().expect("FLANNEL_SUBNET").trunc();
    let (a, b) = (net(&subnets[0]), net(&subnets[1]));
    let a_half = ipnet::Ipv4Net::new(a.addr(), 25).expect("/25");
    let hostile = [
        "0.0.0.0/0".to_string(),
        "192.168.77.0/24".to_string(),
        "10.244.200.0/24".to_string(),
        a_half.to_string(),
        b.to_string(),
    ];
    let dir = t.dir.join("tor");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut conf =
        String::from("router id 192.0.2.3;\nprotocol device {}\nprotocol static hostile { ipv4;\n");
    for p in &hostile {
        conf.push_str(&format!("  route {p} blackhole;\n"));
    }
    conf.push_str("}\n");
    for n in [1, 2] {
        conf.push_str(&format!(
            "protocol bgp node{n} {{ local 192.0.2.3 as 64600; neighbor 192.0.2.{n} as 6460{n}; ipv4 {{ import all; export all; next hop self; }}; }}\n"
        ));
    }
    let _bird = start_tor(&t, 2, &dir, &conf);

    // Both sessions to the ToR up and every hostile prefix refused, by reason. Node 2 also
    // refuses node 1's subnet as BIRD passes it on (next hop BIRD); whether BIRD sends node 1
    // its own subnet back is BIRD's choice, so node 1 may refuse one or two not from the owner.
    let want_refused: std::collections::BTreeMap<&str, u64> =
        [("not_allowed", 2), ("unowned", 1), ("more_specific", 1)].into();
    let as_wanted = |refused: &std::collections::BTreeMap<&str, u64>, from_others: &[u64]| {
        let mut rest = refused.clone();
        let n = rest.remove("not_from_owner").unwrap_or(0);
        rest == want_refused && from_others.contains(&n)
    };
    for (i, from_others) in [(0, &[1, 2][..]), (1, &[2][..])] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let refused = refused_from_tor(&t, i);
            if as_wanted(&refused, from_others) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node{}: refusals {refused:?}, want {want_refused:?}; sessions {:?}; BIRD's routes:\n{}",
                i + 1,
                sessions_of(&t, i),
                birdc(&dir, &["show", "route"])
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // Each node reaches the other's subnet via that node, and nothing the ToR said is in
    // either kernel.
    for (i, other, via) in [(0, b, "192.0.2.2"), (1, a, "192.0.2.1")] {
        wait_until(
            "the other node's subnet via that node",
            Duration::from_secs(30),
            || {
                t.routes(i)
                    .iter()
                    .any(|l| l.starts_with(&format!("{other} via {via} ")))
            },
        );
        let all = twill_tests::netns::ip_out(&["-n", &t.nodes[i].ns, "route", "show"]);
        for p in [
            "default",
            "192.168.77.0",
            "10.244.200.0",
            &a_half.to_string(),
        ] {
            assert!(
                !all.lines().any(|l| l.starts_with(p)),
                "node{} installed {p} from the ToR:\n{all}",
                i + 1
            );
        }
        assert!(
            !all.contains("via 192.0.2.3"),
            "node{} routes something via the ToR:\n{all}",
            i + 1
        );
    }
    // No transit: what BIRD got from each node is that node's own subnet, nothing it learned
    // from the other node or from BIRD.
    for (n, own) in [(1, a), (2, b)] {
        let got = bird_prefixes(&birdc(
            &dir,
            &["show", "route", "protocol", &format!("node{n}")],
        ));
        assert_eq!(got, [own.to_string()].into(), "BIRD's routes from node{n}");
    }
    wait_until(
        "pods reach each other with the ToR lying",
        Duration::from_secs(20),
        || {
            t.ping(0, gw_addr(&subnets[0]), gw_addr(&subnets[1]))
                && t.ping(1, gw_addr(&subnets[1]), gw_addr(&subnets[0]))
        },
    );
    // The refusals on the agent's /metrics, per reason.
    let ns1 = t.nodes[0].ns.clone();
    let m = twill_tests::netns::agent_http_get(&ns1, "/metrics");
    let scrape = twill_tests::parse_metrics(&m).expect("the agent's scrape parses");
    let refused = |reason: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "twill_bgp_prefixes_refused"
                    && s.labels.get("peer") == Some("192.0.2.3")
                    && s.labels.get("reason") == Some(reason)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => -1.0,
            })
    };
    for (reason, n) in &want_refused {
        assert_eq!(refused(reason), Some(*n as f64), "{reason} in:\n{m}");
    }
    assert!(refused("not_from_owner").is_some_and(|n| n >= 1.0), "{m}");
    // The human view says so too.
    let out = std::process::Command::new(twill_binary().expect("twill"))
        .args(["bgp", "status", "--state-dir"])
        .arg(t.nodes[0].dir.join("state"))
        .output()
        .expect("twill bgp status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused by the import rules:") && text.contains("not_from_owner 1"),
        "{text}"
    );
}

/// What node `i` refuses from the ToR, by reason, from `twill bgp status --json`.
fn refused_from_tor(t: &Topology, i: usize) -> std::collections::BTreeMap<&'static str, u64> {
    let rows = status_json(t, i);
    let Some(tor) = rows.iter().find(|r| r["peer"] == "192.0.2.3") else {
        return Default::default();
    };
    ["not_allowed", "unowned", "more_specific", "not_from_owner"]
        .into_iter()
        .filter_map(|why| tor["refused"][why].as_u64().map(|n| (why, n)))
        .collect()
}

/// Two ToRs in different ASes, each peering with both nodes (an AS each, mesh on) and each
/// announcing a prefix that `--bgp-allow` lets the nodes take: both nodes install both, and
/// neither ToR hears of the other's prefix through the nodes (no transit). Both nodes announce
/// the service range (`--bgp-advertise`): each ToR has it from both, the nodes not from each
/// other. Both ToRs announce 192.168.9.0/24 too (each holding 192.168.9.1): the nodes install
/// one ECMP route over both, and when one ToR goes away (BIRD killed, link down) pings to
/// 192.168.9.1 go on through the other.
#[test]
fn two_tors_no_transit_ecmp_and_failover() {
    if !root_or_skip("two_tors_no_transit_ecmp_and_failover") {
        return;
    }
    // Node namespaces 1 and 2 run agents; 3 (AS 64600) and 4 (AS 64700) are ToRs.
    let mut t =
        Topology::new("b2tor", 4, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(&[
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--bgp-peer",
        "192.0.2.3=64600",
        "--bgp-peer",
        "192.0.2.4=64700",
        "--bgp-node-asn",
        "node1=64601",
        "--bgp-node-asn",
        "node2=64602",
        "--bgp-allow",
        "192.168.0.0/16",
    ])
    .expect("controller");
    let mut guards = Vec::new();
    let mut dirs = Vec::new();
    for (i, asn) in [(2, 64600), (3, 64700)] {
        let me = i + 1;
        let mut conf = format!(
            "router id 192.0.2.{me};\nprotocol device {{}}\nprotocol static outside {{ ipv4; route 192.168.{me}.0/24 blackhole; route 192.168.9.0/24 blackhole; }}\n"
        );
        for n in [1, 2] {
            conf.push_str(&format!(
                "protocol bgp node{n} {{ local 192.0.2.{me} as {asn}; neighbor 192.0.2.{n} as 6460{n}; ipv4 {{ import all; export all; }}; }}\n"
            ));
        }
        let dir = t.dir.join(format!("tor{me}"));
        twill_tests::netns::ip(&[
            "-n",
            &t.nodes[i].ns,
            "addr",
            "add",
            "192.168.9.1/32",
            "dev",
            "lo",
        ])
        .expect("the anycast address");
        guards.push(start_tor(&t, i, &dir, &conf));
        dirs.push(dir);
    }
    // ToR 3 is also given the pod network's routes (transit asked for); ToR 4 is not.
    t.agent_extra = vec![
        "--bgp-advertise".into(),
        "10.96.0.0/12".into(),
        "--bgp-export".into(),
        "192.0.2.3=10.244.0.0/16".into(),
    ];
    for i in 0..2 {
        t.start_agent(i).expect("agent");
    }
    // Both nodes take both ToRs' prefixes (allowed outside the pod network).
    for i in 0..2 {
        wait_until(
            "both ToRs' prefixes installed",
            Duration::from_secs(60),
            || {
                let r = t.routes(i);
                [
                    "192.168.3.0/24 via 192.0.2.3 ",
                    "192.168.4.0/24 via 192.0.2.4 ",
                ]
                .iter()
                .all(|w| r.iter().any(|l| l.starts_with(w)))
            },
        );
    }
    // Give the nodes time to (wrongly) pass them on, then read what each ToR holds.
    std::thread::sleep(Duration::from_secs(2));
    for (dir, other) in [(&dirs[0], "192.168.4.0/24"), (&dirs[1], "192.168.3.0/24")] {
        let routes = birdc(dir, &["show", "route"]);
        assert!(
            !bird_prefixes(&routes).contains(other),
            "a ToR reached the other's {other} through the nodes:\n{routes}"
        );
        // The nodes' subnets are there: the sessions are up.
        assert!(routes.contains("10.244."), "{routes}");
        let service = birdc(dir, &["show", "route", "10.96.0.0/12"]);
        assert!(
            service.contains("[node1 ") && service.contains("[node2 "),
            "the service range is not there from both nodes:\n{service}"
        );
    }
    // Asked-for transit: ToR 3 has both nodes' subnets from node 1, ToR 4 only node 1's own.
    let subnets: Vec<String> = (0..2)
        .map(|i| {
            let s = t
                .wait_subnet(i, Duration::from_secs(30))
                .expect("subnet.env");
            s.parse::<ipnet::Ipv4Net>()
                .expect("subnet")
                .trunc()
                .to_string()
        })
        .collect();
    let from_node1 = |dir: &std::path::Path| {
        bird_prefixes(&birdc(dir, &["show", "route", "protocol", "node1"]))
            .into_iter()
            .filter(|p| p.starts_with("10.244."))
            .collect::<BTreeSet<String>>()
    };
    wait_until(
        "ToR 3 has the pod routes it asked for",
        Duration::from_secs(20),
        || from_node1(&dirs[0]) == subnets.iter().cloned().collect(),
    );
    assert_eq!(
        from_node1(&dirs[1]),
        [subnets[0].clone()].into(),
        "ToR 4 got transit"
    );
    // The nodes did not send it to each other: nothing refused from the other node.
    for (i, other) in [(0, "192.0.2.2"), (1, "192.0.2.1")] {
        let from_other = || {
            status_json(&t, i)
                .into_iter()
                .find(|r| r["peer"] == other)
                .unwrap_or_default()
        };
        wait_until(
            "nothing refused from the other node",
            Duration::from_secs(10),
            || {
                let row = from_other();
                row["state"] == "established"
                    && row["refused"].as_object().is_none_or(|m| m.is_empty())
            },
        );
    }
    // ECMP: one route over both ToRs on each node.
    for i in 0..2 {
        wait_until(
            "an ECMP route over both ToRs",
            Duration::from_secs(30),
            || {
                let r = twill_tests::netns::ip_out(&[
                    "-n",
                    &t.nodes[i].ns,
                    "route",
                    "show",
                    "192.168.9.0/24",
                ]);
                r.contains("nexthop via 192.0.2.3") && r.contains("nexthop via 192.0.2.4")
            },
        );
    }
    // One ToR goes while node 1 pings the address both hold, 20 a second for 4 s.
    let ns1 = t.nodes[0].ns.clone();
    let ping = std::thread::spawn(move || {
        twill_tests::bgp::output_of(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &ns1,
            "ping",
            "-c",
            "80",
            "-i",
            "0.05",
            "-W",
            "1",
            "-I",
            "192.0.2.1",
            "192.168.9.1",
        ]))
    });
    std::thread::sleep(Duration::from_secs(1));
    let gone = guards.remove(0);
    drop(gone);
    // Its link goes down once the kernel has closed the dead BIRD's connection: taken down at
    // once, the close could be lost on the way, and node 1 would then wait for its hold timer.
    wait_until(
        "node 1 sees the session to ToR 3 close",
        Duration::from_secs(10),
        || sessions_of(&t, 0).get("192.0.2.3").map(|s| s.0.as_str()) != Some("established"),
    );
    twill_tests::netns::ip(&["-n", &t.nodes[2].ns, "link", "set", "eth0", "down"])
        .expect("link down");
    let out = ping.join().expect("ping");
    let received: u32 = out
        .split(", ")
        .find_map(|w| w.strip_suffix(" received"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    eprintln!("ECMP failover: {received} of 80 pings answered");
    wait_until(
        "the route left over the remaining ToR",
        Duration::from_secs(30),
        || {
            twill_tests::netns::ip_out(&["-n", &t.nodes[0].ns, "route", "show", "192.168.9.0/24"])
                .trim()
                .starts_with("192.168.9.0/24 via 192.0.2.4 dev eth0")
        },
    );
    // The session to the killed BIRD closes at once, so the withdrawal is quick; a few pings
    // hashed to the ToR that went may be lost meanwhile, not the stream.
    assert!(received >= 60, "pings lost over the failover:\n{out}");
    assert!(
        t.ping(0, "192.0.2.1", "192.168.9.1"),
        "no answer through the remaining ToR"
    );
    drop(guards);
}

/// Graceful restart with BIRD as the helper: an agent stopped as systemd stops it (SIGTERM)
/// and started again, as in an upgrade, leaves its subnet in BIRD's table throughout (stale
/// while the agent is away), and the route it had learned from BIRD stays in the node's kernel
/// throughout: the restarted agent keeps it until BIRD has resent its table.
#[test]
fn an_agent_restart_is_invisible_to_a_bird_tor_and_to_the_kernel() {
    if !root_or_skip("an_agent_restart_is_invisible_to_a_bird_tor_and_to_the_kernel") {
        return;
    }
    let mut t = one_node_and_a_tor("bgrt");
    let dir = t.dir.join("tor");
    let _bird = start_tor(&t, 1, &dir, GRACEFUL_TOR);
    t.start_agent(0).expect("agent");
    let subnet = own_subnet(&t, 0);
    let in_kernel = routes_via(&t, 0, "192.168.2.0/24", "192.0.2.2");
    let at_bird = move || {
        bird_prefixes(&birdc(&dir, &["show", "route", "protocol", "node1"])).contains(&subnet)
    };
    restart_agent_unseen(&mut t, "BIRD", Stop::Term, move || in_kernel() && at_bird());
}

/// Graceful restart with twill as the helper: BIRD (graceful restart on) is killed and
/// started again in recovery mode; while it is away the node keeps the route BIRD had given
/// it, and has it once BIRD is back.
#[test]
fn a_bird_tor_restarting_keeps_its_route_on_the_node() {
    if !root_or_skip("a_bird_tor_restarting_keeps_its_route_on_the_node") {
        return;
    }
    let mut t = one_node_and_a_tor("bgh");
    let dir = t.dir.join("tor");
    let bird = start_tor(&t, 1, &dir, GRACEFUL_TOR);
    t.start_agent(0).expect("agent");
    let in_kernel = routes_via(&t, 0, "192.168.2.0/24", "192.0.2.2");
    wait_until("the route from BIRD", Duration::from_secs(60), &in_kernel);
    let gaps = kill_and_watch(&dir.join("bird.pid"), in_kernel.clone());
    std::mem::forget(bird); // the pid file is the next BIRD's now: the guard below owns it
    assert_eq!(gaps, 0, "the route went while BIRD restarted");
    let _bird = run_bird(&t.nodes[1].ns, &dir, &["-R"]); // recovery: a graceful restart
    wait_until("the session is back", Duration::from_secs(60), || {
        sessions_of(&t, 0).get("192.0.2.2").map(|s| s.0.as_str()) == Some("established")
    });
    wait_until(
        "the route is there after the return",
        Duration::from_secs(30),
        in_kernel,
    );
}

/// Graceful restart both ways with FRR's bgpd as the ToR (`bgp graceful-restart`): an agent
/// SIGKILLed and started again leaves its subnet in FRR's table and FRR's route in the node's
/// kernel throughout; then bgpd SIGKILLed and started again, and the node keeps FRR's route
/// while it is away.
#[test]
fn graceful_restart_both_ways_with_frr() {
    if !root_or_skip("graceful_restart_both_ways_with_frr") {
        return;
    }
    let mut t = one_node_and_a_tor("bgf");
    let dir = t.dir.join("frr");
    let conf = "router bgp 64600\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart\n neighbor 192.0.2.1 remote-as 64601\n address-family ipv4 unicast\n  network 192.168.2.0/24\n exit-address-family\n";
    let ns_frr = t.nodes[1].ns.clone();
    twill_tests::bgp::start_bgpd(&ns_frr, &dir, conf).expect("bgpd");
    let _frr = BirdGuard(dir.join("bgpd.pid"));
    t.start_agent(0).expect("agent");
    let subnet = own_subnet(&t, 0);
    let in_kernel = routes_via(&t, 0, "192.168.2.0/24", "192.0.2.2");
    let at_frr = {
        let dir = dir.clone();
        move || {
            twill_tests::bgp::output_of(
                std::process::Command::new("vtysh")
                    .arg("--vty_socket")
                    .arg(&dir)
                    .args(["-c", &format!("show bgp ipv4 unicast {subnet} json")]),
            )
            .contains("192.0.2.1")
        }
    };
    // The agent restarts; FRR is the helper.
    let k = in_kernel.clone();
    restart_agent_unseen(&mut t, "FRR", Stop::Kill, move || k() && at_frr());

    // bgpd restarts; twill is the helper.
    let misses = kill_and_watch(&dir.join("bgpd.pid"), in_kernel.clone());
    assert_eq!(
        misses, 0,
        "the node dropped FRR's route while bgpd was away"
    );
    twill_tests::bgp::start_bgpd(&ns_frr, &dir, conf).expect("bgpd again");
    wait_until(
        "the session is back after bgpd's restart",
        Duration::from_secs(60),
        || sessions_of(&t, 0).get("192.0.2.2").map(|s| s.0.as_str()) == Some("established"),
    );
    wait_until(
        "FRR's route after its return",
        Duration::from_secs(30),
        in_kernel,
    );
}

/// BIRD as the ToR of [`one_node_and_a_tor`], restarting gracefully, announcing
/// 192.168.2.0/24.
const GRACEFUL_TOR: &str = "router id 192.0.2.2;\nprotocol device {}\nprotocol static outside { ipv4; route 192.168.2.0/24 blackhole; }\nprotocol bgp node1 { local 192.0.2.2 as 64600; neighbor 192.0.2.1 as 64601; graceful restart on; ipv4 { import all; export all; }; }\n";

/// Node 1 (AS 64601) with an agent to start, and namespace 2 for a ToR (192.0.2.2, AS 64600)
/// whose prefixes in 192.168.0.0/16 the node may take.
fn one_node_and_a_tor(tag: &str) -> Topology {
    let mut t = Topology::new(tag, 2, &twill_binary().expect("twill binary")).expect("topology");
    t.start_controller(&[
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--bgp-peer",
        "192.0.2.2=64600",
        "--bgp-node-asn",
        "node1=64601",
        "--bgp-allow",
        "192.168.0.0/16",
    ])
    .expect("controller");
    t
}

/// Node `i`'s subnet, once its agent has written subnet.env.
fn own_subnet(t: &Topology, i: usize) -> String {
    let s = t
        .wait_subnet(i, Duration::from_secs(30))
        .expect("subnet.env");
    s.parse::<ipnet::Ipv4Net>()
        .expect("FLANNEL_SUBNET")
        .trunc()
        .to_string()
}

/// Whether node `i` routes `dst` via `via`, as a check to call again and again.
fn routes_via(
    t: &Topology,
    i: usize,
    dst: &'static str,
    via: &'static str,
) -> impl Fn() -> bool + Clone + Send + 'static {
    let ns = t.nodes[i].ns.clone();
    move || {
        twill_tests::netns::ip_out(&["-n", &ns, "route", "show", dst])
            .contains(&format!("via {via}"))
    }
}

/// A check run every 50 ms on a thread of its own until [`Watch::finish`].
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl Watch {
    fn start(ok: impl Fn() -> bool + Send + 'static) -> Watch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut looks, mut misses) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                looks += 1;
                if !ok() {
                    misses += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (looks, misses)
        });
        Watch { stop, thread }
    }

    /// (looks, misses).
    fn finish(self) -> (u32, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("watcher")
    }
}

/// Once `both` holds (each side has the other's prefix), node 1's agent is stopped `how` (no
/// NOTIFICATION either way: the helper `tor` keeps its routes), started again after 2 s and
/// left 3 s more once its session is back, while `both` is checked every 50 ms: it must never
/// fail.
fn restart_agent_unseen(
    t: &mut Topology,
    tor: &str,
    how: Stop,
    both: impl Fn() -> bool + Send + 'static,
) {
    wait_until(
        "both sides have each other's prefix",
        Duration::from_secs(60),
        &both,
    );
    let w = Watch::start(both);
    restart_agent(t, how);
    let (looks, misses) = w.finish();
    eprintln!("agent restart ({how:?}) with {tor}: {looks} looks, {misses} with a route missing");
    assert!(looks > 20, "the watcher hardly looked");
    assert_eq!(
        misses, 0,
        "{tor} or the node's kernel lost a route while the agent restarted"
    );
}

/// How the agent is stopped before it is started again.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// A crash.
    Kill,
    /// systemd's and the kubelet's stop (an upgrade): the agent exits without a NOTIFICATION,
    /// so the peer keeps forwarding just as after a crash.
    Term,
}

/// Node 1's agent stopped, started again after 2 s, and left 3 s more once its session to the
/// ToR is back.
fn restart_agent(t: &mut Topology, how: Stop) {
    std::thread::sleep(Duration::from_millis(300));
    match how {
        Stop::Kill => t.stop_agent(0),
        Stop::Term => t.term_agent(0).expect("SIGTERM to the agent"),
    }
    std::thread::sleep(Duration::from_secs(2));
    t.start_agent(0).expect("agent back");
    wait_until("the session is back", Duration::from_secs(60), || {
        sessions_of(t, 0).get("192.0.2.2").map(|s| s.0.as_str()) == Some("established")
    });
    std::thread::sleep(Duration::from_secs(3));
}
