"""The embedding client: one `Embedder` interface, an in-process and a remote implementation.

`LocalEmbedder` runs the encoder in this process behind the LRU phrase cache and the micro-batcher
(the embedded default, and the engine inside the embedder service). `RemoteEmbedder` talks HTTP
to the central embedder service, with its own phrase cache so that repeated phrases keep working
even while the service is away. `create_embedder(settings)` picks one from `embedder_mode`:
swapping them is a setting, not a code change.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dc.config import Settings
from dc.errors import (
    DCError,
    EmbedderUnavailable,
    InvalidInput,
    NotReady,
    Overloaded,
    TooLarge,
)
from dc.nlp.batching import MicroBatcher
from dc.nlp.cache import PhraseCache

if TYPE_CHECKING:
    import requests

    from dc.nlp.encoder import Encoder

log = logging.getLogger(__name__)

# The compact wire format: the body is the float32 matrix [count, dimension], little-endian,
# row-major; metadata travels in headers.
BINARY_MEDIA_TYPE = "application/octet-stream"
HEADER_FINGERPRINT = "X-Embedder-Fingerprint"
HEADER_DIMENSION = "X-Embedding-Dimension"
HEADER_COUNT = "X-Embedding-Count"
HEADER_CACHED = "X-Embedding-Cached"  # one '1' (cache hit) or '0' per text


def vectors_to_bytes(vectors: np.ndarray) -> bytes:
    """Serialise a float32 matrix to the binary wire format."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def vectors_from_bytes(body: bytes, count: int, dimension: int) -> np.ndarray:
    """Parse the binary wire format back into a float32 matrix [count, dimension]."""
    expected = count * dimension * 4
    if len(body) != expected:
        raise ValueError(f"binary body has {len(body)} bytes, expected {expected}")
    return np.frombuffer(body, dtype="<f4").reshape(count, dimension).astype(np.float32)


@dataclass(frozen=True)
class EmbedResult:
    """Vectors for a list of texts, in input order.

    Attributes:
        vectors: float32 array [len(texts), dimension], L2-normalised rows.
        cached: per text, whether its vector came from a cache (no encoder work).
        fingerprint: the embedder that produced the vectors.
        timings: seconds spent per stage (`cache`, `encode`), for metrics and Server-Timing.
    """

    vectors: np.ndarray
    cached: list[bool]
    fingerprint: str
    timings: dict[str, float] = field(default_factory=dict)


class Embedder(ABC):
    """What every part of the product uses to turn texts into vectors."""

    name: str
    fingerprint: str
    dimension: int

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Return one vector per text, in order, reading the phrase cache first."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Describe the embedder: model, dimension, fingerprint, cache and batching settings."""

    def ping(self, timeout_s: float = 1.0) -> None:  # noqa: B027 - in process: always there
        """Check that vectors can be computed now (readiness probes).

        Raises:
            EmbedderUnavailable: the embedder cannot be reached.
            NotReady: it answers but is not ready (still loading its model).
        """

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release threads and connections."""


def _assemble(
    texts: Sequence[str], found: list[np.ndarray | None], computed: dict[str, np.ndarray], dim: int
) -> tuple[np.ndarray, list[bool]]:
    out = np.empty((len(texts), dim), dtype=np.float32)
    cached = []
    for i, (text, vector) in enumerate(zip(texts, found, strict=True)):
        cached.append(vector is not None)
        out[i] = vector if vector is not None else computed[text]
    return out, cached


class LocalEmbedder(Embedder):
    """The encoder in this process, behind the phrase cache and the micro-batcher.

    Args:
        encoder: a loaded `dc.nlp.encoder.Encoder`.
        cache_size: LRU entries (0 disables the cache).
        max_batch_size, max_queue, retry_after_s, batch_wait_s, workers: micro-batching
            settings (see `MicroBatcher`).
        wait_timeout_s: longest a caller waits for its batch before giving up.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        cache_size: int,
        max_batch_size: int,
        max_queue: int,
        retry_after_s: int = 1,
        batch_wait_s: float = 0.0,
        workers: int = 1,
        wait_timeout_s: float = 60.0,
    ) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.fingerprint = encoder.fingerprint
        self.dimension = encoder.dimension
        self.cache = PhraseCache(cache_size)
        self._batch_listeners: list[Callable[[int, float], None]] = []
        self._wait_timeout_s = wait_timeout_s
        self.batcher = MicroBatcher(
            encoder.encode,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            retry_after_s=retry_after_s,
            on_batch=self._on_batch,
            max_wait_s=batch_wait_s,
            workers=workers,
        ).start()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEmbedder:
        """Load the encoder named by the settings, warm it up and wrap it."""
        from dc.nlp.encoder import configure_tensorflow, load_encoder

        configure_tensorflow(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
        encoder = load_encoder(settings.embedder_handle)
        encoder.warmup()
        return cls.from_encoder(encoder, settings)

    @classmethod
    def from_encoder(cls, encoder: Encoder, settings: Settings) -> LocalEmbedder:
        """Wrap an already loaded encoder with the cache and batching the settings ask for."""
        return cls(
            encoder,
            cache_size=settings.cache_size,
            max_batch_size=settings.max_batch_size,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            batch_wait_s=settings.batch_wait_ms / 1000,
            workers=settings.encoder_workers,
        )

    def add_batch_listener(self, listener: Callable[[int, float], None]) -> None:
        """Call `listener(batch size, seconds)` after every encoder call (for metrics)."""
        self._batch_listeners.append(listener)

    def _on_batch(self, texts: list[str], vectors: np.ndarray, seconds: float) -> None:
        self.cache.put_many(self.fingerprint, texts, vectors)
        for listener in self._batch_listeners:
            listener(len(texts), seconds)

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Return one vector per text; misses are encoded in shared micro-batches."""
        started = time.perf_counter()
        found = self.cache.get_many(self.fingerprint, texts)
        looked_up = time.perf_counter()
        misses = [text for text, vector in zip(texts, found, strict=True) if vector is None]
        computed: dict[str, np.ndarray] = {}
        if misses:
            unique = list(dict.fromkeys(misses))
            futures = self.batcher.submit(unique)
            try:
                computed = {
                    text: future.result(timeout=self._wait_timeout_s)
                    for text, future in zip(unique, futures, strict=True)
                }
            except TimeoutError as exc:
                raise EmbedderUnavailable(
                    f"the encoder did not answer within {self._wait_timeout_s:.0f} s"
                ) from exc
        vectors, cached = _assemble(texts, found, computed, self.dimension)
        return EmbedResult(
            vectors=vectors,
            cached=cached,
            fingerprint=self.fingerprint,
            timings={"cache": looked_up - started, "encode": time.perf_counter() - looked_up},
        )

    def info(self) -> dict[str, Any]:
        return {
            "mode": "local",
            "model": self.name,
            "handle": self.encoder.handle,
            "dimension": self.dimension,
            "fingerprint": self.fingerprint,
            "cache": self.cache.stats().as_dict(),
            "batching": {
                "max_batch_size": self.batcher.max_batch_size,
                "batch_wait_ms": self.batcher.max_wait_s * 1000,
                "workers": self.batcher.workers,
                "max_queue": self.batcher.max_queue,
                "queue_depth": self.batcher.queue_depth,
            },
        }

    def close(self) -> None:
        self.batcher.close()


# Error codes of the service's envelope, back to the core's error types.
_REMOTE_ERRORS: dict[str, type[DCError]] = {
    "invalid_input": InvalidInput,
    "too_large": TooLarge,
    "overloaded": Overloaded,
    "not_ready": NotReady,
}


class RemoteEmbedder(Embedder):
    """HTTP client of the central embedder service, with a local phrase cache.

    Pooled keep-alive connections; retries with exponential backoff only on transient failures
    (connection errors, 502/503/504); a 429 is not retried but raised as `Overloaded`, so that
    back-pressure reaches the caller. When the service cannot be reached, `EmbedderUnavailable`
    says where it was looked for; phrases already in the local cache keep working.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_size: int,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        pool_size: int = 32,
        retry_after_s: int = 1,
    ) -> None:
        self.url = url.rstrip("/")
        self.cache = PhraseCache(cache_size)
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._session = _make_session(retries, backoff_s, pool_size)
        self._server: dict[str, Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteEmbedder:
        """Build a client for `settings.embedder_url` (no connection is made yet)."""
        return cls(
            settings.embedder_url,
            cache_size=settings.cache_size,
            timeout_s=settings.client_timeout_s,
            retries=settings.client_retries,
            backoff_s=settings.client_backoff_s,
            pool_size=settings.client_pool_size,
            retry_after_s=settings.retry_after_s,
        )

    # The service's identity is fetched once, on first use, so that building a client never
    # needs the service to be up.
    def _server_info(self) -> dict[str, Any]:
        if self._server is None:
            self._server = self._request("GET", "/info").json()
        return self._server

    @property
    def name(self) -> str:
        return self._server_info()["model"]

    @property
    def fingerprint(self) -> str:
        return self._server_info()["fingerprint"]

    @property
    def dimension(self) -> int:
        return int(self._server_info()["dimension"])

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        import requests

        try:
            response = self._session.request(
                method, self.url + path, timeout=self._timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            # The caller of the API learns that the embedder is away; the operator reading the
            # log learns where it was looked for and why it did not answer.
            raise EmbedderUnavailable(
                "the embedder service is unreachable; is it running? (`make run-embedder`)",
                retry_after_s=self._retry_after_s,
                detail=f"{self.url}: {type(exc).__name__}: {exc}",
            ) from exc
        if response.status_code >= 400:
            raise self._error_from(response)
        return response

    def _error_from(self, response: requests.Response) -> DCError:
        try:
            error = response.json()["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "", response.text[:200]
        retry_after = int(response.headers.get("Retry-After", self._retry_after_s))
        if code in _REMOTE_ERRORS:
            return _REMOTE_ERRORS[code](message, retry_after_s=retry_after)
        return EmbedderUnavailable(
            f"the embedder service failed (it answered {response.status_code})",
            retry_after_s=retry_after,
            detail=f"{self.url} answered {response.status_code}: {message}",
        )

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Return one vector per text: local cache first, then the service (in chunks)."""
        started = time.perf_counter()
        info = self._server_info()
        fingerprint = info["fingerprint"]
        found = self.cache.get_many(fingerprint, texts)
        looked_up = time.perf_counter()
        unique = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        computed: dict[str, np.ndarray] = {}
        chunk = int(info.get("limits", {}).get("max_texts_per_request", 256))
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            vectors = self._embed_remote(part)
            self.cache.put_many(fingerprint, part, vectors)
            computed.update(zip(part, vectors, strict=True))
        vectors, cached = _assemble(texts, found, computed, int(info["dimension"]))
        return EmbedResult(
            vectors=vectors,
            cached=cached,
            fingerprint=fingerprint,
            timings={"cache": looked_up - started, "encode": time.perf_counter() - looked_up},
        )

    def _embed_remote(self, texts: list[str]) -> np.ndarray:
        response = self._request(
            "POST", "/embed", json={"texts": texts}, headers={"Accept": BINARY_MEDIA_TYPE}
        )
        fingerprint = response.headers[HEADER_FINGERPRINT]
        if fingerprint != self.fingerprint:
            # The service was redeployed with another encoder: adopt it; the fingerprint in the
            # cache key keeps old vectors from being mixed with new ones.
            log.warning("embedder fingerprint changed to %s; refreshing", fingerprint)
            self._server = None
            self._server_info()
        return vectors_from_bytes(
            response.content,
            int(response.headers[HEADER_COUNT]),
            int(response.headers[HEADER_DIMENSION]),
        )

    def ping(self, timeout_s: float = 1.0) -> None:
        import requests

        # One plain attempt, outside the retrying session: a probe must answer quickly.
        try:
            response = requests.get(self.url + "/ready", timeout=timeout_s)
        except requests.RequestException as exc:
            raise EmbedderUnavailable(
                "the embedder service is unreachable",
                retry_after_s=self._retry_after_s,
                detail=f"{self.url}: {type(exc).__name__}: {exc}",
            ) from exc
        if response.status_code != 200:
            raise self._error_from(response)

    def info(self) -> dict[str, Any]:
        return {
            "mode": "remote",
            "url": self.url,
            "server": self._server_info(),
            "local_cache": self.cache.stats().as_dict(),
        }

    def close(self) -> None:
        self._session.close()


def _make_session(retries: int, backoff_s: float, pool_size: int) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class TransientRetry(Retry):
        # urllib3 also retries 413 and 429 whenever they carry Retry-After, whatever
        # status_forcelist says; a 429 must reach the caller as back-pressure instead.
        RETRY_AFTER_STATUS_CODES = frozenset({503})

    retry = TransientRetry(
        total=retries,
        connect=retries,
        read=0,  # a slow answer is not retried: that would only pile more work on the service
        status=retries,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),  # /embed is idempotent
        backoff_factor=backoff_s,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def create_embedder(settings: Settings) -> Embedder:
    """Build the embedder the settings ask for (`embedder_mode`: local or remote)."""
    if settings.embedder_mode == "remote":
        return RemoteEmbedder.from_settings(settings)
    return LocalEmbedder.from_settings(settings)
