"""How should TensorFlow's threads be laid out for the encoder on this machine?

Runs the raw SavedModel in a fresh process per configuration (TensorFlow fixes its thread pools
at start-up) and prints phrases/s at batch 8, 16 and 32 for:
  - one caller, TensorFlow's defaults (every core inside each op): the plain SavedModel;
  - one caller, single-threaded ops;
  - N callers side by side, single-threaded ops, N ops at once: what the embedder does with
    DC_ENCODER_WORKERS=N, DC_TF_INTRA_OP_THREADS=1, DC_TF_INTER_OP_THREADS=N.

Usage: python bench/bench_tf_threads.py [--out bench/results]
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
BATCHES = (8, 16, 32)
PHRASES_PER_CALLER = 1536
CONFIGS = (  # (intra-op threads, inter-op threads, callers); 0 = TensorFlow's default
    (0, 0, 1),
    (1, 1, 1),
    (1, 2, 2),
)


def measure(intra: int, inter: int, callers: int) -> dict[str, float]:
    """In this process: phrases/s per batch size with `callers` threads calling the encoder."""
    sys.path.insert(0, str(REPO))
    from bench.bench_embedder import MAX_WORDS, load_phrases
    from dc.config import Settings
    from dc.nlp.encoder import configure_tensorflow, load_encoder

    configure_tensorflow(intra, inter)
    encoder = load_encoder(Settings().embedder_handle)
    encoder.warmup()
    phrases = load_phrases(MAX_WORDS)
    rates = {}
    for batch in BATCHES:

        def call(k: int, batch: int = batch) -> None:
            mine = phrases[k * PHRASES_PER_CALLER : (k + 1) * PHRASES_PER_CALLER]
            for start in range(0, len(mine), batch):
                encoder.encode(mine[start : start + batch])

        threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates[str(batch)] = callers * PHRASES_PER_CALLER / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child)))
        return

    rows = []
    for intra, inter, callers in CONFIGS:
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(intra), str(inter), str(callers)],
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
        + " | ".join(f"batch {b}" for b in BATCHES)
        + " |",
        "|---:|---:|---:|" + "---:|" * len(BATCHES),
    ]
    for row in rows:
        cells = " | ".join(f"{row['phrases_per_s'][str(b)]:.0f}" for b in BATCHES)
        intra = row["intra_op"] or "default"
        inter = row["inter_op"] or "default"
        lines.append(f"| {intra} | {inter} | {row['callers']} | {cells} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tf_threads.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "tf_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
