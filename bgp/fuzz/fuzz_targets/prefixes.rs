//! NLRI and withdrawn-route fields, IPv4 and IPv6: never a panic, and no prefix longer than
//! its family allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_bgp::prefix;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = prefix::decode_all_v4(data) {
        assert!(v.iter().all(|p| p.prefix_len() <= 32));
    }
    if let Ok(v) = prefix::decode_all_v6(data) {
        assert!(v.iter().all(|p| p.prefix_len() <= 128));
    }
});
