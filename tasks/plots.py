"""Report figures (PNG), drawn off-screen."""

from __future__ import annotations

from collections.abc import Sequence
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
