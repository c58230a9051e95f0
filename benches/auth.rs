//! Placeholder; the auth benches land with the auth filter.
fn main() {}
