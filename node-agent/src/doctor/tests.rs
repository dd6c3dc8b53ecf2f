use super::*;
use crate::desired::Route;

const NET: &str = "10.244.0.0/16";

fn vxlan_config() -> pb::NetworkConfig {
    pb::NetworkConfig {
        network: NET.into(),
        subnet_len: 24,
        backend: Some(pb::Backend {
            kind: Some(pb::backend::Kind::Vxlan(pb::VxlanBackend {
                vni: 1,
                port: 8472,
                direct_routing: false,
            })),
        }),
        lease_ttl_ms: 60_000,
        ..Default::default()
    }
}

fn host_gw_config() -> pb::NetworkConfig {
    pb::NetworkConfig {
        backend: Some(pb::Backend {
            kind: Some(pb::backend::Kind::HostGw(pb::HostGwBackend {})),
        }),
        ..vxlan_config()
    }
}

const NOW: u64 = 1_000_000_000;

fn lease(node: &str, i: u8, public: &str) -> pb::Lease {
    pb::Lease {
        node: node.into(),
        subnet: format!("10.244.{i}.0/24"),
        public_ip: public.into(),
        backend_data: [("vtep_mac".to_string(), vtep::derive(node).to_string())].into(),
        expires_at_ms: NOW + 50_000,
        ..Default::default()
    }
}

fn report(node: &str, ready: bool, stale: bool, age_ms: u64) -> pb::NodeHealthEntry {
    pb::NodeHealthEntry {
        node: node.into(),
        health: Some(pb::NodeHealth {
            ready,
            problems: if ready {
                vec![]
            } else {
                vec!["last reconcile failed: File exists".into()]
            },
            reconcile_ok: ready,
            backend: "vxlan".into(),
            version: "0.1.0".into(),
            interval_ms: 1000,
            ..Default::default()
        }),
        age_ms,
        stale,
    }
}

fn local() -> LocalFacts {
    LocalFacts {
        iface: "eth0".into(),
        mtu: 1500,
        public_ip: "192.0.2.1".parse().unwrap(),
        local_ip: "192.0.2.1".parse().unwrap(),
        connected: vec!["192.0.2.0/24".parse().unwrap()],
        v6: None,
    }
}

fn listing(n: &Networks) -> String {
    let mut s = "table inet twill {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n".to_string();
    for r in masquerade::rules(n) {
        s.push_str(&format!("\t\t{r}\n"));
    }
    s.push_str("\t}\n}\n");
    s
}

/// A healthy three-node vxlan cluster seen from node1: the kernel has exactly the desired
/// state, every MTU is 1450 on the pod side, every probe answers.
fn healthy_with(config: pb::NetworkConfig) -> Facts {
    let cluster = Cluster {
        config: Some(config),
        leases: vec![
            lease("node1", 1, "192.0.2.1"),
            lease("node2", 2, "192.0.2.2"),
            lease("node3", 3, "192.0.2.3"),
        ],
        health: vec![
            report("node1", true, false, 300),
            report("node2", true, false, 500),
            report("node3", true, false, 700),
        ],
    };
    let mut f = Facts {
        node: "node1".into(),
        controllers: vec!["https://192.0.2.100:7420".into()],
        ip_masq: true,
        subnet_file: "/run/flannel/subnet.env".into(),
        now_ms: NOW,
        cluster: Ok(cluster.clone()),
        local: Ok(local()),
        observed: Ok(Observed::default()),
        vxlan_devices: Vec::new(),
        sources: Ok((SourceTables::default(), vec![])),
        subnet_env: Ok(NodeSubnet {
            network: NET.parse().unwrap(),
            subnet: "10.244.1.1/24".parse().unwrap(),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: true,
        }),
        mtus: Ok(Mtus {
            bridge: Some(1450),
            ports: vec![BridgePort {
                name: "veth1a2b3c4d".into(),
                mtu: 1450,
                peer: Ok(("eth0".into(), 1450)),
                peer_netns: Some(1),
            }],
        }),
        probes: vec![],
        masquerade: Ok(Some(listing(&Networks {
            v4: Some(NET.parse().unwrap()),
            v6: None,
        }))),
        forwarding: Ok(true),
        readyz: None,
    };
    let e = expected("node1", &cluster).unwrap();
    let d = desired(&e, &local(), &SourceTables::default(), &Observed::default());
    f.observed = Ok(Observed::exactly(&d));
    f.probes = probe_targets(&e, &local())
        .into_iter()
        .map(|target| Probe {
            target,
            answered: Ok(true),
        })
        .collect();
    f
}

fn healthy_facts() -> Facts {
    healthy_with(vxlan_config())
}

fn problems(fs: &[Finding]) -> Vec<&Finding> {
    fs.iter()
        .filter(|f| f.severity == Severity::Problem)
        .collect()
}

fn only_problem<'a>(fs: &'a [Finding], check: &str) -> &'a Finding {
    let p = problems(fs);
    assert_eq!(p.len(), 1, "{}", render_text(fs));
    assert_eq!(p[0].check, check, "{}", render_text(fs));
    assert!(!p[0].advice.is_empty(), "every problem says what to do");
    p[0]
}

#[test]
fn a_healthy_node_has_only_ok_findings_covering_every_check() {
    let fs = diagnose(&healthy_facts());
    assert!(
        fs.iter().all(|f| f.severity == Severity::Ok),
        "{}",
        render_text(&fs)
    );
    assert!(healthy(&fs));
    for check in [
        "controller",
        "interface",
        "lease",
        "agent",
        "peer-agent",
        "routes",
        "source-tables",
        "mtu",
        "subnet.env",
        "peer-underlay",
        "masquerade",
        "forwarding",
    ] {
        assert!(
            fs.iter().any(|f| f.check == check),
            "no {check} line:\n{}",
            render_text(&fs)
        );
    }
    let text = render_text(&fs);
    assert!(text.ends_with("healthy\n"), "{text}");
    assert!(
        text.contains("eth0 1500, twill.1 1450, subnet.env 1450, cni0 1450, 1 pod 1450"),
        "{text}"
    );
}

#[test]
fn a_deleted_route_to_a_peer_is_named_with_the_peer_and_a_command() {
    let mut f = healthy_facts();
    let Ok(o) = &mut f.observed else { panic!() };
    let gone = o
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.244.2.0/24")
        .cloned()
        .unwrap();
    o.routes.remove(&gone);
    let fs = diagnose(&f);
    let p = only_problem(&fs, "routes");
    assert_eq!(
        p.what,
        "missing: route 10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink (node2's subnet)"
    );
    assert!(
        p.advice
            .contains("ip route add 10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink proto 151"),
        "{}",
        p.advice
    );
    assert!(!healthy(&fs));
}

#[test]
fn a_route_of_a_lease_that_is_gone_is_unwanted() {
    let mut f = healthy_facts();
    let Ok(o) = &mut f.observed else { panic!() };
    o.routes.insert(Route {
        table: MAIN_TABLE,
        dst: "10.244.9.0/24".parse().unwrap(),
        via: "10.244.9.0".parse().unwrap(),
        dev: "twill.1".into(),
        onlink: true,
        also: vec![],
    });
    let fs = diagnose(&f);
    let p = only_problem(&fs, "routes");
    assert!(
        p.what.starts_with("unwanted: route 10.244.9.0/24"),
        "{}",
        p.what
    );
    assert!(p.advice.contains("ip route del 10.244.9.0/24 proto 151"));
}

#[test]
fn a_pod_mtu_above_subnet_env_names_both_numbers() {
    let mut f = healthy_facts();
    f.mtus = Ok(Mtus {
        bridge: Some(1450),
        ports: vec![BridgePort {
            name: "veth9".into(),
            mtu: 1450,
            peer: Ok(("eth0".into(), 1500)),
            peer_netns: Some(3),
        }],
    });
    let fs = diagnose(&f);
    let p = only_problem(&fs, "mtu");
    assert_eq!(
        p.what,
        "pod interface eth0 behind veth9 has MTU 1500, subnet.env says 1450"
    );
    assert!(
        p.advice.contains(
            "(netns id 3; ip netns list-id names it): ip -n NETNS link set eth0 mtu 1450"
        ),
        "{}",
        p.advice
    );
}

#[test]
fn subnet_env_with_the_wrong_mtu_and_a_vxlan_device_too_small_are_mtu_problems() {
    let mut f = healthy_facts();
    if let Ok(s) = &mut f.subnet_env {
        s.mtu = 1400;
    }
    let fs = diagnose(&f);
    let p = only_problem(&fs, "mtu");
    assert!(
        p.what
            .contains("FLANNEL_MTU=1400, but pods get 1450 here (1500 less 50 for VXLAN)"),
        "{}",
        p.what
    );

    // The device's MTU alone is the MTU check's, not a second dataplane finding.
    let mut f = healthy_facts();
    let Ok(o) = &mut f.observed else { panic!() };
    o.links[0].mtu = 1400;
    let fs = diagnose(&f);
    let p = only_problem(&fs, "mtu");
    assert!(
        p.what.starts_with("twill.1 has MTU 1400, want 1450"),
        "{}",
        p.what
    );
}

#[test]
fn host_gw_pods_get_the_underlay_mtu() {
    let mut f = healthy_with(host_gw_config());
    if let Ok(s) = &mut f.subnet_env {
        s.mtu = 1450;
    }
    let fs = diagnose(&f);
    let mtu: Vec<&Finding> = problems(&fs)
        .into_iter()
        .filter(|x| x.check == "mtu")
        .collect();
    assert!(
        mtu.iter()
            .any(|x| x.what.contains("FLANNEL_MTU=1450, but pods get 1500 here")),
        "{}",
        render_text(&fs)
    );
}

#[test]
fn a_stopped_peer_agent_and_a_missing_report_are_named() {
    let mut f = healthy_facts();
    if let Ok(c) = &mut f.cluster {
        c.health[2] = report("node3", true, true, 12_000);
        c.health.remove(1);
    }
    let fs = diagnose(&f);
    let p = problems(&fs);
    assert_eq!(p.len(), 2, "{}", render_text(&fs));
    assert!(p.iter().all(|x| x.check == "peer-agent"));
    assert!(
        p.iter().any(|x| x
            .what
            .starts_with("node2 holds a lease (10.244.2.0/24) but its agent has not reported")),
        "{}",
        render_text(&fs)
    );
    let stale = p.iter().find(|x| x.what.starts_with("node3")).unwrap();
    assert!(
        stale.what.contains("last reported 12 s ago (stale"),
        "{}",
        stale.what
    );
    assert!(stale.advice.contains("twill release node3"));
}

#[test]
fn this_nodes_agent_not_ready_stale_or_with_a_session_down() {
    let mut f = healthy_facts();
    if let Ok(c) = &mut f.cluster {
        c.health[0] = report("node1", false, false, 300);
    }
    let fs = diagnose(&f);
    let p = only_problem(&fs, "agent");
    assert!(p.what.contains("File exists"), "{}", p.what);

    let mut f = healthy_facts();
    if let Ok(c) = &mut f.cluster {
        c.health[0] = report("node1", true, true, 40_000);
    }
    let p = only_problem(&diagnose(&f), "agent").clone();
    assert!(p.what.contains("last reported 40 s ago"), "{}", p.what);
    assert_eq!(secs(150_000), "2 min");
    assert_eq!(secs(86_400_000 - 1000), "23 h 59 min");

    let mut f = healthy_facts();
    if let Ok(c) = &mut f.cluster {
        if let Some(h) = &mut c.health[0].health {
            h.bgp_sessions = vec![
                pb::BgpSessionHealth {
                    peer: "192.0.2.2".into(),
                    state: "Established".into(),
                    last_error: String::new(),
                },
                pb::BgpSessionHealth {
                    peer: "192.0.2.254".into(),
                    state: "Down".into(),
                    last_error: "connection refused".into(),
                },
            ];
        }
    }
    let fs = diagnose(&f);
    let p = only_problem(&fs, "bgp");
    assert_eq!(
        p.what,
        "session with 192.0.2.254 is Down: connection refused"
    );
}

#[test]
fn a_lease_near_its_end_means_renewals_fail_and_past_it_expired() {
    let mut f = healthy_facts();
    f.now_ms = NOW + 40_000; // 10 s left of 60
    let p = only_problem(&diagnose(&f), "lease").clone();
    assert!(
        p.what.contains("10 s left of 60 s: renewals are failing"),
        "{}",
        p.what
    );

    f.now_ms = NOW + 60_000;
    let fs = diagnose(&f);
    assert!(
        problems(&fs)
            .iter()
            .any(|x| x.check == "lease" && x.what.contains("expired")),
        "{}",
        render_text(&fs)
    );

    let mut f = healthy_facts();
    if let Ok(c) = &mut f.cluster {
        c.leases.remove(0);
    }
    let fs = diagnose(&f);
    assert!(
        problems(&fs)
            .iter()
            .any(|x| x.check == "lease" && x.what == "node node1 holds no lease"),
        "{}",
        render_text(&fs)
    );
}

#[test]
fn a_lease_publishing_an_old_address_is_a_problem() {
    let mut f = healthy_facts();
    f.local = Ok(LocalFacts {
        public_ip: "192.0.2.11".parse().unwrap(),
        local_ip: "192.0.2.11".parse().unwrap(),
        ..local()
    });
    let fs = diagnose(&f);
    assert!(
        problems(&fs).iter().any(|x| x.check == "lease"
            && x.what
                .contains("publishes 192.0.2.1 but this node's address is now 192.0.2.11")),
        "{}",
        render_text(&fs)
    );
}

#[test]
fn an_unreachable_controller_is_one_problem_and_the_kernel_is_not_judged_blind() {
    let mut f = healthy_facts();
    f.cluster = Err("no controller answers at https://192.0.2.100:7420".into());
    f.probes.clear();
    let fs = diagnose(&f);
    let p = only_problem(&fs, "controller");
    assert!(p.what.contains("192.0.2.100"));
    assert!(
        fs.iter()
            .any(|x| x.check == "dataplane" && x.severity == Severity::Warning),
        "{}",
        render_text(&fs)
    );
}

#[test]
fn an_unanswered_probe_says_what_was_probed() {
    let mut f = healthy_facts();
    f.probes[1].answered = Ok(false);
    let fs = diagnose(&f);
    let p = only_problem(&fs, "peer-underlay");
    assert_eq!(
        p.what,
        "node3 at 192.0.2.3, its VXLAN endpoint (ICMP echo to its public address): no answer"
    );
    f.probes[1].answered = Err("cannot run ping: No such file or directory".into());
    let fs = diagnose(&f);
    assert!(healthy(&fs), "a probe that could not run is a warning");
}

#[test]
fn host_gw_probes_next_hops_on_the_segment_and_refuses_the_rest() {
    let mut f = healthy_with(host_gw_config());
    if let Ok(s) = &mut f.subnet_env {
        s.mtu = 1500;
    }
    f.mtus = Ok(Mtus::default());
    let Ok(c) = &mut f.cluster else { panic!() };
    c.leases[2].public_ip = "198.51.100.3".into();
    let e = expected("node1", c).unwrap();
    let targets = probe_targets(&e, &local());
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].kind, ProbeKind::NextHop);
    assert_eq!(targets[0].iface.as_deref(), Some("eth0"));
    f.probes = vec![Probe {
        target: targets[0].clone(),
        answered: Ok(false),
    }];
    let fs = diagnose(&f);
    let p = problems(&fs);
    assert!(
        p.iter()
            .any(|x| x.check == "dataplane" && x.what.starts_with("refused: node3 (198.51.100.3)")),
        "{}",
        render_text(&fs)
    );
    let probe = p.iter().find(|x| x.check == "peer-underlay").unwrap();
    assert!(probe.what.contains("host-gw next hop"), "{}", probe.what);
    assert!(
        probe.advice.contains("ip neigh show 192.0.2.2"),
        "{}",
        probe.advice
    );
}

#[test]
fn bgp_keeps_the_speakers_routes_and_wants_every_leased_subnet() {
    let config = pb::NetworkConfig {
        backend: Some(pb::Backend {
            kind: Some(pb::backend::Kind::Bgp(pb::BgpBackend {
                asn: 64512,
                ..Default::default()
            })),
        }),
        ..vxlan_config()
    };
    let c = Cluster {
        config: Some(config),
        leases: vec![
            lease("node1", 1, "192.0.2.1"),
            lease("node2", 2, "192.0.2.2"),
            lease("node3", 3, "192.0.2.3"),
        ],
        health: vec![],
    };
    let e = expected("node1", &c).unwrap();
    let route = |dst: &str, via: &str| Route {
        table: MAIN_TABLE,
        dst: dst.parse().unwrap(),
        via: via.parse().unwrap(),
        dev: "eth0".into(),
        onlink: false,
        also: vec![],
    };
    let mut o = Observed::default();
    // node2's subnet learned via a reflector-kept next hop; an allowed outside prefix; an
    // unleased pod-network /24 left behind; node3's subnet missing.
    o.routes.insert(route("10.244.2.0/24", "192.0.2.2"));
    o.routes.insert(route("203.0.113.0/24", "192.0.2.254"));
    o.routes.insert(route("10.244.7.0/24", "192.0.2.7"));
    let d = desired(&e, &local(), &SourceTables::default(), &o);
    let ops = reconcile::plan(&d, &o);
    assert_eq!(
        ops,
        vec![
            Op::DeleteRoute(route("10.244.7.0/24", "192.0.2.7")),
            Op::AddRoute(route("10.244.3.0/24", "192.0.2.3")),
        ]
    );
    let fs = differences(&ops, &d, &o, &[], &Owners::of(&e));
    assert!(fs[1].what.ends_with("(node3's subnet)"), "{}", fs[1].what);
}

#[test]
fn masquerade_missing_changed_or_unwanted_is_a_problem() {
    let mut f = healthy_facts();
    f.masquerade = Ok(None);
    let p = only_problem(&diagnose(&f), "masquerade").clone();
    assert!(p.what.contains("missing"), "{}", p.what);

    let mut f = healthy_facts();
    if let Ok(Some(l)) = &mut f.masquerade {
        *l = l.replace("masquerade fully-random", "masquerade");
    }
    let fs = diagnose(&f);
    let p = problems(&fs);
    assert_eq!(
        p.len(),
        2,
        "one rule missing, one not twill's: {}",
        render_text(&fs)
    );

    let mut f = healthy_facts();
    f.ip_masq = false;
    if let Ok(s) = &mut f.subnet_env {
        s.ipmasq = false;
    }
    let p = only_problem(&diagnose(&f), "masquerade").clone();
    assert!(p.what.contains("--ip-masq=false"), "{}", p.what);
    f.masquerade = Ok(None);
    assert!(healthy(&diagnose(&f)));
}

#[test]
fn subnet_env_for_another_subnet_or_missing_is_a_problem() {
    let mut f = healthy_facts();
    if let Ok(s) = &mut f.subnet_env {
        s.subnet = "10.244.5.1/24".parse().unwrap();
    }
    let p = only_problem(&diagnose(&f), "subnet.env").clone();
    assert!(
        p.what
            .contains("FLANNEL_SUBNET=10.244.5.1/24 but the lease is 10.244.1.0/24"),
        "{}",
        p.what
    );
    f.subnet_env = Err("cannot read /run/flannel/subnet.env".into());
    let fs = diagnose(&f);
    assert!(problems(&fs).iter().any(|x| x.check == "subnet.env"));
}

#[test]
fn forwarding_off_and_readyz_failing_are_problems() {
    let mut f = healthy_facts();
    f.forwarding = Ok(false);
    let p = only_problem(&diagnose(&f), "forwarding").clone();
    assert!(p.advice.contains("sysctl -w net.ipv4.ip_forward=1"));

    let mut f = healthy_facts();
    f.readyz = Some(Readyz {
        addr: "127.0.0.1:9421".into(),
        answer: Ok((503, "not ready: no lease held\n".into())),
    });
    let p = only_problem(&diagnose(&f), "readyz").clone();
    assert!(
        p.what.contains("503: not ready: no lease held"),
        "{}",
        p.what
    );
    f.readyz = Some(Readyz {
        addr: "127.0.0.1:9421".into(),
        answer: Ok((200, "ready".into())),
    });
    assert!(healthy(&diagnose(&f)));
}

#[test]
fn a_source_table_the_agent_cannot_resolve_or_fill_is_a_problem() {
    let mut f = healthy_facts();
    f.sources = Ok((
        SourceTables::default(),
        vec!["--source-table: interface \"eth1\" does not exist or has no IPv4 address".into()],
    ));
    only_problem(&diagnose(&f), "source-tables");

    // A table a rule points to, without the pod routes in it.
    let mut f = healthy_facts();
    let sources = SourceTables {
        found: [100].into(),
        pod_bridge: None,
        managed: vec![],
    };
    f.sources = Ok((sources, vec![]));
    let fs = diagnose(&f);
    let p = problems(&fs);
    assert_eq!(p.len(), 2, "both peers' routes: {}", render_text(&fs));
    assert!(p
        .iter()
        .all(|x| x.check == "source-tables" && x.what.contains("table 100")));
}

#[test]
fn json_has_healthy_and_every_finding() {
    let mut f = healthy_facts();
    f.forwarding = Ok(false);
    let fs = diagnose(&f);
    let v: Value = serde_json::from_str(&to_json(&fs).to_string()).unwrap();
    assert_eq!(v["healthy"], json!(false));
    let list = v["findings"].as_array().unwrap();
    assert_eq!(list.len(), fs.len());
    assert!(list
        .iter()
        .any(|x| x["check"] == "forwarding" && x["severity"] == "problem"));
}

#[test]
fn a_missing_device_whose_vni_and_port_another_holds_names_the_holder() {
    let mut f = healthy_facts();
    let Ok(o) = &f.observed else { panic!() };
    let want = o.links[0].clone();
    f.observed = Ok(Observed::default());
    f.vxlan_devices = vec![reconcile::VxlanDevice {
        name: "flannel.1".into(),
        vni: want.vni,
        port: want.port,
    }];
    let device = |fs: &[Finding]| {
        problems(fs)
            .into_iter()
            .find(|p| p.what.starts_with("missing: VXLAN device twill.1"))
            .cloned()
            .expect("the missing device is a problem")
    };
    let p = device(&diagnose(&f));
    assert!(
        p.what.contains("device flannel.1 holds that VNI and port"),
        "{}",
        p.what
    );
    assert!(p.advice.contains("ip link del flannel.1"), "{}", p.advice);
    // What would be on the device is folded into its finding, not listed entry by entry.
    let fs = diagnose(&f);
    let on_it: Vec<&Finding> = problems(&fs)
        .into_iter()
        .filter(|x| x.what.contains("twill.1"))
        .collect();
    assert_eq!(on_it.len(), 1, "{}", render_text(&fs));
    assert!(
        p.what.ends_with("; 7 entries on it missing with it"),
        "address, 2 neighbours, 2 FDB entries, 2 routes: {}",
        p.what
    );

    // On another port it is no obstacle: the usual advice.
    f.vxlan_devices[0].port = want.port.wrapping_add(1);
    let p = device(&diagnose(&f));
    assert!(!p.what.contains("flannel.1"), "{}", p.what);
    assert!(p.advice.starts_with("restart twill agent"), "{}", p.advice);
}

#[test]
fn the_agents_own_readyz_speaks_for_readiness_over_its_older_report() {
    // The last report says not ready (sent before the lease came); /readyz now says ready.
    let mut f = healthy_facts();
    if let Ok(c) = &mut f.cluster {
        c.health[0] = report("node1", false, false, 800);
    }
    f.readyz = Some(Readyz {
        addr: "127.0.0.1:9421".into(),
        answer: Ok((200, "ready\n".into())),
    });
    let fs = diagnose(&f);
    assert!(healthy(&fs), "{}", render_text(&fs));
    assert!(render_text(&fs).contains("its readiness is /readyz's below"));

    // And the other way: an older "ready" report does not hide what /readyz says now.
    let mut f = healthy_facts();
    f.readyz = Some(Readyz {
        addr: "127.0.0.1:9421".into(),
        answer: Ok((503, "not ready: last reconcile failed: File exists".into())),
    });
    let p = only_problem(&diagnose(&f), "readyz").clone();
    assert!(p.what.contains("File exists"), "{}", p.what);

    // Nothing answers locally: the report is all there is, and it counts.
    f.readyz = None;
    if let Ok(c) = &mut f.cluster {
        c.health[0] = report("node1", false, false, 800);
    }
    only_problem(&diagnose(&f), "agent");
}
