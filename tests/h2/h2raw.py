"""Hand-made HTTP/2 frames over a plain socket (h2c with prior knowledge).

Used by attacks.py and client.py. Frames are built by hand (no state
machine checks what is sent) so that invalid and abusive sequences can be
written; what the server sends back is parsed in a reader thread and
decoded with the `hpack` package (installed with `pip install h2`).
"""

import socket
import struct
import threading
import time

try:
    import hpack
except ImportError:  # pragma: no cover - reported by the caller
    hpack = None

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

SETTING_NAMES = {
    HEADER_TABLE_SIZE: "header_table_size",
    ENABLE_PUSH: "enable_push",
    MAX_CONCURRENT_STREAMS: "max_concurrent_streams",
    INITIAL_WINDOW_SIZE: "initial_window_size",
    MAX_FRAME_SIZE: "max_frame_size",
    MAX_HEADER_LIST_SIZE: "max_header_list_size",
}

ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


def err_name(code):
    if code is None:
        return None
    return ERROR_NAMES.get(code, "0x%x" % code)


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


def frame(ftype, flags, stream_id, payload=b"", length=None):
    """A frame; `length` overrides the length field (for malformed frames)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([ftype, flags]) + struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


def settings_frame(pairs=(), ack=False):
    payload = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def ping_frame(data=b"\0" * 8, ack=False):
    return frame(PING, ACK if ack else 0, 0, data)


def rst_frame(stream_id, code):
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def window_update_frame(stream_id, increment):
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def goaway_frame(last_id, code, debug=b""):
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_id, code) + debug)


def data_frame(stream_id, data, end=False):
    return frame(DATA, END_STREAM if end else 0, stream_id, data)


def headers_frame(stream_id, block, end_stream=True, end_headers=True):
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    return frame(HEADERS, flags, stream_id, block)


def continuation_frame(stream_id, block, end_headers=False):
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, stream_id, block)


# ---------------------------------------------------------------------------
# HPACK, written by hand: every field a literal without indexing (new
# name, no Huffman), so what is sent is exactly what is asked for.
# ---------------------------------------------------------------------------


def hpack_int(value, prefix_bits, first_byte_flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value % 128) + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_string(s):
    if isinstance(s, str):
        s = s.encode("latin-1")
    return hpack_int(len(s), 7) + s


def literal(name, value):
    """Literal header field without indexing, new name."""
    return b"\x00" + hpack_string(name) + hpack_string(value)


def literal_indexed(name, value):
    """Literal header field with incremental indexing, new name (enters the
    server's dynamic table)."""
    return b"\x40" + hpack_string(name) + hpack_string(value)


def indexed(index):
    return hpack_int(index, 7, 0x80)


def request_block(method, path, authority, scheme="http", extra=()):
    out = literal(":method", method) + literal(":scheme", scheme) + literal(":authority", authority) + literal(":path", path)
    for n, v in extra:
        out += literal(n, v)
    return out


# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


def parse_addr(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


class Conn:
    """One HTTP/2 connection: writes under a lock, a reader thread that
    records everything the server sends (and ACKs its SETTINGS and PINGs)."""

    def __init__(self, addr, settings=(), auto_window=True, keep_data=True, preface=True, authority=None):
        self.addr = addr
        self.authority = authority or addr
        host, port = parse_addr(addr)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.wlock = threading.Lock()
        self.cv = threading.Condition()
        self.auto_window = auto_window
        self.keep_data = keep_data
        self.decoder = hpack.Decoder() if hpack else None
        if self.decoder is not None:
            self.decoder.max_header_list_size = 1 << 30
            self.decoder.max_allowed_table_size = 1 << 20
        self.reading = threading.Event()
        self.reading.set()
        # What the server sent.
        self.server_settings = None
        self.settings_frames = 0
        self.settings_acks = 0
        self.ping_acks = 0
        self.pings = 0
        self.goaways = []  # (last_stream_id, code, debug)
        self.rst = {}  # stream -> code
        self.headers = {}  # stream -> [list of (name, value)]
        self.data = {}  # stream -> bytearray (or int when not kept)
        self.ended = set()
        self.conn_window_updates = 0
        self.stream_window_updates = {}
        self.frames_received = 0
        self.bytes_received = 0
        self.closed = False
        self.close_error = None
        self.decode_error = None
        self.events = []  # ("goaway"|"end"|"rst"|"headers", stream)
        # What was sent.
        self.bytes_sent = 0
        self.send_failed = None
        self.send_blocked = False
        self._hdr_buf = {}
        self._hdr_stream = None
        # Replies (ACKs, WINDOW_UPDATEs) are written by their own thread so
        # that the reader never blocks on a write.
        self.pending = bytearray()
        self.pcv = threading.Condition()
        self.replier = threading.Thread(target=self._reply_loop, daemon=True)
        self.replier.start()
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        if preface:
            self.send(PREFACE + settings_frame(settings))
        self.reader.start()

    # -- writing ---------------------------------------------------------

    def send(self, data, block_probe_s=None, deadline=None):
        """Writes all of `data`. Returns False when the connection broke.
        With `block_probe_s`, a write that makes no progress for that long
        marks the connection `send_blocked` and turns reading on (so the
        server is not stuck behind its own unread output); `deadline` ends
        the attempt (returns False, `send_failed` = "deadline")."""
        if self.send_failed:
            return False
        view = memoryview(data)
        off = 0
        with self.wlock:
            while off < len(view):
                if deadline is not None and time.monotonic() > deadline:
                    self.send_failed = "deadline"
                    return False
                try:
                    if block_probe_s is not None:
                        self.sock.settimeout(block_probe_s)
                    n = self.sock.send(view[off:])
                    off += n
                    self.bytes_sent += n
                except socket.timeout:
                    self.send_blocked = True
                    self.reading.set()
                    continue
                except OSError as e:
                    self.send_failed = type(e).__name__
                    return False
        return True

    def request(self, stream_id, method="GET", path="/", extra=(), end_stream=True):
        block = request_block(method, path, self.authority, extra=extra)
        return self.send(headers_frame(stream_id, block, end_stream=end_stream))

    # -- reading ---------------------------------------------------------

    def pause_reading(self):
        self.reading.clear()

    def resume_reading(self):
        self.reading.set()

    def _recv_exact(self, n, buf):
        while len(buf) < n:
            self.reading.wait()
            try:
                chunk = self.sock.recv(max(65536, n - len(buf)))
            except socket.timeout:
                continue
            except OSError as e:
                raise EOFError(type(e).__name__)
            if not chunk:
                raise EOFError("eof")
            self.bytes_received += len(chunk)
            buf.extend(chunk)

    def _read_loop(self):
        buf = bytearray()
        try:
            while True:
                self._recv_exact(9, buf)
                length = int.from_bytes(buf[0:3], "big")
                ftype, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                self._recv_exact(9 + length, buf)
                payload = bytes(buf[9 : 9 + length])
                del buf[: 9 + length]
                self._on_frame(ftype, flags, sid, payload)
        except EOFError as e:
            with self.cv:
                self.closed = True
                self.close_error = str(e)
                self.cv.notify_all()
        except Exception as e:  # a bug here must not hang the caller
            with self.cv:
                self.closed = True
                self.close_error = "reader: %r" % (e,)
                self.cv.notify_all()

    def _on_frame(self, ftype, flags, sid, payload):
        reply = None
        with self.cv:
            self.frames_received += 1
            if ftype == SETTINGS:
                if flags & ACK:
                    self.settings_acks += 1
                else:
                    self.settings_frames += 1
                    s = {}
                    for i in range(0, len(payload) - len(payload) % 6, 6):
                        k, v = struct.unpack(">HI", payload[i : i + 6])
                        s[SETTING_NAMES.get(k, "0x%x" % k)] = v
                    if self.server_settings is None:
                        self.server_settings = s
                    else:
                        self.server_settings.update(s)
                    reply = settings_frame(ack=True)
            elif ftype == PING:
                if flags & ACK:
                    self.ping_acks += 1
                else:
                    self.pings += 1
                    reply = ping_frame(payload, ack=True)
            elif ftype == GOAWAY:
                last, code = struct.unpack(">II", payload[:8])
                self.goaways.append((last & 0x7FFFFFFF, code, payload[8:].decode("latin-1")))
                self.events.append(("goaway", 0))
            elif ftype == RST_STREAM:
                self.rst[sid] = struct.unpack(">I", payload[:4])[0]
                self.events.append(("rst", sid))
            elif ftype == WINDOW_UPDATE:
                inc = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
                if sid == 0:
                    self.conn_window_updates += inc
                else:
                    self.stream_window_updates[sid] = self.stream_window_updates.get(sid, 0) + inc
            elif ftype == HEADERS or ftype == CONTINUATION:
                p = payload
                if ftype == HEADERS:
                    pad = 0
                    if flags & PADDED:
                        pad = p[0]
                        p = p[1:]
                    if flags & PRIORITY_FLAG:
                        p = p[5:]
                    if pad:
                        p = p[:-pad]
                    self._hdr_stream = sid
                    self._hdr_buf[sid] = bytearray(p)
                    self._hdr_end_stream = bool(flags & END_STREAM)
                else:
                    self._hdr_buf.setdefault(sid, bytearray()).extend(p)
                if flags & END_HEADERS:
                    block = bytes(self._hdr_buf.pop(sid, b""))
                    try:
                        hs = [(n.decode("latin-1") if isinstance(n, bytes) else n, v.decode("latin-1") if isinstance(v, bytes) else v) for n, v in self.decoder.decode(block, raw=True)]
                    except Exception as e:
                        self.decode_error = repr(e)
                        hs = []
                    self.headers.setdefault(sid, []).append(hs)
                    self.events.append(("headers", sid))
                    if self._hdr_end_stream:
                        self.ended.add(sid)
                        self.events.append(("end", sid))
            elif ftype == DATA:
                p = payload
                if flags & PADDED:
                    pad = p[0]
                    p = p[1 : len(p) - pad]
                if self.keep_data:
                    self.data.setdefault(sid, bytearray()).extend(p)
                else:
                    self.data[sid] = self.data.get(sid, 0) + len(p)
                if flags & END_STREAM:
                    self.ended.add(sid)
                    self.events.append(("end", sid))
                if self.auto_window and length_of(payload) > 0:
                    n = len(payload)
                    reply = window_update_frame(0, n) + (window_update_frame(sid, n) if not flags & END_STREAM else b"")
            self.cv.notify_all()
        if reply is not None:
            with self.pcv:
                self.pending.extend(reply)
                self.pcv.notify()

    def _reply_loop(self):
        while True:
            with self.pcv:
                while not self.pending:
                    self.pcv.wait()
                out = bytes(self.pending)
                self.pending.clear()
            if not self.send(out):
                return

    # -- waiting ---------------------------------------------------------

    def wait(self, pred, timeout):
        """Waits until pred() holds (called under the lock) or the
        connection closed or `timeout` seconds passed; returns pred()."""
        end = time.monotonic() + timeout
        with self.cv:
            while not pred():
                left = end - time.monotonic()
                if left <= 0 or self.closed:
                    break
                self.cv.wait(min(left, 0.5))
            return pred()

    def handshake(self, timeout=10):
        """Waits for the server's SETTINGS and the ACK of ours."""
        return self.wait(lambda: self.server_settings is not None and self.settings_acks >= 1, timeout)

    def barrier(self, timeout=10):
        """A PING round trip: everything the server sent before its ACK has
        been read."""
        want = self.ping_acks + 1
        self.send(ping_frame(b"barrier!"))
        return self.wait(lambda: self.ping_acks >= want, timeout)

    def wait_closed(self, timeout):
        return self.wait(lambda: self.closed, timeout)

    def status(self, sid):
        for hs in self.headers.get(sid, []):
            for n, v in hs:
                if n == ":status" and not v.startswith("1"):
                    return int(v)
        return None

    def header(self, sid, name):
        for hs in self.headers.get(sid, []):
            for n, v in hs:
                if n == name:
                    return v
        return None

    def body(self, sid):
        return bytes(self.data.get(sid, b""))

    def first_goaway(self):
        return self.goaways[0] if self.goaways else None

    def summary(self):
        """The common part of every result."""
        g = self.first_goaway()
        last = self.goaways[-1] if self.goaways else None
        return {
            "goaway": err_name(g[1]) if g else None,
            "goaway_last_stream_id": last[0] if last else None,
            "goaways": [[x[0], err_name(x[1])] for x in self.goaways],
            "goaway_debug": g[2][:200] if g else None,
            "rst_received": len(self.rst),
            "rst_codes": sorted({err_name(c) for c in self.rst.values()}),
            "closed": self.closed,
            "send_failed": self.send_failed,
            "send_blocked": self.send_blocked,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "frames_received": self.frames_received,
            "server_settings": self.server_settings,
            "decode_error": self.decode_error,
        }

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def length_of(payload):
    return len(payload)
