//! twill-bgp against FRR's bgpd (Debian's frr), iBGP and eBGP between two namespaces:
//! Established, each side learns the other's prefix, as FRR's own CLI shows. bgpd runs alone
//! (no zebra), so FRR installs nothing in a kernel here. Needs root; in CI a missing root or FRR
//! fails.

use twill_tests::bgp::{vtysh_route, Lan};
use twill_tests::netns::root_or_skip;

#[test]
fn ibgp_with_frr_exchanges_prefixes_both_ways() {
    if !root_or_skip("ibgp_with_frr_exchanges_prefixes_both_ways") {
        return;
    }
    let mut lan = Lan::new("fr", &[1, 2]).expect("namespaces");
    let vty = lan
        .start_frr(
            2,
            "router bgp 64512\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp network import-check\n neighbor 192.0.2.1 remote-as 64512\n address-family ipv4 unicast\n  network 10.244.2.0/24\n  neighbor 192.0.2.1 next-hop-self\n exit-address-family\n",
        )
        .expect("bgpd");
    let (learned, frr_view) = twill_tests::bgp::exchange(
        &lan.ns(1),
        "192.0.2.1",
        "192.0.2.2",
        64512,
        "10.244.1.0/24",
        None,
        move || vtysh_route(&vty, "10.244.1.0/24", "192.0.2.1"),
    )
    .expect("session with FRR");
    assert_eq!(
        learned,
        ["10.244.2.0/24"],
        "twill did not learn FRR's prefix"
    );
    assert!(
        frr_view.contains("\"10.244.1.0/24\"") && frr_view.contains("192.0.2.1"),
        "FRR does not hold twill's prefix: {frr_view}"
    );
}

/// eBGP with FRR: twill's speaker in AS 64601, FRR in AS 64602; each side's prefix reaches the
/// other with the sender's AS on the path, as FRR's CLI and twill's RIB show.
#[test]
fn ebgp_with_frr() {
    if !root_or_skip("ebgp_with_frr") {
        return;
    }
    use twill_tests::bgp::{as_path, best_path, peer, speaker_on_host_1};
    let mut lan = Lan::new("fe", &[1, 2]).expect("namespaces");
    let vty = lan
        .start_frr(
            2,
            "router bgp 64602\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp network import-check\n neighbor 192.0.2.1 remote-as 64601\n address-family ipv4 unicast\n  network 10.244.2.0/24\n exit-address-family\n",
        )
        .expect("bgpd");
    let cfg = speaker_on_host_1(64601, vec![peer(2, 64602)], &["10.244.1.0/24"]);
    let want: ipnet::IpNet = "10.244.2.0/24".parse().expect("prefix");
    let (seen, frr_view) = twill_tests::bgp::run_speaker(
        &lan,
        cfg,
        move |s| s.iter().any(|(p, _)| *p == want),
        move || vtysh_route(&vty, "10.244.1.0/24", "64601"),
    );
    let path = best_path(&seen, "10.244.2.0/24").expect("twill learned FRR's prefix over eBGP");
    assert_eq!(as_path(&path), [64602], "FRR's AS on the path");
    assert!(
        frr_view.contains("64601") && frr_view.contains("192.0.2.1"),
        "FRR lacks our prefix with our AS and next hop: {frr_view}"
    );
}

/// Route refresh (RFC 2918) with FRR: `clear bgp … soft in` has FRR (no soft-reconfiguration
/// kept) ask twill for its routes again; twill sends them, FRR's received-UPDATE count grows
/// and the session is not reset.
#[test]
fn frr_soft_in_gets_the_routes_again_through_route_refresh() {
    if !root_or_skip("frr_soft_in_gets_the_routes_again_through_route_refresh") {
        return;
    }
    use twill_tests::bgp::{peer, speaker_on_host_1};
    let mut lan = Lan::new("frr", &[1, 2]).expect("namespaces");
    let vty = lan
        .start_frr(
            2,
            "router bgp 64602\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n neighbor 192.0.2.1 remote-as 64601\n",
        )
        .expect("bgpd");
    let cfg = speaker_on_host_1(64601, vec![peer(2, 64602)], &["10.244.1.0/24"]);
    let (_, (before, after)) = twill_tests::bgp::run_speaker(
        &lan,
        cfg,
        |_| true,
        move || {
            vtysh_route(&vty, "10.244.1.0/24", "64601");
            let vtysh = |cmd: &str| {
                twill_tests::bgp::output_of(
                    std::process::Command::new("vtysh")
                        .arg("--vty_socket")
                        .arg(&vty)
                        .args(["-c", cmd]),
                )
            };
            // (UPDATEs received, ROUTE-REFRESHes sent, sessions established) as FRR counts.
            let stats = || {
                let v: serde_json::Value =
                    serde_json::from_str(&vtysh("show bgp neighbors 192.0.2.1 json"))
                        .unwrap_or_default();
                let n = &v["192.0.2.1"];
                let m = &n["messageStats"];
                (
                    m["updatesRecv"].as_u64().unwrap_or(0),
                    m["routeRefreshSent"].as_u64().unwrap_or(0),
                    n["connectionsEstablished"].as_u64().unwrap_or(0),
                )
            };
            let before = stats();
            vtysh("clear bgp ipv4 unicast 192.0.2.1 soft in");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut after = stats();
            while after.0 <= before.0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(200));
                after = stats();
            }
            (before, after)
        },
    );
    assert!(before.0 >= 1, "FRR never got our UPDATE: {before:?}");
    assert!(
        after.1 > before.1,
        "FRR sent no ROUTE-REFRESH: {before:?} → {after:?}"
    );
    assert!(
        after.0 > before.0,
        "no UPDATE answered the refresh: {before:?} → {after:?}"
    );
    assert_eq!(after.2, before.2, "the session was reset");
}
