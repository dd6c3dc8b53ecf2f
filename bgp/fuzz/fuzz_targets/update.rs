//! UPDATE bodies (after the header), with and without 4-octet AS numbers: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_bgp::update::Update;

fuzz_target!(|data: &[u8]| {
    let _ = Update::decode(data, false);
    let _ = Update::decode(data, true);
});
