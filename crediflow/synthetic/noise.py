"""Synthetic data with known label noise and clusterable embeddings (tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Synthetic data with known label noise (tests, benchmarks, demos).
# Each generator draws from its own stream, so equal seeds give independent draws.
_EMBEDDING_STREAM, _NOISE_STREAM = 0x5EED, 0x0015E


def noisy_labels(true_labels: np.ndarray, T: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Observed labels drawn row by row from T[true label] (T rows sum to 1)."""
    y = np.asarray(true_labels, dtype=np.int64)
    cumulative = np.cumsum(np.asarray(T, dtype=np.float64), axis=1)
    u = np.random.default_rng((seed, _NOISE_STREAM)).random(y.size)
    out = np.empty_like(y)
    for start in range(0, y.size, 1 << 20):  # bounds the (chunk, K) temporary
        part = slice(start, start + (1 << 20))
        out[part] = (u[part, None] >= cumulative[y[part]]).sum(axis=1)
    return np.minimum(out, len(cumulative) - 1)


def clustered_embeddings(
    n: int,
    dim: int,
    num_classes: int,
    *,
    clusters_per_class: int = 8,
    latent_dim: int = 8,
    spread: float = 1.0,
    jitter: float = 0.05,
    prior: Sequence[float] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit float32 embeddings (n, dim) and their true classes (n,).

    Each class is a union of `clusters_per_class` clusters; a cluster is a random unit centre
    plus a Gaussian offset of norm about `spread` in a random `latent_dim`-dimensional
    subspace of its own, plus isotropic noise of norm about `jitter`. Clusters are far apart
    relative to the spacing within one, so a row and its nearest neighbours share their
    class (2-NN clusterability), and the low intrinsic dimension mimics sentence embeddings.
    """
    rng = np.random.default_rng((seed, _EMBEDDING_STREAM))
    y = rng.choice(num_classes, size=n, p=prior).astype(np.int64)
    cluster = y * clusters_per_class + rng.integers(0, clusters_per_class, size=n)
    n_clusters = num_classes * clusters_per_class
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(n_clusters + 1))
    for c in range(n_clusters):
        basis = rng.standard_normal((latent_dim, dim), dtype=np.float32)
        basis *= np.float32(spread / np.sqrt(latent_dim * dim))
        for start in range(bounds[c], bounds[c + 1], 1 << 16):  # bounds the temporaries
            rows = order[start:min(start + (1 << 16), bounds[c + 1])]
            block = rng.standard_normal((rows.size, latent_dim), dtype=np.float32) @ basis
            block += centres[c]
            block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(
                jitter / np.sqrt(dim))
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            x[rows] = block
    return x, y
