"""Score trained heads with NumPy: a head's weights, read straight from its `model.keras`.

An API worker scores many small heads on each embedding. Calling a Keras model costs about a
millisecond of framework overhead per call (and `model.predict` tens of milliseconds), while the
arithmetic of a head is two small matrix products: microseconds. Importing Keras also means
importing TensorFlow (seconds, hundreds of MB per process), which a worker using the remote
embedder otherwise never needs. So `load_head` reads the Keras 3 archive itself (a zip holding
`config.json` and `model.weights.h5`) with `zipfile`, `json` and `h5py`, and `Head.predict_proba`
runs the layers as NumPy operations (`bench/bench_heads.py` measures the difference;
`tests/test_predict.py` checks the probabilities against Keras' own within 1e-5).

Only what `dc.keras_head` makes is supported: a functional chain
`InputLayer -> [Dense(relu) -> Dropout] x n -> Dense(softmax)` (Dense with relu, softmax or
linear activation, with or without bias; Dropout is the identity at inference), or an ensemble of
such chains from the one input whose outputs an `Average` layer averages (the seed ensemble of
`dc.keras_head.build_ensemble`, averaged in probability). Anything else raises `UnsupportedHead`
naming the layer, rather than scoring it wrongly.

This module must never import keras or tensorflow (a test asserts it).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dc.errors import InvalidInput
from dc.model_config import ServingConfig

# Version folder layout (kept in step with dc.artifacts, which is not imported here because it
# pulls in scikit-learn; a test checks the two agree).
MANIFEST_FILE = "manifest.json"
MODELS_DIR = "models"
MODEL_FILE = "model.keras"
_KERAS_CONFIG = "config.json"
_KERAS_WEIGHTS = "model.weights.h5"

ACTIVATIONS = ("relu", "softmax", "linear")


class UnsupportedHead(ValueError):
    """A model archive holds something `Head` cannot score exactly (a layer, an activation)."""


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """One dense layer as NumPy arrays: `activation(x @ kernel + bias)`."""

    name: str
    kernel: np.ndarray  # float32 [inputs, units], C-contiguous
    bias: np.ndarray | None  # float32 [units], or None when the layer has no bias
    activation: str  # "relu" | "softmax" | "linear"


@dataclass(frozen=True, eq=False)
class Head:
    """A trained head loaded for serving: its identity, its labels, its rule and its weights.

    Build it with `load_head`. Immutable, so one instance can be shared by every request thread.

    Attributes:
        name, region, version: the registry's key of the version.
        model_type: the head's architecture as the manifest names it (e.g. "mlp-1x512").
        labels: class names in class-id order (column order of `predict_proba`).
        embedder_fingerprint: the embedder the head was trained on; vectors of any other
            embedder must not be scored by it.
        dimension: the embedding size it takes (384 for all-MiniLM-L6-v2).
        metrics: the version's test-set metrics (accuracy, weighted_f1, macro_f1, n).
        rule: the `[serving]` rule of the version's config (no rule when it had none).
        version_dir: the version folder it was loaded from.
        members: the dense layers of each ensemble member, input side first (one member for a
            single head); the head's probabilities are the members' averaged.
    """

    name: str
    region: str
    version: str
    model_type: str
    labels: tuple[str, ...]
    embedder_fingerprint: str
    dimension: int
    metrics: dict[str, Any]
    rule: ServingConfig
    version_dir: Path
    members: tuple[tuple[DenseLayer, ...], ...] = field(repr=False)

    @property
    def classes(self) -> int:
        """The number of classes (columns of `predict_proba`)."""
        return len(self.labels)

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities of embedding vectors.

        Args:
            vectors: float32 [n, dimension] (other float dtypes are converted); one 1-D vector
                of length `dimension` is taken as a batch of one.

        Returns:
            float32 [n, classes], each row summing to 1 (for a softmax output layer).

        Raises:
            InvalidInput: the vectors are not [n, dimension].
        """
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[np.newaxis, :]
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise InvalidInput(
                f"model {self.name!r} takes vectors of dimension {self.dimension}, got an array "
                f"of shape {np.shape(vectors)}"
            )
        total = _run_chain(self.members[0], x)
        for member in self.members[1:]:
            total += _run_chain(member, x)
        if len(self.members) > 1:
            total /= len(self.members)
        return total


def _run_chain(layers: tuple[DenseLayer, ...], x: np.ndarray) -> np.ndarray:
    """One member's output for vectors `x` (never written to)."""
    for layer in layers:
        x = x @ layer.kernel  # a new array, so the in-place steps below never touch input
        if layer.bias is not None:
            x += layer.bias
        if layer.activation == "relu":
            np.maximum(x, 0.0, out=x)
        elif layer.activation == "softmax":
            # Stable softmax: shifting by the row maximum keeps exp() from overflowing.
            x -= x.max(axis=1, keepdims=True)
            np.exp(x, out=x)
            x /= x.sum(axis=1, keepdims=True)
    return x


def head_path(version_dir: Path, model_type: str) -> Path:
    """The head's Keras archive inside a version folder: `models/<model_type>/model.keras`."""
    return Path(version_dir) / MODELS_DIR / model_type / MODEL_FILE


def load_head(version_dir: str | Path, *, rule: ServingConfig | None = None) -> Head:
    """Load a version's head for NumPy scoring, without Keras or TensorFlow.

    Args:
        version_dir: the version folder (`<artifacts_dir>/<region>/<model>/<version>`).
        rule: the serving rule to use instead of the one in the manifest's config.

    Returns:
        The head, its labels, metrics, embedder fingerprint and serving rule.

    Raises:
        FileNotFoundError: the manifest or the model archive is missing.
        UnsupportedHead: the archive holds a layer or activation `Head` cannot score.
        ValueError: the manifest, the config and the weights disagree (shapes, class count,
            dimension) or the archive is damaged.
    """
    version_dir = Path(version_dir)
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    try:
        model_type = manifest["architecture"]
        labels = tuple(str(label) for label in manifest["labels"])
        embedder = manifest["embedder"]
        fingerprint, dimension = str(embedder["fingerprint"]), int(embedder["dimension"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{version_dir / MANIFEST_FILE}: missing or invalid {exc}") from exc
    config = manifest.get("config") or {}
    if rule is None:
        # Versions trained before `[serving]` existed have no such key: no rule.
        rule = ServingConfig.model_validate(config.get("serving") or {})

    archive = head_path(version_dir, model_type)
    members = read_keras_members(archive)
    for layers in members:
        if layers[0].kernel.shape[0] != dimension:
            raise ValueError(
                f"{archive}: the head takes {layers[0].kernel.shape[0]}-d vectors but the "
                f"manifest's embedder has dimension {dimension}"
            )
        if layers[-1].kernel.shape[1] != len(labels):
            raise ValueError(
                f"{archive}: the head has {layers[-1].kernel.shape[1]} outputs but the manifest "
                f"lists {len(labels)} labels"
            )
    return Head(
        name=str(manifest["name"]),
        region=str(manifest["region"]),
        version=str(manifest["version"]),
        model_type=model_type,
        labels=labels,
        embedder_fingerprint=fingerprint,
        dimension=dimension,
        metrics=dict((manifest.get("metrics") or {}).get("test") or {}),
        rule=rule,
        version_dir=version_dir,
        members=members,
    )


def read_keras_layers(path: str | Path) -> tuple[DenseLayer, ...]:
    """Read the dense layers of a single-chain Keras 3 `.keras` head (`build_head`'s).

    Returns:
        The dense layers, input side first (Dropout and InputLayer leave nothing to compute).

    Raises:
        UnsupportedHead: an ensemble (use `read_keras_members`), or a layer, activation, dtype
            or graph shape other than `build_head`'s.
        ValueError: the archive is damaged or its weights do not match its config.
    """
    members = read_keras_members(path)
    if len(members) != 1:
        raise UnsupportedHead(f"{path}: an ensemble of {len(members)} members, not one chain")
    return members[0]


def read_keras_members(path: str | Path) -> tuple[tuple[DenseLayer, ...], ...]:
    """Read the dense layers of each member of a Keras 3 `.keras` head made by `dc.keras_head`.

    A single head is one chain from the input to its softmax; an ensemble is several such
    chains from the one input, averaged by an `Average` layer (the model's output). Keras 3
    stores layer weights under `layers/<snake_case class name>[_<n>]/vars/<i>`, numbered per
    class name in the order of `model.layers` (`keras.src.saving.saving_lib`); this repeats that
    naming, and checks it against the layer name Keras also records on each group.

    Returns:
        One tuple of dense layers per member, input side first.

    Raises:
        UnsupportedHead: a layer, activation, dtype or graph shape other than `dc.keras_head`'s.
        ValueError: the archive is damaged or its weights do not match its config.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(_KERAS_CONFIG))
            weights = archive.read(_KERAS_WEIGHTS)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path}: not a Keras 3 model archive: {exc}") from exc

    if config.get("class_name") != "Functional":
        raise UnsupportedHead(
            f"{path}: a {config.get('class_name')!r} model; only functional heads are supported"
        )
    specs = config["config"]["layers"]
    ends = _member_ends(path, specs, config["config"].get("output_layers"))
    dense: dict[str, DenseLayer] = {}
    used: dict[str, int] = {}
    with h5py.File(io.BytesIO(weights), "r") as store:
        for spec in specs:
            kind, layer_name = spec["class_name"], spec["config"]["name"]
            group_path = f"layers/{_unique(_snake_case(kind), used)}/vars"
            if kind in ("InputLayer", "Dropout", "Average"):
                continue  # no weights; Dropout is the identity at inference
            if kind != "Dense":
                raise UnsupportedHead(
                    f"{path}: layer {layer_name!r} is a {kind}; only InputLayer, Dense, Dropout "
                    "and Average are supported"
                )
            dense[layer_name] = _dense(path, spec["config"], store, group_path)
    by_name = {spec["config"]["name"]: spec for spec in specs}
    members = tuple(_trace_chain(path, by_name, end, dense) for end in ends)
    on_chains = [name for member in members for name in member[1]]
    visited = set(on_chains)
    if len(visited) != len(on_chains):
        shared = sorted({name for name in on_chains if on_chains.count(name) > 1})
        raise UnsupportedHead(
            f"{path}: layers {shared} are shared by members, not part of a plain chain each"
        )
    unused = [name for name in by_name if name not in visited and by_name[name]["class_name"]
              not in ("InputLayer", "Average")]  # fmt: skip
    if unused:
        raise UnsupportedHead(f"{path}: layers {unused} are not on a member's chain")
    return tuple(member[0] for member in members)


def _member_ends(path: Path, specs: list[dict], outputs: Any) -> list[str]:
    """The names of the members' last layers: the output itself, or the inputs of its Average."""
    if not specs or specs[0]["class_name"] != "InputLayer":
        raise UnsupportedHead(f"{path}: the first layer is not an InputLayer")
    if sum(spec["class_name"] == "InputLayer" for spec in specs) != 1:
        raise UnsupportedHead(f"{path}: the model has more than one input")
    names = _history_names(outputs)
    if len(names) != 1:
        raise UnsupportedHead(f"{path}: the model has {len(names)} outputs; one is supported")
    output = next(spec for spec in specs if spec["config"]["name"] == names[0])
    if output["class_name"] != "Average":
        return [names[0]]
    sources = _inputs_of(path, output)
    if len(sources) < 2 or len(set(sources)) != len(sources):
        raise UnsupportedHead(f"{path}: the Average layer must average distinct members")
    return sources


def _trace_chain(
    path: Path, by_name: dict[str, dict], end: str, dense: dict[str, DenseLayer]
) -> tuple[tuple[DenseLayer, ...], list[str]]:
    """Walk from a member's last layer back to the input: its dense layers and layer names."""
    names: list[str] = []
    name = end
    while by_name[name]["class_name"] != "InputLayer":
        if name in names or by_name[name]["class_name"] == "Average":
            raise UnsupportedHead(f"{path}: layer {name!r} is not part of a plain chain")
        names.append(name)
        sources = _inputs_of(path, by_name[name])
        if len(sources) != 1 or sources[0] not in by_name:
            raise UnsupportedHead(
                f"{path}: layer {name!r} does not simply follow one layer; only chains of "
                "layers (averaged, for an ensemble) are supported"
            )
        name = sources[0]
    names.reverse()
    layers = tuple(dense[name] for name in names if name in dense)
    if not layers:
        raise UnsupportedHead(f"{path}: the model has no Dense layer")
    for before, after in pairwise(layers):
        if before.kernel.shape[1] != after.kernel.shape[0]:
            raise ValueError(
                f"{path}: layer {after.name!r} takes {after.kernel.shape[0]} inputs but "
                f"{before.name!r} gives {before.kernel.shape[1]}"
            )
    return layers, names


def _inputs_of(path: Path, spec: dict) -> list[str]:
    """The names of the layers whose outputs `spec`'s layer takes (one call of it only)."""
    nodes = spec.get("inbound_nodes") or []
    if len(nodes) != 1:
        raise UnsupportedHead(
            f"{path}: layer {spec['config']['name']!r} is called {len(nodes)} times; once is "
            "supported"
        )
    args = nodes[0].get("args", [])
    if len(args) != 1:
        raise UnsupportedHead(f"{path}: layer {spec['config']['name']!r} takes {len(args)} args")
    names = _history_names(args[0])
    if not names:
        raise UnsupportedHead(f"{path}: layer {spec['config']['name']!r} takes no layer's output")
    return names


def _history_names(value: Any) -> list[str]:
    """The layer names of the Keras tensors in a config value (a tensor, or a list of them)."""
    if not isinstance(value, list) or _is_triple(value):
        value = [value]  # one tensor, or output_layers' bare [name, node, tensor] triple
    names = []
    for item in value:
        if isinstance(item, Mapping) and item.get("class_name") == "__keras_tensor__":
            names.append(item["config"]["keras_history"][0])
        elif _is_triple(item):
            names.append(item[0])  # output_layers' [name, node, tensor] triples
        else:
            return []
    return names


def _is_triple(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)


def _dense(path: Path, config: dict, store: h5py.File, group_path: str) -> DenseLayer:
    name = config["name"]
    activation = config.get("activation")
    if activation not in ACTIVATIONS:
        raise UnsupportedHead(
            f"{path}: layer {name!r} has activation {activation!r}; supported: {ACTIVATIONS}"
        )
    dtype = config.get("dtype")
    dtype_name = dtype.get("config", {}).get("name") if isinstance(dtype, Mapping) else dtype
    if dtype_name not in (None, "float32") or config.get("quantization_config"):
        raise UnsupportedHead(
            f"{path}: layer {name!r} computes in {dtype_name!r}"
            f"{' (quantized)' if config.get('quantization_config') else ''}; only float32 is "
            "supported"
        )
    if group_path not in store:
        raise ValueError(f"{path}: no weights at {group_path} for layer {name!r}")
    group = store[group_path]
    recorded = group.attrs.get("name")  # Keras >= 3.6 records the layer name on its group
    if recorded is not None and str(recorded) != name:
        raise ValueError(
            f"{path}: the weights at {group_path} belong to layer {recorded!r}, not {name!r}"
        )
    use_bias = bool(config.get("use_bias", True))
    expected = 2 if use_bias else 1
    if len(group) != expected:
        raise ValueError(
            f"{path}: layer {name!r} has {len(group)} weight arrays, expected {expected}"
        )
    kernel = np.ascontiguousarray(group["0"][()], dtype=np.float32)
    bias = np.ascontiguousarray(group["1"][()], dtype=np.float32) if use_bias else None
    units = int(config["units"])
    bias_ok = bias is None or bias.shape == (units,)
    if kernel.ndim != 2 or kernel.shape[1] != units or not bias_ok:
        raise ValueError(
            f"{path}: layer {name!r} has weights of shapes {kernel.shape} and "
            f"{None if bias is None else bias.shape} for {units} units"
        )
    kernel.setflags(write=False)  # shared by every request thread: never written
    if bias is not None:
        bias.setflags(write=False)
    return DenseLayer(name=name, kernel=kernel, bias=bias, activation=activation)


def _snake_case(name: str) -> str:
    """Keras' `naming.to_snake_case` (e.g. "InputLayer" -> "input_layer")."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:
    """Keras' `_get_unique_name`: the first use keeps the name, later ones get `_1`, `_2`..."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name
