"""HOC: the noise transition matrix T[i, j] = P(noisy label j | true label i) and the true
class prior p, estimated from how often neighbouring samples' noisy labels agree (Zhu et al.,
"Clusterability as an Alternative to Anchor Points When Learning with Noisy Labels")."""

from __future__ import annotations

import numpy as np

from crediflow.core.knn import KnnGraph
from crediflow.core.validation import check_subsampling
from crediflow.errors import InputError

Consensus = tuple[np.ndarray, np.ndarray, np.ndarray]


def consensus_from_triplets(triplets: np.ndarray, num_classes: int) -> Consensus:
    """First-, second- and third-order label-agreement frequencies of (M, 3) label triplets.

    Returns c1 (K,), c2 (K, K), c3 (K, K, K), each summing to 1: c1[j] is the share of
    triplets whose first label is j, c2[j, l] of those whose first two are (j, l), c3[j, l, m]
    of those that are (j, l, m).
    """
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3:
        raise InputError(f"triplets must have shape (M, 3), got {t.shape}", field="triplets")
    _check_num_classes(num_classes)
    _check_labels(t, num_classes, "triplets")
    if t.shape[0] == 0:
        raise InputError("no triplets to count", field="triplets")
    return _normalise(_count(t[:, 0], t[:, 1], t[:, 2], num_classes))


def consensus_from_graph(
    labels: np.ndarray,
    graph: KnnGraph,
    num_classes: int,
    *,
    rounds: int = 50,
    sample_fraction: float = 0.9,
    seed: int = 0,
) -> Consensus:
    """Label-agreement frequencies of each sample and its two nearest neighbours (2-NN
    clusterability: the three are assumed to share their true label).

    Each of `rounds` rounds draws `sample_fraction` of the rows without replacement; every
    drawn row contributes the triplet (its label, its nearest and second-nearest drawn
    neighbours' labels), neighbours taken from `graph` in similarity order. A row is never its
    own neighbour. Counts are pooled over rounds, then normalised.
    """
    y = _check_graph_labels(labels, graph, num_classes)
    check_subsampling(rounds, "rounds", sample_fraction)
    n = y.size
    size = max(3, min(n, round(sample_fraction * n)))
    rng = np.random.default_rng(seed)
    counts = [np.zeros(num_classes ** o, dtype=np.int64) for o in (1, 2, 3)]
    drawn = np.zeros(n, dtype=bool)
    for _ in range(rounds):
        sample = rng.choice(n, size=size, replace=False)
        drawn[:] = False
        drawn[sample] = True
        neighbours = graph.indices[sample]
        seen = np.cumsum(drawn[neighbours], axis=1, dtype=np.int16)
        ok = seen[:, -1] >= 2  # with k=10 and 90% drawn, all but ~1e-8 of rows
        first = np.argmax(seen == 1, axis=1)
        second = np.argmax(seen == 2, axis=1)
        rows = np.flatnonzero(ok)
        a = y[sample[rows]]
        b = y[neighbours[rows, first[rows]]]
        c = y[neighbours[rows, second[rows]]]
        for total, part in zip(counts, _count(a, b, c, num_classes), strict=True):
            total += part.ravel()
    if counts[0].sum() == 0:
        raise InputError("no sampled row had two sampled neighbours; raise sample_fraction",
                         field="sample_fraction")
    return _normalise(tuple(cnt.reshape((num_classes,) * o)
                            for o, cnt in enumerate(counts, start=1)))


def fit_transition(
    c1: np.ndarray,
    c2: np.ndarray,
    c3: np.ndarray,
    *,
    steps: int = 1500,
    lr: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """T (K, K) and p (K,) whose implied consensus best matches (c1, c2, c3).

    Implied consensus: c1 = Tᵀp, c2[j,l] = Σᵢ pᵢ T[i,j] T[i,l], c3[j,l,m] = Σᵢ pᵢ T[i,j] T[i,l]
    T[i,m]. Minimises the sum of the three (unsquared) Frobenius errors over T = row-softmax(A),
    p = softmax(b) with Adam (torch's update rule and defaults) from a diagonal-dominant start
    (A = 5I - 1, b = 0), which keeps the estimate aligned with the label order rather than a
    permutation of it, and returns the best iterate. The fit has no random part; `seed` is
    accepted so that callers can pass one seed everywhere.
    """
    del seed
    k = _check_consensus(c1, c2, c3)
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}", field="steps")
    target = [np.asarray(c, dtype=np.float64) for c in (c1, c2, c3)]
    params = [5.0 * np.eye(k) - 1.0, np.zeros(k)]
    adam = _Adam(params, lr)
    best_loss, best = np.inf, (None, None)
    for _ in range(steps):
        loss, t, p, grads = _loss_and_grad(*params, target)
        if loss < best_loss:
            best_loss, best = loss, (t, p)
        adam.step(params, grads)
    return best


def _loss_and_grad(a: np.ndarray, b: np.ndarray, target: list[np.ndarray]
                   ) -> tuple[float, np.ndarray, np.ndarray, list[np.ndarray]]:
    """The fit's loss at (A, b), T, p, and the loss's gradients in A and b.

    Closed form rather than autograd: the 1500 steps on K x K tensors cost ~0.1 s instead of
    several seconds of per-op overhead (tests compare it with torch autograd).
    """
    k = a.shape[0]
    t = _softmax(a, axis=1)
    p = _softmax(b, axis=0)
    tt = (t[:, :, None] * t[:, None, :]).reshape(k, k * k)  # row i: outer(T[i], T[i])
    pt = p[:, None] * t
    implied = (p @ t, pt.T @ t, (pt.T @ tt).reshape(k, k, k))
    loss, unit = 0.0, []
    for m, c in zip(implied, target, strict=True):
        r = m - c
        norm = float(np.sqrt(np.sum(r * r)))
        loss += norm
        unit.append(r / norm if norm > 0 else np.zeros_like(r))
    g1, g2, g3 = unit
    # each implied moment is symmetric in its indices, so T's gradient collects every position
    h3 = (g3 + g3.transpose(1, 0, 2) + g3.transpose(2, 0, 1)).reshape(k, k * k)
    grad_t = p[:, None] * (g1[None, :] + t @ (g2 + g2.T) + tt @ h3.T)
    grad_p = t @ g1 + np.sum((t @ g2) * t, axis=1) + np.sum((tt @ g3.reshape(k * k, k)) * t,
                                                            axis=1)
    grad_a = t * (grad_t - np.sum(grad_t * t, axis=1, keepdims=True))
    grad_b = p * (grad_p - np.sum(grad_p * p))
    return loss, t, p, [grad_a, grad_b]


class _Adam:
    """Adam with torch.optim.Adam's defaults (betas 0.9/0.999, eps 1e-8, no weight decay)."""

    def __init__(self, params: list[np.ndarray], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = [np.zeros_like(x) for x in params]
        self.v = [np.zeros_like(x) for x in params]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for x, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(1 - b2 ** self.t) + self.eps
            x -= self.lr / (1 - b1 ** self.t) * m / denom


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def credibility_score(T: np.ndarray) -> float:
    """Credibility of a label column from its transition matrix: 1 - ‖T - I‖_F / √(2K).

    1 for clean labels (T = I), 0 for labels that are a permutation of the true ones.
    """
    t = np.asarray(T, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise InputError(f"T must be a square (K, K) matrix, got shape {t.shape}", field="T")
    k = t.shape[0]
    return float(1.0 - np.linalg.norm(t - np.eye(k)) / np.sqrt(2 * k))


def _count(a: np.ndarray, b: np.ndarray, c: np.ndarray, k: int) -> Consensus:
    a, b, c = (np.asarray(v, dtype=np.int64) for v in (a, b, c))
    return (np.bincount(a, minlength=k),
            np.bincount(a * k + b, minlength=k * k).reshape(k, k),
            np.bincount((a * k + b) * k + c, minlength=k ** 3).reshape(k, k, k))


def _normalise(counts: Consensus) -> Consensus:
    return tuple(c / c.sum() for c in counts)


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}",
                         field="num_classes")


def _check_labels(labels: np.ndarray, num_classes: int, field: str) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}",
                         field=field)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]", field=field)


def _check_graph_labels(labels: np.ndarray, graph: KnnGraph, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    _check_num_classes(num_classes)
    if y.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {y.shape}", field="labels")
    _check_labels(y, num_classes, "labels")
    if y.size != graph.indices.shape[0]:
        raise InputError(f"{y.size} labels for a graph of {graph.indices.shape[0]} rows",
                         field="labels")
    if graph.indices.shape[1] < 2:
        raise InputError("the graph needs at least 2 neighbours per row", field="graph")
    return y


def _check_consensus(c1: np.ndarray, c2: np.ndarray, c3: np.ndarray) -> int:
    k = np.shape(c1)[0] if np.ndim(c1) == 1 else 0
    if k < 2 or np.shape(c2) != (k, k) or np.shape(c3) != (k, k, k):
        raise InputError(f"consensus shapes must be (K,), (K, K), (K, K, K) with K >= 2, got "
                         f"{np.shape(c1)}, {np.shape(c2)}, {np.shape(c3)}", field="consensus")
    return k
