"""Every notebook of notebooks/final/ runs top to bottom on a small sample and reports its result.

Each `*.ipynb` there, whatever its name (a notebook added later is picked up too), is executed by
the runner `make notebooks` uses (notebooks/final/run_notebooks.py): a fresh kernel of this
interpreter, a timeout per cell, any cell's error failing the test with its traceback. The
kernel gets the environment the test sets: a sample of `SAMPLE_ROWS` rows
(`DC_NOTEBOOK_SAMPLE`), the session's PostgreSQL database as `DC_DATABASE_URL` (emptied first;
for `production.ipynb` it holds the tiny trained versions and a month of traffic made by
`scripts/generate_inferences.py`), a temporary artifacts folder and the in-process encoder.

Then the summary each notebook prints last (a JSON object) is checked: for the notebooks known
here against what their sample must give, computed in this process with `dc` itself (the same
intents, the same prepared rows: the parameter reached the kernel), and scores well above the
chance level; for any other notebook, that it names itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # a kernel per notebook; modelling.ipynb loads TensorFlow

FOLDER = REPO / "notebooks" / "final"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
# A sample of whole BANKING77 intents: 5 intents, 915 phrases (200 of them in the test split).
SAMPLE_ROWS = 1000
# The longest a cell may take here: the modelling notebook's longest (fitting) takes about 15 s.
CELL_TIMEOUT_S = 180


def load(name: str) -> ModuleType:
    """notebooks/final/<name>.py as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner() -> ModuleType:
    return load("run_notebooks")


@pytest.fixture(scope="module")
def expected():
    """What the notebooks' sample must be: dc's own preparation of the same intents."""
    from dc.config import Settings
    from dc.model_config import load_config
    from dc.preparation import prepare

    support = load("notebook_support")
    config = load_config(Path(Settings().configs_dir) / "banking77.toml")
    dataset = support.load_dataset("banking77")
    raw = support.sample_intents(dataset, SAMPLE_ROWS, config.training.seed)
    return config, raw, prepare(raw, config.data, config.training.seed)


def image_outputs(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def check_preparation(summary: dict, notebook, expected) -> None:
    config, raw, prepared = expected
    report = prepared.report
    assert summary["sample"] == SAMPLE_ROWS
    assert summary["raw_rows"] == len(raw) <= SAMPLE_ROWS
    assert 2 <= summary["intents"] == raw["label"].nunique() < 77  # a sample, not the dataset
    assert summary["rows"] == report["rows"]
    assert summary["split_origin"] == {"train": "given", "validation": "held out", "test": "given"}
    assert summary["duplicates_dropped"] == sum(report["duplicates_dropped"].values())
    assert summary["conflicting_texts"] == 0  # BANKING77 has none
    rows = summary["rows"]
    assert rows["test"] == 40 * summary["intents"]  # the test split as published, 40 per intent
    assert sum(rows.values()) + summary["duplicates_dropped"] == summary["raw_rows"]
    share = rows["validation"] / (rows["train"] + rows["validation"])
    assert share == pytest.approx(config.data.validation_fraction, abs=0.01)
    assert 5 <= summary["median_words"] <= 15
    assert image_outputs(notebook) >= 3  # class counts, phrase lengths, the split


def check_modelling(summary: dict, notebook, expected) -> None:
    _, raw, prepared = expected
    intents = len(prepared.labels)
    assert summary["sample"] == SAMPLE_ROWS
    assert summary["raw_rows"] == len(raw)
    assert summary["intents"] == intents
    assert summary["rows"] == prepared.report["rows"]
    assert summary["chance_accuracy"] == pytest.approx(1 / intents, abs=1e-6)
    head, logistic, majority = (
        summary["head"],
        summary["logistic_regression"],
        summary["majority_class"],
    )
    for scores in (head, logistic, majority):
        assert scores["n"] == summary["rows"]["test"]
    # A handful of intents on frozen sentence vectors: both models are far above chance (their
    # full-data accuracies are 0.93-0.94), the majority class is not.
    floor = max(0.8, 3 * summary["chance_accuracy"])
    for scores in (head, logistic):
        assert scores["accuracy"] > floor, scores
        assert scores["weighted_f1"] > floor, scores
        assert scores["top_k_accuracy"] >= scores["accuracy"]
    assert majority["accuracy"] < 0.5 < head["accuracy"] - majority["accuracy"]
    assert 1 <= head["best_epoch"] <= head["epochs"]
    assert logistic["C"] in (1.0, 10.0, 100.0)
    # The learning curves, the centroid view, the confusion matrix, the per-class F1 chart and
    # the comparison.
    assert image_outputs(notebook) >= 5


def check_production(summary: dict, notebook, expected) -> None:
    traffic = expected  # what the test generated (`production_traffic`)
    assert summary["model"] == traffic["model"]
    assert summary["texts"] == traffic["rows"]
    assert 0 < summary["requests"] < summary["texts"]  # requests of 1-4 texts
    assert summary["served_version"] == traffic["version"]
    # Feedback for about a tenth, served labels right about 90% of the time.
    assert 0.05 * traffic["rows"] < summary["feedback_items"] < 0.15 * traffic["rows"]
    assert 0.7 < summary["weighted_f1"] < 1.0
    assert summary["test_weighted_f1"] is not None and summary["psi"] is not None
    assert image_outputs(notebook) >= 5  # traffic, drift, labels, confidence, live F1


# The notebooks known here (tests/unit/test_notebook_files.py checks that they exist).
CHECKS: dict[str, Callable] = {
    "preparation": check_preparation,
    "modelling": check_modelling,
    "production": check_production,
}
PRODUCTION_ROWS = 3000


def production_traffic(engine, versions, monkeypatch) -> dict:
    """The tiny versions in the registry and a month of synthetic traffic for the served one,
    from `scripts/generate_inferences.py`, as a user would make it."""
    from tests.heads_support import register_versions
    from tests.script_support import load_script

    served = versions[0]
    register_versions(engine, versions, promoted=served.version)
    script = load_script("generate_inferences")
    monkeypatch.setattr(script, "configure_logging", lambda level: None)
    url = engine.url.render_as_string(hide_password=False)
    # 29 days: every row inside the notebook's window (30 days up to the next full hour).
    argv = ["--rows", str(PRODUCTION_ROWS), "--days", "29", "--region", served.region]
    assert script.main([*argv, "--model", served.name, "--database-url", url]) == 0
    return {"model": served.name, "version": served.version, "rows": PRODUCTION_ROWS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_on_a_sample_and_reports(
    path, runner, expected, pg_engine, tiny_versions, monkeypatch, tmp_path
):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    env = {}
    if path.stem == "production":
        expected = production_traffic(pg_engine, tiny_versions, monkeypatch)
        env = {"DC_NOTEBOOK_MODEL": expected["model"], "DC_SERVING_REGION": tiny_versions[0].region}
    env |= {
        runner.SAMPLE_ENV: str(SAMPLE_ROWS),
        "DC_DATABASE_URL": pg_engine.url.render_as_string(hide_password=False),
        "DC_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "DC_SPOOL_DIR": str(tmp_path / "spool"),
        "DC_EMBEDDER_MODE": "local",
        "DC_LOG_LEVEL": "WARNING",
    }
    notebook = runner.execute(path, env=env, timeout=CELL_TIMEOUT_S)

    summary = runner.summary(notebook)
    assert summary["notebook"] == path.stem
    check = CHECKS.get(path.stem)
    if check is not None:
        check(summary, notebook, expected)
    # The runner only reads the notebook: its outputs never reach the committed file.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
