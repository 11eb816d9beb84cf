//! The binary COPY decoder behind `extract` on arbitrary server bytes: a broken
//! or hostile server gets an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::fuzz::decode_copy;

fuzz_target!(|input: (Vec<u8>, &[u8])| {
    let (selectors, data) = input;
    if selectors.is_empty() || selectors.len() > 16 {
        return;
    }
    let _ = decode_copy(&selectors, data);
});
