//! TCP-MD5 (RFC 2385) against BIRD 2 with `password`: the session comes up with the right key
//! and never with a wrong one. Needs root and bird2.

use twill_tests::bgp::Lan;
use twill_tests::netns::root_or_skip;

const BIRD: &str = r#"router id 192.0.2.2;
protocol device {}
protocol direct { ipv4; interface "eth0"; }
protocol static pods { ipv4; route 10.244.2.0/24 blackhole; }
protocol bgp tw {
  local 192.0.2.2 as 64512;
  neighbor 192.0.2.1 as 64512;
  password "twill-md5-key";
  ipv4 { import all; export where source = RTS_STATIC; next hop self; };
}
"#;

#[test]
fn md5_up_with_the_right_key_never_with_a_wrong_one() {
    if !root_or_skip("md5_up_with_the_right_key_never_with_a_wrong_one") {
        return;
    }
    let mut lan = Lan::new("md", &[1, 2]).expect("namespaces");
    lan.start_bird(2, BIRD).expect("bird");
    let ns = lan.ns(1);
    let exchange = |key: Option<&str>| {
        twill_tests::bgp::exchange_within(
            &ns,
            "192.0.2.1",
            "192.0.2.2",
            64512,
            "10.244.1.0/24",
            key,
            std::time::Duration::from_secs(8),
        )
    };
    let wrong = exchange(Some("not-the-key"));
    assert!(
        wrong.is_err(),
        "a session came up with a wrong MD5 key: {wrong:?}"
    );
    let none = exchange(None);
    assert!(
        none.is_err(),
        "a session came up without the MD5 key: {none:?}"
    );
    let right = exchange(Some("twill-md5-key")).expect("session with the right key");
    assert_eq!(right, ["10.244.2.0/24"]);
}
