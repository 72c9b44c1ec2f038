"""The notebooks of notebooks/final/ as files: committed without outputs, run in the right kernel.

Outputs (figures, tables, the data they show) and execution counts never belong in git: they
bloat every diff and go stale with the code. nbstripout strips them on `git add` where the filter
is installed (`.gitattributes` assigns it; `nbstripout --install` configures it, see the README),
and the test here fails whenever a notebook would be committed with them anyway: it reads what
git holds for the next commit (the staged version of a tracked notebook, the file itself for a
new one), so an executed copy in the work tree of a developer with the filter installed passes.

Also here, without a kernel: the runner's kernel is this interpreter whatever kernels are
registered elsewhere, and the helpers the notebooks share (their parameter, the sample).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from tests.conftest import REPO

FOLDER = REPO / "notebooks" / "final"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
PRESENTATION = ("preparation", "modelling")
# Cell metadata that only records a run (nbclient's timings, JupyterLab's ExecuteTime).
RUN_METADATA = ("execution", "ExecuteTime")


def load(name: str) -> ModuleType:
    """notebooks/final/<name>.py as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = load("run_notebooks")
support = load("notebook_support")


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)


def committed_text(path: Path) -> str:
    """What the next commit holds of `path`: its staged blob if git tracks it, else the file."""
    if shutil.which("git") and (REPO / ".git").exists():
        relative = path.relative_to(REPO).as_posix()
        staged = git("show", f":{relative}")
        if staged.returncode == 0:
            return staged.stdout
    return path.read_text(encoding="utf-8")


def run_leftovers(notebook) -> list[str]:
    """Where `notebook` still holds what a run left: outputs, execution counts, run metadata."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {index}: {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            found.append(f"cell {index}: execution count {cell.execution_count}")
        found += [f"cell {index}: metadata {key!r}" for key in RUN_METADATA if key in cell.metadata]
    return found


def test_the_presentation_notebooks_are_there():
    assert {path.stem for path in NOTEBOOKS} >= set(PRESENTATION)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_a_committed_notebook_has_no_outputs(path):
    notebook = nbformat.reads(committed_text(path), as_version=4)
    nbformat.validate(notebook)
    leftovers = run_leftovers(notebook)
    listed = "; ".join(leftovers[:4]) + (
        f"; {len(leftovers) - 4} more" if len(leftovers) > 4 else ""
    )
    assert not leftovers, (
        f"{path.name} would be committed with what a run left ({listed}): "
        f"strip it (`.venv/bin/nbstripout {path.relative_to(REPO)}`), or install the filter "
        "once with `.venv/bin/nbstripout --install` so that `git add` strips it"
    )
    assert notebook.metadata.kernelspec.name == "python3"


def test_the_leftover_check_sees_outputs_and_counts():
    cell = new_code_cell("print(1)", execution_count=3, outputs=[new_output("stream", text="1")])
    cell.metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    found = run_leftovers(new_notebook(cells=[new_markdown_cell("# x"), cell]))
    assert found == [
        "cell 1: 1 output(s)",
        "cell 1: execution count 3",
        "cell 1: metadata 'execution'",
    ]
    assert run_leftovers(new_notebook(cells=[new_code_cell("print(1)")])) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("name", ["preparation.ipynb", "a-new-one.ipynb"])
def test_git_assigns_the_nbstripout_filter_to_the_notebooks(name):
    attributes = git("check-attr", "filter", "--", f"notebooks/final/{name}")
    assert attributes.stdout.strip().endswith("filter: nbstripout"), attributes


def test_the_kernel_is_this_interpreter_whatever_is_registered(tmp_path, monkeypatch):
    # A `python3` kernel registered for the user (here through JUPYTER_PATH, searched first),
    # running another Python: Jupyter's own lookup would take it.
    from jupyter_client.kernelspec import KernelSpecManager

    decoy = tmp_path / "jupyter" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    argv = ["/elsewhere/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "another Python", "language": "python"}
    (decoy / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # that lookup makes the folder
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/elsewhere/bin/python"

    manager = runner.kernel_manager(tmp_path)
    assert manager.kernel_spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert Path(manager.connection_file).parent == tmp_path  # nothing under the home
    assert manager.transport == "ipc"


def test_the_kernel_environment_passes_the_settings_through(tmp_path, monkeypatch):
    monkeypatch.setenv("DC_LOG_LEVEL", "ERROR")
    env = runner.kernel_env({"DC_NOTEBOOK_SAMPLE": "50", "DC_LOG_LEVEL": "DEBUG"}, tmp_path)
    assert env["DC_NOTEBOOK_SAMPLE"] == "50"
    assert env["DC_LOG_LEVEL"] == "DEBUG"  # the caller's value over the process's
    assert env["IPYTHONDIR"] == str(tmp_path / "ipython")
    assert env["PATH"]
    assert runner.SAMPLE_ENV == support.SAMPLE_ENV


def test_notebooks_are_found_in_name_order_or_by_name():
    assert runner.notebooks() == NOTEBOOKS
    assert runner.notebooks(names=["modelling", "preparation.ipynb"]) == [
        FOLDER / "modelling.ipynb",
        FOLDER / "preparation.ipynb",
    ]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        runner.notebooks(names=["nothing-here"])


def test_the_summary_is_the_json_the_last_code_cell_printed():
    printed = json.dumps({"notebook": "x", "rows": 3}, indent=2)
    last = new_code_cell("print(...)", outputs=[new_output("stream", name="stdout", text=printed)])
    notebook = new_notebook(cells=[new_code_cell("1"), last, new_markdown_cell("the end")])
    assert runner.summary(notebook) == {"notebook": "x", "rows": 3}

    last.outputs = [new_output("stream", name="stdout", text="done\n")]
    with pytest.raises(ValueError, match="one JSON object"):
        runner.summary(notebook)
    last.outputs = [new_output("stream", name="stdout", text="[1, 2]")]
    with pytest.raises(ValueError, match="JSON object"):
        runner.summary(notebook)


@pytest.mark.parametrize(
    ("value", "rows"),
    [
        (None, None),
        ("", None),
        ("all", None),
        (" ALL ", None),
        ("0", None),
        ("1000", 1000),
        (" 25 ", 25),
    ],
)
def test_the_sample_size_comes_from_the_environment(value, rows):
    environ = {} if value is None else {support.SAMPLE_ENV: value}
    assert support.sample_size(environ) == rows


@pytest.mark.parametrize("value", ["-5", "ten", "1.5"])
def test_a_bad_sample_size_is_refused_with_the_variable_named(value):
    with pytest.raises(ValueError, match=support.SAMPLE_ENV):
        support.sample_size({support.SAMPLE_ENV: value})


@pytest.fixture(scope="module")
def banking77() -> pd.DataFrame:
    return support.load_dataset("banking77")


def test_the_dataset_is_read_as_the_pipeline_extracts_it(banking77):
    assert list(banking77.columns) == ["text", "label", "split", "example_time"]
    assert banking77["split"].value_counts().to_dict() == {"train": 10003, "test": 3080}
    assert banking77["label"].nunique() == 77
    assert list(banking77["split"].drop_duplicates()) == ["train", "test"]  # demo.py's order


def test_clinc150_gets_its_validation_file_as_the_validation_split():
    files = support.dataset_files("clinc150")
    assert sorted(files.values()) == ["test", "train", "validation"]
    with pytest.raises(FileNotFoundError, match="no dataset"):
        support.dataset_files("no-such-dataset")


@pytest.mark.parametrize("rows", [1, 500, 1000, 3000, 10_000])
def test_a_sample_is_whole_intents_within_its_size(banking77, rows):
    sample = support.sample_intents(banking77, rows, seed=42)
    sizes = banking77["label"].value_counts()
    kept = sample["label"].value_counts()
    assert (kept == sizes[kept.index]).all()  # every intent with all its rows, test ones too
    assert len(kept) >= support.MIN_INTENTS
    assert len(sample) <= rows or len(kept) == support.MIN_INTENTS
    # Intents are added in the draw's order while they fit: the first one left out, at most the
    # largest, would have crossed the size.
    assert len(sample) > rows - sizes.max()
    assert sample.equals(support.sample_intents(banking77, rows, seed=42))  # seeded


def test_the_whole_dataset_is_no_sample(banking77):
    assert support.sample_intents(banking77, None, seed=42).equals(banking77)
    assert len(support.sample_intents(banking77, 10**6, seed=42)) == len(banking77)
    other_seed = support.sample_intents(banking77, 1000, seed=7)
    assert set(other_seed["label"]) != set(
        support.sample_intents(banking77, 1000, seed=42)["label"]
    )
