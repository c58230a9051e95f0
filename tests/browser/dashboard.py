#!/usr/bin/env python3
"""Loads ringgate's admin dashboard in headless Chromium and checks it.

Run by `cargo test --test dashboard` (tests/dashboard.rs starts a gateway,
sends traffic all along and calls this script); usable by hand against any
running gateway, e.g. the demo:

    python3 tests/browser/dashboard.py --url http://127.0.0.1:9901/dashboard \
        --screenshot dashboards/dashboard.png

Uses the system Chromium (Debian package `chromium`) through the Python
`playwright` package (`pip install playwright`; never `playwright install`:
no browser is downloaded). Exits non-zero, saying why, when the browser or
the package is missing, when the page loads anything but itself and the
admin API, logs a console error, or when a figure does not appear or does
not move while traffic goes on. Prints what it read as one JSON line.
"""

import argparse
import json
import os
import sys
import time
from urllib.parse import urlsplit

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def fail(msg):
    print(f"dashboard check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the dashboard's URL")
    ap.add_argument("--screenshot", help="where to write a PNG of the page")
    ap.add_argument(
        "--chromium",
        default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        help="Chromium binary (default /usr/bin/chromium, or $CHROMIUM)",
    )
    ap.add_argument("--route", action="append", default=[], help="a route row that must appear")
    ap.add_argument("--upstream", action="append", default=[], help="an upstream row that must appear")
    ap.add_argument(
        "--target-state",
        action="append",
        default=[],
        help="a target state some chip must show: healthy, unhealthy or ejected",
    )
    ap.add_argument("--breaker", action="append", default=[], help="UPSTREAM=STATE a breaker must show")
    ap.add_argument("--limit", action="append", default=[], help="a rate limit that must show refusals")
    ap.add_argument("--cache", action="store_true", help="the cache hit ratio must show a figure")
    ap.add_argument("--reload", choices=["ok", "error"], help="the last reload result shown")
    ap.add_argument("--generation", type=int, help="the config generation shown")
    ap.add_argument("--workers", type=int, help="the worker count shown")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--settle", type=float, default=0, help="seconds to wait before the screenshot")
    args = ap.parse_args()

    if not os.access(args.chromium, os.X_OK):
        fail(f"no Chromium at {args.chromium} (apt-get install -y chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        fail("the Python package playwright is missing (pip install playwright; .ci/run does)")

    origin = "{0.scheme}://{0.netloc}".format(urlsplit(args.url))
    foreign, console_errors, failed = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.on(
            "request",
            lambda r: None if r.url.startswith(origin + "/") or r.url.startswith("data:") else foreign.append(r.url),
        )
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        resp = page.goto(args.url, wait_until="load")
        if resp is None or resp.status != 200:
            fail(f"GET {args.url}: {resp.status if resp else 'no response'}")
        csp = resp.headers.get("content-security-policy", "")
        if "default-src 'none'" not in csp:
            fail(f"no restrictive Content-Security-Policy: {csp!r}")

        def polls():
            return int(page.get_attribute("body", "data-polls") or 0)

        def wait_polls(n, timeout=15):
            end = time.time() + timeout
            while polls() < n:
                if time.time() > end:
                    status = page.text_content("#status")
                    fail(f"the page did not poll /stats {n} times in {timeout} s (status: {status})")
                page.wait_for_timeout(100)

        def value(sel):
            v = page.get_attribute(sel, "data-value")
            return None if v in (None, "") else float(v)

        def read():
            return {
                "polls": polls(),
                "requests_total": value("#requests-total"),
                "rps": value("#rps"),
                "p50_ms": value("#p50"),
                "p99_ms": value("#p99"),
                "limited_total": value("#limited-total"),
                "cache_ratio": value("#cache-ratio"),
                "open_connections": value("#open-connections"),
                "accepted": value("#accepted"),
                "workers": page.text_content("#workers"),
                "generation": page.text_content("#generation"),
                "status": page.text_content("#status"),
                "chart_points": int(page.get_attribute("#chart-rps", "data-points") or 0),
            }

        wait_polls(2)
        first = read()
        # Rates need two server samples; let a few more polls come in while
        # the caller's traffic goes on.
        wait_polls(first["polls"] + 3)
        later = read()
        if first["requests_total"] is None or later["requests_total"] is None:
            fail(f"no request count shown: {first} / {later}")
        if not later["requests_total"] > first["requests_total"]:
            fail(f"the request count did not move under traffic: {first} -> {later}")
        if not (later["rps"] or 0) > 0:
            fail(f"no request rate under traffic: {later}")
        if later["p50_ms"] is None or later["p99_ms"] is None or later["p99_ms"] < later["p50_ms"]:
            fail(f"no latency quantiles: {later}")
        if later["chart_points"] < 2:
            fail(f"the requests chart has {later['chart_points']} points")
        paths = page.eval_on_selector_all("#chart-rps path", "ps => ps.map(p => p.getAttribute('d') || '')")
        if not any(d.count("L") >= 1 for d in paths):
            fail(f"the requests chart draws no line: {paths}")
        if later["status"] != "ready":
            fail(f"status shows {later['status']!r}")
        if args.workers is not None and later["workers"] != str(args.workers):
            fail(f"workers shows {later['workers']!r}, want {args.workers}")
        if args.generation is not None and later["generation"] != str(args.generation):
            fail(f"config generation shows {later['generation']!r}, want {args.generation}")
        if args.reload and page.get_attribute("#last-reload", "data-result") != args.reload:
            fail(f"last reload shows {page.text_content('#last-reload')!r}, want {args.reload}")
        for r in args.route:
            row = page.query_selector(f'#routes tr[data-route="{r}"]')
            if row is None:
                fail(f"no row for route {r}")
        route_rows = page.eval_on_selector_all(
            "#routes tbody tr[data-route]",
            "rs => rs.map(r => [r.dataset.route, r.querySelector('[data-col=requests]').textContent,"
            " r.querySelector('[data-col=p99]').textContent])",
        )
        for u in args.upstream:
            if page.query_selector(f'#upstreams tr[data-upstream="{u}"]') is None:
                fail(f"no row for upstream {u}")
        states = page.eval_on_selector_all("#upstreams .target", "ts => ts.map(t => t.dataset.state)")
        for s in args.target_state:
            if s not in states:
                fail(f"no target shown {s}: {states}")
        for b in args.breaker:
            u, want = b.split("=", 1)
            got = page.get_attribute(f'#upstreams tr[data-upstream="{u}"] [data-breaker]', "data-breaker")
            if got != want:
                fail(f"breaker of {u} shows {got!r}, want {want!r}")
        for name in args.limit:
            cell = page.query_selector(f'#limits tr[data-limit="{name}"] [data-col=limited]')
            if cell is None or cell.text_content() in ("0", "–"):
                fail(f"rate limit {name} shows no refusals")
        if args.limit and not (later["limited_total"] or 0) > 0:
            fail(f"no refusals in the rate-limit figure: {later}")
        if args.cache and later["cache_ratio"] is None:
            fail(f"no cache hit ratio: {later}")
        if args.settle:
            page.wait_for_timeout(args.settle * 1000)
        if args.screenshot:
            os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()

    if foreign:
        fail(f"the page loaded something besides the admin API: {foreign}")
    if failed:
        fail(f"requests failed: {failed}")
    if console_errors:
        fail(f"console errors: {console_errors}")
    print(json.dumps({"first": first, "later": later, "routes": route_rows, "target_states": states}))


if __name__ == "__main__":
    main()
