"""Report figures (PNG), drawn off-screen, and the data behind them as CSV files that
dvc.yaml declares as DVC plots (`dvc plots show|diff` draws and compares them)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from io import StringIO
from pathlib import Path

import numpy as np

from tasks.io import write_bytes_atomic


def transition_heatmap(T: np.ndarray, classes: Sequence[str], path: Path, *,
                       title: str = "Estimated noise transition matrix") -> None:
    """Heatmap of T[i, j] = P(observed j | true i), annotated, written atomically to `path`."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.0 * k + 2))
    image = ax.imshow(T, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("observed label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{T[i, j]:.3f}", ha="center", va="center",
                    color="black" if T[i, j] > 0.5 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def rating_histograms(raw: np.ndarray, curated: np.ndarray, classes: Sequence[str],
                      path: Path) -> None:
    """Side-by-side bars of how many rows fall in each rating class before and after curation."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    positions = np.arange(k)
    fig, ax = plt.subplots(figsize=(1.0 * k + 3, 3.5))
    ax.bar(positions - 0.2, np.bincount(raw, minlength=k), width=0.4, label="raw")
    ax.bar(positions + 0.2, np.bincount(curated, minlength=k), width=0.4, label="curated")
    ax.set_xticks(positions, classes)
    ax.set_xlabel("rating class")
    ax.set_ylabel("rows")
    ax.set_title("Ratings before and after curation")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def model_bars(rows: dict[str, dict[str, float | None]], measures: Sequence[tuple[str, str]],
               path: Path, *, title: str = "Models side by side") -> None:
    """One bar panel per measure (key, axis label), one bar per model; missing values are left
    out. Written atomically to `path` as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 3.4))
    for ax, (key, label) in zip(np.atleast_1d(axes), measures, strict=True):
        values = [rows[n].get(key) for n in names]
        shown = [(n, float(v)) for n, v in zip(names, values, strict=True) if v is not None]
        bars = ax.bar([n for n, _ in shown], [v for _, v in shown],
                      color=["#8c8c8c", "#3b75af", "#e1812c"][:len(shown)])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file with `header` and `rows` (None as an empty cell), written atomically."""
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def transition_csv(T: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """T as plot data, one row per cell: `true_label,observed_label,value`, value being
    P(observed | true) rounded to 6 digits (.dvc/plots/heatmap.json draws it)."""
    write_csv(path, ("true_label", "observed_label", "value"),
              ((classes[i], classes[j], round(float(T[i, j]), 6))
               for i in range(len(classes)) for j in range(len(classes))))


def rating_counts_csv(raw: np.ndarray, curated: np.ndarray, classes: Sequence[str],
                      path: Path) -> None:
    """The rating histograms as plot data: `rating_class,series,rows`, the rows of each class
    before (series `raw`) and after curation (`curated`); .dvc/plots/grouped_bars.json draws
    them side by side."""
    k = len(classes)
    write_csv(path, ("rating_class", "series", "rows"),
              ((cls, series, int(count)) for series, values in (("raw", raw), ("curated", curated))
               for cls, count in zip(classes, np.bincount(values, minlength=k), strict=True)))


def model_table_csv(rows: Mapping[str, Mapping[str, object]], measures: Sequence[str],
                    path: Path) -> None:
    """The models side by side as plot data: `model,<measure>...`, one row per model; a
    missing value is an empty cell."""
    write_csv(path, ("model", *measures),
              ((name, *(row.get(m) for m in measures)) for name, row in rows.items()))
