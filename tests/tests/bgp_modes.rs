//! More session shapes against real daemons: eBGP with BIRD (per-node AS, our AS prepended and
//! next hop self), and twill as a client of an FRR route reflector learning a BIRD client's
//! prefix with the reflector's attributes. Needs root, bird2 and frr.

use ipnet::IpNet;
use twill_bgp::rib::Change;
use twill_bgp::speaker::SpeakerConfig;
use twill_tests::bgp::{
    as_path, best_path, bird_conf, birdc_route, peer, run_speaker, speaker_on_host_1, Lan,
};
use twill_tests::netns::root_or_skip;

#[test]
fn ebgp_with_bird() {
    if !root_or_skip("ebgp_with_bird") {
        return;
    }
    let mut lan = Lan::new("eb", &[1, 2]).expect("lan");
    let sock = lan
        .start_bird(
            2,
            &bird_conf(
                2,
                "  local 192.0.2.2 as 64602;\n  neighbor 192.0.2.1 as 64601;\n  ipv4 { import all; export where source = RTS_STATIC; };\n",
            ),
        )
        .expect("bird");
    let cfg = speaker_on_host_1(64601, vec![peer(2, 64602)], &["10.244.1.0/24"]);
    let want: IpNet = "10.244.2.0/24".parse().expect("prefix");
    let (seen, out) = run_speaker(
        &lan,
        cfg,
        move |s| s.iter().any(|(p, _)| *p == want),
        // BIRD takes a moment to accept and show our prefix.
        move || birdc_route(&sock, "10.244.1.0/24", "BGP.as_path"),
    );
    let path = best_path(&seen, "10.244.2.0/24").expect("twill learned BIRD's prefix over eBGP");
    assert_eq!(as_path(&path), [64602], "BIRD's AS on the path");
    assert!(
        out.contains("BGP.as_path: 64601"),
        "our AS not prepended for eBGP:\n{out}"
    );
    assert!(
        out.contains("BGP.next_hop: 192.0.2.1"),
        "next hop not ours:\n{out}"
    );
}

#[test]
fn twill_as_client_of_an_frr_reflector() {
    if !root_or_skip("twill_as_client_of_an_frr_reflector") {
        return;
    }
    let mut lan = Lan::new("cl", &[1, 2, 3]).expect("lan");
    // FRR on .3 reflects between twill (.1) and BIRD (.2).
    lan.start_frr(3, "router bgp 64512\n bgp router-id 192.0.2.3\n no bgp ebgp-requires-policy\n neighbor 192.0.2.1 remote-as 64512\n neighbor 192.0.2.2 remote-as 64512\n address-family ipv4 unicast\n  neighbor 192.0.2.1 route-reflector-client\n  neighbor 192.0.2.2 route-reflector-client\n exit-address-family\n").expect("bgpd");
    lan.start_bird(
        2,
        r#"router id 192.0.2.2;
protocol device {}
protocol direct { ipv4; interface "eth0"; }
protocol static pods { ipv4; route 10.244.2.0/24 blackhole; }
protocol bgp to_reflector {
  local 192.0.2.2 as 64512;
  neighbor 192.0.2.3 as 64512;
  ipv4 { import all; export where source = RTS_STATIC; next hop self; };
}
"#,
    )
    .expect("bird");
    let cfg = speaker_on_host_1(64512, vec![peer(3, 64512)], &["10.244.1.0/24"]);
    let want: IpNet = "10.244.2.0/24".parse().expect("prefix");
    let (seen, ()) = run_speaker(&lan, cfg, move |s| s.iter().any(|(p, _)| *p == want), || ());
    let path = best_path(&seen, "10.244.2.0/24")
        .expect("twill learned BIRD's prefix through the FRR reflector");
    assert_eq!(
        path.attrs.originator_id,
        Some("192.0.2.2".parse().expect("id"))
    );
    assert_eq!(
        path.attrs.cluster_list,
        vec!["192.0.2.3".parse::<std::net::Ipv4Addr>().expect("id")]
    );
    assert_eq!(
        path.next_hop,
        std::net::IpAddr::from([192, 0, 2, 2]),
        "reflection keeps BIRD's next hop"
    );
}

/// twill waits for the peer (passive, listening on port 179 with the peer's TCP-MD5 key on the
/// listening socket); BIRD connects with the same key; prefixes go both ways.
#[test]
fn bird_connects_to_a_passive_twill_with_md5() {
    if !root_or_skip("bird_connects_to_a_passive_twill_with_md5") {
        return;
    }
    let mut lan = Lan::new("pa", &[1, 2]).expect("lan");
    let sock = lan
        .start_bird(
            2,
            &bird_conf(
                2,
                "  local 192.0.2.2 as 64512;\n  neighbor 192.0.2.1 as 64512;\n  password \"pa55-word\";\n  connect retry time 1;\n  ipv4 { import all; export where source = RTS_STATIC; next hop self; };\n",
            ),
        )
        .expect("bird");
    let mut p = peer(2, 64512);
    p.passive = true;
    p.md5_password = Some("pa55-word".into());
    let cfg = SpeakerConfig {
        local_as: 64512,
        router_id: "192.0.2.1".parse().expect("id"),
        cluster_id: None,
        local_address: "192.0.2.1".parse().expect("addr"),
        local_address_v6: None,
        peers: vec![p],
        originate: vec!["10.244.1.0/24".parse().expect("prefix")],
        advertise: vec![],
        listen: Some("192.0.2.1:179".parse().expect("addr")),
        import: Default::default(),
        graceful_restart: None,
    };
    let want: IpNet = "10.244.2.0/24".parse().expect("prefix");
    let (seen, out) = run_speaker(
        &lan,
        cfg,
        move |s| s.iter().any(|(p, _)| *p == want),
        move || birdc_route(&sock, "10.244.1.0/24", "BGP.next_hop"),
    );
    assert!(
        seen.iter()
            .any(|(p, c)| *p == want && matches!(c, Change::Best(..))),
        "twill never learned BIRD's prefix over the session BIRD opened: {seen:?}"
    );
    assert!(
        out.contains("BGP.next_hop: 192.0.2.1"),
        "BIRD did not take our prefix:\n{out}"
    );
}
