//! The path attribute field alone, where RFC 7606's rules live: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_bgp::attribute;

fuzz_target!(|data: &[u8]| {
    let _ = attribute::decode(data, false);
    let _ = attribute::decode(data, true);
});
