"""A report (`dc.reports.build_report`) as people read it: charts (matplotlib), an HTML page with
the charts inline as SVG (the dashboard serves it; no script, no external resource), and the
files of `scripts/report.py`: report.json, report.html, one PNG per chart and the tables as CSV.

The charts:
- `traffic`: texts per bucket, stacked by version, with the p95 request latency;
- `drift`: PSI of the label distribution per bucket, with the drift threshold;
- `labels`: the most served labels' share against their training share;
- `confidence`: histogram of the served labels' probability;
- `live_f1`: weighted F1 on feedback per bucket against the version's test-set weighted F1.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape

from dc.reports import stats

TEMPLATES = Path(__file__).parent / "templates"
CHARTS = ("traffic", "drift", "labels", "confidence", "live_f1")
TOP_LABELS = 15
# No RDF block (creator, date) in an inline SVG: it is noise in the page, and a date would make
# two renderings of one report differ.
_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}
_ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """One matplotlib figure per chart of `CHARTS` (the caller closes them, or `render_svgs`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    def new(title: str) -> tuple[Any, Any]:
        fig = Figure(figsize=(7.2, 3.0), dpi=100, layout="constrained")
        ax = fig.subplots()
        ax.set_title(title, fontsize=10, loc="left")
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        return fig, ax

    starts = [_short(b, report["window"]["granularity"]) for b in report["window"]["buckets"]]
    x = list(range(len(starts)))
    ticks = x[:: max(1, len(x) // 12)]
    out: dict[str, Any] = {}

    fig, ax = new("Traffic: texts per bucket by version, p95 request latency")
    traffic = report["traffic"]["buckets"]
    bottom = [0] * len(x)
    for version in report["versions"]:
        heights = [b["by_version"].get(version, 0) for b in traffic]
        ax.bar(x, heights, bottom=bottom, label=version, width=0.8)
        bottom = [a + b for a, b in zip(bottom, heights, strict=True)]
    ax.set_ylabel("texts", fontsize=8)
    latency = ax.twinx()
    latency.plot(x, [_nan(b["latency_p95_ms"]) for b in traffic], color="black", marker=".")
    latency.set_ylabel("p95 ms", fontsize=8)
    latency.tick_params(labelsize=8)
    if report["versions"]:
        ax.legend(fontsize=7, loc="upper left")
    _xticks(ax, ticks, starts)
    out["traffic"] = fig

    fig, ax = new("Label drift: population stability index per bucket")
    ax.plot(x, [_nan(b["psi"]) for b in report["predictions"]["buckets"]], marker="o")
    ax.axhline(
        stats.PSI_DRIFT, color="tab:red", linestyle="--", label=f"drift at {stats.PSI_DRIFT}"
    )
    ax.set_ylabel("PSI", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    _xticks(ax, ticks, starts)
    out["drift"] = fig

    fig, ax = new(f"Labels: served share against training share (top {TOP_LABELS})")
    labels = report["predictions"]["labels"][:TOP_LABELS]
    rows = list(range(len(labels)))
    ax.barh([r + 0.2 for r in rows], [_nan(lb["share"]) for lb in labels], 0.4, label="served")
    ax.barh(
        [r - 0.2 for r in rows],
        [_nan(lb["training_share"]) for lb in labels],
        0.4,
        label="training",
    )
    ax.set_yticks(rows, [lb["label"][:32] for lb in labels], fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.set_size_inches(7.2, max(3.0, 0.22 * len(labels) + 1.0))
    out["labels"] = fig

    fig, ax = new("Confidence: probability of the served label")
    histogram = report["predictions"]["probability_histogram"]
    edges = histogram["edges"]
    ax.bar(edges[:-1], histogram["counts"], width=edges[1] - edges[0], align="edge")
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=8)
    ax.set_ylabel("texts", fontsize=8)
    out["confidence"] = fig

    fig, ax = new("Live weighted F1 on feedback against the test set")
    feedback = report["feedback"]
    ax.plot(x, [_nan(b["weighted_f1"]) for b in feedback["buckets"]], marker="o", label="live")
    test = (feedback.get("test") or {}).get("weighted_f1")
    if test is not None:
        ax.axhline(test, color="tab:green", linestyle="--", label=f"test {test:.3f}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    _xticks(ax, ticks, starts)
    out["live_f1"] = fig
    return out


def render_svgs(report: dict[str, Any]) -> dict[str, str]:
    """Every chart as an inline SVG document (no XML prolog), by name."""
    svgs = {}
    for name, fig in figures(report).items():
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata=_NO_METADATA)
        text = buffer.getvalue()
        svgs[name] = text[text.index("<svg") :]
    return svgs


def render_html(
    report: dict[str, Any],
    svgs: dict[str, str] | None = None,
    *,
    links: dict[str, str] | None = None,
) -> str:
    """The report page: headline figures, the charts, the per-class and confusion tables, the
    version comparison and the notes. `links` ({"json": url, "index": url}) adds navigation."""
    svgs = render_svgs(report) if svgs is None else svgs
    return _ENV.get_template("report.html").render(
        report=report, charts=svgs, names=CHARTS, links=links or {}, fmt=_fmt, pct=_pct
    )


def render_index(entries: list[dict[str, Any]], *, days: int) -> str:
    """The dashboard's front page: one row per model with its headline figures."""
    return _ENV.get_template("index.html").render(entries=entries, days=days, fmt=_fmt, pct=_pct)


def write_bundle(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write report.json, report.html, <chart>.png and the tables as CSV into `folder`.

    Files are written beside their final name and renamed, so a reader (or the S3 backup) never
    sees half a file. Returns the written paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = folder / name
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(path)
        written.append(path)

    put("report.json", (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    charts = figures(report)
    svgs = {}
    for name, fig in charts.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        put(f"{name}.png", buffer.getvalue())
        text = io.StringIO()
        fig.savefig(text, format="svg", metadata=_NO_METADATA)
        svgs[name] = text.getvalue()[text.getvalue().index("<svg") :]
    put("report.html", render_html(report, svgs).encode())
    for name, rows in tables(report).items():
        put(f"{name}.csv", _csv(rows))
    return written


def tables(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The report's tables, as rows: traffic and drift per bucket, labels, per class, confusions."""
    traffic = report["traffic"]["buckets"]
    drift = report["predictions"]["buckets"]
    live = report["feedback"]["buckets"]
    return {
        "buckets": [
            {
                "start": t["start"],
                "requests": t["requests"],
                "texts": t["texts"],
                "cache_hit_rate": t["cache_hit_rate"],
                "latency_p50_ms": t["latency_p50_ms"],
                "latency_p95_ms": t["latency_p95_ms"],
                "latency_p99_ms": t["latency_p99_ms"],
                "psi": d["psi"],
                "feedback_items": f["items"],
                "weighted_f1": f["weighted_f1"],
            }
            for t, d, f in zip(traffic, drift, live, strict=True)
        ],
        "labels": report["predictions"]["labels"],
        "per_class": report["feedback"]["per_class"],
        "confusions": report["feedback"]["confusions"],
    }


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue().encode()


def _xticks(ax, ticks: list[int], starts: list[str]) -> None:
    ax.set_xticks(ticks, [starts[t] for t in ticks], fontsize=7, rotation=30, ha="right")


def _short(iso: str, granularity: str) -> str:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return moment.strftime("%m-%d %H:00" if granularity == "hour" else "%Y-%m-%d")


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or isinstance(value, Undefined):
        return "–"
    return f"{100 * value:.{digits}f}%"
