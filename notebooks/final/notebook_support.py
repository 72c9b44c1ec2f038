"""What the notebooks of this folder share: their parameter, the dataset and its sample.

The notebooks import it from their own folder (a kernel starts in the notebook's folder). It
holds no analysis: it reads the bundled dataset the way the training data is loaded and picks
the sample the notebooks present; everything they show is computed by `dc`.

**The data.** A bundled dataset (`data/<name>/`, e.g. BANKING77) is read with
`dc.data.read_examples`, the reader `scripts/load_training_data.py` and `scripts/demo.py` load
the training table with, each file tagged with the split of its name (`train.csv` "train",
`val.csv` "validation", `test.csv` "test", as `scripts/demo.py` loads them). The result has the
columns of the pipeline's SQL extract (`dc.queries.fetch_training_rows`: text, label, split,
example_time), so `dc.preparation.prepare` sees what a training run would see, without a
database.

**The parameter.** `DC_NOTEBOOK_SAMPLE` is how many of the dataset's rows a notebook presents:
unset, empty, `all` or `0` means all of them (the presentation); the tests set a few hundred.

**The sample** is made of whole intents: intents are drawn in a seeded random order and each is
kept with all its rows (train and test) while the total stays within the size. A share of every
intent's rows would leave the small intents under the config's `min_examples_per_class`, which
`prepare` refuses; whole intents keep every class as the data has it and the test split exactly
as given, so a sample's scores are those of the same classes in the full data (with fewer
classes to tell apart). At least two intents are kept, the fewest a classifier needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from dc.config import REPO_ROOT
from dc.data import read_examples
from dc.preparation import TEST, TRAIN, VALIDATION

SAMPLE_ENV = "DC_NOTEBOOK_SAMPLE"
DATA_DIR = REPO_ROOT / "data"
# The split of each bundled file, by its name (scripts/demo.py loads them with the same).
FILE_SPLITS = {"train": TRAIN, "val": VALIDATION, "validation": VALIDATION, "test": TEST}
MIN_INTENTS = 2
_ALL = frozenset({"", "all", "0"})


def sample_size(environ: Mapping[str, str] | None = None) -> int | None:
    """The sample size `DC_NOTEBOOK_SAMPLE` asks for, or None for the whole dataset.

    Raises:
        ValueError: the value is neither a positive whole number nor `all`/`0`/empty.
    """
    value = (os.environ if environ is None else environ).get(SAMPLE_ENV, "").strip()
    if value.lower() in _ALL:
        return None
    try:
        rows = int(value)
    except ValueError:
        rows = -1
    if rows < 0:
        raise ValueError(f"{SAMPLE_ENV} must be a number of rows or 'all', got {value!r}")
    return rows


def dataset_files(name: str, data_dir: Path = DATA_DIR) -> dict[Path, str]:
    """The CSV files of the bundled dataset `name` and the split each is loaded with.

    Raises:
        FileNotFoundError: no such dataset, or a CSV whose name is no split.
    """
    folder = data_dir / name
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no dataset {name!r}: {folder} holds no CSV file")
    unknown = [path.name for path in files if path.stem not in FILE_SPLITS]
    if unknown:
        raise FileNotFoundError(f"{folder}: {unknown} are named after no split {FILE_SPLITS}")
    return {path: FILE_SPLITS[path.stem] for path in files}


def load_dataset(name: str, data_dir: Path = DATA_DIR) -> pd.DataFrame:
    """Every row of the bundled dataset `name` as the pipeline's extract would hold them.

    Returns:
        Columns text, label, split, example_time (NaT: the files carry no time), train rows
        first, then validation, then test (the order `scripts/demo.py` loads them in).
    """
    order = {TRAIN: 0, VALIDATION: 1, TEST: 2}
    files = sorted(dataset_files(name, data_dir).items(), key=lambda item: order[item[1]])
    frames = [read_examples(path, split=split) for path, split in files]
    return pd.concat(frames, ignore_index=True)


def sample_intents(raw: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """Whole intents of `raw`, drawn in a random order from `seed`, within `rows` rows in all.

    Args:
        raw: an extract (column `label`; the rest is kept as it is).
        rows: the most rows to keep; None keeps everything.
        seed: the draw's seed (the notebooks use the config's `[training] seed`).

    Returns:
        The rows of the chosen intents in their original order, index reset. At least
        `MIN_INTENTS` intents, even when they hold more than `rows` rows together.
    """
    if rows is None or rows >= len(raw):
        return raw.reset_index(drop=True)
    sizes = raw["label"].value_counts().sort_index()  # sorted first: the draw depends on seed only
    order = sizes.index[np.random.default_rng(seed).permutation(len(sizes))]
    totals = sizes[order].cumsum().to_numpy()
    keep = max(MIN_INTENTS, int(np.searchsorted(totals, rows, side="right")))
    return raw[raw["label"].isin(order[:keep])].reset_index(drop=True)
