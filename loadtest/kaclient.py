#!/usr/bin/env python3
"""Deterministic keep-alive HTTP/1.1 client and fixed-response backend (python3 stdlib).

client:   kaclient.py client PORT N [GAP_MS]
    Opens ONE TCP connection to 127.0.0.1:PORT, sends exactly N identical GET /
    requests on it, one at a time, reading each complete response (Content-Length
    framed) before sending the next, and pausing GAP_MS (default 0) before each
    request.  Exits non-zero on any non-200 status, a closed connection or a
    malformed response.  Prints "ok N" on success.

backend:  kaclient.py backend PORT [GAP_MS]
    A tiny threaded origin on 127.0.0.1:PORT: every request (GET/HEAD, no body)
    on a keep-alive connection gets the same fixed 200 response, written with a
    single send() call after a pause of GAP_MS (default 0), so the proxy in
    front of it always sees the same bytes.

The pauses make the proxy in the middle always find its socket empty first
and wait for readiness, instead of sometimes finding the bytes already there:
that keeps an instruction count of the proxy independent of timing.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

BODY = b"hello, world\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
            b"\r\n" + BODY)


class ProtocolError(Exception):
    pass


def read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one response from sock (buffer in buf); return its status."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed before response headers")
        buf += chunk
    head_end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:head_end]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    length = None
    for line in lines[1:]:
        if ":" not in line:
            continue
        name, value = line.split(":", 1)
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            raise ProtocolError("chunked response: the fixed backend never sends one")
        elif name == "connection" and "close" in value.lower():
            raise ProtocolError("proxy asked to close the keep-alive connection")
    if length is None:
        raise ProtocolError("response without Content-Length")
    while len(buf) < head_end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed mid-body")
        buf += chunk
    del buf[:head_end + length]
    return status


def client(port: int, n: int, gap_ms: float = 0.0, path: str = "/") -> int:
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: ringgate-regress\r\n"
               f"Accept: */*\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    try:
        for i in range(n):
            if gap_ms:
                time.sleep(gap_ms / 1000.0)
            sock.sendall(request)
            status = read_response(sock, buf)
            if status != 200:
                print(f"request {i + 1}/{n}: status {status}", file=sys.stderr)
                return 1
            if buf:
                print(f"request {i + 1}/{n}: unexpected extra bytes {bytes(buf[:80])!r}", file=sys.stderr)
                return 1
    except (OSError, ProtocolError, ValueError) as exc:
        print(f"request {i + 1}/{n}: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    print(f"ok {n}")
    return 0


def serve_conn(conn: socket.socket, gap_ms: float) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            end = buf.index(b"\r\n\r\n") + 4
            head = buf[:end].lower()
            buf = buf[end:]
            # Requests are bodiless GETs here; skip a Content-Length body if any.
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    need = int(line.split(b":", 1)[1].strip())
                    while len(buf) < need:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    buf = buf[need:]
            if gap_ms:
                time.sleep(gap_ms / 1000.0)
            conn.sendall(RESPONSE)
    except OSError:
        return
    finally:
        conn.close()


def backend(port: int, gap_ms: float = 0.0) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    print(f"backend listening on 127.0.0.1:{port}", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(conn, gap_ms), daemon=True).start()


def main(argv: list) -> int:
    if len(argv) in (3, 4) and argv[0] == "client":
        return client(int(argv[1]), int(argv[2]), float(argv[3]) if len(argv) > 3 else 0.0)
    if len(argv) in (2, 3) and argv[0] == "backend":
        return backend(int(argv[1]), float(argv[2]) if len(argv) > 2 else 0.0)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
