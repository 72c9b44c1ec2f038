"""The `Embedder` interface and what both of its implementations share.

Kept apart from the implementations so that code which only consumes vectors (the training
pipeline, the prediction API in remote mode, the fast tests) depends on this small module alone:
nothing here loads TensorFlow or opens a connection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


def assemble(
    texts: Sequence[str], found: list[np.ndarray | None], computed: dict[str, np.ndarray], dim: int
) -> tuple[np.ndarray, list[bool]]:
    """Merge cache hits (`found`, None for a miss) and fresh vectors (`computed`, by text).

    Returns the matrix [len(texts), dim] in input order and, per text, whether it was a hit.
    """
    out = np.empty((len(texts), dim), dtype=np.float32)
    cached = []
    for i, (text, vector) in enumerate(zip(texts, found, strict=True)):
        cached.append(vector is not None)
        out[i] = vector if vector is not None else computed[text]
    return out, cached
