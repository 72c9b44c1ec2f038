"""Report figures of one trained head: confusion matrix and per-class F1, as PNG files.

Figures are drawn with matplotlib's object API on an Agg canvas (`Figure` + `FigureCanvasAgg`),
never through pyplot: no global figure state, no backend switch for the rest of the process, and
training threads can draw side by side. Both figures scale with the number of classes (10-200).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix

DPI = 110
# Above this many classes tick labels would overlap even at the smallest legible font, so the
# confusion matrix shows class ids instead and points to the per-class chart for names.
MAX_TICK_LABELS = 80
# Cell values are written inside the matrix only while they fit at a readable size.
MAX_ANNOTATED_CLASSES = 25
MAX_LABEL_CHARS = 32


def _short(label: str, limit: int = MAX_LABEL_CHARS) -> str:
    # Cut in the middle: intent names often differ only at the end (`..._cancel`, `..._change`).
    label = str(label)
    if len(label) <= limit:
        return label
    head = (limit - 1) // 2
    return label[:head] + "…" + label[len(label) - (limit - 1 - head) :]


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def plot_confusion_matrix(
    y_true,
    y_pred,
    labels: Sequence[str],
    path: Path | str,
    *,
    normalise: bool = True,
    title: str | None = None,
) -> Path:
    """Draw the confusion matrix of class-id predictions and save it as a PNG.

    Rows are true classes, columns predicted ones, both in `labels` order. Colour is the share
    of each true class (row-normalised) on a square-root scale, so rare confusions stay visible
    next to a dark diagonal. Up to 80 classes the axes carry the label names (font shrinking with
    the class count); beyond that they carry class ids every 10 classes, with a note.

    Args:
        y_true: true class ids (indices into `labels`).
        y_pred: predicted class ids.
        labels: class names in class-id order.
        path: PNG file to write (its folder is created).
        normalise: colour and annotate by row share (True) or by raw counts (False).
        title: first title line; the accuracy and example count are appended.

    Returns:
        The written path.
    """
    labels = [str(label) for label in labels]
    n = len(labels)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    counts = confusion_matrix(y_true, y_pred, labels=np.arange(n))
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    values = shares if normalise else counts
    accuracy = float(np.trace(counts) / counts.sum()) if counts.sum() else 0.0

    show_names = n <= MAX_TICK_LABELS
    annotate = n <= MAX_ANNOTATED_CLASSES
    # About 0.18 inch per cell while names are drawn (room for a 7 pt name per row), less
    # beyond; clamped so 10 classes are not tiny and 200 not huge.
    side = float(np.clip(n * (0.18 if show_names else 0.12), 6.0, 22.0))
    cell_points = 72.0 * side / n
    big_font = float(np.clip(side * 0.75, 12.0, 16.0))
    label_inches = 0.075 * max((len(_short(label)) for label in labels), default=0)
    margin = label_inches if show_names else 0.6
    fig = Figure(figsize=(side + margin + 1.6, side + margin + 1.0), layout="constrained")
    ax = fig.add_subplot()

    vmax = 1.0 if normalise else max(int(values.max()), 1)
    # Empty cells are masked to pure white so every non-zero confusion stands out.
    cmap = colormaps["Blues"].with_extremes(bad="white")
    image = ax.imshow(
        np.ma.masked_where(counts == 0, values),
        cmap=cmap,
        norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax),
        interpolation="nearest",
        aspect="equal",
    )
    colourbar = fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01)
    colourbar.set_label(
        ("share of the true class (row-normalised)" if normalise else "examples")
        + ", square-root scale",
        fontsize=big_font - 2,
    )
    if not normalise:
        colourbar.locator = MaxNLocator(integer=True)  # no "0.25 examples" ticks
        colourbar.update_ticks()

    if show_names:
        font = float(np.clip(0.55 * cell_points, 5.5, 9.0))
        ticks = np.arange(n)
        ax.set_xticks(ticks, [_short(label) for label in labels], rotation=90, fontsize=font)
        ax.set_yticks(ticks, [_short(label) for label in labels], fontsize=font)
        ax.tick_params(length=2, pad=1)
    else:
        ticks = np.arange(0, n, 10)
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=big_font - 3)
        ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=big_font - 3)
    if n > 30:
        # Faint gridlines every 10 classes make a row or column traceable across a big matrix.
        for position in np.arange(9.5, n - 1, 10):
            ax.axhline(position, color="0.85", linewidth=0.4, zorder=0.5)
            ax.axvline(position, color="0.85", linewidth=0.4, zorder=0.5)

    if annotate:
        for i, j in zip(*np.nonzero(counts), strict=True):
            value = values[i, j]
            text = f"{value:.2f}".lstrip("0") if normalise else str(int(value))
            if normalise and value >= 0.995:
                text = "1"
            elif normalise and value < 0.005:
                text = "<.01"  # a real confusion, however rare, must not read as ".00"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7 if n > 15 else 8,
                # Judged on the colour scale (square root), not the value: white on dark cells.
                color="white" if image.norm(value) > 0.55 else "0.15",
            )

    ax.set_xlabel("predicted class", fontsize=big_font - 2)
    ax.set_ylabel("true class", fontsize=big_font - 2)
    heading = title or "Confusion matrix"
    lines = [heading, f"accuracy {accuracy:.3f} on {int(counts.sum())} examples, {n} classes"]
    if not show_names:
        lines.append(
            "names hidden at this size: axes are class ids in label order "
            "(names in the per-class F1 chart and report)"
        )
    # A figure-level title: constrained layout reserves its room reliably, whereas an axes
    # title above an equal-aspect image could be pushed off the top of the figure.
    fig.suptitle("\n".join(lines), x=0.01, ha="left", fontsize=big_font)
    return _save(fig, path)


def _weighted_f1(per_class: pd.DataFrame) -> float:
    support = per_class["support"].to_numpy(dtype=float)
    total = support.sum()
    return float((per_class["f1"].to_numpy(dtype=float) * support).sum() / total) if total else 0.0


def plot_per_class_f1(
    per_class: pd.DataFrame, path: Path | str, *, title: str | None = None
) -> Path:
    """Draw one horizontal F1 bar per class, worst at the top, and save it as a PNG.

    Bars are coloured red-to-green by F1 and annotated with F1 and support; a vertical line marks
    the weighted F1. Classes without test examples (support 0) have no meaningful F1, so they are
    listed at the bottom in grey instead of posing as the worst classes.

    Args:
        per_class: `Evaluation.per_class` (columns label, f1, support; others ignored).
        path: PNG file to write (its folder is created).
        title: first title line; the weighted F1 is appended.

    Returns:
        The written path.
    """
    table = per_class[["label", "f1", "support"]].copy()
    table["label"] = table["label"].astype(str)
    present = table[table["support"] > 0].sort_values(["f1", "support", "label"])
    absent = table[table["support"] <= 0].sort_values("label")
    rows = pd.concat([present, absent], ignore_index=True)
    n = len(rows)
    weighted = _weighted_f1(table)

    label_inches = 0.075 * max((len(_short(label)) for label in rows["label"]), default=0)
    height = float(max(3.5, 0.17 * n + 1.4))
    fig = Figure(figsize=(8.0 + label_inches, height), layout="constrained")
    ax = fig.add_subplot()

    colour_scale = Normalize(vmin=0.0, vmax=1.0)
    cmap = colormaps["RdYlGn"]
    positions = np.arange(n)
    f1 = rows["f1"].to_numpy(dtype=float)
    support = rows["support"].to_numpy(dtype=int)
    colours = [cmap(colour_scale(v)) if s > 0 else "0.8" for v, s in zip(f1, support, strict=True)]
    # A sliver for F1 = 0, so the worst classes still show a (red) bar.
    widths = np.maximum(f1, 0.004)
    ax.barh(positions, widths, height=0.75, color=colours, edgecolor="0.35", linewidth=0.4)

    font = float(np.clip(260.0 / max(n, 1), 7.0, 9.0))
    for y, (value, count) in enumerate(zip(f1, support, strict=True)):
        note = f"{value:.2f}  n={count}" if count > 0 else "no test examples"
        ax.text(1.01, y, note, va="center", ha="left", fontsize=font, color="0.2")

    ax.set_yticks(positions, [_short(label) for label in rows["label"]], fontsize=font)
    ax.set_ylim(n - 0.5, -0.5)  # worst class at the top
    ax.set_xlim(0.0, 1.22)
    ax.set_xticks(np.linspace(0.0, 1.0, 6))
    ax.tick_params(axis="y", length=0, pad=3)
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.axvline(weighted, color="0.1", linestyle="--", linewidth=1.0)
    ax.axvline(1.0, color="0.6", linewidth=0.6)
    # Top and bottom x axes, so the scale is readable next to any bar of a 200-row chart.
    ax.tick_params(axis="x", top=True, labeltop=True, labelsize=8)
    ax.set_xlabel("F1", fontsize=10)

    heading = title or "F1 per class"
    fig.suptitle(
        f"{heading}\nweighted F1 {weighted:.3f} (dashed line), {n} classes, worst at the top",
        x=0.01,
        ha="left",
        fontsize=12,
    )
    return _save(fig, path)
