#!/usr/bin/env python3
"""A gRPC backend and client for tests/grpc.rs, with raw-bytes messages
(no generated code): service `t.Echo`.

    echo.py serve [PORT]          serve on 127.0.0.1:PORT (default any), print the port, run until stdin closes
    echo.py call HOST:PORT CASE   run one client case, print one JSON line

Server methods: Unary (the request reversed, with the metadata it saw in
the initial response metadata), ServerStream (N messages "i:<n>"),
ClientStream (all requests joined with "+"), Bidi (each message echoed as
it arrives), Fail (NOT_FOUND "nope"), Slow (sleeps 3 s).
"""

import json
import sys
import threading
import time
from concurrent import futures

try:
    import grpc
except ImportError:
    print("python package grpcio is missing: pip install grpcio", file=sys.stderr)
    sys.exit(2)


def pb_varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_str(field, s):
    b = s.encode()
    return pb_varint(field << 3 | 2) + pb_varint(len(b)) + b


def pb_varint_field(field, n):
    return pb_varint(field << 3) + pb_varint(n) if n else b""


def pb_fields(buf):
    # field number -> list of values (varints as ints, the rest as bytes).
    out, i = {}, 0

    def varint():
        nonlocal i
        n = shift = 0
        while True:
            b = buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(buf):
        key = varint()
        field, wt = key >> 3, key & 7
        if wt == 0:
            out.setdefault(field, []).append(varint())
        elif wt == 2:
            n = varint()
            out.setdefault(field, []).append(buf[i:i + n])
            i += n
        else:
            raise ValueError("wire type %d" % wt)
    return out


def serve():
    def unary(req, ctx):
        seen = {k: v for k, v in ctx.invocation_metadata()}
        left = ctx.time_remaining()
        none = left is None or left > 1e6
        ctx.send_initial_metadata((("x-seen-remaining", "-" if none else "%.3f" % left),
                                   ("x-seen-consumer", seen.get("x-consumer-id", "-")),
                                   ("x-seen-request-id", seen.get("x-request-id", "-"))))
        return req[::-1]

    def server_stream(req, ctx):
        for i in range(int(req or b"3")):
            yield b"i:%d" % i

    def client_stream(it, ctx):
        return b"+".join(list(it))

    def bidi(it, ctx):
        for m in it:
            yield b"echo:" + m

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "nope")

    def slow(req, ctx):
        time.sleep(3)
        return b"late"

    h = grpc.method_handlers_generic_handler("t.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })
    def health(req, ctx):
        # HealthCheckRequest.service (field 1): "t.Echo" and "" serve,
        # any other name is unknown.
        service = req[2:].decode() if req[:1] == b"\x0a" else ""
        if service not in ("", "t.Echo"):
            ctx.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08\x01"

    hh = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(health),
    })
    def say_hello(req, ctx):
        f = pb_fields(req)
        name, times = f.get(1, [b""])[-1].decode(), f.get(2, [0])[-1]
        return (pb_str(1, "Hello " + name) + b"".join(pb_str(2, "x") for _ in range(times))
                + pb_varint_field(3, times))

    def get_user(req, ctx):
        f = pb_fields(req)
        uid, verbose = f.get(1, [b""])[-1].decode(), f.get(2, [0])[-1]
        return pb_str(1, "user " + uid) + (pb_str(2, "verbose") if verbose else b"")

    def missing(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such user")

    def list_greetings(req, ctx):
        f = pb_fields(req)
        name, times = f.get(1, [b""])[-1].decode(), f.get(2, [0])[-1]
        if name == "refuse":
            ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        for i in range(times):
            yield pb_str(1, "Hello %s #%d" % (name, i)) + pb_varint_field(3, i)
        if name == "fail":
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "went away")

    gh = grpc.method_handlers_generic_handler("helloworld.Greeter", {
        "ListGreetings": grpc.unary_stream_rpc_method_handler(list_greetings),
        "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
        "GetUser": grpc.unary_unary_rpc_method_handler(get_user),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((h, hh, gh))
    port = server.add_insecure_port("127.0.0.1:%d" % (int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def call(target, case):
    ch = grpc.insecure_channel(target)
    out = {"case": case}
    try:
        if case == "unary":
            resp, call_ = ch.unary_unary("/t.Echo/Unary").with_call(
                b"hello", metadata=(("x-api-key", "grpc-secret"),))
            out["reply"] = resp.decode()
            out["initial"] = {k: v for k, v in call_.initial_metadata()}
            out["code"] = call_.code().value[0]
        elif case == "unary-deadline":
            resp, call_ = ch.unary_unary("/t.Echo/Unary").with_call(b"abc", timeout=5)
            out["reply"] = resp.decode()
            out["initial"] = {k: v for k, v in call_.initial_metadata()}
        elif case == "server-stream":
            out["replies"] = [m.decode() for m in ch.unary_stream("/t.Echo/ServerStream")(b"50", timeout=10)]
        elif case == "client-stream":
            out["reply"] = ch.stream_unary("/t.Echo/ClientStream")(iter([b"a", b"b", b"c" * 100000]), timeout=10).decode()[:20]
        elif case == "bidi":
            # Each message is sent only after the echo of the one before
            # came back: the call streams both ways at once.
            lock = threading.Condition()
            got = []
            sent = [0]

            def gen():
                for i in range(20):
                    with lock:
                        while len(got) < i:
                            if not lock.wait(10):
                                return
                    sent[0] += 1
                    yield b"m%d" % i

            for m in ch.stream_stream("/t.Echo/Bidi")(gen(), timeout=20):
                with lock:
                    got.append(m.decode())
                    lock.notify_all()
            out["replies"] = got
            out["sent"] = sent[0]
        elif case == "fail":
            ch.unary_unary("/t.Echo/Fail")(b"x", timeout=10)
        elif case == "slow":
            ch.unary_unary("/t.Echo/Slow")(b"x", timeout=0.5)
        elif case == "slow-free":
            # No deadline of the client's own.
            ch.unary_unary("/t.Echo/Slow")(b"x")
        elif case == "many":
            f = ch.unary_unary("/t.Echo/Unary")
            futs = [f.future(b"n%d" % i, timeout=20) for i in range(300)]
            out["ok"] = sum(1 for i, x in enumerate(futs) if x.result() == (b"n%d" % i)[::-1])
        elif case in ("web", "web-text", "web-fail", "web-stream"):
            web(target, case, out)
            return
        else:
            raise SystemExit("unknown case " + case)
        out["code"] = 0
    except grpc.RpcError as e:
        out["code"] = e.code().value[0]
        out["message"] = e.details()
    print(json.dumps(out), flush=True)


def b64_pieces(data):
    # Base64 whose padded groups may sit anywhere (one per piece).
    import base64
    out, start = b"", 0
    data = bytes(data)
    for g in range(0, len(data) - len(data) % 4, 4):
        if data[g + 3:g + 4] == b"=":
            out += base64.b64decode(data[start:g + 4])
            start = g + 4
    return out + base64.b64decode(data[start:])


def web(target, case, out):
    # gRPC-Web over HTTP/1.1, as a browser library sends it.
    import base64
    import http.client
    import struct
    host, port = target.rsplit(":", 1)
    text = case == "web-text"
    msg = b"50" if case == "web-stream" else b"hello"
    frame = b"\x00" + struct.pack(">I", len(msg)) + msg
    path = {"web-fail": "/t.Echo/Fail", "web-stream": "/t.Echo/ServerStream"}.get(case, "/t.Echo/Unary")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, body=base64.b64encode(frame) if text else frame, headers={
        "content-type": "application/grpc-web-text+proto" if text else "application/grpc-web+proto",
        "x-grpc-web": "1", "x-api-key": "grpc-secret"})
    r = conn.getresponse()
    raw = r.read()
    if text:
        raw = b64_pieces(raw)
    out["status"] = r.status
    out["content_type"] = r.getheader("content-type")
    out["messages"], out["trailers"] = [], {}
    while len(raw) >= 5:
        flag, n = raw[0], struct.unpack(">I", raw[1:5])[0]
        payload, raw = raw[5:5 + n], raw[5 + n:]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    k, v = line.split(":", 1)
                    out["trailers"][k.strip()] = v.strip()
        else:
            out["messages"].append(payload.decode())
    out["left"] = len(raw)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(sys.argv[2], sys.argv[3])
