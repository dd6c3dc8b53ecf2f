//! twill against GoBGP: iBGP and eBGP sessions come up, each side's prefix reaches the other,
//! checked in GoBGP's own CLI. Needs root and gobgpd.

use ipnet::IpNet;
use twill_bgp::rib::Change;
use twill_tests::bgp::{
    as_path, best_path, gobgp_conf, peer, poll_output, run_speaker, speaker_on_host_1, Lan,
};
use twill_tests::netns::root_or_skip;

fn exchange(tag: &str, twill_as: u32, gobgp_as: u32) -> (Vec<(IpNet, Change)>, String) {
    let mut lan = Lan::new(tag, &[1, 2]).expect("lan");
    lan.start_gobgp(2, &gobgp_conf(2, gobgp_as, "192.0.2.1", twill_as))
        .expect("gobgpd");
    let added = lan.gobgp(2, &["global", "rib", "add", "10.244.2.0/24", "-a", "ipv4"]);
    assert!(!added.contains("rror"), "gobgp rib add: {added}");
    let cfg = speaker_on_host_1(twill_as, vec![peer(2, gobgp_as)], &["10.244.1.0/24"]);
    let want: IpNet = "10.244.2.0/24".parse().expect("prefix");
    let lan = std::sync::Arc::new(lan);
    let l = lan.clone();
    let (seen, rib) = run_speaker(
        &lan,
        cfg,
        move |s| s.iter().any(|(p, _)| *p == want),
        move || {
            poll_output("10.244.1.0/24", || {
                l.gobgp(2, &["global", "rib", "-a", "ipv4", "10.244.1.0/24"])
            })
        },
    );
    let neighbour = lan.gobgp(2, &["neighbor", "192.0.2.1"]);
    assert!(
        seen.iter()
            .any(|(p, c)| *p == want && matches!(c, Change::Best(..))),
        "twill never learned GoBGP's prefix; GoBGP says:\n{neighbour}"
    );
    (seen, rib)
}

#[test]
fn ibgp_with_gobgp() {
    if !root_or_skip("ibgp_with_gobgp") {
        return;
    }
    let (seen, rib) = exchange("gi", 64512, 64512);
    assert!(
        rib.contains("10.244.1.0/24") && rib.contains("192.0.2.1"),
        "GoBGP lacks our prefix with our next hop:\n{rib}"
    );
    let path = best_path(&seen, "10.244.2.0/24").expect("learned");
    assert_eq!(path.next_hop.to_string(), "192.0.2.2");
    assert!(as_path(&path).is_empty(), "iBGP path with ASes on it");
}

#[test]
fn ebgp_with_gobgp() {
    if !root_or_skip("ebgp_with_gobgp") {
        return;
    }
    let (seen, rib) = exchange("ge", 64601, 64602);
    assert!(
        rib.contains("10.244.1.0/24") && rib.contains("64601"),
        "GoBGP lacks our prefix with our AS on the path:\n{rib}"
    );
    let path = best_path(&seen, "10.244.2.0/24").expect("learned");
    assert_eq!(as_path(&path), [64602], "GoBGP's AS on the path");
}
