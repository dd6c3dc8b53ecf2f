//! twill-bgp as a route reflector (RFC 4456) with a BIRD client and an FRR client: each client
//! learns the other's prefix through twill, with ORIGINATOR_ID and CLUSTER_LIST as the RFC says,
//! checked in the clients' own CLIs; both learn twill's own prefix. Needs root, bird2 and frr.

use std::process::Command;
use std::time::{Duration, Instant};

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

    let client = |last: u8| rr_client(last, false);
    let cfg = SpeakerConfig {
        local_as: 64512,
        router_id: "192.0.2.1".parse().expect("id"),
        cluster_id: None,
        local_address: "192.0.2.1".parse().expect("addr"),
        local_address_v6: None,
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

/// A reflected route whose attributes are long (a CLUSTER_LIST of 250 ids, 570 communities:
/// about 3.3 KB) goes to a BIRD client in UPDATEs of at most 4,096 bytes: packed by prefix
/// count alone, 200 prefixes with these attributes would make 4,103-byte messages, which BIRD
/// must reject with a session reset. A raw client sends 800 such prefixes; BIRD gets all 800
/// and its session never drops.
#[test]
fn long_attributes_reach_a_bird_client_in_messages_that_fit() {
    if !root_or_skip("long_attributes_reach_a_bird_client_in_messages_that_fit") {
        return;
    }
    use std::io::{Read, Write};
    use twill_bgp::attribute::{Attributes, Origin};
    use twill_bgp::message::{encode, Message};
    use twill_bgp::update::Update;
    let mut lan = Lan::new("rrl", &[1, 2, 3]).expect("lan");
    let bird_sock = lan
        .start_bird(
            3,
            "router id 192.0.2.3;\nprotocol device {}\nprotocol bgp to_twill {\n  local 192.0.2.3 as 64512;\n  neighbor 192.0.2.1 as 64512;\n  ipv4 { import all; export none; };\n}\n",
        )
        .expect("bird");
    let client = rr_client;
    let mut cfg =
        twill_tests::bgp::speaker_on_host_1(64512, vec![client(2, true), client(3, false)], &[]);
    cfg.cluster_id = Some("192.0.2.1".parse().expect("id"));
    cfg.listen = Some("192.0.2.1:179".parse().expect("addr"));

    // The raw client on .2: OPEN, KEEPALIVE, then 800 prefixes in UPDATEs of 190 or fewer,
    // reading (and so keeping the session) until told to stop.
    let attrs = Attributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![]),
        next_hop: Some("192.0.2.2".parse().expect("nh")),
        local_pref: Some(100),
        cluster_list: (1..=250u32)
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 | i))
            .collect(),
        communities: (0..570).map(|i| (64512 << 16) | i).collect(),
        ..Default::default()
    };
    let prefixes: Vec<ipnet::Ipv4Net> = (0..800u32)
        .map(|i| {
            ipnet::Ipv4Net::new(
                std::net::Ipv4Addr::new(10, 200 + (i / 256) as u8, (i % 256) as u8, 0),
                24,
            )
            .expect("p")
        })
        .collect();
    let updates: Vec<Vec<u8>> = prefixes
        .chunks(190)
        .map(|c| {
            let m = encode(
                &Message::Update(Box::new(Update {
                    attrs: attrs.clone(),
                    nlri: c.to_vec(),
                    ..Default::default()
                })),
                true,
            );
            assert!(
                m.len() <= 4096,
                "the test's own UPDATE is {} bytes",
                m.len()
            );
            m
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let raw = {
        let (ns, stop) = (lan.ns(2), stop.clone());
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        let mut s = None;
                        for _ in 0..50 {
                            match std::net::TcpStream::connect("192.0.2.1:179") {
                                Ok(c) => {
                                    s = Some(c);
                                    break;
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                            }
                        }
                        let mut s = s.expect("connect to twill");
                        let mut msg = |kind: u8, body: &[u8]| {
                            let mut m = vec![0xff; 16];
                            m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
                            m.push(kind);
                            m.extend_from_slice(body);
                            s.write_all(&m).expect("send");
                        };
                        msg(1, &[4, 0xfc, 0x00, 0, 90, 192, 0, 2, 2, 0]);
                        msg(4, &[]);
                        let mut s2 = s.try_clone().expect("clone");
                        std::thread::sleep(Duration::from_millis(500));
                        for u in &updates {
                            s2.write_all(u).expect("send UPDATE");
                        }
                        s.set_read_timeout(Some(Duration::from_millis(500)))
                            .expect("timeout");
                        let mut buf = [0u8; 4096];
                        let mut keepalive = Instant::now();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = s.read(&mut buf);
                            if keepalive.elapsed() > Duration::from_secs(10) {
                                let mut m = vec![0xff; 16];
                                m.extend_from_slice(&[0, 19, 4]);
                                let _ = s2.write_all(&m);
                                keepalive = Instant::now();
                            }
                        }
                    })
                    .await
                    .expect("raw client");
                })
            })
            .expect("namespace thread")
        })
    };
    let (_, (count, proto)) = twill_tests::bgp::run_speaker(
        &lan,
        cfg,
        |_| true,
        move || {
            let birdc = |args: &[&str]| {
                twill_tests::bgp::output_of(
                    Command::new("birdc").arg("-s").arg(&bird_sock).args(args),
                )
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut count = String::new();
            while Instant::now() < deadline {
                count = birdc(&["show", "route", "count"]);
                if count.contains("800 of 800 routes") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            std::thread::sleep(Duration::from_secs(1));
            (count, birdc(&["show", "protocols", "all", "to_twill"]))
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    raw.join().expect("raw client thread");
    assert!(
        count.contains("800 of 800 routes"),
        "BIRD's count: {count}\n{proto}"
    );
    assert!(proto.contains("Established"), "{proto}");
    assert!(
        !proto.contains("Error") && !proto.contains("Received:"),
        "BIRD reported a problem with twill's messages:\n{proto}"
    );
}

/// A route-reflector client of ours on host `.last` of the LAN, in our AS 64512.
fn rr_client(last: u8, passive: bool) -> PeerConfig {
    let mut c = twill_tests::bgp::peer(last, 64512);
    c.peer.rr_client = true;
    c.passive = passive;
    c
}
