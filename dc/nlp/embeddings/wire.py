"""The wire format of the embedder service, shared by the service and `RemoteEmbedder`.

Both ends import the same constants and codecs, so that the format is defined once. A request is
JSON (`{"texts": [...]}`); the answer is JSON, or with `Accept: application/octet-stream` the
compact binary form: the body is the float32 matrix [count, dimension], little-endian, row-major,
and the metadata travels in headers. Nothing here knows HTTP libraries or TensorFlow.
"""

from __future__ import annotations

import numpy as np

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
