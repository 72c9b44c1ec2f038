"""How should TensorFlow's threads be laid out for the encoder on this machine?

Runs the raw SavedModel in a fresh process per configuration (TensorFlow fixes its thread pools
at start-up) and prints phrases/s at batch 8, 16 and 32 for:
  - one caller, TensorFlow's defaults (every core inside each op): the plain SavedModel;
  - one caller, single-threaded ops;
  - N callers side by side, single-threaded ops, N ops at once: what the embedder does with
    DC_ENCODER_WORKERS=N, DC_TF_INTRA_OP_THREADS=1, DC_TF_INTER_OP_THREADS=N.

Smoke mode (`--smoke`, what `make bench-smoke` runs): only the 2-caller layout, at batch 8, on
64 phrases per caller; results in var/bench-smoke/results/.

Usage: python bench/bench_tf_threads.py [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.results import write_results  # noqa: E402

BATCHES = (8, 16, 32)
PHRASES_PER_CALLER = 1536
CONFIGS = (  # (intra-op threads, inter-op threads, callers); 0 = TensorFlow's default
    (0, 0, 1),
    (1, 1, 1),
    (1, 2, 2),
)
# --smoke: the layout with threads side by side (the one the service uses), one batch size.
SMOKE_BATCHES = (8,)
SMOKE_PHRASES_PER_CALLER = 64
SMOKE_CONFIGS = CONFIGS[-1:]


def measure(
    intra: int,
    inter: int,
    callers: int,
    batches: tuple[int, ...] = BATCHES,
    per_caller: int = PHRASES_PER_CALLER,
) -> dict[str, float]:
    """In this process: phrases/s per batch size with `callers` threads calling the encoder,
    each encoding its own `per_caller` phrases."""
    from bench.bench_embedder import MAX_WORDS  # the embedder benchmark's phrases
    from bench.harness.inputs import load_phrases
    from dc.config import Settings
    from dc.nlp.encoder import load_encoder

    encoder = load_encoder(
        Settings().embedder_handle, "tf", intra_op_threads=intra, inter_op_threads=inter
    )
    encoder.warmup()
    phrases = load_phrases(MAX_WORDS)
    rates = {}
    for batch in batches:

        def call(k: int, batch: int = batch) -> None:
            mine = phrases[k * per_caller : (k + 1) * per_caller]
            for start in range(0, len(mine), batch):
                encoder.encode(mine[start : start + batch])

        threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates[str(batch)] = callers * per_caller / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    smoke.add_arguments(parser)
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configs, batches, per_caller = CONFIGS, BATCHES, PHRASES_PER_CALLER
    if args.smoke:
        configs, batches, per_caller = SMOKE_CONFIGS, SMOKE_BATCHES, SMOKE_PHRASES_PER_CALLER
        args.out = smoke.smoke_out(args.out)
    args.out = args.out or REPO / "bench" / "results"
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child, batches, per_caller)))
        return

    rows = []
    for intra, inter, callers in configs:
        child = [sys.executable, __file__, "--child", str(intra), str(inter), str(callers)]
        output = subprocess.run(
            child + (["--smoke"] if args.smoke else []),
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        ).stdout
        result = next(line for line in output.splitlines() if line.startswith("RESULT "))
        rates = json.loads(result.removeprefix("RESULT "))
        rows.append(
            {"intra_op": intra, "inter_op": inter, "callers": callers, "phrases_per_s": rates}
        )
        print(
            f"intra {intra} inter {inter} callers {callers}: "
            + ", ".join(f"batch {b} {r:.0f}/s" for b, r in rates.items())
        )
    lines = [
        "| TF intra-op | TF inter-op | callers | "
        + " | ".join(f"batch {b}" for b in batches)
        + " |",
        "|---:|---:|---:|" + "---:|" * len(batches),
    ]
    for row in rows:
        cells = " | ".join(f"{row['phrases_per_s'][str(b)]:.0f}" for b in batches)
        intra = row["intra_op"] or "default"
        inter = row["inter_op"] or "default"
        lines.append(f"| {intra} | {inter} | {row['callers']} | {cells} |")
    markdown = smoke.mark("\n".join(lines) + "\n", args.smoke)
    write_results(args.out, "tf_threads", rows, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
