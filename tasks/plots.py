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
