"""`ConnectionLoop`: the connections' life on the event loop (the worker's main thread), from
accept to close: reading into buffers, the read and idle timers, answering from the loop and
closing after a short drain."""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import time
from collections import deque

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from web.worker.connection import CLOSED, CLOSING, IDLE, READING, Connection, Wakeup
from web.worker.responses import envelope_response

_RECV_SIZE = 65536
_ACCEPT_BATCH = 16  # connections accepted per wake-up: more would starve the other workers
_CLOSE_LINGER_S = 1.0  # after the last answer, how long a half-closed connection is drained
_CLOSE_DRAIN_MAX = 65536


class ConnectionLoop(ThreadWorker):
    """gthread's worker with connections that the event loop reads without blocking.

    Each connection is read into its buffer until `_advance` (the request side's, in
    `RequestDispatcher`) finds a complete request; one that is not complete by its read
    deadline is answered 408, an idle kept-alive one is closed after `keepalive`. Counts go to
    `self._stats` for the worker's stats log.
    """

    # --- set-up ---------------------------------------------------------------------------------

    def _init_loop(self, settings) -> None:
        self.read_timeout_s = settings.request_read_timeout_s
        self._timeout_message = f"the request was not received within {self.read_timeout_s:g} s"
        # SO_SNDTIMEO: a blocking send in a thread gives up after this long.
        seconds = int(self.read_timeout_s)
        self._sndtimeo = struct.pack("ll", seconds, int((self.read_timeout_s - seconds) * 1e6))
        self.poller = selectors.DefaultSelector()
        self.method_queue = Wakeup()
        self.method_queue.init()
        # Idle kept-alive connections; gthread's handle_request reads its size.
        self.keepalived_conns: set[Connection] = set()
        self._read_timers: deque = deque()  # (deadline, conn, gen), sorted by construction
        self._idle_timers: deque = deque()
        self._close_timers: deque = deque()
        self._stopping = False
        self._linger_until = 0.0
        self._accept_paused_until = 0.0
        self._listener_names: dict = {}
        self._stats = {"shed": 0, "timed_out": 0, "bad_chunked": 0}

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
        conn = Connection(sock, client, name)
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

    def _watch(self, conn: Connection, mask: int) -> None:
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

    def _start_reading(self, conn: Connection, now: float) -> None:
        conn.state = READING
        conn.gen += 1
        conn.deadline = now + self.read_timeout_s
        self._read_timers.append((conn.deadline, conn, conn.gen))
        self._watch(conn, selectors.EVENT_READ)

    def _arm_idle(self, conn: Connection, deadline: float) -> None:
        conn.gen += 1
        conn.deadline = deadline
        self._idle_timers.append((deadline, conn, conn.gen))

    def _on_readable(self, conn: Connection) -> None:
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
        if conn.state == IDLE:
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

    def _advance(self, conn: Connection) -> None:
        """Act on what the buffered bytes of `conn` amount to (the request side's part)."""
        raise NotImplementedError

    # --- timers ---------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        timers = self._read_timers
        while timers and timers[0][0] <= now:
            _, conn, gen = timers.popleft()
            if conn.gen == gen and conn.state == READING:
                if self._stopping and not conn.buf:
                    self._close(conn)
                    continue
                self._stats["timed_out"] += 1
                self._answer(conn, 408, self._timeout_message)
        timers = self._idle_timers
        while timers and timers[0][0] <= now:
            _, conn, gen = timers.popleft()
            if conn.gen == gen and conn.state == IDLE:
                self._close(conn)
        timers = self._close_timers
        while timers and timers[0][0] <= now:
            _, conn, gen = timers.popleft()
            if conn.gen == gen and conn.state == CLOSING:
                self._close(conn)

    def _close_idle(self) -> None:
        """While stopping, past the linger: close kept-alive connections that sent nothing,
        and new ones that sent nothing yet."""
        for conn in list(self.keepalived_conns):
            self._close(conn)
        for _, conn, gen in list(self._read_timers):
            if conn.gen == gen and conn.state == READING and not conn.buf:
                self._close(conn)

    # --- answering and closing ------------------------------------------------------------------

    def _answer(self, conn: Connection, status: int, message: str, retry_after_s=None) -> None:
        """Answer `conn` from the event loop with the error envelope, then close it."""
        conn.out = envelope_response(
            status, message, retry_after_s=retry_after_s, body=not conn.head_request
        )
        self._answer_done(conn)

    def _answer_done(self, conn: Connection) -> None:
        """Send what is left of the last answer, then close: at once when the client has
        nothing more on its way (it is waiting for the answer), else after a half-close and a
        short drain, so that unread bytes do not make the close a reset that destroys the
        answer."""
        self.keepalived_conns.discard(conn)
        conn.state = CLOSING
        conn.gen += 1
        conn.drained = 0
        conn.half_closed = False
        conn.buf = b""
        self._on_closing(conn, selectors.EVENT_WRITE)
        if conn.state == CLOSING:
            self._close_timers.append((time.monotonic() + _CLOSE_LINGER_S, conn, conn.gen))

    def _on_closing(self, conn: Connection, mask: int) -> None:
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

    def _close(self, conn: Connection) -> None:
        if conn.state == CLOSED:
            return
        self.keepalived_conns.discard(conn)
        if conn.mask:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            conn.mask = 0
        conn.state = CLOSED
        conn.gen += 1
        conn.buf = conn.out = b""
        util.close(conn.sock)
        self.nr_conns -= 1
