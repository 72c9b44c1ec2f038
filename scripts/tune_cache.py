"""Size the LRU phrase cache (DC_CACHE_SIZE) from a phrase stream: hit rate and memory per size.

The stream is either scripts/make_requests.py's requests.jsonl (--jsonl) or the served phrases
of the inference log (--database-url: `input_text` of the `inferences` table in `created_at`
order, optionally --since a time and for one --model). The cache key is the text, as in the
embedding cache, whose vectors do not depend on the model; --per-model keys on (model, text)
instead, like the per-version prediction cache (DC_PREDICTION_CACHE_SIZE).

Hit rates of every size come from one pass (Mattson's LRU stack distances, O(n log n)): an
LRU of size C hits exactly the requests whose reuse distance (distinct other keys since the
key's previous use) is < C. Memory per entry is measured, not guessed: tracemalloc while a
real dc.nlp.cache.PhraseCache is filled with float32 vectors (--dimension, 384) under keys of
the stream's own phrases; MB = size x bytes per entry. tracemalloc sees Python allocations only,
so the process's RSS is somewhat higher (allocator slack).

Recommendation (the knee): the smallest size whose hit rate is within --tolerance (1 point) of
the hit rate of the largest size considered, computed over every integer size and rounded up to
two significant digits. Beyond it, any extra memory buys less than --tolerance more hits. The
largest size considered is where the curve stops rising: one more than the longest reuse
distance of the stream (at least the largest --sizes value). Cold misses (first uses,
near-duplicate spellings) no cache size can avoid, so a short stream understates the distinct
phrases a long-running worker sees: size on a stream as long as a worker's lifetime
(DC_API_MAX_REQUESTS) or on a day of the inference log.

Writes --out (PNG: hit rate and MB against size, log x axis, the knee marked) and a JSON with
the same name (every row, the rule, the recommendation).

examples:
  python scripts/tune_cache.py --jsonl var/loadtest/requests.jsonl
  python scripts/tune_cache.py --database-url "$DC_DATABASE_URL" --since 2026-11-01 \\
      --model banking77 --out var/loadtest/banking77_cache.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Hashable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.utilities.traffic import (  # noqa: E402
    exact_knee,
    hit_rate_curve,
    round_up_nice,
    size_grid,
    stack_distances,
)

CURRENT_DEFAULT = 50_000  # DC_CACHE_SIZE's default in dc/config.py, shown for comparison


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--jsonl", type=Path, help="requests.jsonl of scripts/make_requests.py")
    source.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the database holding the inference log (`inferences` table)",
    )
    parser.add_argument(
        "--since",
        type=datetime.fromisoformat,
        help="with --database-url: only rows created at or after this ISO time (UTC if naive)",
    )
    parser.add_argument("--model", help="only this model's requests")
    parser.add_argument(
        "--per-model",
        action="store_true",
        help="key on (model, text) as the prediction cache does, instead of the text alone",
    )
    parser.add_argument(
        "--sizes",
        help="comma-separated sizes to tabulate (default 1, 2, 5, 10, ... up to the largest "
        "useful size, plus 50000, the current default)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="knee rule: the recommended size is the smallest whose hit rate is within this "
        "many percentage points of the best one (1.0)",
    )
    parser.add_argument(
        "--dimension", type=int, default=384, help="embedding dimension for memory (384)"
    )
    parser.add_argument(
        "--measure-entries",
        type=int,
        default=20_000,
        help="entries put in a real PhraseCache to measure bytes per entry (20000)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "var" / "loadtest" / "cache_curve.png",
        help="PNG of the curve; the JSON goes next to it with a .json suffix "
        "(var/loadtest/cache_curve.png)",
    )
    args = parser.parse_args(argv)
    if args.since and not args.database_url:
        parser.error("--since needs --database-url")
    if args.tolerance < 0 or args.measure_entries < 1 or args.dimension < 1:
        parser.error("--tolerance must be >= 0, --measure-entries and --dimension >= 1")
    if args.sizes:
        try:
            args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        except ValueError:
            parser.error("--sizes must be comma-separated integers")
        if not args.sizes or args.sizes[0] < 1:
            parser.error("--sizes must be integers >= 1")
    return args


def read_jsonl(path: Path, model: str | None, per_model: bool) -> list[Hashable]:
    """Cache keys of make_requests.py's JSONL, in order."""
    keys: list[Hashable] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            if model is not None and row.get("model") != model:
                continue
            keys.append((row["model"], row["text"]) if per_model else row["text"])
    return keys


def read_database(
    url: str, since: datetime | None, model: str | None, per_model: bool
) -> list[Hashable]:
    """Cache keys of the inference log, in the order the texts were served."""
    from sqlalchemy import create_engine, select

    from persistence.models import Inference

    query = select(Inference.model, Inference.input_text).order_by(
        # request_id and item break ties of a batch, whose rows share one created_at.
        Inference.created_at,
        Inference.request_id,
        Inference.item,
    )
    if since is not None:
        query = query.where(Inference.created_at >= since)
    if model is not None:
        query = query.where(Inference.model == model)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execution_options(yield_per=10_000).execute(query)
            return [(m, text) if per_model else text for m, text in rows]
    finally:
        engine.dispose()


def measure_bytes_per_entry(texts: Sequence[str], entries: int, dimension: int) -> float:
    """Python heap bytes per PhraseCache entry: key tuple, text, vector, LRU bookkeeping.

    The texts are copied inside the traced region because in the service each cached key owns
    its string (it came from a request body); the fingerprint is shared, as in the service.
    Vectors are put in batches of 32 like the micro-batcher's, and the batch array is freed,
    so only what the cache keeps is counted.
    """
    from dc.nlp.cache import PhraseCache

    if not texts:
        texts = ["how do I activate my card"]
    fingerprint = "0" * 64
    # Distinct keys of the stream's own lengths: cycle the phrases, numbering the repeats.
    keys = [
        texts[i % len(texts)] if i < len(texts) else f"{texts[i % len(texts)]} {i}"
        for i in range(entries)
    ]
    rng = np.random.default_rng(0)
    cache = PhraseCache(entries)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, entries, 32):
            chunk = [(t + ".")[:-1] for t in keys[start : start + 32]]  # fresh string objects
            batch = rng.standard_normal((len(chunk), dimension), dtype=np.float32)
            cache.put_many(fingerprint, chunk, batch)
            del batch, chunk
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    if cache.stats().size != entries:
        raise RuntimeError("the measurement keys were not distinct")
    return (after - before) / entries


def plot(path: Path, sizes, rates, mb, recommended: int, rec_rate: float, best: float) -> None:
    """Hit rate (left axis) and MB (right axis) against size on a log axis, the knee marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(sizes, np.asarray(rates) * 100, marker="o", ms=3, label="hit rate")
    ax.axhline(best * 100, color="grey", ls=":", lw=1, label=f"best {best:.1%}")
    ax.axvline(recommended, color="tab:red", ls="--", lw=1)
    ax.plot([recommended], [rec_rate * 100], "o", color="tab:red", ms=8)
    ax.annotate(
        f"knee: {recommended} ({rec_rate:.1%})",
        (recommended, rec_rate * 100),
        textcoords="offset points",
        xytext=(8, -16),
        color="tab:red",
    )
    ax.set_xscale("log")
    ax.set_xlabel("cache maxsize (entries, DC_CACHE_SIZE)")
    ax.set_ylabel("hit rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    other = ax.twinx()
    other.plot(sizes, mb, color="tab:green", alpha=0.6, label="memory (MB)")
    other.set_yscale("log")
    other.set_ylabel("memory (MB)")
    lines = ax.get_legend_handles_labels()
    more = other.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    ax.set_title("LRU phrase cache: hit rate and memory by size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Read the stream, compute the curve, measure memory, print, plot and save."""
    args = parse_args(argv)
    started = time.perf_counter()
    if args.jsonl:
        keys = read_jsonl(args.jsonl, args.model, args.per_model)
        source = str(args.jsonl)
    else:
        keys = read_database(args.database_url, args.since, args.model, args.per_model)
        source = "inferences table"
    if not keys:
        print("error: the stream is empty", file=sys.stderr)
        return 2

    distances = stack_distances(keys)
    n, distinct = len(keys), len(set(keys))
    reused = distances[distances >= 0]
    # One more than the longest reuse distance: from there on every reuse hits.
    saturation = int(reused.max()) + 1 if len(reused) else 1
    exact = exact_knee(distances, args.tolerance / 100)
    recommended = max(1, round_up_nice(exact))
    # The recommendation is always a row of the table, so it can be compared with its neighbours.
    sizes = sorted({*(args.sizes or size_grid(saturation, extra=[CURRENT_DEFAULT])), recommended})
    largest = max(saturation, max(sizes))
    (best, rec_rate, exact_rate) = hit_rate_curve(distances, [largest, recommended, exact])
    rates = hit_rate_curve(distances, sizes)

    texts = [k[1] if isinstance(k, tuple) else k for k in dict.fromkeys(keys)]
    per_entry = measure_bytes_per_entry(texts, args.measure_entries, args.dimension)
    mb = [s * per_entry / 1e6 for s in sizes]
    elapsed = time.perf_counter() - started

    print(f"stream: {n} requests, {distinct} distinct keys, from {source}")
    print(f"  key: {'(model, text)' if args.per_model else 'text'}", end="")
    print(f", model: {args.model}" if args.model else "")
    print(
        f"  cold misses (first uses): {n - len(reused)} = {(n - len(reused)) / n:.1%}; "
        f"best hit rate {best:.2%} from size {saturation}"
    )
    print(
        f"  memory: {per_entry:.0f} bytes per entry (tracemalloc, {args.measure_entries} "
        f"entries of {args.dimension}-d float32)"
    )
    print()
    print(f"{'size':>8} {'hit rate':>9} {'MB':>9}")
    for size, rate, megabytes in zip(sizes, rates, mb, strict=True):
        mark = "  <- knee" if size == recommended else ""
        print(f"{size:>8} {rate:>9.2%} {megabytes:>9.2f}{mark}")
    print()
    print(
        f"knee rule: smallest size within {args.tolerance:g} point(s) of the best hit rate "
        f"({best:.2%}): {exact} entries ({exact_rate:.2%})"
    )
    print(
        f"recommended DC_CACHE_SIZE={recommended}: hit rate {rec_rate:.2%}, "
        f"{recommended * per_entry / 1e6:.1f} MB per cache "
        f"(current default {CURRENT_DEFAULT}: {CURRENT_DEFAULT * per_entry / 1e6:.1f} MB)"
    )

    plot(args.out, sizes, rates, mb, recommended, rec_rate, best)
    json_path = args.out.with_suffix(".json")
    result = {
        "source": source,
        "model": args.model,
        "key": "(model, text)" if args.per_model else "text",
        "requests": n,
        "distinct_keys": distinct,
        "cold_misses": int(n - len(reused)),
        "best_hit_rate": float(best),
        "saturation_size": saturation,
        "bytes_per_entry": round(per_entry, 1),
        "dimension": args.dimension,
        "rule": (
            f"smallest size whose hit rate is within {args.tolerance:g} percentage point(s) of "
            "the hit rate at the largest size considered, over every integer size, rounded up "
            "to two significant digits"
        ),
        "knee_exact": exact,
        "knee_exact_hit_rate": float(exact_rate),
        "recommended_maxsize": recommended,
        "recommended_hit_rate": float(rec_rate),
        "recommended_mb": round(recommended * per_entry / 1e6, 3),
        "rows": [
            {"size": int(s), "hit_rate": round(float(r), 6), "mb": round(m, 3)}
            for s, r, m in zip(sizes, rates, mb, strict=True)
        ],
        "seconds": round(elapsed, 2),
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} and {json_path} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
