#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge) backend for tests: every request gets
STATUS with the body "from-STATUS" and a `x-backend` header naming it.

    server.py STATUS          prints its port, serves until stdin closes
    server.py STATUS early    answers as soon as a request's head arrives,
                              then resets the stream with NO_ERROR and never
                              reads its body (RFC 9113 8.1: an answer that
                              does not wait for the request to end)
    server.py STATUS whole    answers only once the request has ended
"""

import socket
import sys
import threading

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
except ImportError:
    print("python package h2 is missing: pip install h2", file=sys.stderr)
    sys.exit(2)


def answer(conn, stream_id, status):
    body = ("from-%d" % status).encode()
    conn.send_headers(stream_id, [(":status", str(status)),
                                  ("content-length", str(len(body))),
                                  ("x-backend", str(status))])
    conn.send_data(stream_id, body, end_stream=True)


def serve_conn(sock, status, mode):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.StreamClosedError:
                events = []
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived) and mode != "whole":
                    answer(conn, ev.stream_id, status)
                    if mode == "early" and not ev.stream_ended:
                        conn.reset_stream(ev.stream_id, error_code=0)
                elif isinstance(ev, h2.events.StreamEnded) and mode == "whole":
                    answer(conn, ev.stream_id, status)
                elif isinstance(ev, h2.events.DataReceived) and mode != "early":
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            sock.sendall(conn.data_to_send())
    except OSError:
        pass
    finally:
        sock.close()


def main():
    status = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    print(ls.getsockname()[1], flush=True)

    def accept():
        while True:
            s, _ = ls.accept()
            threading.Thread(target=serve_conn, args=(s, status, mode), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
