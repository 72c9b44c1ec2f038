"""NumPy heads (dc.predict) against Keras, the serving rule and top-k (dc.postprocessing).

The heads are real: two versions of a tiny BANKING77 model trained once per session
(tests/heads_support.py) on the real encoder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dc.errors import InvalidInput
from dc.model_config import ModelConfig, ServingConfig, load_config
from dc.postprocessing import (
    FULL_SORT_MAX_CLASSES,
    Prediction,
    apply_rule,
    choose_threshold,
    postprocess,
    top_k_indices,
)
from dc.predict import UnsupportedHead, load_head, read_keras_layers
from tests.conftest import REPO
from tests.heads_support import INTENTS, copy_version

pytestmark = pytest.mark.slow  # trains the tiny heads on the real encoder (once per session)


PHRASES = [
    "my new card still has not arrived",
    "someone stole my card, block it please",
    "what exchange rate do you use for euros",
    "my top up did not go through",
    "my pin is blocked after three wrong tries",
    "why was I charged for taking cash out",
    "hello",
    "",
]


@pytest.fixture(scope="module")
def vectors(encoder) -> np.ndarray:
    """Real embeddings of PHRASES, plus random unit vectors (inputs no training row is near)."""
    real = np.asarray(encoder.encode(PHRASES), dtype=np.float32)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(8, real.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return np.concatenate([real, noise])


# --- dc.predict: loading and scoring --------------------------------------------------------


def test_head_matches_keras_within_1e_5(tiny_versions, vectors):
    import keras

    for version in tiny_versions:
        head = load_head(version.version_dir)
        model = keras.saving.load_model(
            version.version_dir / "models" / head.model_type / "model.keras"
        )
        ours = head.predict_proba(vectors)
        assert ours.dtype == np.float32 and ours.shape == (len(vectors), len(INTENTS))
        called = np.asarray(model(vectors, training=False))
        predicted = model.predict(vectors, verbose=0)
        assert np.abs(ours - called).max() < 1e-5
        assert np.abs(ours - predicted).max() < 1e-5
        np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_head_carries_the_manifest(tiny_versions):
    first, second = tiny_versions
    head = load_head(first.version_dir)
    manifest = first.manifest
    assert (head.name, head.region, head.version) == (first.name, first.region, first.version)
    assert head.model_type == manifest["architecture"] == "mlp-1x64"
    assert head.labels == tuple(manifest["labels"]) == tuple(sorted(INTENTS))
    assert head.classes == len(INTENTS)
    assert head.embedder_fingerprint == first.embedder_fingerprint
    assert head.dimension == 384
    assert head.metrics == manifest["metrics"]["test"] == first.metrics
    assert head.rule == ServingConfig()  # trained without a [serving] section
    assert head.version_dir == first.version_dir
    assert load_head(second.version_dir).rule == ServingConfig(
        fallback_label="other", min_probability=0.5
    )


def test_the_good_head_classifies_real_phrases(tiny_versions, vectors):
    head = load_head(tiny_versions[0].version_dir)
    predicted = head.predict_proba(vectors[:6]).argmax(axis=1)
    assert [head.labels[i] for i in predicted] == list(INTENTS)


def test_predict_proba_checks_the_dimension(tiny_versions, vectors):
    head = load_head(tiny_versions[0].version_dir)
    np.testing.assert_array_equal(head.predict_proba(vectors[0]), head.predict_proba(vectors[:1]))
    assert head.predict_proba(vectors[:3].astype(np.float64)).dtype == np.float32
    with pytest.raises(InvalidInput, match="dimension 384"):
        head.predict_proba(np.zeros((2, 383), dtype=np.float32))
    with pytest.raises(InvalidInput, match="dimension 384"):
        head.predict_proba(np.zeros((2, 3, 384), dtype=np.float32))
    before = vectors.copy()
    head.predict_proba(vectors)
    np.testing.assert_array_equal(vectors, before)  # the input is never written


def test_dc_predict_never_imports_tensorflow(tiny_versions):
    # A fresh interpreter: this one has TensorFlow loaded by the encoder already.
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from dc.predict import load_head
        from dc.postprocessing import postprocess
        import dc.serve.store
        head = load_head({str(tiny_versions[0].version_dir)!r})
        probabilities = head.predict_proba(np.ones((2, head.dimension), dtype=np.float32))
        predictions = postprocess(probabilities, head.labels, 3, head.rule)
        assert len(predictions) == 2 and len(predictions[0].top_k) == 3
        heavy = sorted(
            m for m in sys.modules
            if m.split(".")[0] in {{"tensorflow", "keras", "tf_keras", "tensorflow_hub"}}
        )
        print(heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_layout_constants_agree_with_dc_artifacts(settings):
    from dc import artifacts, predict
    from dc.serve.version_files import local_version_dir

    assert (predict.MANIFEST_FILE, predict.MODELS_DIR, predict.MODEL_FILE) == (
        artifacts.MANIFEST_FILE,
        artifacts.MODELS_DIR,
        artifacts.MODEL_FILE,
    )
    assert local_version_dir(settings, "r", "m", "v") == artifacts.version_dir(
        settings, "r", "m", "v"
    )


def test_layers_it_cannot_score_are_refused_by_name(tmp_path):
    import keras

    inputs = keras.Input(shape=(8,), name="embedding")
    x = keras.layers.Dense(4, activation="tanh", name="squash")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    keras.Model(inputs, outputs).save(tmp_path / "tanh.keras")
    with pytest.raises(UnsupportedHead, match="'squash' has activation 'tanh'"):
        read_keras_layers(tmp_path / "tanh.keras")

    x = keras.layers.BatchNormalization(name="norm")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    keras.Model(inputs, outputs).save(tmp_path / "norm.keras")
    with pytest.raises(UnsupportedHead, match="'norm' is a BatchNormalization"):
        read_keras_layers(tmp_path / "norm.keras")

    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Keras 3 model archive"):
        read_keras_layers(tmp_path / "broken.keras")


def test_several_hidden_layers_and_no_bias_match_keras(tmp_path):
    import keras

    inputs = keras.Input(shape=(16,), name="embedding")
    x = keras.layers.Dense(12, activation="relu", name="hidden_1")(inputs)
    x = keras.layers.Dropout(0.5, name="dropout_1")(x)
    x = keras.layers.Dense(10, activation="relu", use_bias=False, name="hidden_2")(x)
    x = keras.layers.Dense(7, name="linear")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "deep.keras")
    layers = read_keras_layers(tmp_path / "deep.keras")
    assert [layer.name for layer in layers] == ["hidden_1", "hidden_2", "linear", "probabilities"]
    assert layers[1].bias is None

    from dc.predict import Head

    head = Head("deep", "r", "v", "mlp", tuple("abcde"), "fp", 16, {}, ServingConfig(), tmp_path,
                (layers,))  # fmt: skip
    x = np.random.default_rng(1).normal(size=(20, 16)).astype(np.float32)
    assert np.abs(head.predict_proba(x) - np.asarray(model(x, training=False))).max() < 1e-5


def test_a_calibrated_seed_ensemble_is_scored_as_keras_scores_it(tmp_path):
    """build_ensemble's graph (members averaged in probability, 1/T folded into each output
    layer) read back member by member, and the same probabilities as Keras and as
    dc.calibration's arithmetic on the members' own outputs."""
    import keras

    from dc.calibration import scale_probabilities
    from dc.keras_head import build_ensemble, build_head
    from dc.model_config import HeadConfig
    from dc.predict import Head, read_keras_members

    config = HeadConfig(hidden_layers=1, units=12, dropout=0.2)
    members = [build_head(config, 16, 5, seed) for seed in (1, 2, 3)]
    x = np.random.default_rng(2).normal(size=(30, 16)).astype(np.float32)
    ensemble = build_ensemble(members, temperature=0.7)
    ensemble.save(tmp_path / "ensemble.keras")
    read = read_keras_members(tmp_path / "ensemble.keras")
    assert [[layer.name for layer in member] for member in read] == [
        [f"m{k}_hidden_1", f"m{k}_probabilities"] for k in (1, 2, 3)
    ]
    with pytest.raises(UnsupportedHead, match="an ensemble of 3 members"):
        read_keras_layers(tmp_path / "ensemble.keras")

    head = Head("e", "r", "v", "mlp", tuple("abcde"), "fp", 16, {}, ServingConfig(), tmp_path,
                read)  # fmt: skip
    ours = head.predict_proba(x)
    reloaded = keras.saving.load_model(tmp_path / "ensemble.keras")
    assert np.abs(ours - np.asarray(reloaded(x, training=False))).max() < 1e-5
    by_hand = scale_probabilities([np.asarray(m(x, training=False)) for m in members], 0.7)
    assert np.abs(ours - by_hand).max() < 1e-5
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)
    # Temperature changes the probabilities, never a member's ranking.
    plain = build_ensemble(members[:1])
    sharp = build_ensemble(members[:1], temperature=0.5)
    assert (np.asarray(plain(x)).argmax(1) == np.asarray(sharp(x)).argmax(1)).all()
    assert np.asarray(sharp(x)).max(1).mean() > np.asarray(plain(x)).max(1).mean()


def test_graphs_other_than_chains_and_their_average_are_refused(tmp_path):
    import keras

    inputs = keras.Input(shape=(8,), name="embedding")
    trunk = keras.layers.Dense(6, activation="relu", name="trunk")(inputs)
    a = keras.layers.Dense(3, activation="softmax", name="a")(trunk)
    b = keras.layers.Dense(3, activation="softmax", name="b")(trunk)
    keras.Model(inputs, keras.layers.Average(name="average")([a, b])).save(tmp_path / "t.keras")
    with pytest.raises(UnsupportedHead, match=r"not on a member's chain|not part of a plain"):
        read_keras_layers(tmp_path / "t.keras")


# --- ServingConfig: the [serving] section ---------------------------------------------------


def test_configs_without_a_serving_section_still_load(tiny_versions, tmp_path):
    old = tiny_versions[0].manifest["config"]
    old.pop("serving", None)  # what manifests written before the section hold
    assert ModelConfig.model_validate(old).serving == ServingConfig()
    assert load_config(REPO / "configs" / "banking77.toml").serving == ServingConfig()

    # A version folder whose manifest has no serving key loads with no rule.
    copy = copy_version(tiny_versions[1], tmp_path, "old-manifest")
    manifest = copy.manifest
    del manifest["config"]["serving"]
    (copy.version_dir / "manifest.json").write_text(json.dumps(manifest))
    assert load_head(copy.version_dir).rule == ServingConfig()
    rule = ServingConfig(fallback_label="x", min_probability=0.9)
    assert load_head(copy.version_dir, rule=rule).rule == rule


def test_clinc150_config_has_its_oos_rule():
    rule = load_config(REPO / "configs" / "clinc150.toml").serving
    assert rule.fallback_label == "oos" and 0 < rule.min_probability < 0.5


@pytest.mark.parametrize(
    "section, message",
    [
        ({"min_probability": 0.3}, "needs a fallback_label"),
        ({"fallback_label": "oos", "min_probability": 1.5}, "less than or equal to 1"),
        ({"fallback_label": "oos", "threshold": 0.3}, "Extra inputs are not permitted"),
    ],
)
def test_serving_section_is_validated(section, message):
    with pytest.raises(ValueError, match=message):
        ServingConfig.model_validate(section)


# --- postprocess and top-k ------------------------------------------------------------------

LABELS = ["a", "b", "c", "d"]
NO_RULE = ServingConfig()


def test_postprocess_top_k_best_first():
    probabilities = np.array([[0.1, 0.6, 0.1, 0.2], [0.7, 0.05, 0.15, 0.1]], dtype=np.float32)
    first, second = postprocess(probabilities, LABELS, 2, NO_RULE)
    assert first.label == "b" and first.probability == pytest.approx(0.6)
    assert [label for label, _ in first.top_k] == ["b", "d"]
    assert [label for label, _ in second.top_k] == ["a", "c"]
    assert not first.fallback and not second.fallback
    assert all(isinstance(p, float) for _, p in first.top_k)
    assert first.as_dict() == {
        "label": "b",
        "probability": first.probability,
        "top_k": [{"label": "b", "probability": first.top_k[0][1]},
                  {"label": "d", "probability": first.top_k[1][1]}],
        "fallback": False,
    }  # fmt: skip


def test_k_larger_than_the_classes_gives_every_class():
    probabilities = np.array([[0.1, 0.6, 0.1, 0.2]], dtype=np.float32)
    (prediction,) = postprocess(probabilities, LABELS, 10, NO_RULE)
    assert [label for label, _ in prediction.top_k] == ["b", "d", "a", "c"]  # tie: lower id first
    with pytest.raises(ValueError, match="k must be at least 1"):
        postprocess(probabilities, LABELS, 0, NO_RULE)
    with pytest.raises(ValueError, match="do not match 3 labels"):
        postprocess(probabilities, LABELS[:3], 1, NO_RULE)


@pytest.mark.parametrize("classes", [10, FULL_SORT_MAX_CLASSES + 1, 500])
def test_ties_are_broken_by_class_id_on_both_paths(classes):
    rng = np.random.default_rng(classes)
    # Coarse values, so many exact ties, including at the k-th place.
    scores = rng.integers(0, 5, size=(50, classes)).astype(np.float32)
    for k in (1, 3, 7, classes):
        got = top_k_indices(scores, k)
        expected = np.array([sorted(range(classes), key=lambda c: (-row[c], c))[:k]
                             for row in scores])  # fmt: skip
        np.testing.assert_array_equal(got, expected)


def test_fallback_to_a_class_takes_that_class_probability():
    rule = ServingConfig(fallback_label="d", min_probability=0.5)
    probabilities = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.8, 0.05, 0.05]], dtype=np.float32)
    low, high = postprocess(probabilities, LABELS, 2, rule)
    assert low == Prediction("d", pytest.approx(0.1), low.top_k, True)
    assert [label for label, _ in low.top_k] == ["a", "b"]  # top-k as scored
    assert high.label == "b" and not high.fallback
    np.testing.assert_array_equal(apply_rule(probabilities, LABELS, rule), [3, 1])


def test_fallback_to_a_label_outside_the_classes_keeps_the_top_probability():
    rule = ServingConfig(fallback_label="other", min_probability=0.5)
    probabilities = np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    (prediction,) = postprocess(probabilities, LABELS, 1, rule)
    assert prediction.label == "other" and prediction.fallback
    assert prediction.probability == pytest.approx(0.4)
    with pytest.raises(ValueError, match="not one of the classes"):
        apply_rule(probabilities, LABELS, rule)


def test_a_real_head_with_its_rule(tiny_versions, vectors):
    head = load_head(tiny_versions[1].version_dir)  # rule: below 0.5 -> "other"
    probabilities = head.predict_proba(vectors)
    predictions = postprocess(probabilities, head.labels, 3, head.rule)
    for row, prediction in zip(probabilities, predictions, strict=True):
        assert prediction.fallback == (row.max() < 0.5)
        assert prediction.label == ("other" if prediction.fallback else head.labels[row.argmax()])
        assert len(prediction.top_k) == 3


# --- choose_threshold -----------------------------------------------------------------------


def _threshold_data():
    """80 in-scope rows sure and right, 10 in-scope right at 0.15, 5 oos rows wrong at 0.2."""
    labels = ["a", "b", "oos"]
    rows, truth = [], []
    rows += [[0.9, 0.05, 0.05]] * 80
    truth += [0] * 80
    rows += [[0.15, 0.1, 0.1]] * 10  # not normalised: only the order and the maximum matter
    truth += [0] * 10
    rows += [[0.1, 0.2, 0.1]] * 5
    truth += [2] * 5
    return np.array(rows, dtype=np.float32), np.array(truth), labels


def test_choose_threshold_maximises_accuracy():
    probabilities, truth, labels = _threshold_data()
    choice = choose_threshold(probabilities, truth, labels, "oos")
    # Any threshold above 0.15 loses 10 right answers; above 0.2 it wins only 5 back.
    assert choice.threshold == 0.0
    assert choice.accuracy == choice.baseline == pytest.approx(90 / 95)
    point = choice.at(0.21)
    assert point["accuracy"] == pytest.approx(85 / 95)
    assert point["fallback_recall"] == 1.0 and point["in_scope_accuracy"] == pytest.approx(80 / 90)
    assert point["fallback_rate"] == pytest.approx(15 / 95)

    # Without the costly in-scope rows the lowest threshold that catches the oos rows wins.
    keep = np.r_[0:80, 90:95]
    choice = choose_threshold(probabilities[keep], truth[keep], labels, "oos")
    assert choice.threshold == pytest.approx(0.21) and choice.accuracy == 1.0

    # Labels instead of ids give the same.
    names = [labels[i] for i in truth[keep]]
    by_label = choose_threshold(probabilities[keep], names, labels, "oos")
    assert by_label.threshold == choice.threshold


def test_choose_threshold_reweights_to_an_assumed_share():
    probabilities, truth, labels = _threshold_data()
    choice = choose_threshold(probabilities, truth, labels, "oos", fallback_share=0.9)
    assert choice.threshold == pytest.approx(0.21)
    assert choice.accuracy == pytest.approx(0.9 * 1.0 + 0.1 * 80 / 90)
    with pytest.raises(ValueError, match="fallback_share"):
        choose_threshold(probabilities, truth, labels, "oos", fallback_share=1.0)
    with pytest.raises(ValueError, match="not one of the classes"):
        choose_threshold(probabilities, truth, labels, "other")
    with pytest.raises(ValueError, match="do not match"):
        choose_threshold(probabilities[:3], truth, labels, "oos")


def test_the_prediction_cache_keys_on_the_head_and_cuts_top_k():
    from dc.postprocessing import Prediction, PredictionCache

    cache = PredictionCache(2)
    first, second = object(), object()  # two loaded heads (compared by identity)
    answer = Prediction("a", 0.7, [("a", 0.7), ("b", 0.2), ("c", 0.1)], False)
    cache.put(first, "my card", answer)
    assert cache.get(first, "my card", 3) == answer
    assert cache.get(first, "my card", 1).top_k == [("a", 0.7)]
    assert cache.get(first, "my card", 4) is None  # computed with a smaller k
    assert cache.get(second, "my card", 1) is None  # another version's head
    cache.put(first, "b", answer)
    cache.put(first, "c", answer)
    assert cache.get(first, "my card", 1) is None and len(cache) == 2  # least recently used
    assert PredictionCache(0).get(first, "b", 1) is None
