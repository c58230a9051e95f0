//! `request_head`: see fuzz/props/mod.rs for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check("request_head", data) {
        panic!("property failed: {e}");
    }
});
