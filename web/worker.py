"""`BufferedThreadWorker`: gunicorn's threaded worker, made safe against slow clients and overload.

gunicorn's `gthread` worker hands a connection to a request thread as soon as it is readable,
and the thread then reads the request with blocking calls: a client that sends its headers or
body slowly holds a thread for as long as it likes, and a few of them starve every other
request. Under overload the thread pool's queue grows without bound, so every answer, health
checks included, comes seconds late. This worker keeps gthread's request handling (the same
parser, WSGI environ and response code) and changes what happens around it:

- **Buffering.** The event loop (the main thread) reads every connection without blocking into
  its own buffer until the request is complete: the end of the headers, then the body by its
  Content-Length, or chunk by chunk up to the last chunk and the trailers. Only a complete request
  reaches a request thread, with its bytes handed to the parser, so the thread never waits for
  the client. A request over the limits (headers past gunicorn's `limit_request_*`, a body over
  the apps' body limit) or whose framing the parser must judge (conflicting Content-Length and
  Transfer-Encoding, say) is handed over at once, so that gunicorn answers 431/414/400 and the
  app 413 without the whole thing being read. A connection that has not sent a whole request
  within `DC_REQUEST_READ_TIMEOUT_S` of its first byte (of its opening, for a new connection) is
  answered 408 and closed; an idle kept-alive connection is closed after gunicorn's `keepalive`.
- **Load shedding.** A complete request that has waited `DC_MAX_QUEUE_WAIT_MS` for a request
  thread without getting one is answered 429 `overloaded` with `Retry-After:
  DC_RETRY_AFTER_S` by the event loop itself (its queued job is cancelled), and its connection
  is closed. The wait counts from the loop's turn that read the request's last bytes, and the
  loop wakes up when the oldest waiting request reaches the bound, so the answer leaves at the
  bound, not up to a second later.
- **A priority lane.** `GET`/`HEAD` of `/health`, `/ready` and `/metrics` run on two threads of
  their own and are never shed, so probes and scrapes answer while the request threads are
  saturated.
- **The error envelope.** gunicorn's own rejections (400 for a malformed request line, header,
  chunked body, or conflicting Content-Length/Transfer-Encoding; 414, 431, 417, 501, 500) and
  this worker's 408, 429 and 400 answer the services' JSON envelope
  `{"error": {"code", "message", "status", "request_id"}}` with `Connection: close` instead of
  gunicorn's HTML page; the message is generic (the detail goes to the server log) and
  `request_id` is fresh. Not covered: a connection whose answer had already begun when the app
  failed is closed as it is (nothing can be answered any more), and a worker the master kills
  for missing its `timeout` resets its connections.
- **Bounded sockets in threads.** Each connection gets `SO_SNDTIMEO` of the read timeout, so a
  client that does not read its answer cannot hold a thread for longer than that per send; any
  read a thread still makes (only when the parser disagrees with the loop's framing) stops at
  the request's read deadline.
- **Graceful shutdown.** On SIGTERM the worker accepts what is already waiting in the listen
  backlog, then closes its listening sockets; it finishes every request whose bytes arrived
  (buffered, queued or running), answers requests that arrive on kept-alive connections within
  a short linger with `Connection: close`, and exits within `graceful_timeout`.
- **Closing.** After a connection's last answer the loop closes it at once when the client has
  nothing more on its way, else it half-closes and drains it briefly first, so that unread
  bytes do not turn the close into a reset that destroys the answer (gthread lingers in a
  blocking call of the event loop instead).
- **Cheap on the hit path.** Sockets stay in blocking mode (the loop passes `MSG_DONTWAIT`) and
  stay registered with the poller while a thread answers, and the heartbeat is written once a
  second: a kept-alive request costs fewer system calls than under gthread.

HTTP/1.1 over plain TCP only: TLS, HTTP/2 and the PROXY protocol are refused at start-up (the
services run behind a load balancer or proxy that terminates TLS).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import selectors
import socket
import struct
import time
from collections import deque
from concurrent import futures
from datetime import datetime

from gunicorn import http, util
from gunicorn.http import errors as herrors
from gunicorn.http.body import CHUNK_EXT_RE
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import base
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

from dc.config import get_settings
from dc.nlp.validation import max_body_bytes

#: Requests that go to the priority lane (never shed), by method and path.
PRIORITY_METHODS = frozenset({b"GET", b"HEAD"})
PRIORITY_PATHS = frozenset({b"/health", b"/ready", b"/metrics"})
PRIORITY_THREADS = 2

_RECV_SIZE = 65536
_ACCEPT_BATCH = 16  # connections accepted per wake-up: more would starve the other workers
_CLOSE_LINGER_S = 1.0  # after the last answer, how long a half-closed connection is drained
_CLOSE_DRAIN_MAX = 65536
_STATS_EVERY_S = 10.0
_HEX = b"0123456789abcdefABCDEF"

# Connection states.
_READING, _QUEUED, _IDLE, _CLOSING, _CLOSED = range(5)
# What the framing of a buffered request says.
_INCOMPLETE, _COMPLETE, _HAND_OVER, _BAD_CHUNK = range(4)

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}
_CODES = {
    400: "malformed_request",
    403: "forbidden",
    408: "request_timeout",
    413: "too_large",
    414: "uri_too_long",
    417: "expectation_failed",
    429: "overloaded",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}

# gunicorn's client errors (base.Worker.handle_error's classification): status and a message
# that does not echo the request. Checked in order, so subclasses come before their bases.
_CLIENT_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (herrors.InvalidRequestLine, 400, "malformed request line"),
    (herrors.InvalidRequestMethod, 400, "invalid request method"),
    (herrors.InvalidHTTPVersion, 400, "unsupported HTTP version"),
    (herrors.UnsupportedTransferCoding, 501, "unsupported transfer coding"),
    (herrors.ConfigurationProblem, 500, "internal error"),
    (herrors.ObsoleteFolding, 400, "obsolete header line folding is not accepted"),
    (herrors.InvalidHeaderName, 400, "invalid header field name"),
    (herrors.InvalidHeader, 400, "invalid header field"),
    (herrors.LimitRequestLine, 414, "request line too long"),
    (herrors.ExpectationFailed, 417, "unsupported expectation"),
    (herrors.LimitRequestHeaders, 431, "request header fields too large"),
    (herrors.InvalidProxyLine, 400, "invalid PROXY protocol line"),
    (herrors.ForbiddenProxyRequest, 403, "forbidden"),
    (herrors.InvalidSchemeHeaders, 400, "conflicting scheme headers"),
    (herrors.InvalidChunkSize, 400, "invalid chunked body: bad chunk size"),
    (herrors.ChunkMissingTerminator, 400, "invalid chunked body: missing chunk terminator"),
    (herrors.InvalidChunkExtension, 400, "invalid chunked body: bad chunk extension"),
    (herrors.InvalidH2CPreface, 400, "invalid HTTP/2 preface"),
)
_FRAMING_HEADERS = frozenset({"CONTENT-LENGTH", "TRANSFER-ENCODING"})


def envelope_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    retry_after_s: int | None = None,
    body: bool = True,
) -> bytes:
    """A complete HTTP/1.1 answer carrying the services' JSON error envelope, closing the
    connection.

    Args:
        status: the HTTP status.
        message: the envelope's message (shown to the client: no internal detail).
        code: the envelope's code; by default the services' code for `status`.
        retry_after_s: sent as `Retry-After` when given.
        body: False for an answer to HEAD (the headers only).
    """
    request_id = os.urandom(16).hex()
    error = {
        "code": code or _CODES.get(status, "error"),
        "message": message,
        "status": status,
        "request_id": request_id,
    }
    payload = json.dumps({"error": error}, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Date: {util.http_date()}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"X-Request-ID: {request_id}",
    ]
    if retry_after_s is not None:
        head.append(f"Retry-After: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (payload if body else b"")


class _Wakeup:
    """Callbacks for the event loop from request threads, with a pipe to wake it.

    One byte is written per wake-up, not per callback: a thread that finds a wake-up already
    pending only queues its callback (under load, many requests finish between two turns of the
    loop, and each write is a system call).
    """

    def __init__(self) -> None:
        self._read_fd = self._write_fd = -1
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = False

    def init(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        return self._read_fd

    def defer(self, callback, *args) -> None:
        """Run `callback(*args)` on the event loop's thread (callable from any thread)."""
        self._queue.put((callback, args))
        if not self._pending:
            self._pending = True
            # A full pipe means the loop is due to wake up anyway.
            with contextlib.suppress(OSError):
                os.write(self._write_fd, b"\x00")

    def run_callbacks(self, _fileobj=None) -> None:
        with contextlib.suppress(OSError):
            os.read(self._read_fd, 4096)
        # Cleared before draining: a callback queued from now on either is drained below or
        # writes a new byte.
        self._pending = False
        get = self._queue.get_nowait
        while True:
            try:
                callback, args = get()
            except queue.Empty:
                return
            callback(*args)

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class _DeadlineUnreader(SocketUnreader):
    """The parser's socket reader, bounded by the request's read deadline.

    The event loop hands a thread complete requests, so the parser normally reads only what it
    was given; the socket is touched only when the parser's framing differs from the loop's,
    and then no read may outlast the deadline.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.deadline = 0.0

    def chunk(self, size_hint=None):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request read deadline passed")
        self.sock.settimeout(remaining)
        try:
            return super().chunk(size_hint)
        finally:
            self.sock.settimeout(None)


class _Conn:
    """One client connection and its buffered request."""

    __slots__ = (
        "body_end",
        "buf",
        "chunk_left",
        "chunk_state",
        "client",
        "close_after",
        "continue_sent",
        "deadline",
        "decoded",
        "drained",
        "future",
        "gen",
        "half_closed",
        "head_end",
        "head_request",
        "mask",
        "out",
        "parser",
        "pos",
        "priority",
        "scanned",
        "server",
        "sock",
        "started",
        "state",
    )

    def __init__(self, sock: socket.socket, client, server) -> None:
        self.sock = sock
        self.client = client
        self.server = server
        self.parser = None
        self.state = _READING
        self.gen = 0
        self.mask = 0
        self.buf = b""
        self.deadline = 0.0
        self.out = b""
        self.drained = 0
        self.half_closed = False
        self.future = None
        self.started = False
        self.reset()

    def reset(self) -> None:
        """Forget the framing of the previous request."""
        self.head_end = -1
        self.scanned = 0
        self.body_end = -1
        self.chunk_state = 0
        self.chunk_left = 0
        self.decoded = 0
        self.pos = 0
        self.priority = False
        self.head_request = False
        self.close_after = False
        self.continue_sent = False


# Chunked-body scanner states.
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_TRAILER = 1, 2, 3


class BufferedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with request buffering, load shedding, a priority lane for
    health checks, JSON error answers and a shutdown that answers everything it accepted.

    Use it with `worker_class = "web.worker.BufferedThreadWorker"`; `threads` sizes the request
    pool. Settings (read after fork with `dc.config.get_settings()`):
    `DC_REQUEST_READ_TIMEOUT_S`, `DC_MAX_QUEUE_WAIT_MS`, `DC_RETRY_AFTER_S`, and the apps' body
    limit from `DC_MAX_TEXTS_PER_REQUEST` and `DC_MAX_TEXT_CHARS`.
    """

    @classmethod
    def check_config(cls, cfg, log) -> None:
        super().check_config(cfg, log)
        unsupported = []
        if cfg.is_ssl:
            unsupported.append("TLS (certfile/keyfile)")
        if cfg.http2_cleartext != "off":
            unsupported.append("http2_cleartext")
        if cfg.proxy_protocol != "off":
            unsupported.append("proxy_protocol")
        if unsupported:
            raise RuntimeError(
                f"{cls.__name__} serves HTTP/1.1 over plain TCP only; not supported: "
                + ", ".join(unsupported)
            )

    # --- set-up ---------------------------------------------------------------------------------

    def init_process(self) -> None:
        settings = get_settings()
        self.read_timeout_s = settings.request_read_timeout_s
        self.max_wait_s = settings.max_queue_wait_ms / 1000.0
        self.retry_after_s = settings.retry_after_s
        self._timeout_message = f"the request was not received within {self.read_timeout_s:g} s"
        self._shed_message = f"the server is overloaded; retry after {self.retry_after_s} s"
        self.body_limit = max_body_bytes(settings.max_texts_per_request, settings.max_text_chars)
        line = self.cfg.limit_request_line
        self.max_line = line if 0 < line < 8190 else 8190
        fields = self.cfg.limit_request_fields
        fields = fields if 0 < fields <= 32768 else 32768
        field_size = self.cfg.limit_request_field_size
        self.max_field = field_size if field_size > 0 else 8190
        # Header block size past which the parser is sure to refuse it (431): as gunicorn's
        # Message.max_buffer_headers, plus the request line.
        self.max_head = fields * (self.max_field + 2) + 4 + self.max_line + 2
        # SO_SNDTIMEO: a blocking send in a thread gives up after this long.
        seconds = int(self.read_timeout_s)
        self._sndtimeo = struct.pack("ll", seconds, int((self.read_timeout_s - seconds) * 1e6))

        self.tpool = futures.ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="request")
        self.priority_pool = futures.ThreadPoolExecutor(
            PRIORITY_THREADS, thread_name_prefix="priority"
        )
        self.poller = selectors.DefaultSelector()
        self.method_queue = _Wakeup()
        self.method_queue.init()
        # Idle kept-alive connections; gthread's handle_request reads its size.
        self.keepalived_conns: set[_Conn] = set()
        self._read_timers: deque = deque()  # (deadline, conn, gen), sorted by construction
        self._idle_timers: deque = deque()
        self._close_timers: deque = deque()
        self._waiting: deque = deque()  # (queued at, conn, future) of the request pool
        self._terminating = False
        self._stopping = False
        self._linger_until = 0.0
        self._accept_paused_until = 0.0
        self._turn_started = 0.0
        self._listener_names: dict = {}
        self._stats = {"shed": 0, "timed_out": 0, "bad_chunked": 0}
        self._stats_at = time.monotonic() + _STATS_EVERY_S
        # The master kills a worker whose heartbeat is older than its timeout (self.timeout is
        # half of it): a beat every second is plenty, and each beat is a system call.
        self._beat_every = min(1.0, self.timeout / 2) if self.timeout else 1.0
        base.Worker.init_process(self)

    # --- signals --------------------------------------------------------------------------------

    def handle_exit(self, sig, frame) -> None:
        """SIGTERM: stop after answering everything already accepted or waiting to be."""
        self._terminating = True
        super().handle_exit(sig, frame)

    def handle_quit(self, sig, frame) -> None:
        """SIGQUIT/SIGINT: immediate shutdown."""
        self.priority_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    # --- the event loop -------------------------------------------------------------------------

    def run(self) -> None:
        self.poller.register(
            self.method_queue.fileno(), selectors.EVENT_READ, self.method_queue.run_callbacks
        )
        self.set_accept_enabled(True)
        next_beat = 0.0
        while self.alive:
            now = time.monotonic()
            if now >= next_beat:
                self.notify()
                next_beat = now + self._beat_every
                if not self.is_parent_alive():
                    break
                self._log_stats(now)
            can_accept = (
                self.nr_conns < self.worker_connections and now >= self._accept_paused_until
            )
            if can_accept != self._accepting:
                self.set_accept_enabled(can_accept)
            self._turn(min(self._next_timer(now), next_beat) - now)

        self._stop_accepting(drain=self._terminating)
        self._stopping = True
        now = time.monotonic()
        self._linger_until = now + STOP_KEEPALIVE_LINGER
        give_up = now + self.cfg.graceful_timeout
        lingering = True
        while self.nr_conns > 0 and now < give_up:
            if now >= next_beat:
                self.notify()
                next_beat = now + self._beat_every
            wake = min(self._next_timer(now), next_beat)
            self._turn((min(wake, self._linger_until) if lingering else wake) - now)
            now = time.monotonic()
            if lingering and now >= self._linger_until:
                lingering = False
                self._close_idle()
        if self.nr_conns:
            self.log.warning("graceful timeout: closing %d connection(s)", self.nr_conns)
        self._log_stats(float("inf"))
        self.tpool.shutdown(wait=False)
        self.priority_pool.shutdown(wait=False)
        self.poller.close()
        self.method_queue.close()

    def _turn(self, timeout: float) -> None:
        """Wait for events up to `timeout` seconds, handle them, then the timers."""
        try:
            events = self.poller.select(timeout if timeout > 0 else 0)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
            events = ()
        # The bytes read in this turn were there when the wait ended: a request's wait for a
        # thread counts from here, however long the turn takes to reach it.
        self._turn_started = now = time.monotonic()
        if self._waiting:  # a turn with many events can take a while: shed first
            self._shed(now)
        for key, mask in events:
            data = key.data
            if data.__class__ is _Conn:
                state = data.state
                if state == _CLOSING:
                    self._on_closing(data, mask)
                elif state == _QUEUED:
                    # Bytes (or the end) arrived while a thread has the request: they wait in
                    # the socket until the answer is out.
                    self._watch(data, 0)
                else:
                    self._on_readable(data)
            else:
                data(key.fileobj)
        now = time.monotonic()
        if self._waiting:
            self._shed(now)
        self._expire(now)

    def _next_timer(self, now: float) -> float:
        """When the loop must wake up next at the latest."""
        wake = now + 1.0
        for timers in (self._read_timers, self._idle_timers, self._close_timers):
            if timers and timers[0][0] < wake:
                wake = timers[0][0]
        if self._waiting and self._waiting[0][0] + self.max_wait_s < wake:
            wake = self._waiting[0][0] + self.max_wait_s
        return wake

    def _log_stats(self, now: float) -> None:
        if now < self._stats_at:
            return
        self._stats_at = time.monotonic() + _STATS_EVERY_S
        if any(self._stats.values()):
            self.log.warning(
                "in the last %.0f s: %d request(s) shed (429), %d connection(s) timed out (408), "
                "%d invalid chunked bod(ies) (400)",
                _STATS_EVERY_S,
                self._stats["shed"],
                self._stats["timed_out"],
                self._stats["bad_chunked"],
            )
            self._stats = dict.fromkeys(self._stats, 0)

    # --- accepting ------------------------------------------------------------------------------

    def accept(self, listener) -> None:
        """Accept waiting connections (a few at a time) and start buffering them."""
        for _ in range(_ACCEPT_BATCH):
            if not self._accept_one(listener):
                return
            if self.nr_conns >= self.worker_connections:
                return

    def _accept_one(self, listener) -> bool:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                return exc.errno == errno.ECONNABORTED
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors or memory: let connections close before trying again.
                self.log.warning("cannot accept connections for now: %s", exc)
                self._accept_paused_until = time.monotonic() + 0.5
                return False
            raise
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._sndtimeo)
        name = self._listener_names.get(listener)
        if name is None:
            name = self._listener_names[listener] = listener.getsockname()
        conn = _Conn(sock, client, name)
        self.nr_conns += 1
        self._start_reading(conn, time.monotonic())
        return True

    def _stop_accepting(self, drain: bool) -> None:
        """Stop accepting; with `drain`, first take every connection waiting in the backlog
        (they would be reset when the listening socket closes)."""
        if drain:
            for listener in self.sockets:
                for _ in range(max(self.cfg.backlog, 1) * 2):
                    if not self._accept_one(listener):
                        break
        self.set_accept_enabled(False)
        for listener in self.sockets:
            with contextlib.suppress(OSError):
                listener.close()

    # --- reading --------------------------------------------------------------------------------

    def _watch(self, conn: _Conn, mask: int) -> None:
        """Register `conn` with the poller for `mask` (0: not at all)."""
        if mask == conn.mask:
            return
        if not conn.mask:
            self.poller.register(conn.sock, mask, conn)
        elif not mask:
            self.poller.unregister(conn.sock)
        else:
            self.poller.modify(conn.sock, mask, conn)
        conn.mask = mask

    def _start_reading(self, conn: _Conn, now: float) -> None:
        conn.state = _READING
        conn.gen += 1
        conn.deadline = now + self.read_timeout_s
        self._read_timers.append((conn.deadline, conn, conn.gen))
        self._watch(conn, selectors.EVENT_READ)

    def _arm_idle(self, conn: _Conn, deadline: float) -> None:
        conn.gen += 1
        conn.deadline = deadline
        self._idle_timers.append((deadline, conn, conn.gen))

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the client closed (or half-closed before finishing a request)
            self._close(conn)
            return
        if conn.state == _IDLE:
            self.keepalived_conns.discard(conn)
            self._start_reading(conn, time.monotonic())
        buf = conn.buf
        if not buf:
            conn.buf = data
        elif buf.__class__ is bytes:
            conn.buf = bytearray(buf)
            conn.buf += data
        else:
            buf += data
        self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        """Act on what the buffered bytes of `conn` amount to."""
        verdict = self._frame(conn)
        if verdict == _INCOMPLETE:
            return
        if verdict == _BAD_CHUNK:
            self._stats["bad_chunked"] += 1
            self._answer(conn, 400, "invalid chunked body")
            return
        if verdict == _HAND_OVER:
            conn.close_after = True
        self._dispatch(conn)

    def _frame(self, conn: _Conn) -> int:
        """Whether the buffer holds a complete request (see the module docstring)."""
        buf = conn.buf
        if conn.head_end < 0:
            end = buf.find(b"\r\n\r\n", conn.scanned)
            if end < 0:
                return self._incomplete_head(conn)
            self._read_head(conn, end)
            if conn.close_after:
                return _HAND_OVER
        if conn.body_end >= 0:
            if len(buf) >= conn.body_end:
                return _COMPLETE
            return _INCOMPLETE
        return self._scan_chunks(conn)

    def _incomplete_head(self, conn: _Conn) -> int:
        buf = conn.buf
        size = len(buf)
        start = max(conn.scanned - 1, 0)
        conn.scanned = max(size - 3, 0)
        if size > self.max_head:
            return _HAND_OVER  # the parser answers 431
        if size > self.max_line + 2 and buf.find(b"\r\n", 0, self.max_line + 2) < 0:
            return _HAND_OVER  # 414
        # A bare LF will never make "\r\n\r\n": the parser refuses it (400) at once.
        lf = buf.find(b"\n", start)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 13:
                return _HAND_OVER
            lf = buf.find(b"\n", lf + 1)
        return _INCOMPLETE

    def _read_head(self, conn: _Conn, end: int) -> None:
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

    def _scan_chunks(self, conn: _Conn) -> int:
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
                            return _BAD_CHUNK
                        return _INCOMPLETE
                    chunk_size, sep, ext = bytes(buf[pos:eol]).partition(b";")
                    if sep:
                        if b"\r" in ext:
                            return _BAD_CHUNK
                        chunk_size = chunk_size.rstrip(b" \t")
                    if not chunk_size or chunk_size.strip(_HEX):
                        return _BAD_CHUNK
                    if sep and not CHUNK_EXT_RE.fullmatch(b";" + ext):
                        return _BAD_CHUNK
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
                            return _HAND_OVER  # the app answers 413 from what is buffered
                        return _INCOMPLETE
                    if buf[pos + left : pos + left + 2] != b"\r\n":
                        return _BAD_CHUNK
                    conn.decoded += left
                    pos += left + 2
                    conn.chunk_state = _CHUNK_SIZE
                    if conn.decoded > self.body_limit:
                        return _HAND_OVER
                else:
                    if size - pos >= 2 and buf[pos : pos + 2] == b"\r\n":
                        return _COMPLETE
                    end = buf.find(b"\r\n\r\n", max(conn.scanned - 3, pos))
                    conn.scanned = size
                    if end >= 0:
                        return _COMPLETE
                    if size - pos > self.max_head:
                        return _HAND_OVER
                    return _INCOMPLETE
        finally:
            conn.pos = pos

    # --- handing requests to threads ------------------------------------------------------------

    def _dispatch(self, conn: _Conn) -> None:
        """Give the buffered request of `conn` to a request thread (or the priority lane)."""
        conn.state = _QUEUED
        conn.gen += 1
        sock = conn.sock
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, sock, conn.client)
            conn.parser.unreader = _DeadlineUnreader(sock)
        unreader = conn.parser.unreader
        unreader.deadline = conn.deadline
        unreader.unread(conn.buf)
        conn.buf = b""
        conn.started = False
        if conn.priority:
            conn.future = self.priority_pool.submit(self._serve, conn)
            return
        # Shed at the bound, not on arrival when the queue looks long: an immediate 429 lets a
        # client that ignores Retry-After come straight back, and under a flood the answers
        # then cost more than they save (measured with bench/bench_overload.py: /health p99
        # 200 ms against 65 ms, and 40% fewer requests served).
        conn.future = future = self.tpool.submit(self._serve, conn)
        self._waiting.append((self._turn_started, conn, future))

    def _serve(self, conn: _Conn) -> None:
        """Runs in a request thread: answer one buffered request, then give the connection
        back to the event loop."""
        conn.started = True
        keepalive = False
        try:
            keepalive = self.handle(conn)
        finally:
            self.method_queue.defer(self._finished, conn, keepalive)

    def handle(self, conn: _Conn) -> bool:
        """Parse and answer the request buffered on `conn`; True to keep the connection.

        gthread's `handle` for HTTP/1.1, without its waits for data: the bytes are there.
        """
        req = None
        try:
            req = next(conn.parser)
            if not req:
                return False
            if conn.close_after:
                req.force_close()
            if conn.continue_sent:
                req._expected_100_continue = False  # the event loop sent it
            if not self.handle_request(req, conn):
                return False
            # Any body the app left unread is buffered: discarding it reads no socket.
            return bool(conn.parser.finish_body())
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except TimeoutError:
            # Only a read past the request's deadline raises this before an answer has begun
            # (gthread's handle_request turns a failure after that into StopIteration).
            self.log.debug("Client too slow: request read deadline passed")
            with contextlib.suppress(OSError):
                conn.sock.sendall(envelope_response(408, self._timeout_message))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN):
                self.log.exception("Socket error processing request.")
            else:
                self.log.debug("Ignoring socket error: %s", exc)
        except Exception as exc:
            try:
                self.handle_error(req, conn.sock, conn.client, exc)
            except Exception:
                self.log.exception("Error answering an error")
        return False

    def _finished(self, conn: _Conn, keepalive: bool) -> None:
        """On the event loop: a thread is done with `conn`."""
        if conn.state != _QUEUED:
            return
        if not keepalive:
            self._answer_done(conn)
            return
        rest = conn.parser.unreader.take_buffered()
        conn.reset()
        now = time.monotonic()
        if rest:  # a pipelined request, read with the previous one
            conn.buf = rest
            self._start_reading(conn, now)
            self._advance(conn)
            return
        conn.state = _IDLE
        self.keepalived_conns.add(conn)
        deadline = now + self.cfg.keepalive
        if self._stopping:
            deadline = min(deadline, self._linger_until)
        self._arm_idle(conn, deadline)
        self._watch(conn, selectors.EVENT_READ)

    # --- shedding and timers --------------------------------------------------------------------

    def _shed(self, now: float) -> None:
        """Answer 429 to every queued request that has waited for a thread past the bound."""
        waiting = self._waiting
        limit = now - self.max_wait_s
        while waiting:
            queued_at, conn, future = waiting[0]
            if conn.future is not future or conn.started:
                waiting.popleft()
                continue
            if queued_at > limit:
                return
            waiting.popleft()
            if future.cancel():
                self._stats["shed"] += 1
                self._answer(conn, 429, self._shed_message, retry_after_s=self.retry_after_s)

    def _expire(self, now: float) -> None:
        timers = self._read_timers
        while timers and timers[0][0] <= now:
            _, conn, gen = timers.popleft()
            if conn.gen == gen and conn.state == _READING:
                if self._stopping and not conn.buf:
                    self._close(conn)
                    continue
                self._stats["timed_out"] += 1
                self._answer(conn, 408, self._timeout_message)
        timers = self._idle_timers
        while timers and timers[0][0] <= now:
            _, conn, gen = timers.popleft()
            if conn.gen == gen and conn.state == _IDLE:
                self._close(conn)
        timers = self._close_timers
        while timers and timers[0][0] <= now:
            _, conn, gen = timers.popleft()
            if conn.gen == gen and conn.state == _CLOSING:
                self._close(conn)

    def _close_idle(self) -> None:
        """While stopping, past the linger: close kept-alive connections that sent nothing,
        and new ones that sent nothing yet."""
        for conn in list(self.keepalived_conns):
            self._close(conn)
        for _, conn, gen in list(self._read_timers):
            if conn.gen == gen and conn.state == _READING and not conn.buf:
                self._close(conn)

    # --- answering and closing ------------------------------------------------------------------

    def _answer(self, conn: _Conn, status: int, message: str, retry_after_s=None) -> None:
        """Answer `conn` from the event loop with the error envelope, then close it."""
        conn.out = envelope_response(
            status, message, retry_after_s=retry_after_s, body=not conn.head_request
        )
        self._answer_done(conn)

    def _answer_done(self, conn: _Conn) -> None:
        """Send what is left of the last answer, then close: at once when the client has
        nothing more on its way (it is waiting for the answer), else after a half-close and a
        short drain, so that unread bytes do not make the close a reset that destroys the
        answer."""
        self.keepalived_conns.discard(conn)
        conn.state = _CLOSING
        conn.gen += 1
        conn.drained = 0
        conn.half_closed = False
        conn.buf = b""
        self._on_closing(conn, selectors.EVENT_WRITE)
        if conn.state == _CLOSING:
            self._close_timers.append((time.monotonic() + _CLOSE_LINGER_S, conn, conn.gen))

    def _on_closing(self, conn: _Conn, mask: int) -> None:
        sock = conn.sock
        if conn.out:
            if not mask & selectors.EVENT_WRITE:
                return
            try:
                sent = sock.send(conn.out, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(conn)
                return
            conn.out = conn.out[sent:]
            if conn.out:
                self._watch(conn, selectors.EVENT_WRITE)
                return
        try:
            data = sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if conn.half_closed:
                self._watch(conn, selectors.EVENT_READ)
            else:
                self._close(conn)  # the client has nothing on its way: close now
            return
        except OSError:
            self._close(conn)
            return
        conn.drained += len(data)
        if not data or conn.drained > _CLOSE_DRAIN_MAX:
            self._close(conn)
            return
        if not conn.half_closed:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return
            conn.half_closed = True
        self._watch(conn, selectors.EVENT_READ)

    def _close(self, conn: _Conn) -> None:
        if conn.state == _CLOSED:
            return
        self.keepalived_conns.discard(conn)
        if conn.mask:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            conn.mask = 0
        conn.state = _CLOSED
        conn.gen += 1
        conn.buf = conn.out = b""
        util.close(conn.sock)
        self.nr_conns -= 1

    # --- gunicorn's own errors ------------------------------------------------------------------

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's rejections and unexpected errors, answered with the JSON envelope.

        The status is base.Worker.handle_error's; the message is generic (the exception, which
        may quote the request, goes to the server log only).
        """
        request_start = datetime.now()
        addr = addr or ("", -1)
        status, message = 500, "internal error"
        if not isinstance(exc, (herrors.InvalidResponseHeader, herrors.InvalidResponseHeaderName)):
            for kind, kind_status, kind_message in _CLIENT_ERRORS:
                if isinstance(exc, kind):
                    status, message = kind_status, kind_message
                    break
        if status == 400 and isinstance(exc, herrors.InvalidHeader) and exc.hdr in _FRAMING_HEADERS:
            message = "invalid or conflicting Content-Length and Transfer-Encoding"
        if status == 500:
            if hasattr(req, "uri") and hasattr(req, "method"):
                self.log.exception("Error handling request %s %s", req.method, req.uri)
            else:
                self.log.exception("Error handling request")
        else:
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
            if req is None and isinstance(exc, (herrors.InvalidHeader, herrors.InvalidHeaderName)):
                req = getattr(exc, "req", None)  # for the access log, as gunicorn does
        try:
            client.sendall(envelope_response(status, message))
        except OSError:
            self.log.debug("Failed to send error message.")
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = addr[0]
            environ["REMOTE_PORT"] = str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {_REASONS.get(status, 'Error')}"
            resp.response_length = 0
            self.log.access(resp, req, environ, datetime.now() - request_start)
