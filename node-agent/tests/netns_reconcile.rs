//! The reconciler against real kernels: two node namespaces on a veth underlay (192.0.2.0/24),
//! each with a pod bridge address. Needs root; in CI (CI=true) a missing root is a failure.

use std::net::Ipv4Addr;
use std::process::Command;

use twill_agent::desired::{compute, Backend, Desired, Input, LocalFacts, NodeLease};
use twill_agent::reconcile::{plan, Kernel, Op};
use twill_agent::vtep;
use twill_sandbox::root_or_skip;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let id = std::process::id();
        let p = Pair {
            a: format!("tw-{tag}-a-{id}"),
            b: format!("tw-{tag}-b-{id}"),
        };
        for (ns, addr, pod) in [
            (&p.a, "192.0.2.1/24", "10.244.1.1/24"),
            (&p.b, "192.0.2.2/24", "10.244.2.1/24"),
        ] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // The pod bridge, as the CNI bridge plugin would make it.
            ip(&["-n", ns, "link", "add", "cni0", "type", "bridge"]);
            ip(&["-n", ns, "addr", "add", pod, "dev", "cni0"]);
            ip(&["-n", ns, "link", "set", "cni0", "up"]);
            let _ = addr;
        }
        ip(&[
            "-n", &p.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &p.b,
        ]);
        for (ns, addr) in [(&p.a, "192.0.2.1/24"), (&p.b, "192.0.2.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        p
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    twill_sandbox::in_netns(ns, f).expect("namespace thread")
}

fn lease(node: &str, third: u8, public: u8) -> NodeLease {
    NodeLease {
        node: node.into(),
        subnet: format!("10.244.{third}.0/24").parse().unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, public),
        vtep_mac: Some(vtep::derive(node)),
        v6: None,
    }
}

/// The test node's uplink: eth0 in 192.0.2.0/24, its public address its own.
fn facts(own: &NodeLease) -> LocalFacts {
    LocalFacts {
        iface: "eth0".into(),
        mtu: 1500,
        public_ip: own.public_ip,
        local_ip: own.public_ip,
        connected: vec!["192.0.2.0/24".parse().unwrap()],
        v6: None,
    }
}

fn desired_for(me: &str, backend: &Backend) -> Desired {
    let (own, peer) = if me == "a" {
        (lease("a", 1, 1), lease("b", 2, 2))
    } else {
        (lease("b", 2, 2), lease("a", 1, 1))
    };
    compute(&Input {
        own: own.clone(),
        peers: vec![own.clone(), peer],
        backend: backend.clone(),
        facts: facts(&own),
        sources: Default::default(),
    })
}

/// Reconciles, then checks the kernel holds exactly the desired set; returns the ops needed.
fn reconcile(ns: &str, d: &Desired) -> Vec<Op> {
    let d = d.clone();
    in_netns(ns, move || {
        Box::pin(async move {
            let k = Kernel::connect().expect("netlink");
            let ops = k.reconcile(&d).await.expect("reconcile");
            let after = k.observe().await.expect("observe");

            assert_eq!(
                plan(&d, &after),
                vec![],
                "kernel differs from desired after reconcile: {after:?}"
            );
            ops
        })
    })
}

fn pings(ns: &str, from: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "1", "-W", "2", "-I", from, to,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn vxlan_programs_pings_and_repairs_drift() {
    if !root_or_skip("vxlan_programs_pings_and_repairs_drift") {
        return;
    }
    let p = Pair::new("vx");
    let backend = Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    };
    let (da, db) = (desired_for("a", &backend), desired_for("b", &backend));
    assert!(!reconcile(&p.a, &da).is_empty());
    assert!(!reconcile(&p.b, &db).is_empty());
    assert!(
        pings(&p.a, "10.244.1.1", "10.244.2.1"),
        "pod-to-pod ping over vxlan failed"
    );

    // The exact objects, as iproute2 shows them.
    let link = ip_out(&["-n", &p.a, "-d", "link", "show", "twill.1"]);
    assert!(
        link.contains("vxlan id 1")
            && link.contains("local 192.0.2.1")
            && link.contains("dstport 8472"),
        "{link}"
    );
    assert!(
        link.contains("nolearning") && link.contains("mtu 1450"),
        "{link}"
    );
    assert!(
        link.contains(&vtep::derive("a").to_string()),
        "VTEP MAC not the derived one: {link}"
    );
    let routes = ip_out(&["-n", &p.a, "route", "show", "proto", "151"]);
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink"
    );

    // A second pass changes nothing.
    assert_eq!(reconcile(&p.a, &da), vec![]);

    // Drift, each repaired by the next pass.
    ip(&["-n", &p.a, "route", "flush", "proto", "151"]);
    assert!(!pings(&p.a, "10.244.1.1", "10.244.2.1"));
    assert_eq!(reconcile(&p.a, &da).len(), 1);
    ip(&[
        "-n",
        &p.a,
        "neigh",
        "flush",
        "dev",
        "twill.1",
        "nud",
        "permanent",
    ]);
    assert!(!reconcile(&p.a, &da).is_empty());
    let mac_b = vtep::derive("b").to_string();
    ip(&["-n", &p.a, "neigh", "del", "10.244.2.0", "dev", "twill.1"]);
    assert!(!reconcile(&p.a, &da).is_empty());
    Command::new("bridge")
        .args([
            "-n",
            &p.a,
            "fdb",
            "del",
            &mac_b,
            "dev",
            "twill.1",
            "dst",
            "192.0.2.2",
            "self",
        ])
        .status()
        .expect("bridge fdb del");
    assert!(!reconcile(&p.a, &da).is_empty());
    ip(&["-n", &p.a, "link", "del", "twill.1"]);
    let ops = reconcile(&p.a, &da);
    assert!(matches!(ops.first(), Some(Op::CreateLink(_))), "{ops:?}");
    assert!(
        pings(&p.a, "10.244.1.1", "10.244.2.1"),
        "ping after repairs failed"
    );

    // A peer that leaves: its entries go, nothing else of ours remains.
    let mut alone = da.clone();
    alone.neighbours.clear();
    alone.fdb.clear();
    alone.routes.clear();
    assert_eq!(reconcile(&p.a, &alone).len(), 3);
    assert_eq!(
        ip_out(&["-n", &p.a, "route", "show", "proto", "151"]).trim(),
        ""
    );
}

fn bridge_out(args: &[&str]) -> String {
    let out = Command::new("bridge")
        .args(args)
        .output()
        .expect("run bridge");
    assert!(out.status.success(), "bridge {}", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Static entries written by someone else carry NOARP (alone or with PERMANENT); an all-zeros
/// FDB entry would flood every broadcast to a foreign host for as long as it stays.
#[test]
fn foreign_static_entries_on_our_device_are_removed() {
    if !root_or_skip("foreign_static_entries_on_our_device_are_removed") {
        return;
    }
    let p = Pair::new("fdbnoarp");
    let backend = Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    };
    let da = desired_for("a", &backend);
    reconcile(&p.a, &da);
    reconcile(&p.b, &desired_for("b", &backend));
    let mac_b = vtep::derive("b").to_string();
    // Two remotes on the all-zeros entry (flooding to both) and a foreign unicast MAC.
    for (mac, dst) in [
        ("00:00:00:00:00:00", "198.51.100.9"),
        ("00:00:00:00:00:00", "198.51.100.10"),
        ("0a:00:00:00:00:42", "198.51.100.11"),
    ] {
        bridge_out(&[
            "-n",
            &p.a,
            "fdb",
            "append",
            mac,
            "dev",
            "twill.1",
            "dst",
            dst,
            "self",
            "permanent",
        ]);
    }
    for (addr, mac, nud) in [
        ("10.244.9.0", "0a:00:00:00:00:09", "permanent"),
        ("10.244.8.0", "0a:00:00:00:00:08", "noarp"),
    ] {
        ip(&[
            "-n", &p.a, "neigh", "add", addr, "lladdr", mac, "dev", "twill.1", "nud", nud,
        ]);
    }
    let fdb = bridge_out(&["-n", &p.a, "fdb", "show", "dev", "twill.1"]);
    assert_eq!(fdb.lines().count(), 4, "setup: {fdb}");

    let ops = reconcile(&p.a, &da);
    assert_eq!(
        ops.len(),
        5,
        "three FDB entries and two neighbours: {ops:?}"
    );
    let fdb = bridge_out(&["-n", &p.a, "fdb", "show", "dev", "twill.1"]);
    assert_eq!(
        fdb.trim(),
        format!("{mac_b} dst 192.0.2.2 self permanent"),
        "only the peer's entry may remain"
    );
    let neigh = ip_out(&[
        "-n", &p.a, "-4", "neigh", "show", "nud", "all", "dev", "twill.1",
    ]);
    assert_eq!(
        neigh.trim(),
        format!("10.244.2.0 lladdr {mac_b} PERMANENT"),
        "only the peer's neighbour may remain"
    );
    assert!(
        pings(&p.a, "10.244.1.1", "10.244.2.1"),
        "the peer still answers"
    );
    assert_eq!(reconcile(&p.a, &da), vec![], "settled");
}

/// A route of someone else's (another protocol) where a peer's route would go is never
/// replaced: it stays, the pass reports it, and the rest of the plan is applied.
#[test]
fn a_foreign_route_in_our_place_is_left_and_reported() {
    if !root_or_skip("a_foreign_route_in_our_place_is_left_and_reported") {
        return;
    }
    let p = Pair::new("foreignrt");
    ip(&[
        "-n",
        &p.a,
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        "192.0.2.2",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    let backend = Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    };
    let d = desired_for("a", &backend);
    let applied = in_netns(&p.a, move || {
        Box::pin(async move {
            let k = Kernel::connect().expect("netlink");
            k.reconcile_reporting(&d).await.expect("reconcile")
        })
    });
    assert_eq!(applied.conflicts.len(), 1, "{applied:?}");
    assert!(matches!(applied.conflicts[0], Op::AddRoute(_)));
    let routes = ip_out(&["-n", &p.a, "route", "show", "10.244.2.0/24"]);
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 via 192.0.2.2 dev eth0 proto static",
        "{routes}"
    );
    let fdb = ip_out(&["-n", &p.a, "neigh", "show", "dev", "twill.1"]);
    assert!(
        fdb.contains("10.244.2.0"),
        "the rest of the plan applied: {fdb}"
    );
}

#[test]
fn host_gw_programs_routes_via_the_peer_and_pings() {
    if !root_or_skip("host_gw_programs_routes_via_the_peer_and_pings") {
        return;
    }
    let p = Pair::new("gw");
    let (da, db) = (
        desired_for("a", &Backend::HostGw),
        desired_for("b", &Backend::HostGw),
    );
    reconcile(&p.a, &da);
    reconcile(&p.b, &db);
    assert_eq!(
        ip_out(&["-n", &p.a, "route", "show", "proto", "151"]).trim(),
        "10.244.2.0/24 via 192.0.2.2 dev eth0"
    );
    assert!(
        pings(&p.a, "10.244.1.1", "10.244.2.1"),
        "pod-to-pod ping over host-gw failed"
    );
    // Switching the backend to vxlan replaces the routes.
    let vx = Backend::Vxlan {
        vni: 1,
        port: 8472,
        direct_routing: false,
    };
    reconcile(&p.a, &desired_for("a", &vx));
    reconcile(&p.b, &desired_for("b", &vx));
    assert!(
        pings(&p.a, "10.244.1.1", "10.244.2.1"),
        "ping after switching to vxlan failed"
    );
}

/// ECMP: a BGP route with two equal next hops becomes one multipath route in the kernel, reads
/// back as the same route (nothing left to do), shrinks to one next hop when one goes, and
/// pods still reach the peer over it.
#[test]
fn bgp_next_hops_become_one_multipath_route() {
    if !root_or_skip("bgp_next_hops_become_one_multipath_route") {
        return;
    }
    let p = Pair::new("ec");
    let ip4 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    // 192.0.2.3 is on the segment but answers nothing: the kernel takes it as a gateway.
    let two = Backend::Bgp {
        routes: [(
            "10.244.2.0/24".parse().unwrap(),
            vec![ip4("192.0.2.2"), ip4("192.0.2.3")],
        )]
        .into(),
    };
    let d = desired_for("a", &two);
    assert!(!reconcile(&p.a, &d).is_empty());
    let shown = ip_out(&["-n", &p.a, "route", "show", "proto", "151"]);
    assert!(
        shown.contains("nexthop via 192.0.2.2 dev eth0")
            && shown.contains("nexthop via 192.0.2.3 dev eth0"),
        "not a multipath route:\n{shown}"
    );
    assert_eq!(
        reconcile(&p.a, &d),
        vec![],
        "a multipath route read back differs"
    );
    let one = Backend::Bgp {
        routes: [("10.244.2.0/24".parse().unwrap(), vec![ip4("192.0.2.2")])].into(),
    };
    reconcile(&p.a, &desired_for("a", &one));
    reconcile(&p.b, &desired_for("b", &Backend::HostGw));
    assert_eq!(
        ip_out(&["-n", &p.a, "route", "show", "proto", "151"]).trim(),
        "10.244.2.0/24 via 192.0.2.2 dev eth0"
    );
    assert!(
        pings(&p.a, "10.244.1.1", "10.244.2.1"),
        "ping over the route failed"
    );
}

/// Node "a" with `n` VXLAN peers, each its own subnet of 10.100.0.0/14.
fn many_peers(n: u32) -> Desired {
    let own = lease("a", 1, 1);
    let peers = (0..n).map(|i| NodeLease {
        node: format!("peer-{i}"),
        subnet: format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
            .parse()
            .unwrap(),
        public_ip: Ipv4Addr::new(192, 0, 2, (10 + i % 200) as u8),
        vtep_mac: Some(vtep::derive(&format!("peer-{i}"))),
        v6: None,
    });
    compute(&Input {
        own: own.clone(),
        peers: std::iter::once(own.clone()).chain(peers).collect(),
        backend: Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        },
        facts: facts(&own),
        sources: Default::default(),
    })
}

/// Puts a route of someone else's (proto static) at every destination `d` routes, as
/// another routing daemon would.
fn foreign_routes(ns: &str, d: &Desired) {
    let batch: String = d
        .routes
        .iter()
        .map(|r| format!("route add {} via 192.0.2.2 dev eth0 proto static\n", r.dst))
        .collect();
    let file = std::env::temp_dir().join(format!("twill-foreign-{ns}.batch"));
    std::fs::write(&file, batch).expect("write ip batch");
    ip(&["-n", ns, "-batch", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
}

/// Only failures are answered (and each batch's last request), so the smallest receive
/// buffer holds a pass where nothing fails; a pass where many requests fail overruns it, and
/// that is reported at once and repaired by resyncs with smaller batches, never taken for
/// successes.
#[test]
fn failures_lost_to_a_full_buffer_are_an_overrun_and_a_resync_completes_the_pass() {
    if !root_or_skip(
        "failures_lost_to_a_full_buffer_are_an_overrun_and_a_resync_completes_the_pass",
    ) {
        return;
    }
    use twill_agent::reconcile::{Batching, KernelError};
    let p = Pair::new("enobufs");
    let d = many_peers(600);
    let ns = p.a.clone();
    in_netns(&p.a, move || {
        Box::pin(async move {
            // The smallest receive buffer the kernel allows holds a few answers, not a batch
            // of 512.
            let tiny = Batching {
                max: 512,
                receive_buffer: 0,
            };
            let limit = std::time::Duration::from_secs(30);
            let k = Kernel::connect_with(tiny).expect("netlink");
            let applied = tokio::time::timeout(limit, k.reconcile_reporting(&d))
                .await
                .expect("the pass ends")
                .expect("a pass where nothing fails");
            assert_eq!(applied.overruns, 0, "{applied:?}");
            assert_eq!(k.batch_size(), 512);
            assert_eq!(plan(&d, &k.observe().await.expect("observe")), vec![]);

            // Someone else's route where each of ours goes: every route request fails.
            let normal = Kernel::connect().expect("netlink");
            normal.reconcile(&Desired::default()).await.expect("clear");
            foreign_routes(&ns, &d);
            let k = Kernel::connect_with(tiny).expect("netlink");
            let ops = plan(&d, &k.observe().await.expect("observe"));
            assert!(ops.len() > 1800, "{} operations", ops.len());
            let r = tokio::time::timeout(limit, k.apply(&ops))
                .await
                .expect("an overrun is reported, not waited on");
            assert!(
                matches!(r, Err(KernelError::Overrun { batch: 512 })),
                "{r:?}"
            );

            // The pass resyncs after each overrun, with batches half the size, until it is
            // through: every route is reported as someone else's, the rest is in place.
            let applied = tokio::time::timeout(limit, k.reconcile_reporting(&d))
                .await
                .expect("the pass ends")
                .expect("the pass succeeds after resyncs");
            assert!(applied.overruns >= 1, "{applied:?}");
            assert!(k.batch_size() < 512, "batch still {}", k.batch_size());
            assert_eq!(applied.conflicts.len(), d.routes.len());
            let left = plan(&d, &k.observe().await.expect("observe"));
            assert_eq!(left.len(), d.routes.len(), "{left:?}");
            assert!(
                left.iter().all(|op| matches!(op, Op::AddRoute(_))),
                "{left:?}"
            );

            // The default batching takes the same failures without a resync.
            normal.reconcile(&Desired::default()).await.expect("clear");
            let applied = normal.reconcile_reporting(&d).await.expect("reconcile");
            assert_eq!(applied.overruns, 0);
            assert_eq!(applied.conflicts.len(), d.routes.len());
        })
    });
    let foreign = ip_out(&["-n", &p.a, "route", "show", "proto", "static"]);
    assert_eq!(
        foreign.lines().count(),
        600,
        "someone else's routes were touched"
    );
}

/// A full table from an outside peer: 20,000 routes go in through batches on the pass's own
/// socket, every one of them is in the kernel (counted by `ip`, not by us), and the dump reads
/// them all back across many datagrams, so that the next pass has nothing to do.
#[test]
fn a_large_table_goes_in_whole_and_reads_back_whole() {
    if !root_or_skip("a_large_table_goes_in_whole_and_reads_back_whole") {
        return;
    }
    const N: u32 = 20_000;
    let p = Pair::new("table");
    let via = vec!["192.0.2.2".parse::<std::net::IpAddr>().unwrap()];
    let routes = (0..N)
        .map(|i| {
            let net = Ipv4Addr::from(0x0b00_0000 + (i << 8));
            (format!("{net}/24").parse().unwrap(), via.clone())
        })
        .collect();
    let d = desired_for("a", &Backend::Bgp { routes });
    let ns = p.a.clone();
    let (applied, observed, again) = in_netns(&ns, move || {
        Box::pin(async move {
            let k = Kernel::connect().expect("netlink");
            let applied = k.reconcile_reporting(&d).await.expect("reconcile");
            let observed = k.observe().await.expect("observe");
            let again = plan(&d, &observed);
            (applied, observed, again)
        })
    });
    let adds = applied
        .ops
        .iter()
        .filter(|o| matches!(o, Op::AddRoute(_)))
        .count();
    assert_eq!(adds, N as usize, "{} operations", applied.ops.len());
    assert!(applied.conflicts.is_empty(), "{:?}", applied.conflicts);
    let shown = ip_out(&["-n", &p.a, "route", "show", "proto", "151"]);
    assert_eq!(shown.lines().count(), N as usize, "routes in the kernel");
    assert_eq!(observed.routes.len(), N as usize, "routes read back");
    assert_eq!(again, vec![], "the kernel read back differs from desired");
}
