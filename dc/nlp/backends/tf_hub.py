"""The TF-Hub backend: a SavedModel taking raw strings, tokeniser inside the graph.

TensorFlow is imported only when a model is loaded, so importing this module is cheap (load
models after gunicorn forks, never before).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_PROBE = ["probe phrase"]


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


def load_tf_hub(handle: str) -> tuple[Callable[[list[str]], np.ndarray], int]:
    """Load the SavedModel at ``handle``; return its embedding function and its dimension.

    Supported models, tried in this order:

    1. objects whose ``__call__`` takes a 1-D tf.string tensor and returns a float
       ``[batch, dim]`` tensor (TF2 hub text embedders such as the Universal Sentence
       Encoder, and models from ``scripts/export_embedder.py``);
    2. a ``serving_default`` signature with one tf.string input and either one output or an
       output named ``embeddings``/``outputs``/``default``.
    """
    # tensorflow_text registers the tokeniser ops (NormalizeUTF8, ...) the graph uses; it must
    # be imported before hub.load or loading fails with "Op type not registered".
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    call = _find_callable(hub.load(handle))

    def embed(texts: list[str]) -> np.ndarray:
        return call(tf.constant(texts, dtype=tf.string)).numpy()

    return embed, int(embed(_PROBE).shape[-1])


def fingerprint_of(handle: str, folder: Path | None) -> str:
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
