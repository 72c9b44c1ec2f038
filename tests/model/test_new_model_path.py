"""A new user's path to a new model, through the `dc` command exactly as the README's "Add a
model" describes it: load rows, copy the template config, train, look, promote, train again,
roll back. On a small generated dataset of four intents, ten training phrases each."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

DC = Path(sys.executable).parent / "dc"  # the console script `pip install -e .` puts there
INTENTS = {
    "track_order": "where is my {} right now",
    "return_item": "i want to send the {} back for a refund",
    "cancel_order": "please cancel my order of the {}",
    "price_question": "how much does the {} cost",
}
ITEMS = ["blue jacket", "coffee machine", "phone case", "desk lamp", "running shoes",
         "kettle", "backpack", "wool scarf", "office chair", "tea set", "gaming mouse",
         "rain coat", "mixer", "toaster", "sofa cushion"]  # fmt: skip


def write_rows(path: Path, items: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for label, template in INTENTS.items():
            for item in items:
                writer.writerow([template.format(item), label])
    return path


@pytest.fixture
def user(tmp_path):
    """Run `dc ...` as the user would, in a checkout whose database, artifacts and configs
    folder are this test's own."""
    (tmp_path / "configs").mkdir()
    env = {
        **os.environ,
        "DC_DATABASE_URL": f"sqlite:///{tmp_path / 'dc.sqlite'}",
        "DC_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "DC_CONFIGS_DIR": str(tmp_path / "configs"),
        "DC_S3_BUCKET": "",
        "DC_LOG_LEVEL": "INFO",
    }

    def dc(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(DC), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    return dc, tmp_path


def test_a_new_model_from_rows_to_a_rollback(user):
    dc, home = user
    assert DC.exists(), "make setup installs the dc command (pip install -e .)"
    train_csv = write_rows(home / "tickets_train.csv", ITEMS[:10])
    test_csv = write_rows(home / "tickets_test.csv", ITEMS[10:])

    # 1. rows, in the default region on both sides
    dc("load", "--model", "tickets", str(train_csv))
    dc("load", "--model", "tickets", "--split", "test", str(test_csv))

    # 2. the config: the template, renamed (what the README's cp and sed do)
    template = (REPO / "configs" / "templates" / "intents.toml").read_text()
    assert template.count('name = "my_intents"') == 1
    (home / "configs" / "tickets.toml").write_text(
        template.replace('name = "my_intents"', 'name = "tickets"')
    )

    # 3. train (ten phrases a class pass the template's minimum)
    first = dc("train", "--config", "tickets")
    assert "test accuracy" in first.stderr

    # 4. look, promote, train again, promote, roll back
    listed = dc("versions", "tickets").stdout.splitlines()
    assert listed[0].split()[:2] == ["version", "status"] and len(listed) == 2
    version, status, accuracy = listed[1].split()[:3]
    assert status == "trained" and float(accuracy) >= 75.0
    assert f"global/tickets {version} is promoted" in dc("promote", "tickets", version).stdout

    again = dc("train", "--config", "tickets", "--promote").stdout.splitlines()
    header = next(i for i, line in enumerate(again) if line.startswith("model "))
    assert again[header].split()[:4] == ["model", "version", "accuracy", "weighted"]
    assert again[header + 1].split()[0] == "global/tickets" and again[header + 1].endswith("yes")
    rows = [line.split() for line in dc("versions", "tickets").stdout.splitlines()[1:]]
    assert [row[1] for row in rows] == ["archived", "promoted"]
    assert f"is back on {version}" in dc("rollback", "tickets").stdout
    rows = [line.split() for line in dc("versions", "tickets").stdout.splitlines()[1:]]
    assert [row[1] for row in rows] == ["promoted", "archived"]

    # The same config and seed: the same weights (the manifest's hash), the same figures.
    manifests = sorted((home / "artifacts" / "global" / "tickets").glob("*/manifest.json"))
    first_run, second_run = (json.loads(path.read_text()) for path in manifests)
    assert first_run["training"]["weights_sha256"] == second_run["training"]["weights_sha256"]
    assert first_run["metrics"] == second_run["metrics"]


def test_the_user_is_told_where_the_rows_are_and_what_each_command_does(user):
    dc, home = user
    dc("load", "--model", "tickets", "--region", "eu", str(write_rows(home / "t.csv", ITEMS)))
    template = (REPO / "configs" / "templates" / "intents.toml").read_text()
    (home / "configs" / "tickets.toml").write_text(
        template.replace('name = "my_intents"', 'name = "tickets"')
    )
    wrong = dc("train", "--config", "tickets", ok=False)
    assert wrong.returncode == 1
    assert "in region 'global'" in wrong.stderr and "region 'eu' (60 rows)" in wrong.stderr
    assert "loaded embedder" not in wrong.stderr  # said before any encoder loads

    overview = dc("--help").stdout
    for command in ("load", "train", "versions", "promote", "rollback", "report", "serve"):
        assert command in overview
        assert dc(command, "--help").stdout.startswith(f"usage: dc {command}")
    assert dc(ok=False).returncode == 2  # no command: the overview, and a usage error
    unknown = dc("promote", "tickets", "20990101T000000Z", ok=False)
    assert unknown.returncode == 1 and "dc promote:" in unknown.stderr
    assert "Traceback" not in unknown.stderr
