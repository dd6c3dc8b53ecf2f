//! twill-bgp against BIRD 2 (Debian's bird2), iBGP between two namespaces: the session reaches
//! Established, each side learns the other's prefix, and BIRD installs twill's prefix in its
//! kernel table. Needs root; in CI a missing root or BIRD fails.

use std::process::Command;
use std::time::Duration;

use twill_tests::bgp::Lan;
use twill_tests::netns::{ip_out, root_or_skip};

#[test]
fn ibgp_with_bird_exchanges_prefixes_both_ways() {
    if !root_or_skip("ibgp_with_bird_exchanges_prefixes_both_ways") {
        return;
    }
    let mut lan = Lan::new("bi", &[1, 2]).expect("namespaces");
    let sock = lan
        .start_bird(
            2,
            r#"router id 192.0.2.2;
protocol device {}
protocol direct { ipv4; interface "eth0"; }
protocol kernel { ipv4 { export where source = RTS_BGP; }; }
protocol static pods { ipv4; route 10.244.2.0/24 blackhole; }
protocol bgp tw {
  local 192.0.2.2 as 64512;
  neighbor 192.0.2.1 as 64512;
  ipv4 { import all; export where source = RTS_STATIC; next hop self; };
}
"#,
        )
        .expect("bird");
    let bird_ns = lan.ns(2);
    let (learned, (bird_route, kernel_route)) = twill_tests::bgp::exchange(
        &lan.ns(1),
        "192.0.2.1",
        "192.0.2.2",
        64512,
        "10.244.1.0/24",
        None,
        move || {
            // Give BIRD a moment to take and install our prefix.
            let mut seen = (String::new(), String::new());
            for _ in 0..50 {
                let o = Command::new("birdc")
                    .arg("-s")
                    .arg(&sock)
                    .args(["show", "route", "10.244.1.0/24"])
                    .output();
                seen.0 = o
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                seen.1 = ip_out(&["-n", &bird_ns, "route", "show", "10.244.1.0/24"]);
                if seen.1.contains("192.0.2.1") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        },
    )
    .expect("session with BIRD");
    assert_eq!(
        learned,
        ["10.244.2.0/24"],
        "twill did not learn BIRD's prefix"
    );
    assert!(
        bird_route.contains("10.244.1.0/24"),
        "BIRD did not take twill's prefix: {bird_route}"
    );
    assert!(
        kernel_route.contains("via 192.0.2.1") && kernel_route.contains("proto bird"),
        "BIRD did not install twill's prefix in its kernel table: {kernel_route:?}"
    );
}

/// Route refresh (RFC 2918) with BIRD: `birdc reload in` has BIRD ask twill for its routes
/// again; twill sends them and BIRD counts them as received, the session staying up.
#[test]
fn bird_reload_in_gets_the_routes_again_through_route_refresh() {
    if !root_or_skip("bird_reload_in_gets_the_routes_again_through_route_refresh") {
        return;
    }
    use twill_tests::bgp::{bird_conf, output_of, peer, speaker_on_host_1};
    let mut lan = Lan::new("brr", &[1, 2]).expect("namespaces");
    let sock = lan
        .start_bird(
            2,
            &bird_conf(
                2,
                "  local 192.0.2.2 as 64602;\n  neighbor 192.0.2.1 as 64601;\n  ipv4 { import all; export none; };\n",
            ),
        )
        .expect("bird");
    let cfg = speaker_on_host_1(64601, vec![peer(2, 64602)], &["10.244.1.0/24"]);
    let (_, (before, after, proto)) = twill_tests::bgp::run_speaker(
        &lan,
        cfg,
        |_| true,
        move || {
            let birdc =
                |args: &[&str]| output_of(Command::new("birdc").arg("-s").arg(&sock).args(args));
            // BIRD's count of UPDATEs received from twill that carried routes.
            let received = || {
                birdc(&["show", "protocols", "all", "to_twill"])
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Import updates:"))
                    .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while received() == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let before = received();
            birdc(&["reload", "in", "to_twill"]);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut after = received();
            while after <= before && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                after = received();
            }
            (
                before,
                after,
                birdc(&["show", "protocols", "all", "to_twill"]),
            )
        },
    );
    assert!(before >= 1, "BIRD never got our route:\n{proto}");
    assert!(
        after > before,
        "no UPDATE answered the refresh ({before} → {after}):\n{proto}"
    );
    assert!(proto.contains("Established"), "{proto}");
}

/// GTSM (RFC 5082) with BIRD's `ttl security`: with it on our side too the session comes up;
/// without it BIRD drops our packets (TTL 64), and with it on our side only we drop BIRD's
/// (TTL 1 towards an eBGP neighbour).
#[test]
fn gtsm_with_bird_only_when_both_sides_have_it() {
    if !root_or_skip("gtsm_with_bird_only_when_both_sides_have_it") {
        return;
    }
    use twill_tests::bgp::{bird_conf, output_of, peer, speaker_on_host_1};
    let mut up = Vec::new();
    for (case, (ours, theirs)) in [(true, true), (false, true), (true, false)]
        .into_iter()
        .enumerate()
    {
        let mut lan = Lan::new(&format!("gt{case}"), &[1, 2]).expect("namespaces");
        let security = if theirs { "  ttl security yes;\n" } else { "" };
        let sock = lan
            .start_bird(
                2,
                &bird_conf(
                    2,
                    &format!("  local 192.0.2.2 as 64602;\n  neighbor 192.0.2.1 as 64601;\n  connect retry time 1;\n{security}  ipv4 {{ import all; export all; }};\n"),
                ),
            )
            .expect("bird");
        let mut p = peer(2, 64602);
        p.gtsm = ours;
        let cfg = speaker_on_host_1(64601, vec![p], &["10.244.1.0/24"]);
        let (_, established) = twill_tests::bgp::run_speaker(
            &lan,
            cfg,
            |_| true,
            move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(8);
                loop {
                    let out = output_of(Command::new("birdc").arg("-s").arg(&sock).args([
                        "show",
                        "protocols",
                        "to_twill",
                    ]));
                    if out.contains("Established") {
                        return true;
                    }
                    if std::time::Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            },
        );
        up.push(established);
    }
    assert_eq!(
        up,
        [true, false, false],
        "sessions up for (both sides, BIRD only, twill only)"
    );
}

/// Max-prefix (RFC 4486) against BIRD: BIRD on .2 announces 20 prefixes to a speaker that
/// allows it 10; the session is closed with Cease/1, which BIRD reports by name. BIRD on .3,
/// within its own limit of 10 with 5, keeps its session throughout, never reset.
#[test]
fn bird_over_the_prefix_limit_is_told_so_with_cease_1() {
    if !root_or_skip("bird_over_the_prefix_limit_is_told_so_with_cease_1") {
        return;
    }
    use twill_tests::bgp::{output_of, peer, speaker_on_host_1};
    let mut lan = Lan::new("bmx", &[1, 2, 3]).expect("namespaces");
    let mut socks = Vec::new();
    for (host, n) in [(2u8, 20), (3, 5)] {
        let statics: String = (0..n)
            .map(|i| format!("route 10.{}.{i}.0/24 blackhole; ", 248 + host))
            .collect();
        socks.push(
            lan.start_bird(
                host,
                &format!(
                    "router id 192.0.2.{host};\nprotocol device {{}}\nprotocol static many {{ ipv4; {statics}}}\nprotocol bgp to_twill {{\n  local 192.0.2.{host} as 6460{host};\n  neighbor 192.0.2.1 as 64601;\n  ipv4 {{ import all; export all; }};\n}}\n"
                ),
            )
            .expect("bird"),
        );
    }
    let limited = |host: u8| {
        let mut p = peer(host, 64600 + u32::from(host));
        p.max_prefixes = Some(10);
        p
    };
    let cfg = speaker_on_host_1(64601, vec![limited(2), limited(3)], &["10.244.1.0/24"]);
    let (_, (over, within)) = twill_tests::bgp::run_speaker(
        &lan,
        cfg,
        |_| true,
        move || {
            let show = |sock: &std::path::Path| {
                output_of(Command::new("birdc").arg("-s").arg(sock).args([
                    "show",
                    "protocols",
                    "all",
                    "to_twill",
                ]))
            };
            let over = twill_tests::bgp::poll_output("Maximum number of prefixes reached", || {
                show(&socks[0])
            });
            // Long enough for a reset of the other session to show.
            std::thread::sleep(Duration::from_secs(2));
            (over, show(&socks[1]))
        },
    );
    assert!(
        over.contains("Maximum number of prefixes reached"),
        "BIRD was not told of the limit:\n{over}"
    );
    assert!(
        within.contains("Established")
            && !within.contains("Received:")
            && !within.contains("Error"),
        "the peer within its limit was disturbed:\n{within}"
    );
}
