"""`BufferedThreadWorker`, the worker class itself: its settings, the run loop and each of its
turns, the graceful stop and the stats log."""

from __future__ import annotations

import errno
import selectors
import time

from gunicorn.workers import base
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER

from dc.config import get_settings
from web.worker.connection import CLOSING, QUEUED, Connection
from web.worker.dispatch import RequestDispatcher

_STATS_EVERY_S = 10.0


class BufferedThreadWorker(RequestDispatcher):
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
        self._init_loop(settings)
        self._init_requests(settings)
        self._terminating = False
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
            if data.__class__ is Connection:
                state = data.state
                if state == CLOSING:
                    self._on_closing(data, mask)
                elif state == QUEUED:
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
        if self._waiting and self._waiting[0][0] + self.shed_after_s < wake:
            wake = self._waiting[0][0] + self.shed_after_s
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
