"""The layout of a trained version on disk, and the helpers that write it.

```
<artifacts_dir>/<region>/<model>/<version>/
    manifest.json                 metrics, embedder, data hash, config, code revision, timings
    code.zip                      dc/, embedder/, scripts/, configs/, pyproject.toml at training
    raw/extract.csv               the raw extract as received (its sha256 is the data hash)
    processed/{train,validation,test}.csv, processed/preparation_report.json
    models/<architecture>/
        model.keras               the Keras head (vectors -> class probabilities)
        encoders.pkl              the fitted sklearn LabelEncoder (class id <-> label)
        reports/train_report.csv, reports/test_report.csv     per-class precision/recall/F1
        reports/keras_train_history.csv                       per-epoch loss/accuracy/val_*
        reports/keras_test_history.csv                        test loss and accuracy
        reports/confusion_matrix.png, reports/per_class_f1.png
```

A version is written into a hidden staging folder next to its final place and renamed when
complete (`staged_version_dir`), so a reader never sees half a version. Folders whose names
start with a dot are staging folders, never versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.preprocessing import LabelEncoder

from dc.config import REPO_ROOT, Settings

MANIFEST_FILE = "manifest.json"
CODE_ZIP = "code.zip"
RAW_DIR = "raw"
RAW_FILE = "extract.csv"
PROCESSED_DIR = "processed"
PREPARATION_REPORT = "preparation_report.json"
MODELS_DIR = "models"
MODEL_FILE = "model.keras"
ENCODERS_FILE = "encoders.pkl"
REPORTS_DIR = "reports"
TRAIN_REPORT = "train_report.csv"
TEST_REPORT = "test_report.csv"
TRAIN_HISTORY = "keras_train_history.csv"
TEST_HISTORY = "keras_test_history.csv"
CONFUSION_MATRIX = "confusion_matrix.png"
PER_CLASS_F1 = "per_class_f1.png"

# What code.zip holds (relative to the repository root), and what it leaves out.
CODE_PATHS = ("dc", "embedder", "scripts", "configs", "pyproject.toml")
_CODE_EXCLUDED_DIRS = {
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".ipynb_checkpoints",
}
_CODE_EXCLUDED_SUFFIXES = {".pyc", ".pyo"}


def version_dir(settings: Settings, region: str, model: str, version: str) -> Path:
    """The final folder of one version: `<artifacts_dir>/<region>/<model>/<version>`."""
    return Path(settings.artifacts_dir) / region / model / version


def model_dir(version_path: Path, architecture: str) -> Path:
    """The folder of the head inside a version: `models/<architecture>`."""
    return version_path / MODELS_DIR / architecture


def expected_files(architecture: str) -> list[str]:
    """Every file a complete version holds, relative to the version folder (sorted)."""
    head = f"{MODELS_DIR}/{architecture}"
    reports = f"{head}/{REPORTS_DIR}"
    return sorted(
        [
            MANIFEST_FILE,
            CODE_ZIP,
            f"{RAW_DIR}/{RAW_FILE}",
            *(f"{PROCESSED_DIR}/{name}.csv" for name in ("train", "validation", "test")),
            f"{PROCESSED_DIR}/{PREPARATION_REPORT}",
            f"{head}/{MODEL_FILE}",
            f"{head}/{ENCODERS_FILE}",
            *(
                f"{reports}/{name}"
                for name in (
                    TRAIN_REPORT,
                    TEST_REPORT,
                    TRAIN_HISTORY,
                    TEST_HISTORY,
                    CONFUSION_MATRIX,
                    PER_CLASS_F1,
                )
            ),
        ]
    )


@contextmanager
def staged_version_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside `final`; rename it to `final` when the block succeeds.

    The staging folder is removed when the block raises. The rename is atomic (same parent, so
    same file system): the version appears complete or not at all.

    Raises:
        FileExistsError: `final` already exists (before or after the block); versions are
            never overwritten.
    """
    if final.exists():
        raise FileExistsError(f"version folder {final} already exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if final.exists():  # another run finished the same version meanwhile
            raise FileExistsError(f"version folder {final} already exists")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> Path:
    """Write `data` as indented UTF-8 JSON (creating the folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_code_zip(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Zip the project's code as it is in the working tree (caches and bytecode excluded).

    Returns:
        The archived paths, relative to `root`. Paths of `CODE_PATHS` missing from `root` are
        skipped.
    """
    names: list[str] = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in CODE_PATHS:
            source = root / entry
            files = [source] if source.is_file() else sorted(source.rglob("*"))
            for file in files:
                relative = file.relative_to(root)
                if not file.is_file() or _excluded(relative):
                    continue
                archive.write(file, relative.as_posix())
                names.append(relative.as_posix())
    return names


def _excluded(relative: Path) -> bool:
    return (
        any(part in _CODE_EXCLUDED_DIRS for part in relative.parts)
        or relative.suffix in _CODE_EXCLUDED_SUFFIXES
    )


def weights_sha256(model) -> str:
    """A hash of a Keras model's weights: each array's position, dtype, shape and bytes.

    `model.keras` is a zip whose entries carry their write time, so two identical trainings
    give files with different hashes; this one is equal exactly when the weights are.
    """
    digest = hashlib.sha256()
    for index, weight in enumerate(model.get_weights()):
        array = np.ascontiguousarray(weight)
        digest.update(f"{index}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def code_revision(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The git commit of `root` and whether the working tree differs from it.

    Returns:
        `{"commit": <sha>, "dirty": bool}`, or `{"commit": "unknown", "dirty": None}` when git
        or the repository is not available (an installed package, a container without .git).
        `dirty` is true while anything in the checkout differs from the commit, an uncommitted
        or new config included: the version's own code.zip and config then say what ran.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))  # untracked code counts: it is not in HEAD
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def framework_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a trained head."""
    import keras
    import numpy
    import pandas
    import sklearn
    import tensorflow

    return {
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "scikit-learn": sklearn.__version__,
    }


def save_label_encoder(encoder: LabelEncoder, path: Path) -> Path:
    """Pickle the fitted label encoder (the file `encoders.pkl`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(encoder, file, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_label_encoder(path: Path) -> LabelEncoder:
    """Load the label encoder of a trained head.

    Pickle runs code on load: only read files from this project's own artifact store.
    """
    with open(path, "rb") as file:
        encoder = pickle.load(file)  # our own artifact: see the docstring
    if not isinstance(encoder, LabelEncoder):
        raise TypeError(f"{path} holds a {type(encoder).__name__}, not a LabelEncoder")
    return encoder


def load_manifest(version_path: Path) -> dict[str, Any]:
    """Read a version's `manifest.json`."""
    return json.loads((version_path / MANIFEST_FILE).read_text(encoding="utf-8"))
