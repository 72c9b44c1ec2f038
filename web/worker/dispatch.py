"""`RequestDispatcher`: complete requests from the event loop to a request thread and back: the
request pool and the priority lane, the thread-side `handle`, shedding at the bound (429), and
the JSON envelope for gunicorn's own errors."""

from __future__ import annotations

import contextlib
import errno
import selectors
import time
from collections import deque
from concurrent import futures
from datetime import datetime

from gunicorn import http
from gunicorn.http import errors as herrors
from gunicorn.http.wsgi import Response, default_environ

from dc.nlp.validation import max_body_bytes
from web.worker.connection import (
    BAD_CHUNK,
    HAND_OVER,
    IDLE,
    INCOMPLETE,
    QUEUED,
    Connection,
    DeadlineUnreader,
)
from web.worker.framing import Framer
from web.worker.loop import ConnectionLoop
from web.worker.responses import REASONS, classify_error, envelope_response

PRIORITY_THREADS = 2
# The bound is on the client's whole wait for its 429, and part of that wait is spent outside
# the queue: in the socket until the loop's turn reads the request, in the turn itself, and in
# sending the answer. Under a flood of new phrases those took 50-150 ms on two shared cores
# (bench/bench_overload.py, 500 ms bound: 429s at p99 594 ms, max 652, when shed at the bound;
# p99 490, max 559, with a 150 ms reserve), so a request is shed once it has waited the bound
# less this reserve (at most half the bound).
SHED_RESERVE_S = 0.2


class RequestDispatcher(ConnectionLoop):
    """The request side of the worker: each complete request goes to the request pool (or the
    priority lane), and its connection comes back to the event loop when it is answered."""

    # --- set-up ---------------------------------------------------------------------------------

    def _init_requests(self, settings) -> None:
        bound_s = settings.max_queue_wait_ms / 1000.0
        self.shed_after_s = bound_s - min(SHED_RESERVE_S, bound_s / 2)
        self.retry_after_s = settings.retry_after_s
        self._shed_message = f"the server is overloaded; retry after {self.retry_after_s} s"
        self.framer = Framer(
            self.cfg, max_body_bytes(settings.max_texts_per_request, settings.max_text_chars)
        )
        self.tpool = futures.ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="request")
        self.priority_pool = futures.ThreadPoolExecutor(
            PRIORITY_THREADS, thread_name_prefix="priority"
        )
        self._waiting: deque = deque()  # (queued at, conn, future) of the request pool
        self._turn_started = 0.0

    # --- handing requests to threads ------------------------------------------------------------

    def _advance(self, conn: Connection) -> None:
        """Act on what the buffered bytes of `conn` amount to."""
        verdict = self.framer.frame(conn)
        if verdict == INCOMPLETE:
            return
        if verdict == BAD_CHUNK:
            self._stats["bad_chunked"] += 1
            self._answer(conn, 400, "invalid chunked body")
            return
        if verdict == HAND_OVER:
            conn.close_after = True
        self._dispatch(conn)

    def _dispatch(self, conn: Connection) -> None:
        """Give the buffered request of `conn` to a request thread (or the priority lane)."""
        conn.state = QUEUED
        conn.gen += 1
        sock = conn.sock
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, sock, conn.client)
            conn.parser.unreader = DeadlineUnreader(sock)
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

    def _serve(self, conn: Connection) -> None:
        """Runs in a request thread: answer one buffered request, then give the connection
        back to the event loop."""
        conn.started = True
        keepalive = False
        try:
            keepalive = self.handle(conn)
        finally:
            self.method_queue.defer(self._finished, conn, keepalive)

    def handle(self, conn: Connection) -> bool:
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

    def _finished(self, conn: Connection, keepalive: bool) -> None:
        """On the event loop: a thread is done with `conn`."""
        if conn.state != QUEUED:
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
        conn.state = IDLE
        self.keepalived_conns.add(conn)
        deadline = now + self.cfg.keepalive
        if self._stopping:
            deadline = min(deadline, self._linger_until)
        self._arm_idle(conn, deadline)
        self._watch(conn, selectors.EVENT_READ)

    # --- shedding -------------------------------------------------------------------------------

    def _shed(self, now: float) -> None:
        """Answer 429 to every queued request that has waited for a thread past the bound (less
        the reserve)."""
        waiting = self._waiting
        limit = now - self.shed_after_s
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

    # --- gunicorn's own errors ------------------------------------------------------------------

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's rejections and unexpected errors, answered with the JSON envelope.

        The status is base.Worker.handle_error's; the message is generic (the exception, which
        may quote the request, goes to the server log only).
        """
        request_start = datetime.now()
        addr = addr or ("", -1)
        status, message = classify_error(exc)
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
            resp.status = f"{status} {REASONS.get(status, 'Error')}"
            resp.response_length = 0
            self.log.access(resp, req, environ, datetime.now() - request_start)
