"""The embedding client: one `Embedder` interface, an in-process and a remote implementation.

`LocalEmbedder` runs the encoder in this process behind the LRU phrase cache and the micro-batcher
(the embedded default, and the engine inside the embedder service). `RemoteEmbedder` talks HTTP
to the central embedder service, with its own phrase cache so that repeated phrases keep working
even while the service is away. `create_embedder(settings)` picks one from `embedder_mode`:
swapping them is a setting, not a code change.

The package is split by who needs what: `interface` (the `Embedder` contract and `EmbedResult`),
`local` (the in-process engine), `remote` (the HTTP client) and `wire` (the service's wire
format, shared with `embedder/`). Importing this package loads none of TensorFlow: `local`
reaches it only when an encoder is loaded (`LocalEmbedder.from_settings`).
"""

from __future__ import annotations

from dc.config import Settings
from dc.nlp.embeddings.interface import Embedder, EmbedResult
from dc.nlp.embeddings.local import LocalEmbedder
from dc.nlp.embeddings.remote import RemoteEmbedder
from dc.nlp.embeddings.wire import (
    BINARY_MEDIA_TYPE,
    HEADER_CACHED,
    HEADER_COUNT,
    HEADER_DIMENSION,
    HEADER_FINGERPRINT,
    vectors_from_bytes,
    vectors_to_bytes,
)

__all__ = [
    "BINARY_MEDIA_TYPE",
    "HEADER_CACHED",
    "HEADER_COUNT",
    "HEADER_DIMENSION",
    "HEADER_FINGERPRINT",
    "EmbedResult",
    "Embedder",
    "LocalEmbedder",
    "RemoteEmbedder",
    "create_embedder",
    "vectors_from_bytes",
    "vectors_to_bytes",
]


def create_embedder(settings: Settings) -> Embedder:
    """Build the embedder the settings ask for (`embedder_mode`: local or remote)."""
    if settings.embedder_mode == "remote":
        return RemoteEmbedder.from_settings(settings)
    return LocalEmbedder.from_settings(settings)
