"""Export all-MiniLM-L6-v2 as ONNX graphs for ONNX Runtime: fp32, and int8 by dynamic quantisation.

The graph is built here from the same ``model.safetensors`` as the TF SavedModel
(:mod:`dc.nlp.export`), node by node with ``onnx.helper``, in the layout of the reference BERT
export (separate query/key/value projections, additive attention mask, erf GELU, LayerNorm), so
that ONNX Runtime's transformer optimiser recognises it and fuses attention, GELU and the
skip-LayerNorms. Inputs are token ids: tokenisation happens outside the graph with the HF
``tokenizers`` package from the shipped ``tokenizer.json`` (``dc.nlp.backends.onnx``), the same
normaliser the TF graph re-implements. Outputs are the same L2-normalised mean-pooled vectors.

The folder written (``<export>/onnx/``):

- ``model.onnx``: fp32, optimised (fused) for CPU;
- ``model.int8.onnx``: the same graph with every weight matrix quantised to int8
  (``onnxruntime.quantization.quantize_dynamic``; activations quantised per call);
- ``tokenizer.json``: the weights package's tokenizer, as shipped;
- ``embedder.json``: name, dimension and one fingerprint per variant. fp32 keeps the SavedModel's
  fingerprint (same weights and tokeniser, vectors equal to 1e-5: tests/model/test_backends.py);
  int8 gets its own, so heads trained on fp32 vectors are refused on it and vice versa.

Only ``numpy``, ``safetensors`` and ``onnx`` (plus ``onnxruntime`` for the fusion and the
quantisation) are needed: no TensorFlow, so the export runs in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dc.nlp.export import (
    MAX_TOKENS,
    METADATA_FILE,
    MODEL_NAME,
    _describe_source,
    _read_config,
    _replace_dir,
    compute_fingerprint,
)

ONNX_DIR = "onnx"  # inside the export folder (DC_EMBEDDER_HANDLE)
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17  # LayerNormalization
# Bump when the graph or the quantisation changes in a way that changes outputs; it is part of
# the int8 fingerprint (the fp32 graph is held to the SavedModel's vectors by the tests instead).
ONNX_EXPORT_VERSION = "1"
QUANTISATION = "dynamic-qint8-per-channel-matmul-attention"
VARIANTS = {"fp32": FP32_FILE, "int8": INT8_FILE}


def int8_fingerprint(fp32_fingerprint: str) -> str:
    """The fingerprint of the int8 variant: derived from the fp32 one and the quantisation."""
    text = f"{fp32_fingerprint}|onnx-int8|{ONNX_EXPORT_VERSION}|{QUANTISATION}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def export_onnx(source_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Write the ONNX variants of the model in ``source_dir`` to ``out_dir``; return metadata.

    ``out_dir`` is replaced as a whole (written beside it, then renamed), so a reader never sees
    half an export.
    """
    source, out = Path(source_dir), Path(out_dir)
    config = _read_config(source)
    fingerprint = compute_fingerprint(source)
    metadata = {
        "name": MODEL_NAME,
        "dimension": config["hidden_size"],
        "max_tokens": MAX_TOKENS,
        "onnx_export_version": ONNX_EXPORT_VERSION,
        "opset": OPSET,
        "source": _describe_source(source),
        "variants": {
            "fp32": {"file": FP32_FILE, "fingerprint": fingerprint},
            "int8": {
                "file": INT8_FILE,
                "fingerprint": int8_fingerprint(fingerprint),
                "quantisation": QUANTISATION,
            },
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the export from a service's own user
    try:
        raw = tmp / "raw.onnx"
        _save(build_graph(source, config), raw)
        with _quiet():  # the optimiser and quantiser log every tensor on the root logger
            _optimise(raw, tmp / FP32_FILE, config)
            _quantise(tmp / FP32_FILE, tmp / INT8_FILE)
        raw.unlink()
        shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metadata


def onnx_current(out_dir: str | os.PathLike, fingerprint: str) -> bool:
    """Whether ``out_dir`` holds a complete ONNX export of the weights with ``fingerprint``."""
    out = Path(out_dir)
    try:
        metadata = json.loads((out / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    variants = metadata.get("variants", {})
    return (
        metadata.get("onnx_export_version") == ONNX_EXPORT_VERSION
        and variants.get("fp32", {}).get("fingerprint") == fingerprint
        and all((out / name).is_file() for name in (*VARIANTS.values(), TOKENIZER_FILE))
    )


def build_graph(source: Path, config: dict):
    """The fp32 ``onnx.ModelProto``: (input_ids, attention_mask) int64 -> embeddings float32."""
    from safetensors.numpy import load_file

    weights = load_file(str(source / "model.safetensors"))
    g = _GraphBuilder()
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = float(config["layer_norm_eps"])

    # Embeddings: word + position + token type 0 (folded into the position table), LayerNorm.
    positions = weights["embeddings.position_embeddings.weight"][:MAX_TOKENS]
    positions = positions + weights["embeddings.token_type_embeddings.weight"][0]
    length = g.op("Shape", "input_ids", start=1, end=2)  # [tokens], 1-D
    zero = g.const(np.array([0], np.int64))
    position = g.op("Slice", g.const(positions, "position_embeddings"), zero, length, zero)
    words = g.op(
        "Gather", g.const(weights["embeddings.word_embeddings.weight"], "word"), "input_ids"
    )
    x = g.op("Add", words, position)
    x = g.layer_norm(x, weights, "embeddings.LayerNorm", eps)

    # Additive mask as in transformers: padded keys get float32 min, so softmax gives them 0.
    # (Unsqueeze, Unsqueeze, Cast, Sub, Mul: the mask path ONNX Runtime's attention fusion knows.)
    key_bias = g.padding_bias()

    layers = [f"encoder.layer.{i}" for i in range(config["num_hidden_layers"])]
    x = g.encoder_layers(x, weights, layers, BERT_LAYER, key_bias, heads, hidden, eps)

    g.pool_and_normalise(x)
    return g.model(MODEL_NAME, hidden)


class LayerNames(NamedTuple):
    """Where one post-LayerNorm transformer layer keeps its weights (after its prefix)."""

    query: str
    key: str
    value: str
    attention_output: str
    attention_norm: str
    intermediate: str
    output: str
    output_norm: str


BERT_LAYER = LayerNames(
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)


class _GraphBuilder:
    """Collects nodes and initialisers, naming every intermediate value uniquely."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, array: np.ndarray, stem: str = "const") -> str:
        from onnx import numpy_helper

        name = self._name(stem)
        dtype = np.float32 if array.dtype.kind == "f" else array.dtype
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attributes) -> str:
        from onnx import helper

        output = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def dense(self, x: str, weights: dict, name: str) -> str:
        """``x @ W.T + b`` for a torch Linear stored as ``name.weight`` [out, in], ``name.bias``."""
        kernel = self.const(weights[f"{name}.weight"].T, name.replace(".", "_") + "_kernel")
        bias = self.const(weights[f"{name}.bias"], name.replace(".", "_") + "_bias")
        return self.op("Add", self.op("MatMul", x, kernel), bias)

    def layer_norm(self, x: str, weights: dict, name: str, eps: float) -> str:
        gamma = self.const(weights[f"{name}.weight"], name.replace(".", "_") + "_gamma")
        beta = self.const(weights[f"{name}.bias"], name.replace(".", "_") + "_beta")
        return self.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=eps)

    def encoder_layers(
        self,
        x: str,
        weights: dict,
        prefixes: list[str],
        names: LayerNames,
        bias: str,
        heads: int,
        hidden: int,
        eps: float,
    ) -> str:
        """Post-LayerNorm transformer layers (self-attention with the additive `bias` on its
        scaled scores, exact-GELU feed-forward), one per weight prefix, in the reference BERT
        layout that ONNX Runtime's attention fusion recognises."""
        head_dim = hidden // heads
        split_heads = self.const(np.array([0, 0, heads, head_dim], np.int64))
        merge_heads = self.const(np.array([0, 0, hidden], np.int64))
        scale = self.const(np.array(math.sqrt(head_dim), np.float32))
        for prefix in prefixes:

            def project(name, value, prefix=prefix):
                return self.dense(value, weights, f"{prefix}.{name}")

            def heads_of(name, perm, x=x):
                return self.op(
                    "Transpose", self.op("Reshape", project(name, x), split_heads), perm=perm
                )

            query = heads_of(names.query, [0, 2, 1, 3])
            key = heads_of(names.key, [0, 2, 3, 1])
            value = heads_of(names.value, [0, 2, 1, 3])
            scores = self.op("Add", self.op("Div", self.op("MatMul", query, key), scale), bias)
            context = self.op("MatMul", self.op("Softmax", scores, axis=-1), value)
            context = self.op(
                "Reshape", self.op("Transpose", context, perm=[0, 2, 1, 3]), merge_heads
            )
            attended = project(names.attention_output, context)
            x = self.layer_norm(
                self.op("Add", attended, x), weights, f"{prefix}.{names.attention_norm}", eps
            )
            inner = self.gelu(project(names.intermediate, x))
            out = project(names.output, inner)
            x = self.layer_norm(
                self.op("Add", out, x), weights, f"{prefix}.{names.output_norm}", eps
            )
        return x

    def padding_bias(self) -> str:
        """The additive mask as in transformers, [batch, 1, 1, tokens]: padded keys get float32
        min, so softmax gives them 0 (Unsqueeze, Unsqueeze, Cast, Sub, Mul: the mask path ONNX
        Runtime's attention fusion knows)."""
        from onnx import TensorProto

        key_bias = self.op("Unsqueeze", "attention_mask", self.const(np.array([1], np.int64)))
        key_bias = self.op("Unsqueeze", key_bias, self.const(np.array([2], np.int64)))
        key_bias = self.op("Cast", key_bias, to=TensorProto.FLOAT)
        key_bias = self.op("Sub", self.const(np.array(1.0, np.float32)), key_bias)
        return self.op("Mul", key_bias, self.const(np.array(np.finfo(np.float32).min, np.float32)))

    def pool_and_normalise(self, x: str) -> None:
        """Mean pooling of `x` over real tokens, then L2 normalisation, into "embeddings"."""
        from onnx import TensorProto

        mask = self.op("Cast", "attention_mask", to=TensorProto.FLOAT)
        weights_3d = self.op("Unsqueeze", mask, self.const(np.array([2], np.int64)))
        axis_1 = self.const(np.array([1], np.int64))
        summed = self.op("ReduceSum", self.op("Mul", x, weights_3d), axis_1, keepdims=0)
        count = self.op(
            "Max",
            self.op("ReduceSum", mask, axis_1, keepdims=1),
            self.const(np.array(1e-9, np.float32)),
        )
        mean = self.op("Div", summed, count)
        norm = self.op("Sqrt", self.op("ReduceSum", self.op("Mul", mean, mean), axis_1, keepdims=1))
        norm = self.op("Max", norm, self.const(np.array(1e-12, np.float32)))
        self.op("Div", mean, norm, output="embeddings")

    def model(self, name: str, hidden: int):
        """The `onnx.ModelProto`: (input_ids, attention_mask) int64 -> embeddings float32."""
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes,
            name,
            inputs=[
                helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
                helper.make_tensor_value_info(
                    "attention_mask", TensorProto.INT64, ["batch", "tokens"]
                ),
            ],
            outputs=[
                helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden])
            ],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dc"
        )
        model.ir_version = 8  # opset 17's IR: readable by every ONNX Runtime since 1.12
        return model

    def gelu(self, x: str) -> str:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in the pattern ONNX Runtime fuses."""
        scaled = self.op("Div", x, self.const(np.array(math.sqrt(2.0), np.float32)))
        erf = self.op("Add", self.op("Erf", scaled), self.const(np.array(1.0, np.float32)))
        return self.op("Mul", self.op("Mul", x, erf), self.const(np.array(0.5, np.float32)))


@contextlib.contextmanager
def _quiet():
    """Raise the root logger to ERROR for the duration (ONNX Runtime's tools log on it)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _save(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _optimise(raw: Path, out: Path, config: dict) -> None:
    """Fuse attention, GELU and skip-LayerNorms with ONNX Runtime's transformer optimiser.

    The fused model holds only ops ONNX Runtime's CPU provider runs; the result is saved, so a
    serving process does not redo the fusion at every start.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=config["num_attention_heads"],
        hidden_size=config["hidden_size"],
        opt_level=0,  # the fusions only; the session applies its own graph passes at load
    )
    model.save_model_to_file(str(out))


def _quantise(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantisation of the weights of every MatMul and fused attention, per output
    channel (per tensor lost 3 points of cosine to fp32: 0.969 against 0.994 on BANKING77's
    test phrases); their activations are quantised per call. The embedding tables and the
    LayerNorms stay fp32."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        # The fused contrib ops defeat ONNX shape inference: every tensor here is float.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
