"""Make sure the demo models exist (what `make run` calls before serving).

Loads the bundled BANKING77 and CLINC150 files into the training table when their rows are
missing, then trains and promotes the demo models (banking77; clinc150 with `oos` as a class)
that have no promoted version yet. Safe to run again: it does nothing when all is in place.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.config import get_settings  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402

log = logging.getLogger("demo")

# (training-table tag, data folder, split of each file): the given splits are kept as they are.
DEMO_DATA = {
    "banking77": {"train.csv": "train", "test.csv": "test"},
    "clinc150": {"train.csv": "train", "val.csv": "validation", "test.csv": "test"},
}
DEMO_MODELS = ("banking77", "clinc150")
REGION = "global"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)

    from sqlalchemy import func, select

    from dc.data import load_csv
    from persistence.db import make_engine, session_factory, upgrade
    from persistence.models import TrainingExample

    url = settings.database_url_or_default
    upgrade(url)
    engine = make_engine(url)
    for model, files in DEMO_DATA.items():
        with session_factory(engine)() as session:
            count = session.scalar(
                select(func.count())
                .select_from(TrainingExample)
                .where(TrainingExample.model == model, TrainingExample.region == REGION)
            )
        if count:
            log.info("%s: %d training rows already loaded", model, count)
            continue
        for file, split in files.items():
            load_csv(engine, REPO / "data" / model / file, model=model, region=REGION, split=split)

    import train  # scripts/train.py, beside this file

    configs = [arg for model in DEMO_MODELS for arg in ("--config", model)]
    return train.main(["--if-missing", "--promote", *configs])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
