"""The ONNX Runtime backend: the ONNX export of the encoder, tokenised by HF `tokenizers`.

The export (`dc.nlp.onnx_export`, written by `make export` into `<DC_EMBEDDER_HANDLE>/onnx/`)
holds an fp32 and an int8 graph taking token ids and an attention mask, and the weights package's
`tokenizer.json`. Tokenisation runs here, outside the graph, with the reference implementation
of the tokeniser the TF graph re-implements (tests/model/test_backends.py holds the two equal on
the golden phrases and on every training phrase).

**Length-aware batching.** Texts are tokenised first, so their exact lengths are known before the
graph runs: a call is padded to its longest text only, and a call of more than `length_batch`
texts is sorted by length and run in chunks of at most `length_batch`, each padded to its own
longest, so that one long text does not make every short one pay for its padding. The result
rows keep the order of the input.

onnxruntime and tokenizers are imported only when a model is loaded.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dc.nlp.export import MAX_TOKENS, METADATA_FILE
from dc.nlp.onnx_export import ONNX_DIR, TOKENIZER_FILE

log = logging.getLogger(__name__)

_PAD_ID = 0


@dataclass(frozen=True)
class OnnxModel:
    """What the ONNX backend loaded: the embedding function and its model's identity."""

    embed: Callable[[list[str]], np.ndarray]
    name: str
    fingerprint: str
    dimension: int
    path: Path


def onnx_folder(handle: str) -> Path:
    """The ONNX export inside the export folder ``handle``; FileNotFoundError with the fix."""
    if "://" in handle:
        raise FileNotFoundError(
            f"the ONNX backend needs a local export folder, not {handle}: set "
            "DC_EMBEDDER_HANDLE to the folder `make export` writes, or DC_ENCODER_BACKEND=tf"
        )
    folder = Path(handle).expanduser() / ONNX_DIR
    if not (folder / METADATA_FILE).is_file():
        raise FileNotFoundError(
            f"No ONNX export at {folder}. Export it with `make export` or "
            f"`python scripts/export_embedder.py --out {Path(handle).expanduser()}`."
        )
    return folder


def load_onnx(
    handle: str,
    variant: str = "fp32",
    *,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    length_batch: int = 0,
) -> OnnxModel:
    """Load the ``variant`` ("fp32" or "int8") of the ONNX export in the folder ``handle``.

    Args:
        intra_op_threads: ONNX Runtime threads inside one call (0: one per core).
        inter_op_threads: threads running independent nodes at once (1: sequential).
        length_batch: most texts per graph run after sorting by length (0: one run per call).
    """
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = onnx_folder(handle)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    if variant not in metadata["variants"]:
        raise ValueError(f"{folder}: no {variant!r} variant (has {sorted(metadata['variants'])})")
    entry = metadata["variants"][variant]
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads that spin while waiting for work steal the other encoder worker's core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model_path = str(folder / entry["file"])
    sessions = threading.local()

    def session() -> ort.InferenceSession:
        # One session per calling thread (each encoder worker): concurrent runs of one session
        # share its memory arena and serialise on it (bench/results/backends.md).
        own = getattr(sessions, "session", None)
        if own is None:
            own = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
            sessions.session = own
        return own

    session()  # load now, in the loading thread: a broken file fails here, not in a request
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    tokenizer.no_padding()  # padded here, per chunk, to the chunk's longest text
    tokenizer.enable_truncation(MAX_TOKENS)  # sentence-transformers' max_seq_length

    def token_ids(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch_fast(texts)]

    def run(ids: list[list[int]]) -> np.ndarray:
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        batch = np.full((len(ids), int(lengths.max())), _PAD_ID, dtype=np.int64)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = row
        mask = (np.arange(batch.shape[1]) < lengths[:, None]).astype(np.int64)
        return session().run(None, {"input_ids": batch, "attention_mask": mask})[0]

    def embed(texts: list[str]) -> np.ndarray:
        ids = token_ids(texts)
        if not length_batch or len(ids) <= length_batch:
            return run(ids)
        order = np.argsort([len(row) for row in ids], kind="stable")
        out = np.empty((len(ids), dimension), dtype=np.float32)
        for start in range(0, len(order), length_batch):
            chunk = order[start : start + length_batch]
            out[chunk] = run([ids[i] for i in chunk])
        return out

    dimension = int(metadata["dimension"])
    model = OnnxModel(embed, metadata["name"], entry["fingerprint"], dimension, folder)
    log.info(
        "ONNX Runtime %s, %s variant, %d intra-op and %d inter-op threads, length batches of %s",
        ort.__version__,
        variant,
        intra_op_threads,
        inter_op_threads,
        length_batch or "any size",
    )
    return model
