"""Accuracy against the published anchors, through the product's own training with the template.

Every protocol trains with `configs/templates/intents.toml` as a new user copies it (only the
name changes, and what the protocol itself says: CLINC150's in-scope protocol excludes `oos`,
its out-of-scope protocol turns on the validation-chosen `oos` threshold), through
`dc.train.train_version` on the datasets' own splits, on the embedder the settings name
(`--extra`, DC_ENCODER_EXTRA: use-m3,mpnet by default here, the composite of all-MiniLM-L6-v2,
multilingual USE v3 and all-mpnet-base-v2; `--extra ""` for MiniLM alone):

- banking77: BANKING77 train (10% of each intent held out for validation), its test split;
- banking77_10shot: 10 training phrases per intent (NumPy seed 0, `np.random.choice` without
  replacement per label, labels in sorted order), of which the template holds out one per
  intent for validation; the full test split;
- clinc150_inscope: CLINC150's 150 in-scope intents, its own validation and test splits;
- clinc150_oos: all 151 classes with `oos`, the `[serving]` threshold chosen on validation
  (fallback_share 0.5, never the test split); overall accuracy and `oos` recall on test with
  the rule applied.

Also measured, per phrase: the encoder (one phrase alone, in process, median) of MiniLM and of
the composite; scoring the trained head in NumPy (one vector), single member against ensemble.
Training time is each protocol's `train_version` wall time (embedding included, the phrase cache
cold for the first protocol of each dataset).

The same config and seed give the same figures: a second run reproduces them (`--repeat`
checks it for the first protocol).

Smoke mode (`--smoke`): eight intents of each dataset, a few phrases each, two members.

Usage: python bench/bench_accuracy.py [--protocols a,b] [--extra use-m3] [--repeat] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402

TEMPLATE = REPO / "configs" / "templates" / "intents.toml"
DATA = REPO / "data"
PROTOCOLS = ("banking77", "banking77_10shot", "clinc150_inscope", "clinc150_oos")
# Published test accuracy (%) the issue sets beside ours: Casanueva et al. 2020 (USE+ConveRT,
# frozen encoders + MLP; fine-tuned BERT-large), ICDA 2023 (fine-tuned), CPFT (10-shot).
ANCHORS = {
    "banking77": {"USE+ConveRT": 93.36, "BERT-large": 93.66, "ICDA": 94.42, "goal": 94.5},
    "banking77_10shot": {"USE+ConveRT": 85.19, "CPFT": 87.20, "ICDA": 89.79, "goal": 87.2},
    "clinc150_inscope": {"USE+ConveRT": 97.16, "BERT-large": 96.93, "ICDA": 97.12, "goal": 97.2},
    "clinc150_oos": {"goal": 92.0},
}
SHOTS = 10
SMOKE_INTENTS = 8
SMOKE_PER_LABEL = {"train": 12, "validation": 3, "test": 4}


def template(name: str, smoke_run: bool) -> dict[str, Any]:
    """The template config as a dict, renamed; a smoke run fits two short members."""
    config = tomllib.loads(TEMPLATE.read_text())
    config["model"]["name"] = name
    if smoke_run:
        config["training"].update(epochs=3, ensemble=2)
    return config


def read(dataset: str, split: str) -> pd.DataFrame:
    file = {"validation": "val.csv"}.get(split, f"{split}.csv")
    frame = pd.read_csv(DATA / dataset / file)
    frame["split"] = split
    return frame


def extract(protocol: str, smoke_run: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The raw rows (text, label, split) and the config of one protocol."""
    config = template(protocol, smoke_run)
    if protocol.startswith("banking77"):
        frames = [read("banking77", "train"), read("banking77", "test")]
    else:
        frames = [read("clinc150", s) for s in ("train", "validation", "test")]
    raw = pd.concat(frames, ignore_index=True)
    if smoke_run:
        keep = sorted(raw.loc[raw["label"] != "oos", "label"].unique())[:SMOKE_INTENTS]
        keep += ["oos"] if protocol == "clinc150_oos" else []
        raw = raw[raw["label"].isin(keep)]
        raw = pd.concat(
            [
                group.head(SMOKE_PER_LABEL[split])
                for (split, _), group in raw.groupby(["split", "label"], sort=True)
            ]
        )
    if protocol == "banking77_10shot":
        raw = pd.concat([few_shot(raw[raw["split"] == "train"]), raw[raw["split"] == "test"]])
    if protocol == "clinc150_inscope":
        config["data"]["exclude_labels"] = ["oos"]
    if protocol == "clinc150_oos":
        config["serving"] = {"fallback_label": "oos", "choose_threshold": True}
    return raw.reset_index(drop=True), config


def few_shot(train: pd.DataFrame, shots: int = SHOTS) -> pd.DataFrame:
    """`shots` rows per label: NumPy seed 0, np.random.choice without replacement per label."""
    np.random.seed(0)
    picked = []
    for label in sorted(train["label"].unique()):
        rows = np.flatnonzero(train["label"].to_numpy() == label)
        picked.extend(np.random.choice(rows, min(shots, len(rows)), replace=False))
    return train.iloc[sorted(picked)]


def per_phrase_ms(function, inputs: list, repeats: int) -> float:
    """Median milliseconds of `function(item)` over `repeats` passes of `inputs`."""
    times = []
    for _ in range(repeats):
        for item in inputs:
            started = time.perf_counter()
            function(item)
            times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def serving_costs(settings, heads: dict[str, Path], smoke_run: bool) -> dict[str, Any]:
    """Per phrase: the encoder alone and composite, one phrase at a time; each head in NumPy."""
    from dc.nlp.encoder import encoder_from_settings
    from dc.predict import load_head

    phrases = read("banking77", "test")["text"].head(20 if smoke_run else 200).tolist()
    repeats = 1 if smoke_run else 3
    costs: dict[str, Any] = {"encoder_ms": {}, "head_ms": {}}
    for name, extra in (("minilm", ""), ("composite", settings.encoder_extra)):
        if name == "composite" and not extra:
            continue
        encoder = encoder_from_settings(settings.model_copy(update={"encoder_extra": extra}))
        encoder.warmup()
        costs["encoder_ms"][f"{name} ({encoder.name}, {encoder.dimension} d)"] = per_phrase_ms(
            lambda text, e=encoder: e.encode([text]), phrases, repeats
        )
    rng = np.random.default_rng(0)
    for protocol, folder in heads.items():
        head = load_head(folder)
        vectors = rng.normal(size=(200, head.dimension)).astype(np.float32)
        costs["head_ms"][f"{protocol} ({len(head.members)} members)"] = per_phrase_ms(
            head.predict_proba, list(vectors[:, None, :]), repeats
        )
    return costs


def run_protocol(protocol, settings, embedder, artifacts: Path, smoke_run: bool) -> dict:
    from dc.model_config import ModelConfig
    from dc.train import train_version

    raw, config_dict = extract(protocol, smoke_run)
    config = ModelConfig.model_validate(config_dict)
    run_settings = settings.model_copy(update={"artifacts_dir": str(artifacts)})
    started = time.perf_counter()
    result = train_version(config, run_settings, embedder, raw, "v1", progress=False)
    seconds = time.perf_counter() - started
    manifest = result.manifest
    figures = {
        "accuracy": round(100 * result.metrics["accuracy"], 2),
        "macro_f1": round(100 * result.metrics["macro_f1"], 2),
        "train_rows": manifest["data"]["rows"]["train"],
        "classes": manifest["data"]["classes"],
        "seconds": round(seconds, 1),
        "seconds_fit": manifest["training"]["seconds_fit"],
        "members": len(manifest["training"]["members"]),
        "temperature": manifest["training"]["temperature"],
        "validation_accuracy": round(100 * manifest["metrics"]["validation"]["accuracy"], 2),
        "weights_sha256": manifest["training"]["weights_sha256"],
        "version_dir": str(result.version_dir),
    }
    rule = manifest["metrics"].get("rule")
    if rule:
        figures["threshold"] = manifest["config"]["serving"]["min_probability"]
        figures["accuracy_with_rule"] = round(100 * rule["test"]["accuracy"], 2)
        figures["oos_recall"] = round(rule["test"]["fallback_recall"], 4)
        figures["in_scope_accuracy"] = round(100 * rule["test"]["in_scope_accuracy"], 2)
    print(f"{protocol}: {figures}", flush=True)
    return figures


def markdown(report: dict) -> str:
    lines = [
        f"Accuracy, {report['when']}: `python bench/bench_accuracy.py` on {report['embedder']} "
        f"({report['dimension']} d), the template's defaults, each dataset's own test split.",
        "",
        "| protocol | test accuracy | goal | anchors | training | members |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for protocol, figures in report["protocols"].items():
        anchors = {k: v for k, v in ANCHORS.get(protocol, {}).items() if k != "goal"}
        accuracy = figures.get("accuracy_with_rule", figures["accuracy"])
        extra = ""
        if "oos_recall" in figures:
            extra = (
                f" (oos recall {figures['oos_recall']:.3f}, threshold {figures['threshold']}, "
                f"in-scope {figures['in_scope_accuracy']:.2f})"
            )
        lines.append(
            f"| {protocol} | **{accuracy:.2f}**{extra} | {ANCHORS[protocol]['goal']} | "
            + ", ".join(f"{k} {v}" for k, v in anchors.items())
            + f" | {figures['seconds']:.0f} s | {figures['members']} |"
        )
    costs = report["serving"]
    lines += ["", "| per phrase, in process, median | ms |", "|---|---:|"]
    lines += [f"| encoder: {name} | {ms} |" for name, ms in costs["encoder_ms"].items()]
    lines += [f"| head in NumPy: {name} | {ms} |" for name, ms in costs["head_ms"].items()]
    if report.get("repeat"):
        lines += ["", f"Rerun of {report['repeat']['protocol']}: {report['repeat']['same']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    parser.add_argument(
        "--extra", default="use-m3,mpnet", help='DC_ENCODER_EXTRA for the run ("": MiniLM alone)'
    )
    parser.add_argument(
        "--repeat", action="store_true", help="train the first protocol twice: same figures?"
    )
    smoke.add_arguments(parser)
    args = parser.parse_args(argv)
    out = smoke.smoke_out(args.out) if args.smoke else (args.out or REPO / "bench" / "results")

    from dc.config import Settings
    from dc.nlp.embeddings import LocalEmbedder

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown protocol(s) {unknown}; choose from {PROTOCOLS}")
    settings = Settings(
        encoder_extra=args.extra, cache_size=100_000, cache_snapshot="", warm_start_phrases=0
    )
    embedder = LocalEmbedder.from_settings(settings)
    report: dict[str, Any] = {
        "when": timestamp(),
        "machine": machine_info(load_tools=False),
        "embedder": embedder.name,
        "fingerprint": embedder.fingerprint,
        "dimension": embedder.dimension,
        "smoke": args.smoke,
        "protocols": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as scratch:
        try:
            for protocol in protocols:
                report["protocols"][protocol] = run_protocol(
                    protocol, settings, embedder, Path(scratch) / protocol, args.smoke
                )
            if args.repeat:
                again = run_protocol(
                    protocols[0], settings, embedder, Path(scratch) / "repeat", args.smoke
                )
                first = report["protocols"][protocols[0]]
                same = all(again[k] == first[k] for k in ("accuracy", "weights_sha256"))
                report["repeat"] = {
                    "protocol": protocols[0],
                    "same": "the same accuracy and weights hash" if same else "DIFFERENT",
                }
        finally:
            embedder.close()
        heads = {p: Path(f["version_dir"]) for p, f in report["protocols"].items()}
        report["serving"] = serving_costs(settings, heads, args.smoke)
    for figures in report["protocols"].values():
        figures.pop("version_dir")
    write_results(out, "accuracy", report, smoke.mark(markdown(report), args.smoke))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
