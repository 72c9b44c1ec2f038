"""What runs in Spark's Python workers: the encoder and the heads loaded once per worker process,
and the functions `mapInPandas` calls on each partition's Arrow batches.

Spark keeps its Python workers between tasks (`spark.python.worker.reuse`), so the module-level
cache below holds each worker's encoder (about 4 s and 0.5 GB to load) and heads for the whole
job: a partition pays for loading only on the worker's first task. Texts are checked with the
API's rules (`check_phrase`); a text that breaks one comes back with its `error` and no
prediction, and the job reports it and leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dc.errors import DCError, EmbedderMismatch

# (handle, threads) -> Encoder; version folder -> Head. One of each per worker process.
_ENCODERS: dict[tuple[str, int], Any] = {}
_HEADS: dict[str, Any] = {}

SCORE_SCHEMA = (
    "key string, text string, model string, version string, label string, probability double, "
    "top_k array<struct<label:string,probability:double>>, fallback boolean, "
    "embedder_fingerprint string, error string"
)
EMBED_SCHEMA = "fingerprint string, text string, vector array<float>, error string"


@dataclass(frozen=True)
class HeadRef:
    """A head to score with: its model, version and the version folder the workers read."""

    model: str
    version: str
    folder: str


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs, shipped with the function (plain values: it is pickled)."""

    handle: str
    backend: str
    encoder_threads: int
    encoder_batch: int
    length_batch: int
    max_chars: int
    top_k: int
    heads: tuple[HeadRef, ...] = ()
    extra: tuple[str, ...] = ()  # DC_ENCODER_EXTRA: the composite's further encoders


def encoder(config: WorkerConfig):
    """This worker's encoder, loaded on first use, on the service's backend (DC_ENCODER_BACKEND)
    with `encoder_threads` threads inside a call."""
    key = (config.handle, config.backend, config.encoder_threads, config.extra)
    if key not in _ENCODERS:
        from dc.nlp.encoder import load_encoder

        _ENCODERS[key] = load_encoder(
            config.handle,
            config.backend,
            intra_op_threads=config.encoder_threads,
            inter_op_threads=1,
            length_batch=config.length_batch,
            extra=config.extra,
        )
    return _ENCODERS[key]


def head(ref: HeadRef):
    """This worker's copy of a head, loaded on first use."""
    if ref.folder not in _HEADS:
        from dc.predict import load_head

        _HEADS[ref.folder] = load_head(ref.folder)
    return _HEADS[ref.folder]


def check_texts(texts: list[Any], max_chars: int) -> list[str | None]:
    """Per text: None when it may be classified, else why not (the API's own message)."""
    from dc.nlp.validation import check_phrase

    problems: list[str | None] = []
    for text in texts:
        if text is None:
            problems.append("the text is missing (NULL)")
            continue
        try:
            check_phrase(text, max_chars=max_chars)
        except DCError as exc:
            problems.append(exc.message)
        else:
            problems.append(None)
    return problems


def embed(config: WorkerConfig, texts: list[str]) -> np.ndarray:
    """Vectors of `texts` in encoder batches of `encoder_batch`, in order."""
    model = encoder(config)
    if not texts:
        return np.zeros((0, model.dimension), dtype=np.float32)
    size = config.encoder_batch
    return np.concatenate([model.encode(texts[i : i + size]) for i in range(0, len(texts), size)])


def score_partition(batches: Iterator[Any], config: WorkerConfig) -> Iterator[Any]:
    """`mapInPandas` over (key, text) batches -> SCORE_SCHEMA rows: one per text and head for
    the texts that pass, one row with `error` for each that does not.

    Raises:
        EmbedderMismatch: a head was trained on another embedder than this encoder (the job
            fails, as serving refuses such a head).
    """
    import pandas as pd

    from dc.postprocessing import postprocess

    model = encoder(config)
    heads = [head(ref) for ref in config.heads]
    for loaded in heads:
        if loaded.embedder_fingerprint != model.fingerprint:
            raise EmbedderMismatch(
                f"model {loaded.name!r} version {loaded.version} was trained on embedder "
                f"{loaded.embedder_fingerprint}, not on {model.fingerprint} ({config.handle})"
            )
    for frame in batches:
        keys = frame["key"].tolist()
        texts = frame["text"].tolist()
        problems = check_texts(texts, config.max_chars)
        good = [i for i, problem in enumerate(problems) if problem is None]
        vectors = embed(config, [texts[i] for i in good])
        columns: dict[str, list] = {name: [] for name in _SCORE_COLUMNS}
        for loaded in heads:
            predictions = postprocess(
                loaded.predict_proba(vectors), loaded.labels, config.top_k, loaded.rule
            )
            for i, prediction in zip(good, predictions, strict=True):
                _append(
                    columns,
                    key=keys[i],
                    text=texts[i],
                    model=loaded.name,
                    version=loaded.version,
                    label=prediction.label,
                    probability=float(prediction.probability),
                    top_k=prediction.top_k_dicts(),
                    fallback=bool(prediction.fallback),
                    embedder_fingerprint=model.fingerprint,
                    error=None,
                )
        for i, problem in enumerate(problems):
            if problem is not None:
                _append(columns, key=keys[i], text=texts[i], error=problem)
        yield pd.DataFrame(columns)


def embed_partition(batches: Iterator[Any], config: WorkerConfig) -> Iterator[Any]:
    """`mapInPandas` over (text) batches -> EMBED_SCHEMA rows, a vector per text that passes."""
    import pandas as pd

    model = encoder(config)
    for frame in batches:
        texts = frame["text"].tolist()
        problems = check_texts(texts, config.max_chars)
        good = [i for i, problem in enumerate(problems) if problem is None]
        vectors = embed(config, [texts[i] for i in good])
        rows = {
            "fingerprint": [model.fingerprint] * len(good),
            "text": [texts[i] for i in good],
            "vector": list(vectors),
            "error": [None] * len(good),
        }
        for i, problem in enumerate(problems):
            if problem is not None:
                rows["fingerprint"].append(model.fingerprint)
                rows["text"].append(texts[i])
                rows["vector"].append(None)
                rows["error"].append(problem)
        yield pd.DataFrame(rows)


_SCORE_COLUMNS = (
    "key", "text", "model", "version", "label", "probability", "top_k", "fallback",
    "embedder_fingerprint", "error",
)  # fmt: skip


def _append(columns: dict[str, list], **values: Any) -> None:
    for name in _SCORE_COLUMNS:
        columns[name].append(values.get(name))
