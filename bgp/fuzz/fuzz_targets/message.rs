//! Whole messages off the wire, header included, with and without 4-octet AS numbers: never a
//! panic, never a length past the input, and whatever decodes can be encoded again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_bgp::message;

fuzz_target!(|data: &[u8]| {
    for four in [false, true] {
        if let Ok(Some((m, used))) = message::decode(data, four) {
            assert!(used <= data.len());
            let _ = message::encode(&m, four);
        }
    }
});
