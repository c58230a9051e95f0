//! Every JSON error body ringgate writes has its keys in one order:
//! `error`, `status`, `request_id`. The 400/404/405 bodies had it; the 401
//! and 429 ones (and the token endpoint's) came out of a sorted map as
//! `error, request_id, status`.

mod support;

use support::*;

/// The body's top-level keys, in order (a flat JSON object).
fn keys(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(v.is_object(), "{body}");
    // serde_json's maps sort keys: find each key's place in the text.
    let mut ks: Vec<(usize, String)> = v
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (body.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    ks.sort();
    ks.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn error_bodies_order_their_keys_one_way() {
    // SAFETY: the first thing this binary's only test does, before any
    // thread that could read the environment starts.
    unsafe { std::env::set_var("RG_ERROR_BODIES_SECRET", "s".repeat(40)) };
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\
         [upstreams.b]\ntargets = [\"{}\"]\n\
         [auth.api_key]\nheader = \"X-API-Key\"\n\
         [auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"RG_ERROR_BODIES_SECRET\"\n\
         [auth.token_endpoint]\npath = \"/auth/token\"\n\
         [[consumers]]\nid = \"c\"\napi_key_sha256 = \"{}\"\n\
         [rate_limits.one]\nlimit = 1\nwindow_s = 600\n\
         [[routes]]\nname = \"private\"\npath = \"/private\"\nupstream = \"b\"\nauth = [\"api_key\"]\n\
         [[routes]]\nname = \"limited\"\npath = \"/limited\"\nupstream = \"b\"\nrate_limit = [\"one\"]\n\
         [[routes]]\nname = \"get\"\npath = \"/get\"\nmethods = [\"GET\"]\nupstream = \"b\"\n",
        up.addr,
        "0".repeat(64),
    ));
    let order = ["error", "status", "request_id"];
    let check = |what: &str, r: &Response, status: u16, want: &[&str]| {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(keys(&r.text()), want, "{what}: {}", r.text());
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(v["status"], status, "{what}");
        assert_eq!(v["request_id"].as_str(), r.header("X-Request-Id"), "{what}");
    };
    check("401", &gw.get("/private"), 401, &order);
    assert_eq!(gw.get("/limited").status, 200);
    check("429", &gw.get("/limited"), 429, &order);
    check("404", &gw.get("/nowhere"), 404, &order);
    let mut c = gw.client();
    c.send("DELETE /get HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    check("405", &c.read_response(), 405, &order);
    // The token endpoint's OAuth errors: error_description after error.
    let mut c = gw.client();
    c.send(
        "POST /auth/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 18\r\n\r\ngrant_type=unknown",
    );
    check(
        "token endpoint 400",
        &c.read_response(),
        400,
        &["error", "error_description", "status", "request_id"],
    );
}
