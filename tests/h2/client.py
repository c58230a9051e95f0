#!/usr/bin/env python3
"""An ordinary HTTP/2 client (httpx, h2c with prior knowledge) for tests/http2.rs.

    python3 tests/h2/client.py get <host:port> <path> [--n N] [--header K:V]...
    python3 tests/h2/client.py concurrent <host:port> [--n N] [--prefix /c/]

`get` sends N requests one after another on one connection and prints
their status, HTTP version, headers and body. `concurrent` sends N GETs
at once, multiplexed on one connection, to `{prefix}{i}?i={i}` and checks
each body names its own request line (an echoing backend; or ends
with " {path}", as the reference backend used to check this script). Both print one
line of JSON and exit 0; a missing package exits 2 naming it.
"""

import argparse
import asyncio
import json
import sys

try:
    import httpx
    import h2  # noqa: F401
except ImportError:
    print("client.py needs the Python packages httpx and h2 (pip install 'httpx[http2]')", file=sys.stderr)
    sys.exit(2)


def headers_of(r):
    out = {}
    for k, v in r.headers.multi_items():
        out.setdefault(k.lower(), []).append(v)
    return out


def cmd_get(args):
    res = []
    with httpx.Client(http1=False, http2=True, timeout=20) as c:
        for _ in range(args.n):
            hdrs = [tuple(x.strip() for x in h.split(":", 1)) for h in args.header]
            r = c.request(args.method, "http://%s%s" % (args.target, args.path), headers=hdrs)
            res.append({"status": r.status_code, "http_version": r.http_version, "headers": headers_of(r), "body": r.text[:8000]})
    print(json.dumps({"responses": res}))


async def concurrent(args):
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(http1=False, http2=True, limits=limits, timeout=30) as c:

        async def one(i):
            path = "%s%d?i=%d" % (args.prefix, i, i)
            try:
                r = await c.get("http://%s%s" % (args.target, path))
            except Exception as e:  # counted, not raised
                return {"i": i, "error": repr(e)}
            want = "GET %s HTTP/1.1" % path
            return {"i": i, "status": r.status_code, "version": r.http_version, "ok": r.status_code == 200 and (want in r.text or r.text.endswith(" " + path)), "rid": r.headers.get("x-request-id")}

        results = await asyncio.gather(*(one(i) for i in range(args.n)))
    bad = [r for r in results if not r.get("ok")]
    rids = {r.get("rid") for r in results if r.get("rid")}
    print(
        json.dumps(
            {
                "n": args.n,
                "ok": sum(1 for r in results if r.get("ok")),
                "versions": sorted({r.get("version") for r in results if r.get("version")}),
                "distinct_request_ids": len(rids),
                "bad": bad[:10],
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get")
    g.add_argument("target")
    g.add_argument("path")
    g.add_argument("--n", type=int, default=1)
    g.add_argument("--method", default="GET")
    g.add_argument("--header", action="append", default=[])
    cc = sub.add_parser("concurrent")
    cc.add_argument("target")
    cc.add_argument("--n", type=int, default=100)
    cc.add_argument("--prefix", default="/c/")
    args = p.parse_args()
    if args.cmd == "get":
        cmd_get(args)
    else:
        asyncio.run(concurrent(args))


if __name__ == "__main__":
    main()
