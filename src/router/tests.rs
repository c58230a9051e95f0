//! Unit tests for the route table.

use super::*;

fn spec(path: &str, route: u32) -> RouteSpec<'_> {
    RouteSpec {
        host: None,
        path,
        methods: None,
        route,
    }
}

fn on<'a>(host: &'a str, path: &'a str, route: u32) -> RouteSpec<'a> {
    RouteSpec {
        host: Some(host),
        ..spec(path, route)
    }
}

fn with<'a>(methods: &[Method], s: RouteSpec<'a>) -> RouteSpec<'a> {
    RouteSpec {
        methods: Some(methods.iter().copied().collect()),
        ..s
    }
}

fn table(specs: &[RouteSpec<'_>]) -> RouteTable {
    match RouteTable::build(specs) {
        Ok(t) => t,
        Err(e) => panic!("build failed: {e:?}"),
    }
}

fn errors(specs: &[RouteSpec<'_>]) -> Vec<RouteError> {
    match RouteTable::build(specs) {
        Ok(t) => panic!("expected errors, built {t:?}"),
        Err(e) => e,
    }
}

/// Route and params for a GET with no Host.
fn get(t: &RouteTable, path: &str) -> Option<(u32, Vec<String>)> {
    req(t, "", "GET", path)
}

fn req(t: &RouteTable, host: &str, method: &str, path: &str) -> Option<(u32, Vec<String>)> {
    let mut params = Params::new();
    match t.lookup(
        host.as_bytes(),
        method.as_bytes(),
        path.as_bytes(),
        &mut params,
    ) {
        Lookup::Found { route } => Some((
            route,
            params
                .iter()
                .map(|p| String::from_utf8(p.to_vec()).unwrap())
                .collect(),
        )),
        other => {
            assert!(params.is_empty(), "params left on {other:?}");
            None
        }
    }
}

fn route(t: &RouteTable, path: &str) -> Option<u32> {
    get(t, path).map(|(r, _)| r)
}

#[test]
fn method_parsing_and_sets() {
    for m in Method::VARIANTS {
        assert_eq!(Method::from_bytes(m.as_str().as_bytes()), Some(m));
    }
    assert_eq!(Method::from_bytes(b"get"), None);
    assert_eq!(Method::from_bytes(b"PROPFIND"), None);
    assert_eq!(Method::from_bytes(b""), None);

    let mut s = MethodSet::empty();
    assert!(s.is_empty() && !s.is_all());
    s.insert(Method::Post);
    s.insert(Method::Get);
    assert!(s.contains(Method::Get) && s.contains(Method::Post) && !s.contains(Method::Put));
    assert_eq!(s.to_string(), "GET, POST");
    assert!(MethodSet::ALL.is_all());
    assert_eq!(
        Method::VARIANTS.into_iter().collect::<MethodSet>(),
        MethodSet::ALL
    );
    assert_eq!(
        MethodSet::ALL.to_string(),
        "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
    );
    assert_eq!(MethodSet::default(), MethodSet::empty());
}

#[test]
fn table_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable>();
    assert_send_sync::<Params<'static>>();
}

#[test]
fn static_paths_and_trailing_slash() {
    let t = table(&[
        spec("/", 0),
        spec("/a", 1),
        spec("/a/", 2),
        spec("/a/b/c", 3),
    ]);
    assert_eq!(route(&t, "/"), Some(0));
    assert_eq!(route(&t, "/a"), Some(1));
    assert_eq!(route(&t, "/a/"), Some(2));
    assert_eq!(route(&t, "/a/b/c"), Some(3));
    assert_eq!(route(&t, "/a/b"), None);
    assert_eq!(route(&t, "/a/b/c/"), None);
    assert_eq!(route(&t, "/A"), None, "paths are case-sensitive");
    assert_eq!(route(&t, "//"), None);
    assert_eq!(route(&t, ""), None);
    assert_eq!(route(&t, "a"), None);
    assert_eq!(t.len(), 4);
    assert!(!t.is_empty());
}

#[test]
fn root_matches_only_root() {
    let t = table(&[spec("/", 0)]);
    assert_eq!(route(&t, "/"), Some(0));
    assert_eq!(route(&t, "/x"), None);
    assert_eq!(route(&t, "//"), None);
}

#[test]
fn params_capture_one_nonempty_segment() {
    let t = table(&[
        spec("/products/{id}", 0),
        spec("/users/{uid}/orders/{oid}", 1),
    ]);
    assert_eq!(get(&t, "/products/42"), Some((0, vec!["42".into()])));
    assert_eq!(get(&t, "/products/"), None, "empty segment");
    assert_eq!(get(&t, "/products"), None);
    assert_eq!(get(&t, "/products/42/x"), None);
    assert_eq!(
        get(&t, "/users/u1/orders/o%2F2"),
        Some((1, vec!["u1".into(), "o%2F2".into()]))
    );
    assert_eq!(t.param_names(1), ["uid".into(), "oid".into()]);
    assert_eq!(t.param_names(0), ["id".into()]);
    assert!(t.param_names(99).is_empty());
}

#[test]
fn params_are_subslices_of_the_path() {
    let t = table(&[spec("/a/{x}/{*rest}", 0)]);
    let path = b"/a/xx/r/s";
    let mut p = Params::new();
    assert_eq!(
        t.lookup(b"", b"GET", path, &mut p),
        Lookup::Found { route: 0 }
    );
    assert_eq!(p.len(), 2);
    assert_eq!(p.get(0), Some(&b"xx"[..]));
    assert_eq!(p.get(1), Some(&b"r/s"[..]));
    assert_eq!(p.get(2), None);
    let start = path.as_ptr() as usize;
    assert_eq!(p.get(0).unwrap().as_ptr() as usize - start, 3);
    assert_eq!(p.get(1).unwrap().as_ptr() as usize - start, 6);
    assert_eq!(format!("{p:?}"), r#"["xx", "r/s"]"#);
    p.clear();
    assert!(p.is_empty());
}

#[test]
fn lookup_clears_stale_params() {
    let t = table(&[spec("/a/{x}", 0), spec("/b", 1)]);
    let mut p = Params::new();
    assert_eq!(
        t.lookup(b"", b"GET", b"/a/1", &mut p),
        Lookup::Found { route: 0 }
    );
    assert_eq!(p.len(), 1);
    assert_eq!(
        t.lookup(b"", b"GET", b"/b", &mut p),
        Lookup::Found { route: 1 }
    );
    assert!(p.is_empty());
    assert_eq!(t.lookup(b"", b"GET", b"/zzz", &mut p), Lookup::NotFound);
    assert!(p.is_empty());
}

#[test]
fn catch_all_matches_rest_including_empty() {
    let t = table(&[spec("/static/{*rest}", 0)]);
    assert_eq!(get(&t, "/static"), Some((0, vec!["".into()])));
    assert_eq!(get(&t, "/static/"), Some((0, vec!["".into()])));
    assert_eq!(get(&t, "/static/a"), Some((0, vec!["a".into()])));
    assert_eq!(get(&t, "/static/a/b/"), Some((0, vec!["a/b/".into()])));
    assert_eq!(get(&t, "/static//x"), Some((0, vec!["/x".into()])));
    assert_eq!(get(&t, "/staticx"), None);
    assert_eq!(get(&t, "/"), None);
    assert_eq!(t.param_names(0), ["rest".into()]);
}

#[test]
fn root_catch_all() {
    let t = table(&[spec("/{*all}", 0), spec("/", 1), spec("/exact", 2)]);
    assert_eq!(get(&t, "/"), Some((1, vec![])));
    assert_eq!(get(&t, "/exact"), Some((2, vec![])));
    assert_eq!(get(&t, "/exact/"), Some((0, vec!["exact/".into()])));
    assert_eq!(get(&t, "/x/y"), Some((0, vec!["x/y".into()])));

    let only = table(&[spec("/{*all}", 0)]);
    assert_eq!(get(&only, "/"), Some((0, vec!["".into()])));
}

#[test]
fn priority_static_then_param_then_catch_all() {
    let t = table(&[
        spec("/users/me", 0),
        spec("/users/{id}", 1),
        spec("/users/{*rest}", 2),
        spec("/users", 3),
    ]);
    assert_eq!(route(&t, "/users/me"), Some(0));
    assert_eq!(route(&t, "/users/42"), Some(1));
    assert_eq!(route(&t, "/users/42/x"), Some(2));
    assert_eq!(
        route(&t, "/users/"),
        Some(2),
        "param needs a non-empty segment"
    );
    assert_eq!(
        route(&t, "/users"),
        Some(3),
        "exact pattern beats empty catch-all"
    );
}

#[test]
fn backtracking_from_static_to_param_to_catch_all() {
    let t = table(&[
        spec("/a/b/c", 0),
        spec("/a/{x}/d", 1),
        spec("/a/{*rest}", 2),
        spec("/a/b/{y}/e", 3),
    ]);
    assert_eq!(get(&t, "/a/b/c"), Some((0, vec![])));
    // static "b" is tried first, fails at "d", param {x} takes it.
    assert_eq!(get(&t, "/a/b/d"), Some((1, vec!["b".into()])));
    assert_eq!(get(&t, "/a/b/q/e"), Some((3, vec!["q".into()])));
    // Both the static and the param branch fail deeper; captures of the
    // failed param branch must not leak into the catch-all's.
    assert_eq!(get(&t, "/a/b/zz"), Some((2, vec!["b/zz".into()])));
    assert_eq!(get(&t, "/a/q/zz/e"), Some((2, vec!["q/zz/e".into()])));
    assert_eq!(get(&t, "/b"), None);
}

#[test]
fn deep_backtracking_across_params() {
    let t = table(&[
        spec("/{a}/{b}/x", 0),
        spec("/{a}/y/{c}", 1),
        spec("/k/{b}/{c}/z", 2),
    ]);
    // Static "y" under {a} beats {b}, even though {b}/x would also match.
    assert_eq!(get(&t, "/k/y/x"), Some((1, vec!["k".into(), "x".into()])));
    assert_eq!(get(&t, "/k/m/x"), Some((0, vec!["k".into(), "m".into()])));
    assert_eq!(get(&t, "/k/y/q"), Some((1, vec!["k".into(), "q".into()])));
    assert_eq!(get(&t, "/k/m/n/z"), Some((2, vec!["m".into(), "n".into()])));
    assert_eq!(get(&t, "/k/m/n/q"), None);
}

#[test]
fn hosts_exact_case_port_and_ipv6() {
    let t = table(&[
        on("api.example.com", "/x", 0),
        on("[::1]", "/x", 1),
        on("Other.Example.com.", "/x", 2),
        spec("/x", 9),
    ]);
    assert_eq!(req(&t, "api.example.com", "GET", "/x").unwrap().0, 0);
    assert_eq!(req(&t, "API.Example.COM:8443", "GET", "/x").unwrap().0, 0);
    assert_eq!(req(&t, "api.example.com.", "GET", "/x").unwrap().0, 0);
    assert_eq!(req(&t, "[::1]:8080", "GET", "/x").unwrap().0, 1);
    assert_eq!(req(&t, "[::1]", "GET", "/x").unwrap().0, 1);
    assert_eq!(req(&t, "other.example.com", "GET", "/x").unwrap().0, 2);
    assert_eq!(req(&t, "", "GET", "/x").unwrap().0, 9);
    assert_eq!(req(&t, "unknown.test", "GET", "/x").unwrap().0, 9);
    let long = "a".repeat(1000);
    assert_eq!(req(&t, &long, "GET", "/x").unwrap().0, 9);
}

#[test]
fn wildcard_hosts_most_specific_first() {
    let t = table(&[
        on("*.example.com", "/x", 0),
        on("*.eu.example.com", "/x", 1),
        on("www.eu.example.com", "/x", 2),
        on("*.example.com", "/only-wild", 3),
    ]);
    assert_eq!(req(&t, "a.example.com", "GET", "/x").unwrap().0, 0);
    assert_eq!(req(&t, "a.b.example.com", "GET", "/x").unwrap().0, 0);
    assert_eq!(req(&t, "a.eu.example.com:80", "GET", "/x").unwrap().0, 1);
    assert_eq!(req(&t, "WWW.EU.example.com", "GET", "/x").unwrap().0, 2);
    assert_eq!(req(&t, "eu.example.com", "GET", "/x").unwrap().0, 0);
    assert_eq!(
        req(&t, "example.com", "GET", "/x"),
        None,
        "apex not matched"
    );
    assert_eq!(req(&t, "badexample.com", "GET", "/x"), None);
    assert_eq!(req(&t, "", "GET", "/x"), None);
    // Falls through exact and the more specific wildcard to the broader one.
    assert_eq!(
        req(&t, "www.eu.example.com", "GET", "/only-wild")
            .unwrap()
            .0,
        3
    );
}

#[test]
fn host_fallthrough_and_method_not_allowed_order() {
    let t = table(&[
        with(&[Method::Get], on("api.example.com", "/items", 0)),
        with(&[Method::Post], on("*.example.com", "/items", 1)),
        with(&[Method::Put], spec("/items", 2)),
        on("api.example.com", "/special", 3),
        spec("/fallback", 4),
        with(&[Method::Delete], on("*.example.com", "/d", 5)),
        with(&[Method::Patch], spec("/d", 6)),
    ]);
    let host = "api.example.com";
    assert_eq!(req(&t, host, "GET", "/items").unwrap().0, 0);
    // 405 in exact table remembered, found later in wildcard / any tables.
    assert_eq!(req(&t, host, "POST", "/items").unwrap().0, 1);
    assert_eq!(req(&t, host, "PUT", "/items").unwrap().0, 2);
    // Path missing in host tables: fall through to host-less routes.
    assert_eq!(req(&t, host, "GET", "/fallback").unwrap().0, 4);
    assert_eq!(req(&t, "other.test", "GET", "/special"), None);
    // None found: the first (most specific) 405 wins.
    let mut p = Params::new();
    assert_eq!(
        t.lookup(host.as_bytes(), b"DELETE", b"/items", &mut p),
        Lookup::MethodNotAllowed { allow: "GET" }
    );
    assert_eq!(
        t.lookup(b"x.example.com", b"GET", b"/d", &mut p),
        Lookup::MethodNotAllowed { allow: "DELETE" }
    );
    assert_eq!(
        t.lookup(b"", b"GET", b"/d", &mut p),
        Lookup::MethodNotAllowed { allow: "PATCH" }
    );
    assert_eq!(t.lookup(b"", b"GET", b"/nope", &mut p), Lookup::NotFound);
}

#[test]
fn method_not_allowed_lists_union_for_the_pattern() {
    let t = table(&[
        with(&[Method::Post, Method::Get], spec("/u/{id}", 0)),
        with(&[Method::Head], spec("/u/{name}", 1)),
        with(&[Method::Delete], spec("/other", 2)),
    ]);
    let mut p = Params::new();
    assert_eq!(
        t.lookup(b"", b"PUT", b"/u/7", &mut p),
        Lookup::MethodNotAllowed {
            allow: "GET, HEAD, POST"
        }
    );
    assert_eq!(
        t.lookup(b"", b"HEAD", b"/u/7", &mut p),
        Lookup::Found { route: 1 }
    );
    assert_eq!(p.get(0), Some(&b"7"[..]));
    assert_eq!(
        t.lookup(b"", b"GET", b"/other", &mut p),
        Lookup::MethodNotAllowed { allow: "DELETE" }
    );
    assert!(p.is_empty());
}

#[test]
fn method_aware_backtracking() {
    let t = table(&[
        with(&[Method::Get], spec("/users/me", 0)),
        with(&[Method::Delete], spec("/users/{id}", 1)),
    ]);
    assert_eq!(req(&t, "", "GET", "/users/me").unwrap().0, 0);
    assert_eq!(
        req(&t, "", "DELETE", "/users/me"),
        Some((1, vec!["me".into()]))
    );
    let mut p = Params::new();
    assert_eq!(
        t.lookup(b"", b"PUT", b"/users/me", &mut p),
        Lookup::MethodNotAllowed { allow: "GET" },
        "Allow comes from the highest-priority matching pattern"
    );
}

#[test]
fn custom_methods_only_match_method_less_routes() {
    let t = table(&[
        spec("/dav/{*p}", 0),
        with(&[Method::Get], spec("/get", 1)),
        with(&Method::VARIANTS, spec("/all", 2)),
    ]);
    assert_eq!(req(&t, "", "PROPFIND", "/dav/x").unwrap().0, 0);
    assert_eq!(req(&t, "", "get", "/dav/x").unwrap().0, 0);
    let mut p = Params::new();
    assert_eq!(
        t.lookup(b"", b"PROPFIND", b"/get", &mut p),
        Lookup::MethodNotAllowed { allow: "GET" }
    );
    assert_eq!(
        t.lookup(b"", b"PROPFIND", b"/all", &mut p),
        Lookup::MethodNotAllowed {
            allow: "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"
        }
    );
    assert_eq!(req(&t, "", "TRACE", "/all").unwrap().0, 2);
}

#[test]
fn disjoint_methods_share_a_pattern() {
    let t = table(&[
        with(&[Method::Get, Method::Head], spec("/r/{id}", 0)),
        with(&[Method::Post], spec("/r/{x}", 1)),
        with(&[Method::Get], on("a.test", "/r/{id}", 2)),
    ]);
    assert_eq!(req(&t, "", "HEAD", "/r/1").unwrap().0, 0);
    assert_eq!(req(&t, "", "POST", "/r/1").unwrap().0, 1);
    assert_eq!(req(&t, "a.test", "GET", "/r/1").unwrap().0, 2);
    assert_eq!(req(&t, "a.test", "POST", "/r/1").unwrap().0, 1);
    assert_eq!(t.param_names(1), ["x".into()]);
}

#[test]
fn conflicts_are_reported_with_paths() {
    let errs = errors(&[
        spec("/same", 0),
        spec("/same", 1),
        with(&[Method::Get, Method::Post], spec("/p/{id}", 2)),
        with(&[Method::Post, Method::Put], spec("/p/{name}", 3)),
        spec("/c/{*a}", 4),
        with(&[Method::Get], spec("/c/{*b}", 5)),
        on("h.test", "/same", 6),
        on("H.TEST", "/same", 7),
        // Not conflicts: different host table, different pattern, disjoint methods.
        on("*.h.test", "/same", 8),
        spec("/same/", 9),
        with(&[Method::Delete], spec("/p/{id}", 10)),
    ]);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert_eq!(
        errs[0],
        RouteError::Conflict {
            host: None,
            path: "/same".into(),
            route: 1,
            other_path: "/same".into(),
            other_route: 0,
            methods: MethodSet::ALL,
        }
    );
    assert!(matches!(
        &errs[1],
        RouteError::Conflict { path, other_path, methods, .. }
            if path == "/p/{name}" && other_path == "/p/{id}"
                && *methods == MethodSet::from(Method::Post)
    ));
    assert!(matches!(
        &errs[2],
        RouteError::Conflict { path, methods, .. } if path == "/c/{*b}" && *methods == MethodSet::from(Method::Get)
    ));
    assert!(matches!(
        &errs[3],
        RouteError::Conflict { host: Some(h), route: 7, other_route: 6, .. } if h == "H.TEST"
    ));
    let msg = errs[1].to_string();
    assert!(
        msg.contains("/p/{name}") && msg.contains("/p/{id}"),
        "{msg}"
    );
    assert!(msg.contains("methods POST"), "{msg}");
    assert!(msg.contains("disjoint methods"), "{msg}");
    assert!(errs[0].to_string().contains("all methods"));
    assert!(errs[3].to_string().contains("host \"H.TEST\""));
}

#[test]
fn one_conflict_per_colliding_spec() {
    let errs = errors(&[
        with(&[Method::Get], spec("/x", 0)),
        with(&[Method::Post], spec("/x", 1)),
        spec("/x", 2),
    ]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(matches!(
        errs[0],
        RouteError::Conflict { other_route: 0, .. }
    ));
    assert!(matches!(
        errs[1],
        RouteError::Conflict { other_route: 1, .. }
    ));
}

#[test]
fn bad_patterns_name_the_path_and_all_are_collected() {
    let bad = [
        "/static/{*rest}/more",
        "/a/{id",
        "/a/{}",
        "/a{b}",
        "no-slash",
        "",
        "/x/{a}/{a}",
    ];
    let specs: Vec<RouteSpec<'_>> = bad
        .iter()
        .enumerate()
        .map(|(i, p)| spec(p, i as u32))
        .chain([spec("/fine", 99)])
        .collect();
    let errs = errors(&specs);
    assert_eq!(errs.len(), bad.len(), "{errs:#?}");
    for (err, path) in errs.iter().zip(bad) {
        match err {
            RouteError::BadPattern { path: p, reason } => {
                assert_eq!(p, path);
                assert!(!reason.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("\"{path}\"")), "{msg}");
    }
    assert!(errs[0].to_string().contains("last segment"));
    assert!(errs[1].to_string().contains("unclosed"));
    assert!(errs[2].to_string().contains("empty name"));
    assert!(errs[3].to_string().contains("mixes literal text"));
    assert!(errs[4].to_string().contains("\"/no-slash\""));
}

#[test]
fn bad_hosts_and_empty_method_sets() {
    let errs = errors(&[
        on("", "/a", 0),
        on("*", "/a", 1),
        on("a.*.com", "/a", 2),
        on("api.example.com:8080", "/a", 3),
        on("[::1]:80", "/a", 4),
        on("a b", "/a", 5),
        on("*.", "/a", 6),
        RouteSpec {
            methods: Some(MethodSet::empty()),
            ..spec("/m", 7)
        },
        on("*.ok.test", "/{bad", 8),
    ]);
    assert_eq!(errs.len(), 9, "{errs:#?}");
    for e in &errs[..7] {
        assert!(
            matches!(e, RouteError::BadHost { path, .. } if path == "/a"),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"/a\""));
    }
    assert!(errs[3].to_string().contains("port"));
    assert!(errs[7].to_string().contains("method set is empty"));
    assert!(matches!(&errs[8], RouteError::BadPattern { path, .. } if path == "/{bad"));
}

#[test]
fn param_names_must_agree_for_a_shared_route_index() {
    let t = table(&[on("a.test", "/u/{id}", 0), on("b.test", "/v/{id}", 0)]);
    assert_eq!(t.param_names(0), ["id".into()]);
    let errs = errors(&[spec("/u/{id}", 0), spec("/v/{name}", 0)]);
    assert!(matches!(
        &errs[..],
        [RouteError::ParamNamesMismatch { route: 0, path, other_path }]
            if path == "/v/{name}" && other_path == "/u/{id}"
    ));
}

#[test]
fn sixteen_params_max() {
    let sixteen: String = (0..16).map(|i| format!("/{{p{i}}}")).collect();
    let fifteen_and_rest: String =
        (0..15).map(|i| format!("/{{q{i}}}")).collect::<String>() + "/{*rest}";
    let t = table(&[
        spec(&sixteen, 0),
        with(&[Method::Post], spec(&fifteen_and_rest, 1)),
    ]);
    let path: String = (0..16).map(|i| format!("/v{i}")).collect();
    let (r, params) = get(&t, &path).unwrap();
    assert_eq!(r, 0);
    assert_eq!(params, (0..16).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert_eq!(t.param_names(0).len(), 16);
    let (r, params) = req(&t, "", "POST", &(path.clone() + "/w/x")).unwrap();
    assert_eq!(r, 1);
    assert_eq!(params.len(), 16);
    assert_eq!(params[15], "v15/w/x");

    let seventeen: String = (0..17).map(|i| format!("/{{p{i}}}")).collect();
    let errs = errors(&[spec(&seventeen, 0)]);
    assert!(
        matches!(&errs[..], [RouteError::BadPattern { path, reason }]
            if *path == seventeen && reason.contains("at most 16")),
        "{errs:?}"
    );
}

#[test]
fn ten_thousand_routes() {
    let paths: Vec<String> = (0..10_000)
        .map(|i| match i % 3 {
            0 => format!("/api/v1/svc{i}/items"),
            1 => format!("/api/v1/svc{i}/items/{{id}}"),
            _ => format!("/api/v1/svc{i}/files/{{*path}}"),
        })
        .chain((0..10_000).map(|i| format!("/top{i}")))
        .collect();
    let specs: Vec<RouteSpec<'_>> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| spec(p, i as u32))
        .collect();
    let t = table(&specs);
    assert_eq!(t.len(), 20_000);
    let any = t.any.as_ref().unwrap();
    // Root ("top*" + "api") and "v1" have >8 static children.
    assert_eq!(any.hashed_nodes(), 2);

    for i in 0..10_000u32 {
        let (path, want): (String, Vec<String>) = match i % 3 {
            0 => (format!("/api/v1/svc{i}/items"), vec![]),
            1 => (format!("/api/v1/svc{i}/items/x{i}"), vec![format!("x{i}")]),
            _ => (format!("/api/v1/svc{i}/files/a/b"), vec!["a/b".into()]),
        };
        assert_eq!(get(&t, &path), Some((i, want)), "{path}");
        assert_eq!(route(&t, &format!("/top{i}")), Some(10_000 + i));
    }
    assert_eq!(route(&t, "/api/v1/svc10000/items"), None);
    assert_eq!(route(&t, "/api/v1/svc0/items/1"), None);
    assert_eq!(route(&t, "/top10000"), None);
}

#[test]
fn empty_table() {
    let t = table(&[]);
    assert!(t.is_empty());
    assert_eq!(t.len(), 0);
    let mut p = Params::new();
    assert_eq!(t.lookup(b"h", b"GET", b"/", &mut p), Lookup::NotFound);
}

#[test]
fn host_normalisation() {
    let mut buf = [0u8; MAX_HOST];
    for (raw, want) in [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("example.com.:80", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[FE80::1]", "[fe80::1]"),
        ("", ""),
    ] {
        assert_eq!(
            normalize_request_host(raw.as_bytes(), &mut buf),
            Some(want.as_bytes()),
            "{raw}"
        );
    }
    assert_eq!(normalize_request_host(&[b'a'; 300], &mut buf), None);
}
