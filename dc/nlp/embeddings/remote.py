"""`RemoteEmbedder`: the HTTP client of the central embedder service.

It keeps its own phrase cache, so that repeated phrases keep working even while the service is
away. `requests` and `urllib3` are imported only when a client is built or used, and nothing here
imports TensorFlow: the prediction API in remote mode never loads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dc.config import Settings
from dc.errors import DCError, EmbedderUnavailable, InvalidInput, NotReady, Overloaded, TooLarge
from dc.nlp.cache import PhraseCache
from dc.nlp.embeddings.interface import Embedder, EmbedResult, assemble
from dc.nlp.embeddings.wire import (
    BINARY_MEDIA_TYPE,
    HEADER_COUNT,
    HEADER_DIMENSION,
    HEADER_FINGERPRINT,
    vectors_from_bytes,
)

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

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

    def warm_from_service(self, limit: int) -> int:
        """Fill the phrase cache with the embedder's most recent `limit` entries (its
        `GET /snapshot`); returns how many were added. Never raises: an embedder that is away
        or answers something else is logged, and the cache fills from traffic as usual."""
        import io

        from dc.nlp.warm_start import SnapshotError, decode_snapshot

        started = time.perf_counter()
        try:
            response = self._request("GET", "/snapshot", params={"limit": limit})
            snapshot = decode_snapshot(io.BytesIO(response.content))
        except (DCError, SnapshotError) as exc:
            log.warning(
                "no warm start from the embedder's cache: %s", getattr(exc, "detail", None) or exc
            )
            return 0
        added = self.cache.load(snapshot.fingerprint, snapshot.texts, snapshot.vectors)
        log.info(
            "warm start: %d phrases from the embedder's cache (%s) in %.2f s",
            added,
            snapshot.fingerprint,
            time.perf_counter() - started,
        )
        return added

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
        vectors, cached = assemble(texts, found, computed, int(info["dimension"]))
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
