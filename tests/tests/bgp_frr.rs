//! twill-bgp against FRR's bgpd (Debian's frr), iBGP over a veth pair between two namespaces:
//! Established, each side learns the other's prefix, as FRR's own CLI shows. bgpd runs alone
//! (no zebra), so FRR installs nothing in a kernel here. Needs root; in CI a missing root or FRR
//! fails.

use std::process::Command;
use std::time::Duration;

use twill_tests::netns::{ip, root_or_skip};

const BGPD: &str = "/usr/lib/frr/bgpd";

struct Cleanup {
    namespaces: Vec<String>,
    pid_file: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn ibgp_with_frr_exchanges_prefixes_both_ways() {
    if !root_or_skip("ibgp_with_frr_exchanges_prefixes_both_ways") {
        return;
    }
    assert!(
        std::path::Path::new(BGPD).exists(),
        "FRR is not installed (Debian package frr; scripts/test installs it)"
    );
    let id = std::process::id();
    let (a, b) = (format!("tw-frr-a{id}"), format!("tw-frr-b{id}"));
    let dir = tempfile::tempdir().expect("tmp");
    // bgpd drops privileges to the frr user: it must be able to read and write here.
    let _ = Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(dir.path())
        .status();
    let _c = Cleanup {
        namespaces: vec![a.clone(), b.clone()],
        pid_file: dir.path().join("bgpd.pid"),
    };
    for ns in [&a, &b] {
        ip(&["netns", "add", ns]).expect("netns");
        ip(&["-n", ns, "link", "set", "lo", "up"]).expect("lo");
    }
    ip(&[
        "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
    ])
    .expect("veth");
    for (ns, addr) in [(&a, "192.0.2.1/24"), (&b, "192.0.2.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]).expect("addr");
        ip(&["-n", ns, "link", "set", "eth0", "up"]).expect("up");
    }
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
        .arg(dir.path().join("bgpd.pid"))
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
