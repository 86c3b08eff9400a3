"""Cosine k-nearest-neighbour graph of an embedding matrix, computed once and shared by the
HOC rounds and the detection epochs: exact for small N, a recall-checked faiss IVF for large N."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from crediflow.core.cpus import available_cpus
from crediflow.errors import InputError

METHODS = ("auto", "exact", "ivf")
TARGET_RECALL = 0.95
_CHUNK_ROWS = 16_384  # rows per validation/normalisation chunk: bounds temporaries
_NORM_TOL = 1e-3  # rows already this close to unit norm are used without a copy
_PROBE_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 32, 40, 48, 64, 96, 128)
_TRAIN_PER_CELL = 16  # k-means training points per cell


@dataclass
class KnnGraph:
    """Each row's k nearest other rows by cosine similarity."""

    indices: np.ndarray  # (N, k) int64, neighbours sorted by decreasing similarity, self excluded
    sims: np.ndarray  # (N, k) float32 cosine similarities
    method: str  # "exact" or "ivf"
    recall: float | None  # measured recall@k against exact search on a sample (ivf only)
    nprobe: int | None = None  # inverted lists probed per query (ivf only)
    nlist: int | None = None  # inverted lists (ivf only)


# Neighbours this similar are duplicates for every purpose of the audit and of DS2.
_DUPLICATE_SIM = 0.9999


def graph_warnings(graph: KnnGraph, labels: np.ndarray | None = None) -> list[str]:
    """Signs that the k-NN graph carries no information: most rows' neighbours are exact
    duplicates (identical texts), or every row carries the same label."""
    warnings = []
    duplicate_share = float(np.mean(graph.sims[:, -1] >= _DUPLICATE_SIM)) if graph.sims.size else 0
    if duplicate_share > 0.5:
        warnings.append(f"{duplicate_share:.0%} of the rows have only identical neighbours "
                        "(the same text, or the same embedding): the k-NN graph cannot tell "
                        "rows apart, so the estimates below carry no information")
    if labels is not None and len(labels) and np.all(labels == labels[0]):
        warnings.append("every row falls in one class: there is no noise to estimate and "
                        "nothing to move")
    return warnings


def knn_graph(
    embeddings: np.ndarray,
    k: int,
    *,
    method: str = "auto",
    exact_max_rows: int = 50_000,
    seed: int = 0,
    recall_sample: int = 1000,
    batch_size: int = 4096,
) -> KnnGraph:
    """The k most cosine-similar other rows of every row of `embeddings` (N, d).

    `method="auto"` searches exactly up to `exact_max_rows` rows, else with an inverted file
    (IVF): about 2·sqrt(N) spherical k-means cells (faiss, trained on a seeded subsample),
    each row compared with the members of its `nprobe` most similar cells. `nprobe` is the
    smallest of a grid whose recall@k, measured against exact search on `recall_sample`
    seeded rows, reaches 0.95 less two standard errors; that recall is reported. A row is
    never its own neighbour (excluded by index, so exact duplicates of a row are still its
    neighbours, with similarity 1).
    """
    if method not in METHODS:
        raise InputError(f"unknown k-NN method {method!r}; use one of {METHODS}", field="method")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", field="k")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}", field="batch_size")
    if recall_sample < 1:
        raise InputError(f"recall_sample must be positive, got {recall_sample}",
                         field="recall_sample")
    x = unit_rows(embeddings)
    n = x.shape[0]
    if n < k + 1:
        raise InputError(f"{n} rows cannot give each row {k} neighbours; need at least {k + 1}",
                         field="embeddings")
    if method == "exact" or (method == "auto" and n <= exact_max_rows):
        sims, indices = _exact_search(x, np.arange(n), k, batch_size)
        return KnnGraph(indices, sims, "exact", None)
    return _ivf_graph(x, k, seed=seed, recall_sample=recall_sample, batch_size=batch_size)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """`embeddings` as C-contiguous float32 rows of unit L2 norm (no copy if already so).

    Raises `InputError` naming the rows that are NaN/inf or all zeros.
    """
    x = embeddings
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", None)
        raise InputError(f"embeddings must be a 2-D array (rows, dims), got shape {shape}",
                         field="embeddings")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"embeddings must be floating point, got dtype {x.dtype}",
                         field="embeddings")
    if x.shape[1] == 0:
        raise InputError("embeddings have 0 dimensions", field="embeddings")
    norms = np.empty(x.shape[0], dtype=np.float64)
    bad = []
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        block = np.asarray(x[start:start + _CHUNK_ROWS], dtype=np.float64)
        finite = np.isfinite(block).all(axis=1)
        bad.append(start + np.flatnonzero(~finite))
        block = np.where(finite[:, None], block, 0.0)
        norms[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
    bad = np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)
    if bad.size:
        raise InputError(f"{bad.size} row(s) contain NaN or inf: rows {_some(bad)}",
                         field="embeddings")
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InputError(f"{zero.size} row(s) are all zeros and have no direction: rows "
                         f"{_some(zero)}", field="embeddings")
    if (x.dtype == np.float32 and x.flags.c_contiguous
            and np.abs(norms - 1.0).max() <= _NORM_TOL):
        return x
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        out[start:stop] = x[start:stop] / norms[start:stop, None]
    return out


def _some(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({rows.size - limit} more)" if rows.size > limit else "")


def _drop_self(sims: np.ndarray, ids: np.ndarray, queries: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first k results per row that are not the query itself (by index).

    Rows whose k+1 results omit the query (it tied with duplicates) lose their last result.
    Missing results (faiss id -1) stay -1.
    """
    keep = ids != queries[:, None]
    extra = keep.sum(axis=1) > k
    keep[extra, -1] = False
    return sims[keep].reshape(-1, k), ids[keep].reshape(-1, k)


def _exact_search(x: np.ndarray, queries: np.ndarray, k: int,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k other rows for the rows `queries` of `x` (blocked inner products)."""
    sims = np.empty((queries.size, k), dtype=np.float32)
    ids = np.empty((queries.size, k), dtype=np.int64)
    for start in range(0, queries.size, batch_size):
        q = queries[start:start + batch_size]
        d, i = faiss.knn(x[q], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        sims[start:start + q.size], ids[start:start + q.size] = _drop_self(d, i, q, k)
    np.clip(sims, -1.0, 1.0, out=sims)
    return sims, ids


def _ivf_graph(x: np.ndarray, k: int, *, seed: int, recall_sample: int,
               batch_size: int) -> KnnGraph:
    """Inverted-file search: k-means cells, each query scans the cells of its nprobe nearest
    centroids, nprobe set by measured recall."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    nlist = _nlist(n)
    centroids = _train_centroids(x, nlist, rng, seed)
    probes = min(nlist, 32)  # likely enough; more are computed only if calibration asks
    coarse = _coarse(centroids, x, probes, batch_size)
    cells = _Cells.from_assignment(coarse[:, 0].astype(np.int64), nlist)

    sample = np.sort(rng.choice(n, size=min(n, recall_sample), replace=False))
    _, truth = _exact_search(x, sample, k, batch_size)
    nprobe, recall = _calibrate(centroids, x[sample], cells.cell[truth], batch_size)
    if nprobe > probes:
        coarse = _coarse(centroids, x, nprobe, batch_size)
    sims, ids = _scan(x, coarse[:, :nprobe], cells, k)
    del coarse
    missing = np.flatnonzero((ids < 0).any(axis=1))
    if missing.size:  # the probed cells held fewer than k other rows
        sims[missing], ids[missing] = _exact_search(x, missing, k, batch_size)
    np.clip(sims, -1.0, 1.0, out=sims)
    return KnnGraph(ids, sims, "ivf", recall, nprobe=nprobe, nlist=nlist)


def _nlist(n: int) -> int:
    """Number of cells, about 2*sqrt(N) (the cost of the coarse assignment grows with it, the
    cost of the scan for a given recall falls with it; 2*sqrt(N) is near the minimum of
    their sum measured at 1M rows)."""
    return int(max(1, min(round(2 * np.sqrt(n)), n // 16)))


def _train_centroids(x: np.ndarray, nlist: int, rng: np.random.Generator,
                     seed: int) -> np.ndarray:
    """Spherical k-means centroids (unit rows) of a seeded subsample of `x`."""
    points = min(x.shape[0], _TRAIN_PER_CELL * nlist)
    train = x[np.sort(rng.choice(x.shape[0], size=points, replace=False))]
    kmeans = faiss.Kmeans(x.shape[1], nlist, niter=10, spherical=True, seed=seed,
                          min_points_per_centroid=1, max_points_per_centroid=_TRAIN_PER_CELL)
    kmeans.train(train)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _coarse(centroids: np.ndarray, x: np.ndarray, probes: int, batch_size: int) -> np.ndarray:
    """The `probes` most similar centroids of every row, best first, as (N, probes) int32."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    out = np.empty((x.shape[0], probes), dtype=np.int32)
    step = max(batch_size, 16_384)  # large blocks keep the search in BLAS
    for start in range(0, x.shape[0], step):
        out[start:start + step] = index.search(x[start:start + step], probes)[1]
    return out


@dataclass
class _Cells:
    """Row ids grouped by cell: rows of cell c are members[bounds[c]:bounds[c + 1]], ascending."""

    cell: np.ndarray  # (N,) the cell of each row
    members: np.ndarray
    bounds: np.ndarray

    @classmethod
    def from_assignment(cls, cell: np.ndarray, ncells: int) -> _Cells:
        members = np.argsort(cell, kind="stable")
        return cls(cell, members, np.searchsorted(cell[members], np.arange(ncells + 1)))


def _calibrate(centroids: np.ndarray, queries: np.ndarray, truth_cells: np.ndarray,
               batch_size: int) -> tuple[int, float]:
    """The fewest probes (from a grid) whose recall@k on the sampled queries reaches the
    target with margin (mean minus two standard errors), and that recall.

    A probed search finds exactly those true neighbours whose cell is among the query's
    probed cells, so recall for every probe count follows from the rank of each true
    neighbour's cell in the query's centroid ranking; no search needs to be rerun.
    """
    nlist = centroids.shape[0]
    ranking = _coarse(centroids, queries, nlist, batch_size)
    rank = np.empty_like(ranking)
    np.put_along_axis(rank, ranking, np.arange(nlist, dtype=ranking.dtype)[None, :], axis=1)
    needed = np.take_along_axis(rank, truth_cells, axis=1) + 1  # probes that find each one
    for nprobe in [p for p in _PROBE_GRID if p < nlist] + [nlist]:
        per_query = np.mean(needed <= nprobe, axis=1)
        recall = float(per_query.mean())
        margin = 2.0 * per_query.std() / np.sqrt(max(per_query.size - 1, 1))
        if recall - margin >= TARGET_RECALL:
            break
    return nprobe, recall


def _scan(x: np.ndarray, probes: np.ndarray, cells: _Cells,
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k other rows of every row among the members of its probed cells (its own first).

    Work is grouped by cell, so each cell's vectors are read once per cell rather than once
    per query: the per-query scan of faiss IndexIVFFlat is memory-bound at d=384 and, over
    the same cells, measured 3.8x slower (300k rows, nprobe 8, 2 cores). The own-cell pass
    gives each row a k-th best similarity; in the other probed cells only entries above it
    can enter the top k, so they are picked out with one comparison instead of a per-row
    partial sort.

    Cells are spread over a thread per core, each with single-threaded BLAS: the products
    are small, and threaded BLAS on them measured 3-10x slower on a busy 2-core machine.
    """
    n, nprobe = probes.shape
    own_sims = np.full((n, k), -np.inf, dtype=np.float32)
    own_ids = np.full((n, k), -1, dtype=np.int64)

    def own_cell(c: int) -> None:
        members = cells.members[cells.bounds[c]:cells.bounds[c + 1]]
        if members.size < 2:
            return
        xm = x[members]
        block = xm @ xm.T
        np.fill_diagonal(block, -np.inf)  # the row itself, by index: duplicates stay
        found = min(k, members.size - 1)
        top = np.argpartition(-block, found - 1, axis=1)[:, :found]
        own_sims[members, :found] = np.take_along_axis(block, top, axis=1)  # rows disjoint
        own_ids[members, :found] = members[top]

    def other_cell(c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        members = cells.members[cells.bounds[c]:cells.bounds[c + 1]]
        rows = pair_order[pair_bounds[c]:pair_bounds[c + 1]] // (nprobe - 1)
        block = x[rows] @ x[members].T
        r, j = np.nonzero(block >= threshold[rows, None])
        return rows[r], members[j], block[r, j]

    workers = available_cpus()
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        list(pool.map(own_cell, range(len(cells.bounds) - 1)))
        threshold = own_sims.min(axis=1)  # -inf where the own cell has fewer than k others
        found = [(np.repeat(np.arange(n), k), own_ids.ravel(), own_sims.ravel())]
        if nprobe > 1:
            flat = probes[:, 1:].ravel()
            pair_order = np.argsort(flat, kind="stable")
            pair_bounds = np.searchsorted(flat[pair_order], np.arange(len(cells.bounds)))
            busy = np.flatnonzero(np.diff(pair_bounds) * np.diff(cells.bounds))
            found += list(pool.map(other_cell, busy))  # in cell order: deterministic
    rows, ids, sims = (np.concatenate(part) for part in zip(*found, strict=True))
    return _best_per_row(rows, ids, sims, n, k)


def _best_per_row(rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, n: int,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar candidates of each row, best first (-inf/-1 where fewer)."""
    valid = ids >= 0
    rows, ids, sims = rows[valid], ids[valid], sims[valid]
    # one integer sort on (row, -similarity): the float's bits, made order-preserving
    bits = (-sims).astype(np.float32).view(np.uint32)
    bits = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    order = np.argsort((rows.astype(np.uint64) << np.uint64(32)) | bits)
    rows, ids, sims = rows[order], ids[order], sims[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows)
    keep = rank < k
    out_sims = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_sims[rows[keep], rank[keep]] = sims[keep]
    out_ids[rows[keep], rank[keep]] = ids[keep]
    return out_sims, out_ids
