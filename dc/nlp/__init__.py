"""Text and embedding code: the encoder backend, its export, the phrase cache, micro-batching and
the `Embedder` client interface."""
