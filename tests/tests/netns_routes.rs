//! The reconciler's route changes in bulk (many requests to a netlink datagram, only failures
//! answered), in a namespace of this test: a table of 3,000 routes goes in whole, a foreign
//! route where one of ours should go is left alone and reported, a second pass changes
//! nothing else, and an empty desired state takes ours out and leaves the foreign one.
//! Needs root; in CI a missing root fails.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use twill_agent::desired::{Desired, Route, MAIN_TABLE};
use twill_agent::reconcile::{Kernel, Op};
use twill_tests::netns::{in_netns, ip, ip_out, root_or_skip};

const N: u32 = 3_000;

fn route(i: u32) -> Route {
    Route {
        table: MAIN_TABLE,
        dst: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap()),
        via: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
        dev: "eth0".into(),
        onlink: false,
        also: vec![],
    }
}

fn count(ns: &str, proto: &str) -> usize {
    ip_out(&["-n", ns, "route", "show", "proto", proto])
        .lines()
        .count()
}

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

#[test]
fn bulk_route_changes_install_the_table_and_leave_a_foreign_route_alone() {
    if !root_or_skip("bulk_route_changes_install_the_table_and_leave_a_foreign_route_alone") {
        return;
    }
    let ns = Ns(format!("tw-routes-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]).unwrap();
    for args in [
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ][..],
        &["addr", "add", "192.0.2.1/24", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["link", "set", "eth1", "up"],
        // Someone else's route where our route 7 goes.
        &[
            "route",
            "add",
            "10.0.7.0/24",
            "via",
            "192.0.2.201",
            "proto",
            "static",
        ],
    ] {
        ip(&[&["-n", &ns.0][..], args].concat()).unwrap();
    }
    let desired = Desired {
        routes: (0..N).map(route).collect(),
        ..Default::default()
    };
    let name = ns.0.clone();
    let (first, installed, second, emptied) = in_netns(&ns.0, move || {
        Box::pin(async move {
            let k = Kernel::connect().unwrap();
            let first = k.reconcile_reporting(&desired).await.unwrap();
            let installed = count(&name, "151");
            let second = k.reconcile_reporting(&desired).await.unwrap();
            let emptied = k.reconcile_reporting(&Desired::default()).await.unwrap();
            (first, installed, second, emptied)
        })
    })
    .unwrap();
    assert_eq!(first.ops.len(), N as usize);
    assert_eq!(first.conflicts, [Op::AddRoute(route(7))]);
    assert_eq!(installed, N as usize - 1);
    // Only the route whose place is taken is tried again.
    assert_eq!(second.ops, [Op::AddRoute(route(7))]);
    assert_eq!(second.conflicts, [Op::AddRoute(route(7))]);
    assert_eq!(emptied.ops.len(), N as usize - 1);
    assert!(emptied
        .ops
        .iter()
        .all(|op| matches!(op, Op::DeleteRoute(_))));
    assert_eq!(count(&ns.0, "151"), 0);
    assert_eq!(
        ip_out(&["-n", &ns.0, "route", "show", "proto", "static"]).trim(),
        "10.0.7.0/24 via 192.0.2.201 dev eth0"
    );
}
