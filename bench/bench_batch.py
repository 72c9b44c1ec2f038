"""How fast does `scripts/batch.py score` go on Spark, against the in-process batch path?

The same --rows distinct phrases (BANKING77 and CLINC150, each also in near-duplicate variants:
"please ...", "... thanks", "hi, ..." and the like, so every one is a miss) are scored with the
banking77 demo head:

- in process: the encoder at batch 32 (TensorFlow on every core, as training embeds), the head
  in NumPy, the API's postprocessing; rows/s over the whole set;
- Spark `score` (`dc.batch.jobs.score`) at local[1] and at local[2]: one Python worker per core,
  TensorFlow on one thread in each (DC_BATCH_ENCODER_THREADS), Parquet in and out; rows/s over
  the job's wall time, which includes each worker loading the encoder.

Targets (the issue's): Spark at local[2] within 25% of the in-process path on the same two
cores, and local[2] at least 1.7x local[1]. From the local[2] rate per core, the projected wall
time and cost of 100 million phrases on EMR Serverless at 10, 50 and 200 vCPUs (the price per
vCPU-hour and GB-hour is stated with its source; 4 GB per vCPU, the job's executor sizing).

Smoke mode (`--smoke`, what `make bench-smoke` runs): the tiny smoke models, 2,000 phrases;
results in var/bench-smoke/results/.

Usage: python bench/bench_batch.py [--rows 100000] [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.inputs import load_phrases  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402
from bench.harness.run import run_main  # noqa: E402
from dc.config import VAR_DIR, Settings  # noqa: E402

ROWS = 100_000
SMOKE_ROWS = 2_000
MODEL = "banking77"
REGION = "global"
MASTERS = ("local[1]", "local[2]")
TARGET_VS_IN_PROCESS = 0.75
TARGET_SCALING = 1.7
# EMR Serverless, x86, the same in us-east-1 and eu-west-1: the AWS price page
# (https://aws.amazon.com/emr/pricing/, "Amazon EMR Serverless"), as read from the price table
# PerfKitBenchmarker generates from it (perfkitbenchmarker/providers/aws/
# aws_dpb_emr_serverless_prices.py). Storage up to 20 GB a worker is free; not counted.
PRICE = {
    "vcpu_hour": 0.052624,
    "gb_hour": 0.0057785,
    "source": "https://aws.amazon.com/emr/pricing/",
}
GB_PER_VCPU = 4
PROJECTED_PHRASES = 100_000_000
PROJECTED_VCPUS = (10, 50, 200)
_PREFIXES = ("", "please ", "hi, ", "hello, ", "quick question: ", "so ")
_SUFFIXES = ("", " thanks", " please", "?", " asap", " today")


def phrases(rows: int) -> list[str]:
    """`rows` distinct phrases: the datasets' own, then near-duplicate variants of them."""
    base = load_phrases(max_words=15)
    seen: dict[str, None] = dict.fromkeys(base)
    rng = random.Random(0)
    while len(seen) < rows:
        phrase = rng.choice(base)
        variant = f"{rng.choice(_PREFIXES)}{phrase}{rng.choice(_SUFFIXES)}"
        seen.setdefault(variant)
    ordered = list(seen)[:rows]
    rng.shuffle(ordered)
    return ordered


def in_process(settings: Settings, texts: list[str], folder: str) -> dict:
    """The in-process batch path: encode at batch 32, score, postprocess."""
    from dc.nlp.encoder import load_encoder
    from dc.postprocessing import postprocess
    from dc.predict import load_head

    # The service's backend, as the Spark workers use it, on every core of this one process.
    encoder = load_encoder(settings.embedder_handle, settings.encoder_backend)
    head = load_head(folder)
    encoder.warmup()
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        batch = texts[i : i + 32]
        postprocess(head.predict_proba(encoder.encode(batch)), head.labels, 3, head.rule)
    seconds = time.perf_counter() - started
    return {"rows": len(texts), "seconds": round(seconds, 2), "rows_per_s": len(texts) / seconds}


def on_spark(settings: Settings, master: str, source: str, output: str, head) -> dict:
    from dc.batch import jobs
    from dc.batch.session import spark_session

    spark = spark_session(settings, master, app_name=f"bench-batch-{master}")
    try:
        frame = jobs.read_phrases(spark, settings, path=source)
        report = jobs.score(spark, settings, frame, [head], output=output)
    finally:
        spark.stop()
    return {
        "rows": report.rows_in,
        "seconds": round(report.seconds, 2),
        "rows_per_s": report.rows_per_s,
        "rejected": report.rejected,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, help=f"phrases (default {ROWS:,})")
    smoke.add_arguments(parser)
    args = parser.parse_args()
    rows = args.rows or (SMOKE_ROWS if args.smoke else ROWS)
    out = smoke.smoke_out(args.out) if args.smoke else (args.out or smoke.COMMITTED_RESULTS)
    registry = smoke.ensure_models() if args.smoke else VAR_DIR / "dc.sqlite"
    settings = Settings(
        database_url=f"sqlite:///{registry}",
        serving_region=REGION,
        batch_encoder_threads=1,
        log_level="WARNING",
    )
    from dc.batch import jobs

    head = jobs.resolve_head(settings, MODEL, region=REGION)
    texts = phrases(rows)
    print(f"{len(texts):,} distinct phrases; {MODEL} {head.version}")

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="dc-bench-batch-") as work:
        source = f"{work}/phrases.parquet"
        pd.DataFrame({"id": range(len(texts)), "text": texts}).to_parquet(source)
        points = {"in_process": in_process(settings, texts, head.folder)}
        print(f"in process: {points['in_process']['rows_per_s']:.0f} rows/s")
        for master in MASTERS:
            points[master] = on_spark(settings, master, source, f"{work}/out-{master}", head)
            print(f"{master}: {points[master]['rows_per_s']:.0f} rows/s")

    two, one, base = (points[k]["rows_per_s"] for k in ("local[2]", "local[1]", "in_process"))
    ratios = {"local2_vs_in_process": two / base, "local2_vs_local1": two / one}
    met = {
        "local2_vs_in_process": ratios["local2_vs_in_process"] >= TARGET_VS_IN_PROCESS,
        "local2_vs_local1": ratios["local2_vs_local1"] >= TARGET_SCALING,
    }
    per_vcpu = two / 2
    projection = []
    for vcpus in PROJECTED_VCPUS:
        hours = PROJECTED_PHRASES / (per_vcpu * vcpus) / 3600
        cost = hours * vcpus * (PRICE["vcpu_hour"] + GB_PER_VCPU * PRICE["gb_hour"])
        projection.append({"vcpus": vcpus, "hours": round(hours, 2), "usd": round(cost, 2)})
    figures = {
        "benchmark": "batch",
        "when": timestamp(),
        "machine": machine_info(load_tools=False),
        "smoke": args.smoke,
        "rows": len(texts),
        "model": MODEL,
        "version": head.version,
        "points": points,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": {
            "local2_vs_in_process": TARGET_VS_IN_PROCESS,
            "local2_vs_local1": TARGET_SCALING,
        },
        "met": met,
        "price": PRICE,
        "gb_per_vcpu": GB_PER_VCPU,
        "projection": {
            "phrases": PROJECTED_PHRASES,
            "per_vcpu_rows_per_s": per_vcpu,
            "runs": projection,
        },
    }
    markdown = _markdown(figures)
    write_results(out, "batch", figures, smoke.mark(markdown, args.smoke))
    print(markdown)
    return 0 if args.smoke or all(met.values()) else 1


def _markdown(f: dict) -> str:
    p, r = f["points"], f["ratios"]
    lines = [
        f"Batch scoring, {f['rows']:,} distinct phrases, {f['model']} {f['version']}, "
        f"{f['machine']['cpus']} CPUs ({f['when']}).",
        "",
        "| path | rows/s | seconds |",
        "|---|---:|---:|",
        f"| in process (encoder batch 32, all cores) | {p['in_process']['rows_per_s']:.0f} "
        f"| {p['in_process']['seconds']} |",
    ]
    for master in MASTERS:
        lines.append(
            f"| Spark `score`, {master} | {p[master]['rows_per_s']:.0f} | {p[master]['seconds']} |"
        )
    lines += [
        "",
        f"local[2] / in process: **{r['local2_vs_in_process']:.2f}** (target >= "
        f"{TARGET_VS_IN_PROCESS}: {'met' if f['met']['local2_vs_in_process'] else 'missed'}); "
        f"local[2] / local[1]: **{r['local2_vs_local1']:.2f}** (target >= {TARGET_SCALING}: "
        f"{'met' if f['met']['local2_vs_local1'] else 'missed'}).",
        "",
        f"100 million phrases on EMR Serverless at {f['projection']['per_vcpu_rows_per_s']:.0f} "
        f"rows/s per vCPU (local[2]'s rate per core), {f['gb_per_vcpu']} GB per vCPU, "
        f"${f['price']['vcpu_hour']} per vCPU-hour and ${f['price']['gb_hour']} per GB-hour "
        f"({f['price']['source']}):",
        "",
        "| vCPUs | wall time | cost |",
        "|---:|---:|---:|",
    ]
    for run in f["projection"]["runs"]:
        lines.append(f"| {run['vcpus']} | {run['hours']:.1f} h | ${run['usd']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
