"""The event loop's HTTP/1.1 request framing: whether a connection's buffer holds a complete
request (by Content-Length, or chunk by chunk up to the trailers), one still to come, or one
to hand over at once for the parser or the app to refuse.

The verdicts are `connection`'s INCOMPLETE, COMPLETE, HAND_OVER and BAD_CHUNK; the framing of
the request in progress (where its head and body end, the chunked scanner's state) is kept on
the `Connection`, so that each call resumes where the previous one stopped.
"""

from __future__ import annotations

import contextlib
import socket

from gunicorn.http.body import CHUNK_EXT_RE

from web.worker.connection import BAD_CHUNK, COMPLETE, HAND_OVER, INCOMPLETE, Connection

#: Requests that go to the priority lane (never shed), by method and path.
PRIORITY_METHODS = frozenset({b"GET", b"HEAD"})
PRIORITY_PATHS = frozenset({b"/health", b"/ready", b"/metrics"})

_HEX = b"0123456789abcdefABCDEF"
# Chunked-body scanner states.
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER = 1, 2, 3


class Framer:
    """Frames buffered requests within gunicorn's `limit_request_*` and the apps' body limit."""

    __slots__ = ("body_limit", "max_field", "max_head", "max_line")

    def __init__(self, cfg, body_limit: int) -> None:
        self.body_limit = body_limit
        line = cfg.limit_request_line
        self.max_line = line if 0 < line < 8190 else 8190
        fields = cfg.limit_request_fields
        fields = fields if 0 < fields <= 32768 else 32768
        field_size = cfg.limit_request_field_size
        self.max_field = field_size if field_size > 0 else 8190
        # Header block size past which the parser is sure to refuse it (431): as gunicorn's
        # Message.max_buffer_headers, plus the request line.
        self.max_head = fields * (self.max_field + 2) + 4 + self.max_line + 2

    def frame(self, conn: Connection) -> int:
        """Whether the buffer holds a complete request (see the module docstring)."""
        buf = conn.buf
        if conn.head_end < 0:
            end = buf.find(b"\r\n\r\n", conn.scanned)
            if end < 0:
                return self._incomplete_head(conn)
            self._read_head(conn, end)
            if conn.close_after:
                return HAND_OVER
        if conn.body_end >= 0:
            if len(buf) >= conn.body_end:
                return COMPLETE
            return INCOMPLETE
        return self._scan_chunks(conn)

    def _incomplete_head(self, conn: Connection) -> int:
        buf = conn.buf
        size = len(buf)
        start = max(conn.scanned - 1, 0)
        conn.scanned = max(size - 3, 0)
        if size > self.max_head:
            return HAND_OVER  # the parser answers 431
        if size > self.max_line + 2 and buf.find(b"\r\n", 0, self.max_line + 2) < 0:
            return HAND_OVER  # 414
        # A bare LF will never make "\r\n\r\n": the parser refuses it (400) at once.
        lf = buf.find(b"\n", start)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 13:
                return HAND_OVER
            lf = buf.find(b"\n", lf + 1)
        return INCOMPLETE

    def _read_head(self, conn: Connection, end: int) -> None:
        """Read the framing of the request whose headers end at `end` (before CRLFCRLF)."""
        buf = conn.buf
        conn.head_end = head_end = end + 4
        line_end = buf.find(b"\r\n")
        line = bytes(buf[:line_end])
        method, _, rest = line.partition(b" ")
        target = rest.partition(b" ")[0]
        conn.head_request = method == b"HEAD"
        conn.priority = method in PRIORITY_METHODS and target.partition(b"?")[0] in PRIORITY_PATHS
        head = bytes(buf[line_end:end]).lower()
        lengths = head.count(b"\r\ncontent-length:")
        encoding = head.find(b"\r\ntransfer-encoding:")
        if encoding >= 0:
            value_end = head.find(b"\r\n", encoding + 20)
            value = head[encoding + 20 : value_end if value_end >= 0 else None]
            if (
                lengths
                or head.count(b"\r\ntransfer-encoding:") > 1
                or value.rsplit(b",", 1)[-1].strip(b" \t") != b"chunked"
            ):
                conn.close_after = True  # the parser refuses or decides it
                return
            conn.chunk_state = _CHUNK_SIZE
            conn.pos = head_end
        elif lengths:
            at = head.find(b"\r\ncontent-length:") + 17
            value_end = head.find(b"\r\n", at)
            value = head[at : value_end if value_end >= 0 else None].strip(b" \t")
            if lengths > 1 or not value.isdigit():
                conn.close_after = True
                return
            length = int(value)
            if length > self.body_limit:
                conn.close_after = True  # the app answers 413 from the Content-Length
                return
            conn.body_end = head_end + length
            if len(buf) >= conn.body_end:
                return
        else:
            conn.body_end = head_end
            return
        # The body is still to come: a client waiting for "100 Continue" gets it from here.
        if line.endswith(b"HTTP/1.1") and b"\r\nexpect:" in head:
            at = head.find(b"\r\nexpect:") + 9
            value_end = head.find(b"\r\n", at)
            if head[at : value_end if value_end >= 0 else None].strip(b" \t") == b"100-continue":
                conn.continue_sent = True
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n", socket.MSG_DONTWAIT)

    def _scan_chunks(self, conn: Connection) -> int:
        """Follow a chunked body from `conn.pos`, checking its framing as gunicorn's
        ChunkedReader does, so that a body handed over never fails to parse."""
        buf = conn.buf
        size = len(buf)
        pos = conn.pos
        try:
            while True:
                state = conn.chunk_state
                if state == _CHUNK_SIZE:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if size - pos > self.max_field:
                            return BAD_CHUNK
                        return INCOMPLETE
                    chunk_size, sep, ext = bytes(buf[pos:eol]).partition(b";")
                    if sep:
                        if b"\r" in ext:
                            return BAD_CHUNK
                        chunk_size = chunk_size.rstrip(b" \t")
                    if not chunk_size or chunk_size.strip(_HEX):
                        return BAD_CHUNK
                    if sep and not CHUNK_EXT_RE.fullmatch(b";" + ext):
                        return BAD_CHUNK
                    pos = eol + 2
                    left = int(chunk_size, 16)
                    if left == 0:
                        conn.chunk_state = _CHUNK_TRAILER
                        conn.scanned = pos
                    else:
                        conn.chunk_state = _CHUNK_DATA
                        conn.chunk_left = left
                elif state == _CHUNK_DATA:
                    left = conn.chunk_left
                    if size - pos < left + 2:
                        if conn.decoded + min(left, size - pos) > self.body_limit:
                            return HAND_OVER  # the app answers 413 from what is buffered
                        return INCOMPLETE
                    if buf[pos + left : pos + left + 2] != b"\r\n":
                        return BAD_CHUNK
                    conn.decoded += left
                    pos += left + 2
                    conn.chunk_state = _CHUNK_SIZE
                    if conn.decoded > self.body_limit:
                        return HAND_OVER
                else:
                    if size - pos >= 2 and buf[pos : pos + 2] == b"\r\n":
                        return COMPLETE
                    end = buf.find(b"\r\n\r\n", max(conn.scanned - 3, pos))
                    conn.scanned = size
                    if end >= 0:
                        return COMPLETE
                    if size - pos > self.max_head:
                        return HAND_OVER
                    return INCOMPLETE
        finally:
            conn.pos = pos
