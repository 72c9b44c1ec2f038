"""What the event loop keeps per connection (`Connection`), its wake-up pipe for the request
threads (`Wakeup`), and the parser's deadline-bound socket reader (`DeadlineUnreader`)."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import time

from gunicorn.http.unreader import SocketUnreader

# Connection states.
READING, QUEUED, IDLE, CLOSING, CLOSED = range(5)
# What the framing of a buffered request says.
INCOMPLETE, COMPLETE, HAND_OVER, BAD_CHUNK = range(4)


class Wakeup:
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


class DeadlineUnreader(SocketUnreader):
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


class Connection:
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
        self.state = READING
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
