//! What an operator sees of a running cluster: `twill status` with each node's health,
//! `twill status --graph`, and the controller's status page opened in headless Chromium.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_sandbox::Topology;
use twill_tests::netns::{foreign_device_takes_twills_vni, root_or_skip, wait_until};
use twill_tests::twill_binary;

/// `twill status --json`'s nodes, by name: (healthy, problem).
fn node_health(t: &Topology) -> Vec<(String, bool, String)> {
    let Ok(out) = t.twill(&["status", "--json"]) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&out) else {
        return Vec::new();
    };
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["node"].as_str().unwrap_or_default().to_string(),
                        n["healthy"].as_bool().unwrap_or(false),
                        n["problem"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn all_healthy(t: &Topology, n: usize) -> bool {
    let h = node_health(t);
    h.len() == n && h.iter().all(|x| x.1)
}

/// The default report interval is 10 s, yet a node whose reconciles start failing shows as
/// unhealthy within 5 s: a change is reported at once, not at the next period. It shows healthy
/// again once the cause is gone.
#[test]
fn status_flags_an_agent_whose_reconciles_fail_before_its_next_report_is_due() {
    if !root_or_skip("status_flags_an_agent_whose_reconciles_fail_before_its_next_report_is_due") {
        return;
    }
    let mut t = Topology::new("sth", 2, &twill_binary().expect("twill")).expect("topology");
    t.start_nodes_with_pod_bridges(&["--backend", "vxlan"])
        .expect("nodes");
    wait_until("both nodes healthy", Duration::from_secs(30), || {
        all_healthy(&t, 2)
    });
    let text = t.twill(&["status"]).expect("status");
    assert!(
        text.contains("NODE") && text.matches("healthy").count() >= 2,
        "{text}"
    );
    assert!(!text.contains("need attention"), "{text}");

    // A foreign device holding VNI 1 on port 8472 keeps twill from recreating its own.
    let ns = t.nodes[0].ns.clone();
    foreign_device_takes_twills_vni(&ns, "foreign.1");
    let broke = Instant::now();
    wait_until(
        "node1 unhealthy in twill status",
        Duration::from_secs(5),
        || {
            node_health(&t)
                .iter()
                .any(|(n, ok, why)| n == "node1" && !ok && why.contains("reconcile failed"))
        },
    );
    eprintln!("node1 flagged {:?} after the fault", broke.elapsed());
    let text = t.twill(&["status"]).expect("status");
    assert!(
        text.contains("UNHEALTHY: not ready: last reconcile failed")
            && text.contains("1 of 2 nodes need attention"),
        "{text}"
    );
    assert!(
        node_health(&t).iter().any(|(n, ok, _)| n == "node2" && *ok),
        "node2 is unaffected"
    );
    twill_tests::netns::ip(&["-n", &ns, "link", "del", "foreign.1"]).expect("del foreign");
    wait_until("node1 healthy again", Duration::from_secs(15), || {
        all_healthy(&t, 2)
    });
}

/// RGB pixels of exactly `rgb` in an RGB(A) PNG.
fn pixels_of(png_file: &std::path::Path, rgb: [u8; 3]) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_file).expect("screenshot"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let step = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected colour type {other:?}"),
    };
    let n = buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| p[..3] == rgb)
        .count();
    (info.width, info.height, n)
}

/// Headless Chromium inside the controller's namespace: the page's DOM after loading, and a
/// screenshot.
fn chromium(ns: &str, url: &str, shot: &std::path::Path, profile: &std::path::Path) -> String {
    let common = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,900",
    ];
    let run = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "chromium"])
            .args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    run(&[&format!("--screenshot={}", shot.display())]);
    dom
}

/// What the picture and the page must show of the healthy three-node cluster.
const SHOWN: [&str; 5] = [
    "node1",
    "node2",
    "node3",
    "member 1: leader",
    "3 of 3 nodes healthy",
];

/// Three bgp nodes in a full mesh: `twill status --graph` is well-formed SVG naming every node
/// and the member, with three established sessions; the status page, opened in headless
/// Chromium with the token, shows every node, and its screenshot has three healthy boxes.
/// Without the token the page is refused. With node3's agent stopped, the picture and the page
/// show it stale and its sessions down, and its peers stay healthy.
#[test]
fn the_graph_and_the_status_page_show_every_node_and_session() {
    if !root_or_skip("the_graph_and_the_status_page_show_every_node_and_session") {
        return;
    }
    let mut t = Topology::new("stp", 3, &twill_binary().expect("twill")).expect("topology");
    t.agent_extra = vec!["--health-interval".into(), "1s".into()];
    t.start_nodes_with_pod_bridges(&[
        "--backend",
        "bgp",
        "--bgp-asn",
        "64512",
        "--http-addr",
        "192.0.2.100:7480",
    ])
    .expect("nodes");
    wait_until(
        "three healthy nodes with sessions up",
        Duration::from_secs(60),
        || all_healthy(&t, 3),
    );

    let svg = t.twill(&["status", "--graph"]).expect("graph");
    let doc = roxmltree::Document::parse(&svg).expect("the graph is well-formed XML");
    let text: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    let text = text.join("\n");
    for name in SHOWN {
        assert!(text.contains(name), "{name} missing from the graph: {svg}");
    }
    let sessions: Vec<&str> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "line")
        .filter_map(|n| n.attribute("class"))
        .collect();
    assert_eq!(sessions, ["session established"; 3], "{svg}");

    // The page, as a browser sees it.
    let token_file = t.dir.join("controller").join("status-token");
    let token = std::fs::read_to_string(&token_file).expect("the status page's token");
    let work = tempfile::tempdir().expect("dir");
    let shot = work.path().join("page.png");
    let profile = work.path().join("profile");
    let refused = chromium(&t.ctl_ns, "http://192.0.2.100:7480/", &shot, &profile);
    assert!(
        refused.contains("needs its token") && !refused.contains("node1"),
        "{refused}"
    );
    let url = format!("http://192.0.2.100:7480/?token={}", token.trim());
    let dom = chromium(&t.ctl_ns, &url, &shot, &profile);
    for name in SHOWN {
        assert!(dom.contains(name), "{name} missing from the page: {dom}");
    }
    // Each healthy node box is filled #e8f5e9 (230x92, border excluded); three of them.
    let (w, h, green) = pixels_of(&shot, [0xe8, 0xf5, 0xe9]);
    assert_eq!((w, h), (1400, 900));
    assert!(green > 3 * 15_000, "{green} healthy-box pixels");
    let (_, _, red) = pixels_of(&shot, [0xff, 0xeb, 0xee]);
    assert_eq!(red, 0, "nothing unhealthy yet");

    // node3 stops: its sessions go down and it stops reporting.
    t.stop_agent(2);
    wait_until("node3 flagged", Duration::from_secs(30), || {
        node_health(&t)
            .iter()
            .any(|(n, ok, why)| n == "node3" && !ok && why.starts_with("no report for"))
    });
    // Its peers' sessions to it are down, and blamed on node3 alone.
    let h = node_health(&t);
    assert!(
        h.iter().filter(|(n, ok, _)| n != "node3" && *ok).count() == 2,
        "{h:?}"
    );
    let svg = t.twill(&["status", "--graph"]).expect("graph");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed");
    let down = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("session down"))
        .count();
    assert_eq!(down, 2, "node1-node3 and node2-node3 are down: {svg}");
    let dom = chromium(&t.ctl_ns, &url, &shot, &profile);
    assert!(dom.contains("no report for"), "{dom}");
    let (_, _, red) = pixels_of(&shot, [0xff, 0xeb, 0xee]);
    assert!(red > 15_000, "node3's box is red: {red} pixels");
}
