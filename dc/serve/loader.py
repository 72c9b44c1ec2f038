"""Something heavy a serving worker loads after fork, on a thread of its own.

Both services load an encoder (TensorFlow, ~0.8 GB): the prediction API in local mode, the
embedder service always. Loading it in the gunicorn master would share TensorFlow's state
across forks, and loading it before the worker answers would keep `/health` silent for seconds.
So each worker starts a `BackgroundLoader` after fork: `/health` answers at once, and anything
that needs the value calls `require()`, which raises `NotReady` (a 503 with Retry-After) until
the value is loaded, and after a failed load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from dc.errors import NotReady

log = logging.getLogger(__name__)


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class BackgroundLoader(Generic[T]):
    """One value, loaded once on a daemon thread (or given ready-made).

    Args:
        load: builds the value (runs on the loader thread).
        source: what is loaded, for the failure's log line ("loading <source> failed").
        describe: the success's log line for the loaded value; " in <seconds> s" is appended.
        loading, failed: `require()`'s NotReady messages while loading and after a failure.
            The failure's cause (often a path) is logged, never put in the answer.
        retry_after_s: the NotReady's Retry-After.
        thread_name: the loader thread's name.
        value: a value already loaded; `start()` then loads nothing.

    Attributes:
        value: the loaded value, or None while loading (or after a failure).
        error: the load's error as "Type: message", or None.
        loaded_in_s: how long the load took, or None (not loaded here).
    """

    def __init__(
        self,
        load: Callable[[], T],
        *,
        source: str,
        describe: Callable[[T], str],
        loading: str,
        failed: str,
        retry_after_s: int,
        thread_name: str,
        value: T | None = None,
    ) -> None:
        self._load = load
        self._source = source
        self._describe = describe
        self._loading = loading
        self._failed = failed
        self._retry_after_s = retry_after_s
        self._thread_name = thread_name
        self.value: T | None = value
        self.error: str | None = None
        self.loaded_in_s: float | None = None

    def start(self, on_ready: Callable[[], object] | None = None) -> None:
        """Load on a daemon thread, then call `on_ready()` there; nothing if already loaded."""
        if self.value is not None:
            return
        threading.Thread(
            target=self.load, args=(on_ready,), name=self._thread_name, daemon=True
        ).start()

    def load(self, on_ready: Callable[[], object] | None = None) -> None:
        """Load now, in this thread (what the loader thread runs); errors are logged and kept."""
        started = time.perf_counter()
        try:
            value = self._load()
        except Exception as exc:
            log.exception("loading %s failed", self._source)
            self.error = f"{type(exc).__name__}: {exc}"  # after the log: who sees it finds both
            return
        self.loaded_in_s = time.perf_counter() - started
        self.value = value
        log.info("%s in %.1f s", self._describe(value), self.loaded_in_s)
        if on_ready is not None:
            on_ready()

    def require(self) -> T:
        """The value, or NotReady (503) while it loads or after its load failed."""
        value = self.value
        if value is None:
            raise NotReady(
                self._failed if self.error else self._loading, retry_after_s=self._retry_after_s
            )
        return value

    def close(self) -> None:
        """Release the value (its `close()`) if it was loaded; a load under way is not stopped."""
        if self.value is not None:
            self.value.close()
