"""Cross-cutting decorators: timing, call logging and retries of transient database errors.

Each one logs to the logger it is given, or else to the logger of the decorated function's
module, so records carry the name of the code that did the work. `timed` and `logged` work bare
(`@timed`) or called (`@timed(logger=log)`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

# The rule is storage's (the inference log's outage rule builds on it); re-exported here for
# the callers of `db_retry`.
from persistence.transient import is_transient_db_error

P = ParamSpec("P")
R = TypeVar("R")

_MAX_ARG_CHARS = 60


def _logger_for(func: Callable[..., Any], logger: logging.Logger | None) -> logging.Logger:
    return logger or logging.getLogger(func.__module__)


@overload
def timed(logger: Callable[P, R]) -> Callable[P, R]: ...
@overload
def timed(
    logger: logging.Logger | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def timed(logger=None):
    """Log "<function> took 1.23 s" at INFO after each call (also when it raises).

    Args:
        logger: where to log; default: the decorated function's module logger. Used bare
            (`@timed`), the decorated function arrives here instead.
    """
    if callable(logger) and not isinstance(logger, logging.Logger):
        return timed()(logger)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        log = _logger_for(func, logger)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                log.info("%s took %.2f s", func.__qualname__, time.perf_counter() - start)

        return wrapper

    return decorate


def summarise(value: Any) -> str:
    """A short, one-line description of an argument for log records (never a whole table)."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, str | bytes):
        return f"{type(value).__name__}(shape={tuple(shape)})"
    if isinstance(value, list | tuple | set | dict) and len(value) > 5:
        return f"{type(value).__name__}(len={len(value)})"
    text = repr(value)
    return text if len(text) <= _MAX_ARG_CHARS else text[: _MAX_ARG_CHARS - 3] + "..."


@overload
def logged(logger: Callable[P, R]) -> Callable[P, R]: ...
@overload
def logged(
    logger: logging.Logger | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def logged(logger=None):
    """Log the start (with its arguments summarised) and the end of each call at INFO.

    An exception is logged at ERROR with its traceback and re-raised unchanged.

    Args:
        logger: where to log; default: the decorated function's module logger. Used bare
            (`@logged`), the decorated function arrives here instead.
    """
    if callable(logger) and not isinstance(logger, logging.Logger):
        return logged()(logger)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        log = _logger_for(func, logger)
        name = func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if log.isEnabledFor(logging.INFO):
                shown = [summarise(a) for a in args]
                shown += [f"{k}={summarise(v)}" for k, v in kwargs.items()]
                log.info("%s(%s) started", name, ", ".join(shown))
            start = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except Exception as error:
                log.error(
                    "%s failed after %.2f s: %s: %s",
                    name,
                    time.perf_counter() - start,
                    type(error).__name__,
                    error,
                    exc_info=True,
                )
                raise
            log.info("%s finished in %.2f s", name, time.perf_counter() - start)
            return result

        return wrapper

    return decorate


def db_retry(
    retries: int = 3, backoff_s: float = 0.2, *, logger: logging.Logger | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry the decorated function on transient database errors, with exponential backoff.

    Waits `backoff_s`, then twice that, and so on, logging a WARNING before each retry; after
    `retries` retries the last error propagates. Any other error propagates at once (see
    `is_transient_db_error`).

    Decorate a whole unit of work that takes its own connection (`with engine.connect()` or
    `engine.begin()` inside), never a step inside a caller's transaction: after a lost
    connection that transaction is gone, and repeating only the last step would be wrong.

    Args:
        retries: attempts after the first one (0: no retry).
        backoff_s: first wait in seconds; doubles after each attempt.
        logger: where to log; default: the decorated function's module logger.
    """
    if retries < 0 or backoff_s < 0:
        raise ValueError("retries and backoff_s must not be negative")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        log = _logger_for(func, logger)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            for attempt in range(retries + 1):
                try:
                    return func(*args, **kwargs)
                except Exception as error:
                    if attempt == retries or not is_transient_db_error(error):
                        raise
                    wait_s = backoff_s * 2**attempt
                    log.warning(
                        "%s: transient database error (attempt %d of %d), retrying in %.2f s: %s",
                        func.__qualname__,
                        attempt + 1,
                        retries + 1,
                        wait_s,
                        str(error).splitlines()[0] if str(error) else type(error).__name__,
                    )
                    time.sleep(wait_s)
            raise AssertionError("unreachable")  # the loop returns or raises

        return wrapper

    return decorate
