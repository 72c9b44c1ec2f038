"""Warm start of the embedder's phrase cache: a snapshot written on shutdown and read back at
start, or else the inference log's most frequent recent texts encoded in the background.

A restarted or newly deployed embedder would otherwise start with an empty cache, and serve a
fraction of its warm throughput until its callers' phrases came round again.

- **Snapshot** (`DC_CACHE_SNAPSHOT`): when the engine closes (gunicorn's `worker_exit` on
  SIGTERM), the cache's entries of its own fingerprint, at most `DC_CACHE_SNAPSHOT_MAX_ENTRIES`
  and the most recently used first, go to one `.npz` file (no pickle): the format version, the
  fingerprint, the dimension, the texts as UTF-8 bytes with their end offsets, the float32
  vectors. A local file is written beside its target and renamed into place (`os.replace`), so
  a crash mid-write leaves the previous snapshot whole; an `s3://bucket/key` object is replaced
  by one PUT, which S3 makes visible all at once. At start the snapshot is read back if its
  fingerprint and dimension are the encoder's; a missing, unreadable or foreign one is logged
  and skipped, never raised.
- **Pre-warm** (`DC_WARM_START_PHRASES`): without a usable snapshot, and with a database
  configured (`DC_DATABASE_URL`) and reachable, the most frequent distinct texts of the last day
  of `inferences` (dc.queries.warm) that pass the service's phrase rules are encoded through the
  micro-batcher one batch at a time, beside live traffic, so they land in the cache.
- **Readiness**: everything runs on a thread of its own; `start` waits for the snapshot at most
  `DC_WARM_START_WAIT_S`, and never for the pre-warm.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from dc.config import Settings
from dc.errors import DCError, InvalidInput, Overloaded
from dc.nlp.validation import check_phrase

if TYPE_CHECKING:
    from dc.nlp.embeddings.local import LocalEmbedder

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
PREWARM_WINDOW_S = 24 * 3600  # "the last day" of the inference log
_CLOSE_WAIT_S = 10.0  # longest close() waits for a snapshot still loading before it writes one


class SnapshotError(Exception):
    """A snapshot exists but cannot be read or written (corrupt, truncated, storage error)."""


@dataclass(frozen=True)
class Snapshot:
    """A phrase cache's entries of one encoder, most recently used first."""

    fingerprint: str
    dimension: int
    texts: list[str]
    vectors: np.ndarray  # float32 [len(texts), dimension]

    def __len__(self) -> int:
        return len(self.texts)


# --- the file format ---------------------------------------------------------------------------


def encode_snapshot(snapshot: Snapshot, file: BinaryIO) -> None:
    """Write `snapshot` to `file` as an uncompressed .npz (numeric arrays only: no pickle)."""
    encoded = [text.encode("utf-8", "surrogatepass") for text in snapshot.texts]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    vectors = np.ascontiguousarray(snapshot.vectors, dtype="<f4").reshape(
        len(snapshot.texts), snapshot.dimension
    )
    np.savez(
        file,
        format=np.int64(SNAPSHOT_FORMAT),
        fingerprint=np.frombuffer(snapshot.fingerprint.encode("utf-8"), dtype=np.uint8),
        dimension=np.int64(snapshot.dimension),
        texts=np.frombuffer(b"".join(encoded), dtype=np.uint8),
        text_ends=ends,
        vectors=vectors,
    )


def snapshot_bytes(snapshot: Snapshot) -> bytes:
    """`snapshot` as the bytes of its .npz (an S3 object, the embedder's GET /snapshot)."""
    buffer = io.BytesIO()
    encode_snapshot(snapshot, buffer)
    return buffer.getvalue()


def cache_snapshot(engine: LocalEmbedder, limit: int) -> Snapshot:
    """The engine's cache entries of its own encoder, at most `limit`, most recent first."""
    texts, vectors = engine.cache.entries(engine.fingerprint, limit)
    return Snapshot(engine.fingerprint, engine.dimension, texts, vectors)


def decode_snapshot(file: BinaryIO) -> Snapshot:
    """Read a snapshot written by `encode_snapshot`; SnapshotError if it is not one."""
    try:
        with np.load(file, allow_pickle=False) as data:
            version = int(data["format"])
            if version != SNAPSHOT_FORMAT:
                raise SnapshotError(f"format {version}, this code reads {SNAPSHOT_FORMAT}")
            fingerprint = data["fingerprint"].tobytes().decode("utf-8")
            dimension = int(data["dimension"])
            blob = data["texts"].tobytes()
            ends = data["text_ends"].astype(np.int64)
            vectors = data["vectors"]
    except SnapshotError:
        raise
    except Exception as exc:  # a torn zip, a missing array, bad UTF-8, ...: all mean corrupt
        raise SnapshotError(f"not a readable snapshot ({type(exc).__name__}: {exc})") from exc
    count = len(ends)
    if vectors.dtype != np.float32 or vectors.shape != (count, dimension):
        raise SnapshotError(
            f"vectors of shape {vectors.shape} ({vectors.dtype}) for {count} texts of "
            f"dimension {dimension}"
        )
    if count and (ends[-1] != len(blob) or np.any(np.diff(ends) < 0) or ends[0] < 0):
        raise SnapshotError("text offsets do not match the texts")
    starts = np.concatenate(([0], ends[:-1])) if count else ends
    try:
        texts = [
            blob[s:e].decode("utf-8", "surrogatepass")
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
    except UnicodeDecodeError as exc:
        raise SnapshotError(f"a text is not UTF-8 ({exc})") from exc
    return Snapshot(fingerprint, dimension, texts, vectors)


# --- where snapshots live: a local file or an S3 object ---------------------------------------


def _s3_location(location: str) -> tuple[str, str] | None:
    """(bucket, key) of an s3://bucket/key location, None for a local path."""
    if not location.startswith("s3://"):
        return None
    bucket, _, key = location[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise SnapshotError(f"{location} is not an s3://bucket/key location")
    return bucket, key


def write_snapshot(location: str, snapshot: Snapshot, settings: Settings) -> None:
    """Store `snapshot` at `location` (a path or s3://bucket/key), replacing what was there at
    once: a reader sees the previous snapshot or this one, never a part. SnapshotError on
    failure (the previous snapshot is then left as it was)."""
    s3 = _s3_location(location)
    if s3 is not None:
        _s3_put(settings, *s3, snapshot_bytes(snapshot))
        return
    target = Path(location)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise SnapshotError(f"cannot write beside {target}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            encode_snapshot(snapshot, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, Exception):
            raise SnapshotError(f"cannot write {target}: {exc}") from exc
        raise
    _sync_folder(target.parent)
    # Leftovers of a writer killed mid-write (SIGKILL, power): never read, removed here.
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def read_snapshot(location: str, settings: Settings) -> Snapshot | None:
    """The snapshot at `location`, or None when there is none; SnapshotError when there is
    one that cannot be read."""
    s3 = _s3_location(location)
    if s3 is not None:
        body = _s3_get(settings, *s3)
        return None if body is None else decode_snapshot(io.BytesIO(body))
    path = Path(location)
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"cannot open {path}: {exc}") from exc
    with file:
        return decode_snapshot(file)


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that a rename in it survives a power loss (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _s3_put(settings: Settings, bucket: str, key: str, body: bytes) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from dc.backup import s3_client

    try:
        s3_client(settings).put_object(Bucket=bucket, Key=key, Body=body)
    except (BotoCoreError, ClientError) as exc:
        raise SnapshotError(f"cannot write s3://{bucket}/{key}: {exc}") from exc


def _s3_get(settings: Settings, bucket: str, key: str) -> bytes | None:
    from botocore.exceptions import BotoCoreError, ClientError

    from dc.backup import s3_client

    try:
        return s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise SnapshotError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    except BotoCoreError as exc:
        raise SnapshotError(f"cannot read s3://{bucket}/{key}: {exc}") from exc


# --- the warm start of one engine ---------------------------------------------------------------


class WarmStart:
    """The warm start of one `LocalEmbedder`: `start()` reads the snapshot (or pre-warms) on a
    thread of its own, `close()` stops the pre-warm and writes the snapshot.

    `info()` says what happened, for /info: states and counts, never a path or an error text
    (those are in the log).
    """

    def __init__(self, engine: LocalEmbedder, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self.location = settings.cache_snapshot.strip()
        self._snapshot_done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.snapshot: dict[str, Any] = {
            "enabled": bool(self.location),
            "storage": ("s3" if self.location.startswith("s3://") else "file")
            if self.location
            else None,
            "state": "pending" if self.location else "off",
            "entries": 0,
            "seconds": None,
            "saved_entries": None,
        }
        self.prewarm: dict[str, Any] = {
            "state": "pending" if settings.warm_start_phrases else "off",
            "limit": settings.warm_start_phrases,
            "selected": 0,
            "encoded": 0,
            "seconds": None,
        }

    # --- start ---------------------------------------------------------------------------------

    def start(self, wait_s: float | None = None) -> WarmStart:
        """Start the warm start's thread, then wait until the snapshot is read (or found
        absent or unusable), at most `wait_s` (default: DC_WARM_START_WAIT_S)."""
        wait_s = self._settings.warm_start_wait_s if wait_s is None else wait_s
        self._thread = threading.Thread(target=self._run, name="embedder-warm-start", daemon=True)
        self._thread.start()
        if not self._snapshot_done.wait(wait_s):
            log.info(
                "readiness did not wait for the snapshot any longer: still loading after %.1f s "
                "(DC_WARM_START_WAIT_S); it goes on in the background",
                wait_s,
            )
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the warm start's thread is done (snapshot and pre-warm); True if it is."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            loaded = self._load_snapshot()
        except Exception:  # never out of the service: a bug here must not stop it
            log.exception("reading the phrase-cache snapshot failed")
            self.snapshot["state"] = "failed"
            loaded = False
        finally:
            self._snapshot_done.set()
        if loaded or self._stop.is_set():
            if self.prewarm["state"] == "pending":
                self.prewarm["state"] = "skipped"
            return
        try:
            self._prewarm()
        except Exception:
            log.exception("pre-warming the phrase cache from the inference log failed")
            self.prewarm["state"] = "failed"

    def _load_snapshot(self) -> bool:
        if not self.location:
            log.info("no snapshot: DC_CACHE_SNAPSHOT is empty (snapshots are off)")
            return False
        self.snapshot["state"] = "loading"
        started = time.perf_counter()
        try:
            snapshot = read_snapshot(self.location, self._settings)
        except SnapshotError as exc:
            log.warning("ignoring the snapshot %s: %s", self.location, exc)
            self.snapshot["state"] = "unreadable"
            return False
        if snapshot is None:
            log.info("no snapshot: %s does not exist yet", self.location)
            self.snapshot["state"] = "absent"
            return False
        engine = self._engine
        if snapshot.fingerprint != engine.fingerprint or snapshot.dimension != engine.dimension:
            log.info(
                "ignoring the snapshot %s: it holds vectors of encoder %s (dimension %d), this "
                "one is %s (dimension %d)",
                self.location,
                snapshot.fingerprint,
                snapshot.dimension,
                engine.fingerprint,
                engine.dimension,
            )
            self.snapshot["state"] = "foreign"
            return False
        added = engine.cache.load(engine.fingerprint, snapshot.texts, snapshot.vectors)
        seconds = time.perf_counter() - started
        self.snapshot.update(state="loaded", entries=added, seconds=round(seconds, 3))
        log.info("loaded %s cached phrases from %s in %.1f s", f"{added:,}", self.location, seconds)
        return added > 0

    # --- pre-warm from the inference log ---------------------------------------------------------

    def _prewarm(self) -> None:
        settings = self._settings
        if not settings.warm_start_phrases:
            log.info("no pre-warm: DC_WARM_START_PHRASES is 0")
            return
        if not settings.database_url:
            log.info("no pre-warm: no inference log to read (DC_DATABASE_URL is empty)")
            self.prewarm["state"] = "skipped"
            return
        self.prewarm["state"] = "running"
        started = time.perf_counter()
        texts = self._frequent_texts()
        if texts is None:
            self.prewarm["state"] = "skipped"
            return
        engine = self._engine
        valid = []
        for text in texts:
            try:
                valid.append(check_phrase(text, max_chars=settings.max_text_chars))
            except InvalidInput:
                continue
        valid = engine.cache.uncached(engine.fingerprint, valid)
        self.prewarm["selected"] = len(valid)
        # One micro-batch at a time: live requests keep the other encoder workers.
        step = engine.batcher.max_batch_size
        for first in range(0, len(valid), step):
            if self._stop.is_set():
                self.prewarm["state"] = "stopped"
                return
            if not self._encode(valid[first : first + step]):
                self.prewarm["state"] = "stopped"
                return
        seconds = time.perf_counter() - started
        self.prewarm.update(state="done", seconds=round(seconds, 3))
        log.info(
            "pre-warmed %s phrases from the last day of the inference log in %.0f s",
            f"{self.prewarm['encoded']:,}",
            seconds,
        )

    def _frequent_texts(self) -> list[str] | None:
        """The log's most frequent texts of the last day, or None (logged) if unreachable."""
        from datetime import timedelta

        from sqlalchemy.exc import SQLAlchemyError
        from sqlalchemy.pool import NullPool

        from dc.queries.warm import fetch_frequent_texts
        from persistence.db import make_engine

        settings = self._settings
        url = settings.database_url_or_default
        # PostgreSQL: a host that does not answer is given up on quickly, a slow scan after 60 s.
        connect_args = (
            {}
            if url.startswith("sqlite")
            else {"connect_timeout": 3, "options": "-c statement_timeout=60000"}
        )
        database = make_engine(url, poolclass=NullPool, connect_args=connect_args)
        try:
            texts = fetch_frequent_texts(
                database,
                settings.warm_start_phrases,
                window=timedelta(seconds=PREWARM_WINDOW_S),
                retries=settings.db_retries,
            )
        except SQLAlchemyError as exc:
            log.warning(
                "no pre-warm: the inference log cannot be read (%s: %s)",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return None
        finally:
            database.dispose()
        if not texts:
            log.info("no pre-warm: the inference log holds no prediction of the last day")
            return None
        return texts

    def _encode(self, texts: list[str]) -> bool:
        """Encode `texts` into the cache through the micro-batcher; False to give up."""
        engine = self._engine
        while True:
            try:
                futures = engine.batcher.submit(texts)
                break
            except Overloaded:  # live traffic fills the queue: it goes first
                if self._stop.wait(0.2):
                    return False
            except DCError as exc:  # shutting down
                log.info("pre-warm stopped: %s", exc)
                return False
        for future in futures:
            try:
                future.result(timeout=60)
            except Exception as exc:
                log.warning("pre-warm stopped: an encoder call failed (%s)", exc)
                return False
        self.prewarm["encoded"] += len(texts)
        return True

    # --- close -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the pre-warm, then write the snapshot (once; failures are logged)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            # A snapshot still being read must not be replaced by the part read so far.
            self._snapshot_done.wait(_CLOSE_WAIT_S)
            self._thread.join(_CLOSE_WAIT_S)
        if not self.location:
            return
        if not self._snapshot_done.is_set() and self._thread is not None:
            log.warning("not writing the snapshot: the previous one is still being read")
            return
        try:
            self.save()
        except Exception:
            log.exception("writing the phrase-cache snapshot to %s failed", self.location)

    def save(self) -> int:
        """Write the cache's entries of this encoder to the snapshot now; returns how many."""
        started = time.perf_counter()
        snapshot = cache_snapshot(self._engine, self._settings.cache_snapshot_max_entries)
        if not len(snapshot):  # the previous snapshot, if any, is worth more than an empty one
            log.info("not writing a snapshot: the cache holds no phrase of this encoder")
            return 0
        write_snapshot(self.location, snapshot, self._settings)
        self.snapshot["saved_entries"] = len(snapshot)
        log.info(
            "wrote %s cached phrases to %s in %.1f s",
            f"{len(snapshot):,}",
            self.location,
            time.perf_counter() - started,
        )
        return len(snapshot)

    def info(self) -> dict[str, Any]:
        """The snapshot's and the pre-warm's states and counts (no paths, no errors)."""
        return {"snapshot": dict(self.snapshot), "prewarm": dict(self.prewarm)}
