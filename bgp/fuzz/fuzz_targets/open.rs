//! OPEN bodies (after the header): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_bgp::open::Open;

fuzz_target!(|data: &[u8]| {
    let _ = Open::decode(data);
});
