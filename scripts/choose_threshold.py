"""Choose a model's `[serving] min_probability` on its validation split; report the test effect.

Scores the validation and test rows of a trained version (its `processed/validation.csv` and
`processed/test.csv`, the exact rows it was evaluated on) with the NumPy head (`dc.predict`),
picks the threshold with the best validation accuracy (`dc.postprocessing.choose_threshold`),
and reports test accuracy, fallback-label recall and in-scope accuracy with and without it.
The test split is never used to choose; the best threshold on test is printed only to show how
far validation and test disagree.

The version: --version-dir, else the newest one of the config's model under DC_ARTIFACTS_DIR;
with --train a fresh version is trained first into --work-dir (its own SQLite database and
artifacts folder, loaded from --data-dir's train.csv, val.csv and test.csv), so nothing under
var/ is touched.

examples:
  python scripts/choose_threshold.py --config configs/clinc150.toml --fallback-label oos
  python scripts/choose_threshold.py --config configs/clinc150.toml --fallback-label oos \\
      --train --data-dir data/clinc150 --work-dir /tmp/clinc150-threshold --out result.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.config import get_settings  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402

log = logging.getLogger("choose_threshold")

DATA_SPLITS = {"train.csv": "train", "val.csv": "validation", "test.csv": "test"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the model's TOML config")
    parser.add_argument("--fallback-label", help="default: the config's [serving] fallback_label")
    parser.add_argument("--version-dir", type=Path, help="a trained version folder")
    parser.add_argument("--train", action="store_true", help="train a fresh version first")
    parser.add_argument("--data-dir", type=Path, help="with --train: train.csv, val.csv, test.csv")
    parser.add_argument("--work-dir", type=Path, help="with --train: where it goes (default: tmp)")
    parser.add_argument(
        "--fallback-share",
        type=float,
        action="append",
        default=[],
        metavar="SHARE",
        help="also choose on validation re-weighted to this share of fallback rows, an assumed "
        "production rate (repeatable; reported beside the plain choice)",
    )
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)

    import numpy as np
    import pandas as pd

    from dc.model_config import load_config
    from dc.nlp.embeddings import LocalEmbedder
    from dc.postprocessing import choose_threshold, threshold_scores
    from dc.predict import load_head

    config = load_config(args.config)
    fallback_label = args.fallback_label or config.serving.fallback_label
    if not fallback_label:
        raise SystemExit("no fallback label: pass --fallback-label or set [serving] in the config")

    embedder = LocalEmbedder.from_settings(settings)
    try:
        if args.train:
            version_dir = train_fresh(config, settings, embedder, args)
        else:
            version_dir = args.version_dir or newest_version(settings, config)
        head = load_head(version_dir)
        log.info("scoring %s/%s %s (%s)", head.region, head.name, head.version, version_dir)
        if head.embedder_fingerprint != embedder.fingerprint:
            raise SystemExit(
                f"{version_dir} was trained on embedder {head.embedder_fingerprint}, the local "
                f"one is {embedder.fingerprint}"
            )
        scored = {}
        for split in ("validation", "test"):
            frame = pd.read_csv(version_dir / "processed" / f"{split}.csv", keep_default_na=False)
            vectors = np.concatenate(
                [
                    embedder.embed(frame["text"].iloc[i : i + 256].tolist()).vectors
                    for i in range(0, len(frame), 256)
                ]
            )
            scored[split] = (head.predict_proba(vectors), frame["label_id"].to_numpy())
    finally:
        embedder.close()

    choice = choose_threshold(*scored["validation"], head.labels, fallback_label)
    oracle = choose_threshold(*scored["test"], head.labels, fallback_label)  # reported only
    fallback_index = head.labels.index(fallback_label)
    test_probabilities, test_truth = scored["test"]
    val_truth = scored["validation"][1]
    result = {
        "model": head.name,
        "version": head.version,
        "version_dir": str(version_dir),
        "fallback_label": fallback_label,
        "validation_fallback_share": float(np.mean(val_truth == fallback_index)),
        "test_fallback_share": float(np.mean(test_truth == fallback_index)),
        "chosen_on_validation": choice.threshold,
        "validation": {"without": choice.at(0.0), "with": choice.at(choice.threshold)},
        "test": {
            "without": threshold_scores(test_probabilities, test_truth, fallback_index, 0.0),
            "with": threshold_scores(
                test_probabilities, test_truth, fallback_index, choice.threshold
            ),
        },
        "assumed_shares": [
            {
                "fallback_share": share,
                "chosen_on_validation": alt.threshold,
                "test": threshold_scores(
                    test_probabilities, test_truth, fallback_index, alt.threshold
                ),
            }
            for share in args.fallback_share
            for alt in [
                choose_threshold(
                    *scored["validation"], head.labels, fallback_label, fallback_share=share
                )
            ]
        ],
        "best_on_test_not_used": oracle.threshold,
        "test_at_best_on_test": oracle.at(oracle.threshold),
        "validation_curve": choice.curve,
        "test_curve": oracle.curve,
    }
    print_summary(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_json_safe(result), indent=1) + "\n", encoding="utf-8")
    return 0


def newest_version(settings, config) -> Path:
    folder = Path(settings.artifacts_dir) / config.region / config.name
    versions = sorted(p for p in folder.glob("*") if p.is_dir() and not p.name.startswith("."))
    if not versions:
        raise SystemExit(f"no trained version under {folder}; pass --version-dir or --train")
    return versions[-1]


def train_fresh(config, settings, embedder, args) -> Path:
    """Train one version into a work folder of its own (SQLite file and artifacts)."""
    from dc.data import load_csv
    from dc.pipeline import train_model
    from persistence.db import make_engine, upgrade

    if args.data_dir is None:
        raise SystemExit("--train needs --data-dir")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=f"threshold-{config.name}-"))
    url = f"sqlite:///{work / 'dc.sqlite'}"
    settings = settings.model_copy(
        update={"artifacts_dir": str(work / "artifacts"), "database_url": url, "s3_bucket": ""}
    )
    upgrade(url)
    engine = make_engine(url)
    for file, split in DATA_SPLITS.items():
        if (args.data_dir / file).exists():
            load_csv(
                engine,
                args.data_dir / file,
                model=config.source,
                region=config.region,
                split=split,
                replace=True,
            )
    result = train_model(config, settings, embedder=embedder, engine=engine, backup=False)
    return result.version_dir


def print_summary(result: dict) -> None:
    def line(name: str, scores: dict) -> str:
        return (
            f"  {name:<30} accuracy {scores['accuracy']:.4f}  {result['fallback_label']} recall "
            f"{scores['fallback_recall']:.4f}  in-scope accuracy {scores['in_scope_accuracy']:.4f}"
        )

    t = result["chosen_on_validation"]
    print(f"{result['model']} {result['version']}: fallback {result['fallback_label']!r}")
    print(
        f"  share of {result['fallback_label']}: validation "
        f"{result['validation_fallback_share']:.3f}, test {result['test_fallback_share']:.3f}"
    )
    print(f"  min_probability chosen on validation: {t:.2f}")
    print(line("validation, no rule", result["validation"]["without"]))
    print(line(f"validation, rule at {t:.2f}", result["validation"]["with"]))
    print(line("test, no rule", result["test"]["without"]))
    print(line(f"test, rule at {t:.2f}", result["test"]["with"]))
    for alt in result["assumed_shares"]:
        t = alt["chosen_on_validation"]
        label = f"test, rule at {t:.2f}"
        print(f"  assuming {alt['fallback_share']:.0%} {result['fallback_label']} in production:")
        print(line(label, alt["test"]))
    best = result["best_on_test_not_used"]
    print(line(f"test at {best:.2f} (best on test)", result["test_at_best_on_test"]))


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
