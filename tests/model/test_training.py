"""Training end to end on a small real sample, the artifact tree it writes, and the model configs.

One tiny version (8 BANKING77 intents x 20 phrases, 2 epochs) is trained once per module on the
real encoder; the tests then read what it wrote.
"""

from __future__ import annotations

import json
import zipfile
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from dc import artifacts
from dc.errors import InvalidInput
from dc.model_config import ModelConfig, load_config, load_configs
from dc.utilities.files import sha256_file
from tests.conftest import REPO, make_settings

CLASSES = 8
PER_CLASS = 20
VERSION = "v0001"


def tiny_config(**head) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "model": {"name": "tiny_banking", "region": "test-region"},
            "data": {"source": "banking77", "min_examples_per_class": 10},
            "head": {"hidden_layers": 1, "units": 32, "dropout": 0.1, **head},
            "training": {"epochs": 2, "batch_size": 16, "early_stopping_patience": 1, "seed": 3},
        }
    )


def tiny_extract() -> pd.DataFrame:
    train = pd.read_csv(REPO / "data" / "banking77" / "train.csv")
    labels = sorted(train["label"].unique())[:CLASSES]
    rows = train[train["label"].isin(labels)].groupby("label").head(PER_CLASS)
    return rows.reset_index(drop=True)  # no split column: validation and test are held out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, encoder):
    """Train the tiny version once; yields (result, config, settings, raw, embedder)."""
    from dc.nlp.embeddings import LocalEmbedder
    from dc.train import train_version

    # The same engine as conftest's `engine`, built once for the module (that one is per test).
    settings = make_settings(artifacts_dir=str(tmp_path_factory.mktemp("artifacts")))
    embedder = LocalEmbedder.from_encoder(encoder, settings)
    config, raw = tiny_config(), tiny_extract()
    try:
        result = train_version(config, settings, embedder, raw, VERSION, progress=False)
        yield result, config, settings, raw, embedder
    finally:
        embedder.close()


def test_the_same_config_and_seed_give_the_same_weights_and_metrics(trained, tmp_path):
    """Reproducibility a user can check: the manifest's weights hash and metrics, not the
    bytes of model.keras (a zip with entry times)."""
    from dc.train import train_version

    result, config, settings, raw, embedder = trained
    again_settings = settings.model_copy(update={"artifacts_dir": str(tmp_path)})
    again = train_version(config, again_settings, embedder, raw, VERSION, progress=False)
    first, second = result.manifest, again.manifest
    assert len(first["training"]["weights_sha256"]) == 64
    assert first["training"]["weights_sha256"] == second["training"]["weights_sha256"]
    assert first["metrics"] == second["metrics"]
    assert set(first["code"]) == {"commit", "dirty"}


def test_the_complete_artifact_tree_is_written(trained):
    result, _, settings, _, _ = trained
    version_dir = result.version_dir
    assert version_dir == artifacts.version_dir(settings, "test-region", "tiny_banking", VERSION)
    written = sorted(
        path.relative_to(version_dir).as_posix()
        for path in version_dir.rglob("*")
        if path.is_file()
    )
    assert written == artifacts.expected_files("mlp-1x32")
    expected = {
        "manifest.json",
        "code.zip",
        "raw/extract.csv",
        "processed/train.csv",
        "processed/validation.csv",
        "processed/test.csv",
        "processed/preparation_report.json",
        "models/mlp-1x32/model.keras",
        "models/mlp-1x32/encoders.pkl",
        "models/mlp-1x32/reports/train_report.csv",
        "models/mlp-1x32/reports/test_report.csv",
        "models/mlp-1x32/reports/keras_train_history.csv",
        "models/mlp-1x32/reports/keras_test_history.csv",
        "models/mlp-1x32/reports/confusion_matrix.png",
        "models/mlp-1x32/reports/per_class_f1.png",
    }
    assert set(written) == expected
    for name in expected:
        assert (version_dir / name).stat().st_size > 0, name
    # Nothing but the finished version beside it: the staging folder was renamed away.
    assert [p.name for p in version_dir.parent.iterdir()] == [VERSION]


def test_the_manifest_records_what_made_the_version(trained):
    result, config, _, raw, embedder = trained
    manifest = artifacts.load_manifest(result.version_dir)
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["name"] == "tiny_banking" and manifest["region"] == "test-region"
    assert manifest["version"] == VERSION and manifest["architecture"] == "mlp-1x32"
    for split in ("train", "validation", "test"):
        assert set(manifest["metrics"][split]) >= {"accuracy", "weighted_f1", "macro_f1", "n"}
    assert result.metrics == manifest["metrics"]["test"]
    assert 0 <= result.metrics["accuracy"] <= 1
    assert manifest["embedder"] == {
        "name": embedder.name,
        "fingerprint": embedder.fingerprint,
        "dimension": 384,
    }
    raw_path = result.version_dir / "raw" / "extract.csv"
    assert manifest["data"]["sha256"] == sha256_file(raw_path)
    assert manifest["data"]["source"] == "banking77"
    assert manifest["data"]["raw_rows"] == len(raw) == CLASSES * PER_CLASS
    assert manifest["config"] == config.as_dict()
    assert manifest["labels"] == sorted(raw["label"].unique())
    code = manifest["code"]
    assert code["commit"] == "unknown" or len(code["commit"]) == 40
    assert code["dirty"] in (True, False, None)
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset().total_seconds() == 0
    assert {"tensorflow", "keras", "python"} <= set(manifest["versions"])
    assert set(manifest["seconds"]) == {"prepare", "embed", "train", "evaluate", "save", "total"}
    assert 1 <= manifest["training"]["epochs_run"] <= 2
    members = manifest["training"]["members"]
    assert [member["seed"] for member in members] == [3, 4, 5, 6, 7]
    assert all(member["refit_epochs"] == member["best_epoch"] for member in members)
    assert 0.05 <= manifest["training"]["temperature"] <= 20
    assert manifest["tuning"] is None and "rule" not in manifest["metrics"]


def test_the_raw_and_processed_data_are_kept(trained):
    result, _, _, raw, _ = trained
    stored = pd.read_csv(result.version_dir / "raw" / "extract.csv")
    pd.testing.assert_frame_equal(stored, raw)
    processed = {
        name: pd.read_csv(result.version_dir / "processed" / f"{name}.csv")
        for name in ("train", "validation", "test")
    }
    assert sum(len(frame) for frame in processed.values()) == len(raw)
    # 20 phrases per class with 0.1 held out twice: 16 / 2 / 2.
    assert [len(processed[n]) for n in ("train", "validation", "test")] == [128, 16, 16]
    report = json.loads((result.version_dir / "processed" / "preparation_report.json").read_text())
    assert report["rows"] == {"train": 128, "validation": 16, "test": 16}


def test_the_reports_hold_per_class_scores_and_histories(trained):
    result, _, _, _, _ = trained
    reports = result.version_dir / "models" / "mlp-1x32" / "reports"
    for name in ("train_report.csv", "test_report.csv"):
        table = pd.read_csv(reports / name)
        assert list(table.columns) == ["label", "precision", "recall", "f1", "support"]
        assert len(table) == CLASSES
    assert pd.read_csv(reports / "test_report.csv")["support"].sum() == 16
    history = pd.read_csv(reports / "keras_train_history.csv")
    assert {"member", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(
        history.columns
    )
    # The template's defaults: five members, each with its own early-stopping history.
    assert sorted(history["member"].unique()) == [1, 2, 3, 4, 5]
    for _, member in history.groupby("member"):
        assert member["epoch"].tolist() == list(range(1, len(member) + 1))
    test_history = pd.read_csv(reports / "keras_test_history.csv")
    assert list(test_history.columns) == ["loss", "accuracy"] and len(test_history) == 1
    assert test_history["accuracy"][0] == pytest.approx(result.metrics["accuracy"], abs=1e-6)


def test_the_saved_model_reloads_and_predicts_the_same_probabilities(trained):
    import keras

    result, _, _, _, embedder = trained
    head = result.version_dir / "models" / "mlp-1x32"
    reloaded = keras.models.load_model(head / "model.keras")
    test = pd.read_csv(result.version_dir / "processed" / "test.csv")
    vectors = embedder.embed(test["text"].tolist()).vectors
    probabilities = reloaded.predict(vectors, verbose=0)
    np.testing.assert_allclose(probabilities, result.model.predict(vectors, verbose=0), atol=1e-6)
    assert probabilities.shape == (len(test), CLASSES)
    accuracy = float((probabilities.argmax(axis=1) == test["label_id"].to_numpy()).mean())
    assert accuracy == pytest.approx(result.metrics["accuracy"])


def test_the_label_encoder_round_trips_labels(trained):
    result, _, _, raw, _ = trained
    head = result.version_dir / "models" / "mlp-1x32"
    encoder = artifacts.load_label_encoder(head / "encoders.pkl")
    labels = sorted(raw["label"].unique())
    assert list(encoder.classes_) == labels == result.manifest["labels"]
    assert list(encoder.inverse_transform(encoder.transform(labels))) == labels
    test = pd.read_csv(result.version_dir / "processed" / "test.csv")
    assert list(encoder.inverse_transform(test["label_id"])) == test["label"].tolist()


def test_the_code_zip_holds_the_project_code_without_caches(trained):
    result, _, _, _, _ = trained
    with zipfile.ZipFile(result.version_dir / "code.zip") as archive:
        names = set(archive.namelist())
    assert {"dc/train.py", "dc/preparation.py", "configs/banking77.toml", "pyproject.toml"} <= names
    assert any(name.startswith("embedder/") for name in names)
    assert any(name.startswith("scripts/") for name in names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_an_existing_version_is_never_overwritten(trained):
    from dc.train import train_version

    result, config, settings, raw, embedder = trained
    before = sha256_file(result.version_dir / "manifest.json")
    with pytest.raises(FileExistsError):
        train_version(config, settings, embedder, raw, VERSION, progress=False)
    assert sha256_file(result.version_dir / "manifest.json") == before


def test_a_failed_run_leaves_no_folder_behind(trained):
    from dc.train import train_version

    _, config, settings, raw, embedder = trained
    thin = raw.groupby("label").head(5)  # under min_examples_per_class = 10
    with pytest.raises(InvalidInput, match="fewer than 10"):
        train_version(config, settings, embedder, thin, "v0002", progress=False)
    model_root = artifacts.version_dir(settings, "test-region", "tiny_banking", "v0002").parent
    assert [p.name for p in model_root.iterdir()] == [VERSION]


@pytest.mark.slow  # builds Keras models (TensorFlow)
def test_build_head_shapes_and_seed_determinism():
    from dc.keras_head import build_head
    from dc.model_config import HeadConfig

    head = HeadConfig(hidden_layers=2, units=16, dropout=0.2, l2=1e-4, optimizer="adamw")
    first, second = build_head(head, 384, 5, seed=1), build_head(head, 384, 5, seed=1)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    other = build_head(head, 384, 5, seed=2)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])
    assert [layer.name for layer in first.layers][1:] == [
        "hidden_1",
        "dropout_1",
        "hidden_2",
        "dropout_2",
        "probabilities",
    ]
    softmax = build_head(HeadConfig(hidden_layers=0, optimizer="sgd"), 384, 5, seed=1)
    assert softmax.output_shape == (None, 5) and len(softmax.layers) == 2


# --- model configs --------------------------------------------------------------------------


def test_every_config_in_the_repository_loads():
    configs = load_configs(REPO / "configs")
    assert set(configs) >= {"banking77", "clinc150", "clinc150_inscope"}
    assert configs["banking77"].region == "global"
    assert configs["clinc150"].data.exclude_labels == []
    inscope = configs["clinc150_inscope"]
    assert inscope.source == inscope.data.source == "clinc150"
    assert inscope.data.exclude_labels == ["oos"]
    for name, config in configs.items():
        assert config.name == name
        assert config.architecture in (
            "softmax",
            f"mlp-{config.head.hidden_layers}x{config.head.units}",
        )
        assert ModelConfig.model_validate(config.as_dict()) == config


def test_the_source_defaults_to_the_model_name():
    config = ModelConfig.model_validate({"model": {"name": "support"}})
    assert config.data.source == config.source == "support"
    assert config.region == "global"
    assert config.architecture == "mlp-1x512"


def test_a_bad_key_is_rejected_with_the_file_and_key_named(tmp_path):
    text = (REPO / "configs" / "banking77.toml").read_text()
    path = tmp_path / "typo.toml"
    path.write_text(text.replace("dropout =", "drop_out ="))
    with pytest.raises(InvalidInput, match=r"typo\.toml.*head\.drop_out"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ("[head]", 'optimizer = "rmsprop"'),
        ("[head]", "hidden_layers = -1"),
        ("[training]", "batch_size = 0"),
        ("[data]", "validation_fraction = 0.9"),
    ],
)
def test_bad_values_are_rejected(tmp_path, section, line):
    path = tmp_path / "bad.toml"
    key = line.split(" =")[0]
    rows = (REPO / "configs" / "banking77.toml").read_text().splitlines()
    kept = [row for row in rows if not row.startswith(f"{key} =")]
    kept.insert(kept.index(section) + 1, line)
    path.write_text("\n".join(kept))
    with pytest.raises(InvalidInput, match=key):
        load_config(path)


def test_a_missing_model_name_and_bad_toml_are_rejected(tmp_path):
    path = tmp_path / "anonymous.toml"
    path.write_text('[model]\nregion = "eu"\n')
    with pytest.raises(InvalidInput, match=r"model\.name"):
        load_config(path)
    path.write_text("[model\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(path)


def test_two_configs_with_one_name_are_rejected(tmp_path):
    for file in ("a.toml", "b.toml"):
        (tmp_path / file).write_text('[model]\nname = "same"\n')
    with pytest.raises(InvalidInput, match="declared twice"):
        load_configs(tmp_path)


def test_tuning_and_a_threshold_chosen_on_validation(trained, tmp_path):
    """[tuning] searches the head on validation (seeded: the same search twice), and
    choose_threshold records the chosen min_probability and the rule's figures."""
    from dc.postprocessing import DEFAULT_GRID
    from dc.train import train_version

    _, _, settings, raw, embedder = trained
    fallback = sorted(raw["label"].unique())[0]  # a class, with validation rows
    base = tiny_config().as_dict()
    base["training"].update(ensemble=2, epochs=4)
    base["tuning"] = {"trials": 2, "units": [16, 32]}
    base["serving"] = {"fallback_label": fallback, "choose_threshold": True}
    config = ModelConfig.model_validate(base)
    runs = []
    for folder in ("a", "b"):
        run_settings = settings.model_copy(update={"artifacts_dir": str(tmp_path / folder)})
        runs.append(train_version(config, run_settings, embedder, raw, VERSION, progress=False))
    manifest = runs[0].manifest
    tuning = manifest["tuning"]
    assert [trial["number"] for trial in tuning["trials"]] == [1, 2]
    assert tuning["best"]["units"] in (16, 32)
    assert manifest["config"]["head"]["units"] == tuning["best"]["units"]
    assert manifest["architecture"] == f"mlp-1x{tuning['best']['units']}"
    assert tuning["best"] == runs[1].manifest["tuning"]["best"]
    assert "tune" in manifest["seconds"]
    chosen = manifest["config"]["serving"]["min_probability"]
    assert chosen in {0.0, *DEFAULT_GRID}
    rule = manifest["metrics"]["rule"]
    assert set(rule) == {"validation", "test"}
    assert rule["test"]["threshold"] == chosen
    assert 0 <= rule["test"]["fallback_recall"] <= 1

    missing = base | {"serving": {"fallback_label": "not_a_class", "choose_threshold": True}}
    with pytest.raises(InvalidInput, match="choose_threshold needs fallback_label"):
        train_version(
            ModelConfig.model_validate(missing | {"tuning": {"trials": 0}}),
            settings.model_copy(update={"artifacts_dir": str(tmp_path / "c")}),
            embedder,
            raw,
            VERSION,
            progress=False,
        )
