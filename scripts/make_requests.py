"""Write a realistic request stream for load tests (JMeter) and cache sizing (tune_cache.py).

Phrases come from the datasets: data/banking77/*.csv go to model banking77, data/clinc150/*.csv
to model clinc150 (any model named in --mix is read from data/<model>/*.csv). Per model,
--distinct phrases get a random popularity rank and rank r is requested with probability
proportional to 1/r**S (--zipf S): a few phrases are very common, most are rare, as in real
traffic. --near-duplicates of the requests are spelt slightly differently (case, trailing
punctuation, or two adjacent letters swapped), which an exact-text cache cannot serve.

Outputs, in the same order, under --out-dir:
  requests.tsv    JMeter CSV Data Set (delimiter \\t, no header): model<TAB>{"text": "..."};
                  the body is json.dumps output, so it never holds a raw tab or newline
  requests.jsonl  one {"model": ..., "text": ...} per line (input of scripts/tune_cache.py)

The same --seed and options give the same files.

examples:
  python scripts/make_requests.py
  python scripts/make_requests.py --requests 100000 --distinct 5000 --zipf 0.9 \\
      --mix banking77=0.5,clinc150=0.5 --seed 7 --out-dir /tmp/loadtest
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.utilities.traffic import (  # noqa: E402
    build_stream,
    load_phrases,
    parse_mix,
    summarize,
    tsv_line,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--requests", type=int, default=20_000, help="number of requests to write (20000)"
    )
    parser.add_argument(
        "--distinct",
        type=int,
        default=2_000,
        help="distinct phrases per model, drawn at random from its dataset (2000; capped at "
        "the dataset's size)",
    )
    parser.add_argument(
        "--zipf",
        type=float,
        default=1.1,
        metavar="S",
        help="popularity exponent: rank r is drawn with probability proportional to 1/r**S "
        "(1.1; 0 is uniform, larger is more skewed)",
    )
    parser.add_argument(
        "--near-duplicates",
        type=float,
        default=0.1,
        metavar="F",
        help="share of requests turned into a near duplicate of their phrase: case changed, "
        "trailing punctuation added or dropped, or two adjacent letters swapped (0.1)",
    )
    parser.add_argument(
        "--mix",
        default="banking77=0.6,clinc150=0.4",
        help="share of requests per model, model=weight,... (banking77=0.6,clinc150=0.4); "
        "each model's phrases are read from data/<model>/*.csv",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=REPO / "data", help="folder of the datasets (data/)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "var" / "loadtest",
        help="where requests.tsv and requests.jsonl go (var/loadtest)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.distinct < 1:
        parser.error("--requests and --distinct must be >= 1")
    if not 0.0 <= args.near_duplicates <= 1.0:
        parser.error("--near-duplicates must be within [0, 1]")
    if args.zipf < 0:
        parser.error("--zipf must be >= 0")
    try:
        args.mix = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(f"--mix: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the stream, write both files, print a summary."""
    args = parse_args(argv)
    phrases = {}
    for model in args.mix:
        files = list((args.data_dir / model).glob("*.csv"))
        if not files:
            print(f"error: no CSV files in {args.data_dir / model}", file=sys.stderr)
            return 2
        phrases[model] = load_phrases(files)
    stream = build_stream(
        phrases,
        requests=args.requests,
        distinct=args.distinct,
        exponent=args.zipf,
        near_duplicates=args.near_duplicates,
        mix=args.mix,
        seed=args.seed,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tsv_path, jsonl_path = args.out_dir / "requests.tsv", args.out_dir / "requests.jsonl"
    # newline="" so a Windows run still writes the \n JMeter and the tests expect.
    with (
        open(tsv_path, "w", encoding="utf-8", newline="") as tsv,
        open(jsonl_path, "w", encoding="utf-8", newline="") as jsonl,
    ):
        for model, text in stream:
            tsv.write(tsv_line(model, text))
            jsonl.write(json.dumps({"model": model, "text": text}) + "\n")

    summary = summarize(stream)
    print(f"wrote {summary.requests} requests to {tsv_path} and {jsonl_path}")
    for model, count in summary.requests_by_model.items():
        print(
            f"  {model:<12} {count:>7} requests  {summary.distinct_by_model[model]:>6} distinct "
            f"texts  (of {len(phrases[model])} phrases, {min(args.distinct, len(phrases[model]))}"
            " ranked)"
        )
    print(f"  distinct texts overall: {summary.distinct} ({summary.singletons} requested once)")
    print(
        f"  share of requests to the top 1% texts: {summary.top1_share:.1%}, "
        f"top 10%: {summary.top10_share:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
