//! `RateLimit` headers over real sockets with two workers: the remainder
//! they state is the instance's, not one worker's part of the key.

mod support;

use std::thread;
use std::time::Duration;
use support::*;

/// Remaining count from `RateLimit: "name";r=R;t=T`.
fn remaining(r: &Response) -> Option<u64> {
    let v = r.header("RateLimit")?;
    let i = v.find(";r=")? + 3;
    v[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// A limit of 3 answered `r=1, r=1, r=0` (or `r=1, r=0, r=0`) for the
/// three requests it admitted, with two workers: each worker stated its
/// own part of the key. A client that obeys `r=0` stopped early. Now the
/// three admitted requests say 2, 1, 0, on whichever worker their
/// connection lands, and every refusal says 0.
///
/// The requests are a few sync intervals apart: what another worker
/// admitted within the last interval or so is not counted yet (the bound
/// `src/filter/rate_limit/shard.rs` states for `Entry::whole`).
#[test]
fn the_remainder_is_the_instances() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n\
         [upstreams.b]\ntargets = [\"{}\"]\n\
         [rate_limits.small]\nkey = \"header:X-Key\"\nlimit = 3\nwindow_s = 600\n\
         sync_interval_ms = 10\n\
         [[routes]]\npath = \"/{{*rest}}\"\nupstream = \"b\"\nrate_limit = [\"small\"]\n",
        up.addr
    ));
    for key in ["a", "b", "c", "d"] {
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for i in 0..6 {
            // A new connection each time: the kernel spreads them over the
            // two workers' listeners.
            let mut c = gw.client();
            c.send(format!(
                "GET /r/{i} HTTP/1.1\r\nHost: t\r\nX-Key: {key}\r\nConnection: close\r\n\r\n"
            ));
            let r = c.read_response();
            match r.status {
                200 => admitted.push(remaining(&r)),
                429 => refused.push(remaining(&r)),
                s => panic!("key {key}: status {s}"),
            }
            thread::sleep(Duration::from_millis(120));
        }
        // The instance admits the limit; now and then the limiter refuses
        // one of three requests this far apart and admits only two (a
        // worker refuses while the last request's quota sits with the
        // other worker). The remainders count down all the same.
        assert!(
            (2..=3).contains(&admitted.len()),
            "key {key}: admitted {admitted:?}, refused {refused:?}"
        );
        assert_eq!(
            admitted,
            [Some(2), Some(1), Some(0)][..admitted.len()],
            "key {key}: the remainders of the admitted requests"
        );
        assert!(
            refused.iter().all(|r| *r == Some(0)),
            "key {key}: refusals {refused:?}"
        );
    }
}
