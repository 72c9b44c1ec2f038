"""The Keras head: a small classifier on frozen sentence vectors.

`build_head` makes `Input(dim) -> [Dense(units, relu, L2) -> Dropout] x hidden_layers ->
Dense(classes, softmax)`, compiled with categorical cross-entropy (one-hot targets, so label
smoothing is available) and the optimizer `make_optimizer` builds. Keras (and so TensorFlow) is
imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dc.model_config import HeadConfig

if TYPE_CHECKING:
    import keras


def make_optimizer(config: HeadConfig) -> keras.optimizers.Optimizer:
    """Build the optimizer named in `config` ("adam", "adamw" or "sgd") at its learning rate.

    SGD uses Nesterov momentum 0.9 (plain SGD is far too slow on a softmax over ~100 classes);
    AdamW uses Keras' default decoupled weight decay (0.004).
    """
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")  # the config schema forbids it


def build_head(config: HeadConfig, input_dim: int, num_classes: int, seed: int) -> keras.Model:
    """Build and compile the classification head.

    Args:
        config: the `[head]` section (layers, units, dropout, L2, optimizer, label smoothing).
        input_dim: the embedder's dimension (384 for all-MiniLM-L6-v2).
        num_classes: size of the softmax.
        seed: seeds Python, NumPy and the framework (`keras.utils.set_random_seed`) and every
            initializer and dropout layer, so the same seed gives the same initial weights.

    Returns:
        A compiled functional model mapping float32 [batch, input_dim] vectors to class
        probabilities [batch, num_classes]; it expects one-hot targets.
    """
    import keras

    if num_classes < 2:
        raise ValueError(f"a classifier needs at least two classes, got {num_classes}")
    keras.utils.set_random_seed(seed)
    regulariser = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    inputs = keras.Input(shape=(input_dim,), dtype="float32", name="embedding")
    x = inputs
    for layer in range(config.hidden_layers):
        x = keras.layers.Dense(
            config.units,
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=seed + layer),
            kernel_regularizer=regulariser,
            name=f"hidden_{layer + 1}",
        )(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(
                config.dropout, seed=seed + layer, name=f"dropout_{layer + 1}"
            )(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1000),
        kernel_regularizer=regulariser,
        name="probabilities",
    )(x)
    model = keras.Model(inputs, outputs, name="head")
    model.compile(
        optimizer=make_optimizer(config),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def build_ensemble(members: list[keras.Model], temperature: float = 1.0) -> keras.Model:
    """One model serving `members` (heads of `build_head`) averaged in probability.

    Each member keeps its own chain of layers from the one input (named `m<k>_<layer>`; a
    single member keeps its names), and an `Average` layer averages their softmax outputs:
    `dc.predict` scores exactly this graph in NumPy. `temperature` (temperature scaling, from
    `dc.calibration`) is folded into each member's output layer, whose kernel and bias are
    divided by it: softmax((x W + b) / T) = softmax(x (W / T) + b / T), so the saved model
    gives the calibrated probabilities with no extra layer.

    The result is for inference (it is compiled only so that `evaluate` works); fit members
    with `build_head`.
    """
    import keras

    if not members:
        raise ValueError("an ensemble needs at least one member")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    first = members[0]
    inputs = keras.Input(shape=first.input_shape[1:], dtype="float32", name="embedding")
    outputs = []
    for index, member in enumerate(members):
        prefix = "" if len(members) == 1 else f"m{index + 1}_"
        x = inputs
        for layer in member.layers[1:]:  # [0] is the InputLayer
            config = layer.get_config()
            config["name"] = prefix + layer.name
            copy = type(layer).from_config(config)
            x = copy(x)
            weights = layer.get_weights()
            if layer is member.layers[-1] and temperature != 1.0:
                weights = [w / temperature for w in weights]
            copy.set_weights(weights)
        outputs.append(x)
    output = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="average")(outputs)
    model = keras.Model(inputs, output, name="head" if len(members) == 1 else "ensemble")
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    return model
