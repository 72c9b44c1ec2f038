"""Load a TF-Hub-style sentence embedder and encode phrases with it (the in-process backend).

``load_encoder(handle)`` accepts a local SavedModel folder (such as the one written by
``scripts/export_embedder.py``) or any handle ``tensorflow_hub.load`` understands (a hub URL,
where a network exists). TensorFlow is imported only when a model is loaded, so importing this
module is cheap (load models after gunicorn forks, never before).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METADATA_FILE = "embedder.json"
_PROBE = ["probe phrase"]
_WARMUP_BATCH = 32


@dataclass(frozen=True)
class Encoder:
    """A loaded sentence embedder.

    ``fingerprint`` identifies the exact model (heads record it and the phrase cache keys on
    it). ``encode`` is thread-safe: it keeps no state between calls, and TensorFlow functions
    may be called from several threads at once.
    """

    name: str
    fingerprint: str
    dimension: int
    handle: str
    _embed: Callable[[list[str]], np.ndarray] = field(repr=False, compare=False)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32, C-contiguous, shape ``[len(texts), dimension]``.

        Rows follow the order of ``texts``. An empty sequence returns shape (0, dimension)
        without calling TensorFlow.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.ascontiguousarray(self._embed(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.dimension):
            raise ValueError(
                f"{self.name} returned shape {vectors.shape} for {len(texts)} texts, "
                f"expected ({len(texts)}, {self.dimension})"
            )
        return vectors

    def warmup(self) -> None:
        """Run a single phrase and a full batch so the first real request is not slow."""
        for size in (1, _WARMUP_BATCH, 1):
            self.encode(["warm up the sentence embedder"] * size)


def configure_tensorflow(intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
    """Set TensorFlow's thread pools; 0 keeps TensorFlow's default (every core).

    Call it before the first model is loaded: TensorFlow fixes its pools when it runs its
    first op, after which a different value only logs a warning.
    """
    import tensorflow as tf

    for pool, threads in (("intra_op", intra_op_threads), ("inter_op", inter_op_threads)):
        get = getattr(tf.config.threading, f"get_{pool}_parallelism_threads")
        set_ = getattr(tf.config.threading, f"set_{pool}_parallelism_threads")
        if threads == 0 or get() == threads:
            continue
        try:
            set_(threads)
        except RuntimeError:  # the runtime is initialised: pools can no longer change
            log.warning(
                "TensorFlow already started: %s threads stay at %s", pool, get() or "default"
            )


def load_encoder(handle: str) -> Encoder:
    """Load the embedder at ``handle`` (a local SavedModel folder or a TF-Hub handle/URL).

    Supported models, tried in this order:

    1. objects whose ``__call__`` takes a 1-D tf.string tensor and returns a float
       ``[batch, dim]`` tensor (TF2 hub text embedders such as the Universal Sentence
       Encoder, and models from ``scripts/export_embedder.py``);
    2. a ``serving_default`` signature with one tf.string input and either one output or an
       output named ``embeddings``/``outputs``/``default``.

    Name, fingerprint and dimension come from ``embedder.json`` beside the model when it
    exists. Otherwise the fingerprint hashes the SavedModel's files (a folder) or the handle
    string (remote), the name is the last path component and the dimension is probed. The
    probe always runs, and a dimension disagreeing with ``embedder.json`` is an error.
    Raises FileNotFoundError when a local folder does not exist.
    """
    folder = _local_folder(handle)
    # tensorflow_text registers the tokeniser ops (NormalizeUTF8, ...) the graph uses; it must
    # be imported before hub.load or loading fails with "Op type not registered".
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    call = _find_callable(hub.load(handle))

    def embed(texts: list[str]) -> np.ndarray:
        return call(tf.constant(texts, dtype=tf.string)).numpy()

    dimension = int(embed(_PROBE).shape[-1])
    metadata = _read_metadata(folder) if folder else None
    if metadata is None:
        metadata = {"name": _name_of(handle), "fingerprint": _fingerprint(handle, folder)}
    elif int(metadata["dimension"]) != dimension:
        raise ValueError(
            f"{handle}: {METADATA_FILE} says {metadata['dimension']} dims, model {dimension}"
        )
    encoder = Encoder(metadata["name"], metadata["fingerprint"], dimension, handle, embed)
    log.info(
        "loaded embedder %s (%s, %d dims) from %s",
        encoder.name,
        encoder.fingerprint,
        dimension,
        handle,
    )
    return encoder


def _local_folder(handle: str) -> Path | None:
    """The folder a local handle points to (None for remote ones); it must exist."""
    if "://" in handle:
        return None
    folder = Path(handle).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No embedder SavedModel at {folder}. Export it with `make export` or "
            f"`python scripts/export_embedder.py --out {folder}`."
        )
    return folder


def _find_callable(model) -> Callable:
    """Return a function mapping a tf.string batch to a float [batch, dim] tensor."""
    if callable(model):
        return model
    signature = getattr(model, "signatures", {}).get("serving_default")
    if signature is None:
        raise TypeError("model is neither callable nor has a serving_default signature")
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
        raise TypeError(f"serving_default takes {sorted(inputs)}, expected one string input")
    (input_name,) = inputs

    def call(texts):
        outputs = signature(**{input_name: texts})
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        for key in ("embeddings", "outputs", "default"):
            if key in outputs:
                return outputs[key]
        raise TypeError(f"serving_default returns {sorted(outputs)}; which is the embedding?")

    return call


def _read_metadata(folder: Path) -> dict | None:
    """Contents of ``folder/embedder.json``, or None when there is none."""
    path = folder / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _name_of(handle: str) -> str:
    """The last non-empty path component of a folder or URL."""
    return [part for part in handle.rstrip("/").split("/") if part][-1]


def _fingerprint(handle: str, folder: Path | None) -> str:
    """Hash a folder's files (relative paths and bytes) or, for a remote handle, the handle."""
    digest = hashlib.sha256()
    if folder is None:
        digest.update(handle.encode())
        return digest.hexdigest()[:16]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
