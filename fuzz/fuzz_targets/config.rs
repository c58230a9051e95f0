//! `config`: see fuzz/props/mod.rs for the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::{c_char, c_int, c_void};

#[path = "../props/mod.rs"]
mod props;

/// No DNS from the fuzzer: an upstream target that is not an IP address
/// would otherwise send a query for every mutated name (slow, and traffic
/// to the resolver). This definition takes the place of libc's for the
/// whole binary; every name "does not resolve".
///
/// # Safety
/// Never reads its arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    _node: *const c_char,
    _service: *const c_char,
    _hints: *const c_void,
    _res: *mut *mut c_void,
) -> c_int {
    // EAI_NONAME
    -2
}

fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check("config", data) {
        panic!("property failed: {e}");
    }
});
