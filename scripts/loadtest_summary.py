"""Summarise a JMeter results file (CSV JTL) from `scripts/loadtest.sh`.

The JTL is JMeter's CSV output with a header row (`-Jjmeter.save.saveservice.print_field_names=
true`); the columns used are timeStamp (epoch ms at the start of the sample), elapsed (ms),
label (the sampler name, e.g. `POST /predict/banking77`), responseCode, success and, when
present, threadName (`banking77 1-3`: thread group `banking77`) and failureMessage.

It prints, and saves as JSON and Markdown (default `var/loadtest/summary.{json,md}`):

- throughput: samples / (end of the last sample - start of the first), in requests/s;
- errors: count and rate (success != true: a non-200 status, a body without "label", a
  timeout or a refused connection), with the most frequent response codes / messages;
- latency p50/p95/p99 (linear interpolation between closest ranks), mean and max, in ms;

overall, per label and per thread group. Exit status: 0 without errors, 1 when any sample
failed, 2 when the file is missing, empty or not a CSV JTL.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIRED_COLUMNS = ("timeStamp", "elapsed", "label", "responseCode", "success")
PERCENTILES = (50, 95, 99)
# JMeter names threads "<thread group> <group number>-<thread number>".
_THREAD_SUFFIX = re.compile(r"\s+\d+-\d+$")


class JtlError(ValueError):
    """The results file cannot be summarised (missing, empty, wrong format)."""


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, interpolating linearly.

    Same definition as numpy's default ("linear"): rank q/100 * (n - 1) between neighbours.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    rank = q / 100 * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def thread_group(thread_name: str) -> str:
    """The thread group of a JMeter thread name (`banking77 1-3` -> `banking77`)."""
    return _THREAD_SUFFIX.sub("", thread_name) or thread_name


def read_jtl(path: Path) -> list[dict]:
    """The samples of a CSV JTL as dicts: start_ms, elapsed_ms, label, group, code, ok, message."""
    if not path.is_file():
        raise JtlError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise JtlError(
                f"{path}: not a CSV JTL with a header (missing {', '.join(missing)}); run JMeter"
                " with -Jjmeter.save.saveservice.output_format=csv"
                " -Jjmeter.save.saveservice.print_field_names=true"
            )
        samples = []
        for row in reader:
            try:
                start, elapsed = int(row["timeStamp"]), int(row["elapsed"])
            except (TypeError, ValueError):
                continue  # a truncated last line of an interrupted run
            samples.append(
                {
                    "start_ms": start,
                    "elapsed_ms": elapsed,
                    "label": row["label"],
                    "group": thread_group(row.get("threadName") or row["label"]),
                    "code": row["responseCode"],
                    "ok": row["success"].strip().lower() == "true",
                    "message": (row.get("failureMessage") or row.get("responseMessage") or ""),
                }
            )
    if not samples:
        raise JtlError(f"{path}: no samples (did the API answer? is the request file empty?)")
    return samples


def summarise(samples: list[dict]) -> dict:
    """Throughput, errors and latency percentiles of a list of samples (see read_jtl)."""
    start = min(s["start_ms"] for s in samples)
    end = max(s["start_ms"] + s["elapsed_ms"] for s in samples)
    duration_s = max(end - start, 1) / 1000
    latencies = sorted(float(s["elapsed_ms"]) for s in samples)
    errors = [s for s in samples if not s["ok"]]
    result = {
        "requests": len(samples),
        "duration_s": round(duration_s, 3),
        "throughput_rps": round(len(samples) / duration_s, 2),
        "errors": len(errors),
        "error_rate": round(len(errors) / len(samples), 6),
        "latency_ms": {f"p{q}": round(percentile(latencies, q), 1) for q in PERCENTILES},
    }
    result["latency_ms"]["mean"] = round(sum(latencies) / len(latencies), 1)
    result["latency_ms"]["max"] = latencies[-1]
    if errors:
        result["error_codes"] = dict(Counter(s["code"] for s in errors).most_common(10))
        result["error_messages"] = dict(Counter(s["message"][:200] for s in errors).most_common(5))
    return result


def build_report(samples: list[dict], source: str) -> dict:
    """The whole report: overall, then per label and per thread group."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_label[s["label"]].append(s)
        by_group[s["group"]].append(s)
    return {
        "source": source,
        "overall": summarise(samples),
        "by_label": {k: summarise(v) for k, v in sorted(by_label.items())},
        "by_thread_group": {k: summarise(v) for k, v in sorted(by_group.items())},
    }


def to_markdown(report: dict) -> str:
    """The report as a Markdown table (one row overall, then per thread group and per label)."""
    lines = [
        f"# Load test summary ({report['source']})",
        "",
        "| scope | requests | req/s | errors | error rate | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("overall", report["overall"])]
    rows += [(f"group {k}", v) for k, v in report["by_thread_group"].items()]
    rows += [(f"label {k}", v) for k, v in report["by_label"].items()]
    for name, s in rows:
        lat = s["latency_ms"]
        lines.append(
            f"| {name} | {s['requests']} | {s['throughput_rps']:.1f} | {s['errors']} |"
            f" {s['error_rate']:.2%} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} |"
            f" {lat['max']:.0f} |"
        )
    overall = report["overall"]
    lines += ["", f"Duration {overall['duration_s']:.2f} s."]
    if overall["errors"]:
        codes = ", ".join(f"{k}: {v}" for k, v in overall["error_codes"].items())
        lines.append(f"Errors by response code: {codes}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=(
            "Summarise a JMeter CSV JTL: throughput (req/s), error count and rate, latency "
            "p50/p95/p99 overall, per label and per thread group. Prints a table and writes "
            "summary.json and summary.md. Exit 0 without errors, 1 when any request failed, "
            "2 when the JTL is missing or unreadable."
        )
    )
    parser.add_argument("jtl", type=Path, help="the CSV JTL written by jmeter -l (with header)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "var" / "loadtest",
        help="where summary.json and summary.md go (default: var/loadtest)",
    )
    parser.add_argument("--json", type=Path, help="JSON path (default: OUT_DIR/summary.json)")
    parser.add_argument("--md", type=Path, help="Markdown path (default: OUT_DIR/summary.md)")
    args = parser.parse_args(argv)

    try:
        samples = read_jtl(args.jtl)
    except JtlError as e:
        print(f"loadtest_summary: {e}", file=sys.stderr)
        return 2
    report = build_report(samples, source=args.jtl.name)
    markdown = to_markdown(report)
    json_path = args.json or args.out_dir / "summary.json"
    md_path = args.md or args.out_dir / "summary.md"
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    print(markdown, end="")
    print(f"written: {json_path} {md_path}")
    errors = report["overall"]["errors"]
    if errors:
        print(f"loadtest_summary: {errors} failed request(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
