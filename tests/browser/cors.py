#!/usr/bin/env python3
"""Cross-origin fetches through ringgate in headless Chromium.

Run by `cargo test --test cors browser` (tests/cors.rs starts a gateway
with CORS and two page servers on other origins, one allowed and one not,
and calls this script). For each page URL given, loads the page and runs,
in it, a fetch that needs a preflight (POST with a JSON content type and an
Authorization header, credentials included) to the API URL; prints one
JSON line: for each page, either {"status", "body", "request_id"} (what
the page could read, X-Request-Id being an exposed header) or {"error"}
(the browser blocked it).

Uses the system Chromium (Debian package `chromium`) through the Python
`playwright` package (`pip install playwright`; no browser is downloaded).
Exits non-zero, saying why, when either is missing.
"""

import argparse
import json
import os
import sys

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

FETCH = """async (api) => {
  try {
    const r = await fetch(api, {
      method: "POST",
      mode: "cors",
      credentials: "include",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer t"},
      body: "{}",
    });
    return {status: r.status, body: await r.text(), request_id: r.headers.get("x-request-id")};
  } catch (e) {
    return {error: String(e)};
  }
}"""


def fail(msg):
    print(f"cors browser check failed: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", required=True, help="the URL fetched through the gateway")
    ap.add_argument("--page", action="append", required=True, help="a page URL to fetch from")
    ap.add_argument(
        "--chromium",
        default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        help="Chromium binary (default /usr/bin/chromium, or $CHROMIUM)",
    )
    args = ap.parse_args()
    if not os.access(args.chromium, os.X_OK):
        fail(f"no Chromium at {args.chromium} (apt-get install -y chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        fail("the Python package playwright is missing (pip install playwright; .ci/run does)")

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        for url in args.page:
            page = browser.new_page()
            resp = page.goto(url, wait_until="load")
            if resp is None or resp.status != 200:
                fail(f"GET {url}: {resp.status if resp else 'no response'}")
            out[url] = page.evaluate(FETCH, args.api)
            page.close()
        browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
