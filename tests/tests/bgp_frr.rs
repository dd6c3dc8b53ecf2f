//! twill-bgp against FRR's bgpd (Debian's frr), iBGP over a veth pair between two namespaces:
//! Established, each side learns the other's prefix, as FRR's own CLI shows. bgpd runs alone
//! (no zebra), so FRR installs nothing in a kernel here. Needs root; in CI a missing root or FRR
//! fails.

use std::process::Command;
use std::time::Duration;

use twill_tests::netns::root_or_skip;

const BGPD: &str = "/usr/lib/frr/bgpd";

#[test]
fn ibgp_with_frr_exchanges_prefixes_both_ways() {
    if !root_or_skip("ibgp_with_frr_exchanges_prefixes_both_ways") {
        return;
    }
    assert!(
        std::path::Path::new(BGPD).exists(),
        "FRR is not installed (Debian package frr; scripts/test installs it)"
    );
    let pair = twill_tests::bgp::PeerPair::new("frr").expect("namespaces");
    let (a, b, dir) = (pair.a.clone(), pair.b.clone(), &pair.dir);
    // bgpd drops privileges to the frr user: it must be able to read and write here.
    let _ = Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(dir.path())
        .status();
    let conf = dir.path().join("bgpd.conf");
    std::fs::write(
        &conf,
        "router bgp 64512\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp network import-check\n neighbor 192.0.2.1 remote-as 64512\n address-family ipv4 unicast\n  network 10.244.2.0/24\n  neighbor 192.0.2.1 next-hop-self\n exit-address-family\n",
    )
    .expect("bgpd.conf");
    let _ = Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(dir.path())
        .status();
    let status = Command::new("ip")
        .args(["netns", "exec", &b, BGPD, "-d", "-Z", "-S", "-P", "0", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(pair.pid_file())
        .arg("--vty_socket")
        .arg(dir.path())
        .arg("--log")
        .arg(format!("file:{}", dir.path().join("bgpd.log").display()))
        .status()
        .expect("start bgpd");
    assert!(status.success(), "bgpd did not start");

    let vty = dir.path().to_path_buf();
    let (learned, frr_view) = twill_tests::bgp::exchange(
        &a,
        "192.0.2.1",
        "192.0.2.2",
        64512,
        "10.244.1.0/24",
        move || {
            let mut out = String::new();
            for _ in 0..50 {
                let o = Command::new("vtysh")
                    .arg("--vty_socket")
                    .arg(&vty)
                    .args(["-c", "show bgp ipv4 unicast 10.244.1.0/24 json"])
                    .output();
                out = o
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if out.contains("192.0.2.1") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            out
        },
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
