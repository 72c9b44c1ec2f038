"""The embedding cache that `scripts/batch.py embed` writes and training reads.

Layout: Parquet under DC_EMBEDDING_CACHE_DIR, partitioned by embedder fingerprint
(`fingerprint=<fp>/part-*.parquet`), columns text and vector (float32 list). A head must be
trained on vectors of one embedder, so only the partition of the embedder in use is read: the
vectors of another encoder are never mixed in. Reading needs pyarrow only, not Spark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cached_vectors(
    folder: str | Path, fingerprint: str, texts: Iterable[str]
) -> dict[str, np.ndarray]:
    """The cached vectors of those of `texts` the cache holds for `fingerprint` (float32 1-D
    arrays), by text; empty when the folder or the embedder's partition does not exist."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    partition = Path(folder) / f"fingerprint={fingerprint}"
    if not partition.is_dir():
        return {}
    wanted = sorted(set(texts))
    if not wanted:
        return {}
    table = ds.dataset(partition, format="parquet").to_table(
        columns=["text", "vector"], filter=pc.field("text").isin(wanted)
    )
    found: dict[str, np.ndarray] = {}
    texts_column = table.column("text").to_pylist()
    vectors = table.column("vector").to_pylist()
    for text, vector in zip(texts_column, vectors, strict=True):
        found[text] = np.asarray(vector, dtype=np.float32)
    log.info(
        "embedding cache %s: %d of %d texts found for embedder %s",
        folder,
        len(found),
        len(wanted),
        fingerprint,
    )
    return found
