//! twill-bgp as a route reflector (RFC 4456) with a BIRD client and an FRR client: each client
//! learns the other's prefix through twill, with ORIGINATOR_ID and CLUSTER_LIST as the RFC says,
//! checked in the clients' own CLIs; both learn twill's own prefix. Needs root, bird2 and frr.

use std::process::Command;
use std::time::{Duration, Instant};

use twill_bgp::rib::Peer;
use twill_bgp::speaker::{self, PeerConfig, SpeakerConfig};
use twill_tests::bgp::Lan;
use twill_tests::netns::{in_netns, root_or_skip};

#[test]
fn twill_reflects_between_a_bird_client_and_an_frr_client() {
    if !root_or_skip("twill_reflects_between_a_bird_client_and_an_frr_client") {
        return;
    }
    let mut lan = Lan::new("rr", &[1, 2, 3]).expect("lan");
    // BIRD on .2 originates 10.244.2.0/24; FRR on .3 originates 10.244.3.0/24.
    let bird_sock = lan
        .start_bird(
            2,
            r#"router id 192.0.2.2;
protocol device {}
protocol direct { ipv4; interface "eth0"; }
protocol static pods { ipv4; route 10.244.2.0/24 blackhole; }
protocol bgp to_twill {
  local 192.0.2.2 as 64512;
  neighbor 192.0.2.1 as 64512;
  ipv4 { import all; export where source = RTS_STATIC; next hop self; };
}
"#,
        )
        .expect("bird");
    let frr_dir = lan
        .start_frr(
            3,
            "router bgp 64512\n bgp router-id 192.0.2.3\n no bgp ebgp-requires-policy\n no bgp network import-check\n neighbor 192.0.2.1 remote-as 64512\n address-family ipv4 unicast\n  network 10.244.3.0/24\n  neighbor 192.0.2.1 next-hop-self\n exit-address-family\n",
        )
        .expect("bgpd");

    let client = |last: u8| PeerConfig {
        peer: Peer {
            addr: std::net::IpAddr::from([192, 0, 2, last]),
            router_id: std::net::Ipv4Addr::new(192, 0, 2, last),
            asn: 64512,
            rr_client: true,
        },
        hold_time: 30,
        passive: false,
        md5_password: None,
        export: Default::default(),
        max_prefixes: None,
        gtsm: false,
    };
    let cfg = SpeakerConfig {
        local_as: 64512,
        router_id: "192.0.2.1".parse().expect("id"),
        cluster_id: None,
        local_address: "192.0.2.1".parse().expect("addr"),
        peers: vec![client(2), client(3)],
        originate: vec!["10.244.1.0/24".parse().expect("prefix")],
        advertise: vec![],
        listen: None,
        import: Default::default(),
        graceful_restart: None,
    };
    let (bird_view, frr_view) = in_netns(&lan.ns(1), move || {
        Box::pin(async move {
            let (changes, _keep) = tokio::sync::mpsc::channel(1024);
            let (stop_tx, stop) = tokio::sync::mpsc::channel(1);
            let speaker = tokio::spawn(speaker::run(cfg, changes, stop, Default::default()));
            let seen = tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let (mut bird, mut frr) = (String::new(), String::new());
                while Instant::now() < deadline {
                    let b = Command::new("birdc")
                        .arg("-s")
                        .arg(&bird_sock)
                        .args(["show", "route", "all"])
                        .output();
                    bird = b
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    let f = Command::new("vtysh")
                        .arg("--vty_socket")
                        .arg(&frr_dir)
                        .args(["-c", "show bgp ipv4 unicast json detail"])
                        .output();
                    frr = f
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    if bird.contains("10.244.3.0/24")
                        && frr.contains("10.244.2.0/24")
                        && bird.contains("10.244.1.0/24")
                        && frr.contains("10.244.1.0/24")
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                (bird, frr)
            })
            .await
            .expect("poll");
            let _ = stop_tx.send(speaker::Control::Stop).await;
            let _ = speaker.await;
            seen
        })
    })
    .expect("namespace thread");

    assert!(
        bird_view.contains("10.244.1.0/24"),
        "BIRD lacks twill's own prefix:\n{bird_view}"
    );
    assert!(
        bird_view.contains("10.244.3.0/24"),
        "BIRD did not get FRR's prefix by reflection:\n{bird_view}"
    );
    assert!(
        bird_view.contains("BGP.originator_id: 192.0.2.3"),
        "ORIGINATOR_ID not FRR's router id:\n{bird_view}"
    );
    assert!(
        bird_view.contains("BGP.cluster_list: 192.0.2.1"),
        "CLUSTER_LIST not twill's cluster id:\n{bird_view}"
    );
    assert!(
        frr_view.contains("10.244.2.0/24"),
        "FRR did not get BIRD's prefix by reflection:\n{frr_view}"
    );
    assert!(
        frr_view.contains("\"originatorId\":\"192.0.2.2\""),
        "FRR sees no ORIGINATOR_ID 192.0.2.2:\n{frr_view}"
    );
    assert!(
        frr_view.contains("clusterList") && frr_view.contains("\"192.0.2.1\""),
        "FRR sees no CLUSTER_LIST 192.0.2.1:\n{frr_view}"
    );
}
