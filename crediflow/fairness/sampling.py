"""Fairness without harm: influence-guided active sampling (Pang et al., "Fairness Without
Harm: An Influence-Guided Active Sampling Approach", NeurIPS 2024), re-implemented.

Setting: a small labelled training set with no group column, an unlabelled pool, and a small
validation set that does carry groups. Each round a small MLP is trained on the labelled set;
every pool candidate x and every possible label k is scored by the first-order change that one
SGD step of size eta on (x, k) would make to two validation losses:

    influence(x, k) = -eta * < grad L_val(theta), grad loss(x, k; theta) >

over the parameters of the last `influence_layers` linear layers. L_val is (a) the accuracy
loss, the mean cross-entropy on the validation set, and (b) a fairness loss, a differentiable
surrogate of the gap measured over the validation groups, on p = the predicted probability of
`positive_class`:

    dp: max_g mean_{i in g} p_i - min_g mean_{i in g} p_i            (demographic parity)
    eo: max over true labels c of the same gap within {i: y_i = c}   (equalized odds)

Each candidate gets the pseudo-label whose accuracy influence is smallest in magnitude;
candidates whose accuracy influence at that label is positive (the step would raise the
validation loss) are discarded; of the rest, the `per_round` with the most negative fairness
influence join the training set (with the pool's true labels when the caller has them, the
annotator of the paper's active-sampling setting, else with their pseudo-labels). The model is
retrained and the loop repeats. No group of a training or pool row is ever used.

Why hand-written: no library we know of does this. Influence libraries (captum's TracIn,
pyDVL, torch-influence) score labelled training points against a model's loss on labelled test
points; none scores unlabelled candidates under every possible label, none takes a group-gap
surrogate measured on a separate validation set, and none runs the pseudo-label / no-harm
filter / fairness ranking loop. The authors' code is research code we do not copy. Per-label
gradients of the last linear layer have a closed form (d loss / d logits = softmax - onehot),
so scoring the whole pool is two matrix products; deeper tails use torch.func (vmap of grad).

`fair_influence_sampling`, `random_sampling` and `erm` share one training schedule, so their
results differ only in which rows were added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from crediflow.config import MethodConfig, option
from crediflow.errors import InputError

FAIRNESS_LOSSES = ("dp", "eo")
_CHUNK = 4096  # candidates per vmap batch (per-sample gradients of a deeper tail)

__all__ = [
    "FAIRNESS_LOSSES",
    "Influence",
    "SamplingConfig",
    "SamplingResult",
    "Selection",
    "build_mlp",
    "erm",
    "fair_influence_sampling",
    "influence_scores",
    "random_sampling",
    "select_candidates",
    "train_mlp",
    "validation_losses",
]


def _positive_sizes(value: tuple[int, ...]) -> str | None:
    return "every hidden size must be at least 1" if any(v < 1 for v in value) else None


@dataclass(frozen=True)
class SamplingConfig(MethodConfig):
    """Rounds, batch of added rows, the influence's losses and layers, and the small MLP."""

    section: ClassVar[str] = "fair_sampling"

    rounds: int = option(10, "sampling rounds (train, score the pool, add rows)", low=1)
    per_round: int = option(50, "r: rows added per round (fewer when fewer candidates pass "
                                "the no-harm filter)", low=1)
    candidates: int | None = option(None, "pool rows scored per round: a seeded random subset "
                                          "of the remaining pool (null: all of it)", low=1)
    fairness: str = option("dp", "fairness loss on the validation groups: dp (gap of mean "
                                 "positive probability between groups) or eo (the largest such "
                                 "gap within one true-label slice)", choices=FAIRNESS_LOSSES)
    positive_class: int = option(1, "the class whose predicted probability the fairness loss "
                                    "compares across groups", low=0)
    influence_layers: int = option(1, "trailing linear layers whose gradients the influence "
                                      "uses (1: closed form; more: torch.func vmap)", low=1)
    step_size: float = option(0.01, "eta of the one SGD step the influence estimates (scales "
                                    "the scores; signs and ranks do not depend on it)",
                              low=0, low_open=True)
    hidden: tuple[int, ...] = option((64,), "hidden layer sizes of the MLP (ReLU between)",
                                     check=_positive_sizes)
    epochs: int = option(30, "training epochs over the labelled set, each round", low=1)
    batch_size: int = option(128, "training minibatch size", low=1)
    lr: float = option(0.003, "Adam learning rate", low=0, low_open=True)
    weight_decay: float = option(0.0, "Adam weight decay", low=0)
    warm_start: bool = option(False, "continue training the previous round's model instead "
                                     "of retraining from the same seeded initialisation")
    seed: int = option(0, "seed of the initialisation, the minibatch order and the candidate "
                          "subsets", low=0)

    def validate(self) -> None:
        """The influence cannot reach past the MLP's first linear layer."""
        if self.influence_layers > len(self.hidden) + 1:
            raise self.error("influence_layers", f"{self.influence_layers} is more than the "
                             f"MLP's {len(self.hidden) + 1} linear layers (hidden="
                             f"{list(self.hidden)})")


@dataclass(frozen=True)
class Influence:
    """First-order change of the validation losses after one SGD step on (candidate, label).

    `accuracy` and `fairness` are (candidates, classes) arrays; negative = the loss drops.
    """

    accuracy: np.ndarray
    fairness: np.ndarray


@dataclass(frozen=True)
class Selection:
    """Rows chosen in one round: their positions in the scored candidates, their
    pseudo-labels, their influences at that label, and how many candidates did no harm."""

    indices: np.ndarray
    pseudo_labels: np.ndarray
    accuracy: np.ndarray
    fairness: np.ndarray
    eligible: int


@dataclass(frozen=True)
class SamplingResult:
    """What a sampling run added and how its models predict.

    Per round (lists of `rounds` arrays): `selected` pool row indices in the order added,
    `labels` they were trained with, and for `fis` their `pseudo_labels`, estimated
    `accuracy_influence` and `fairness_influence` (empty for the baselines); `eligible`:
    candidates that passed the no-harm filter per round (-1 for the baselines).
    `eval_proba`: (rounds + 1, n_eval, classes) predicted probabilities on `x_eval` after the
    first training and after each round (None without `x_eval`).
    """

    method: str
    selected: list[np.ndarray]
    labels: list[np.ndarray]
    pseudo_labels: list[np.ndarray]
    accuracy_influence: list[np.ndarray]
    fairness_influence: list[np.ndarray]
    eligible: np.ndarray
    eval_proba: np.ndarray | None


# --- model -------------------------------------------------------------------------------------

def build_mlp(in_features: int, num_classes: int, hidden: tuple[int, ...] = (64,), *,
              seed: int = 0) -> nn.Sequential:
    """A seeded MLP: Linear, ReLU, ..., Linear (logits), float32."""
    gen = torch.Generator().manual_seed(seed)
    sizes = (in_features, *hidden, num_classes)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(a, b)
        bound = 1.0 / a ** 0.5
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=gen)
            linear.bias.uniform_(-bound, bound, generator=gen)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_mlp(x: np.ndarray, y: np.ndarray, *, num_classes: int,
              config: SamplingConfig | None = None,
              model: nn.Sequential | None = None) -> nn.Sequential:
    """Train `model` (a fresh `build_mlp` when None) on (x, y): Adam on cross-entropy,
    `config.epochs` epochs of seeded shuffled minibatches. Returns the model in eval mode."""
    config = config or SamplingConfig()
    if model is None:
        model = build_mlp(x.shape[1], num_classes, config.hidden, seed=config.seed)
    dtype = _dtype(model)
    xt, yt = torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for batch in order.split(config.batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
    return model.eval()


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _split(model: nn.Sequential, layers: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, tail): the tail holds the last `layers` Linear layers and what lies between."""
    linear = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    if not 1 <= layers <= len(linear):
        raise InputError(f"influence_layers={layers}, but the model has {len(linear)} linear "
                         f"layers", field="influence_layers")
    start = linear[-layers]
    return model[:start], model[start:]


def _proba(model: nn.Sequential, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=_dtype(model)))
    return torch.softmax(logits, dim=1).numpy()


# --- losses and influence ----------------------------------------------------------------------

def _group_gap(p: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """max - min over the groups present of the groups' mean of p (differentiable in p)."""
    sums = torch.zeros(n_groups, dtype=p.dtype).index_add(0, groups, p)
    counts = torch.bincount(groups, minlength=n_groups)
    present = counts > 0
    means = sums[present] / counts[present].to(p.dtype)
    return means.max() - means.min()


def _fairness_loss(logits: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, *,
                   kind: str, positive_class: int) -> torch.Tensor:
    """The dp or eo surrogate (module docstring) of validation logits."""
    n_groups = int(groups.max()) + 1
    p = torch.softmax(logits, dim=1)[:, positive_class]
    if kind == "dp":
        return _group_gap(p, groups, n_groups)
    gaps = [_group_gap(p[y == c], groups[y == c], n_groups) for c in torch.unique(y)]
    return torch.stack(gaps).max()


@dataclass(frozen=True)
class _Validation:
    """The validation set as tensors: features, labels, group codes."""

    x: np.ndarray
    y: torch.Tensor
    groups: torch.Tensor


def _losses(tail: nn.Module, params: dict[str, torch.Tensor], h_val: torch.Tensor,
            val: _Validation, config: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    logits = functional_call(tail, params, (h_val,))
    accuracy = F.cross_entropy(logits, val.y)
    fairness = _fairness_loss(logits, val.y, val.groups, kind=config.fairness,
                              positive_class=config.positive_class)
    return accuracy, fairness


def validation_losses(model: nn.Sequential, x_val: np.ndarray, y_val: np.ndarray,
                      groups_val: np.ndarray, *, fairness: str = "dp",
                      positive_class: int = 1) -> tuple[float, float]:
    """(accuracy loss, fairness loss) of `model` on the validation set: mean cross-entropy,
    and the dp or eo surrogate of the module docstring."""
    config = SamplingConfig(fairness=fairness, positive_class=positive_class)
    val = _validation(x_val, y_val, groups_val, config)
    with torch.no_grad():
        h = torch.as_tensor(val.x, dtype=_dtype(model))
        params = dict(model.named_parameters())
        acc, fair = _losses(model, params, h, val, config)
    return float(acc), float(fair)


def influence_scores(model: nn.Sequential, x_candidates: np.ndarray, x_val: np.ndarray,
                     y_val: np.ndarray, groups_val: np.ndarray, *,
                     config: SamplingConfig | None = None) -> Influence:
    """First-order influence of one SGD step (size `config.step_size`) on each candidate under
    each possible label, on the validation accuracy and fairness losses.

    Gradients over the last `config.influence_layers` linear layers: one layer by the closed
    form (grad of the loss on logits is softmax - onehot), more by torch.func vmap of grad.
    """
    config = config or SamplingConfig()
    val = _validation(x_val, y_val, groups_val, config)
    head, tail = _split(model, config.influence_layers)
    dtype = _dtype(model)
    with torch.no_grad():
        h_val = head(torch.as_tensor(val.x, dtype=dtype))
        h_cand = head(torch.as_tensor(x_candidates, dtype=dtype))
    params = {k: v.detach().requires_grad_(True) for k, v in tail.named_parameters()}
    acc, fair = _losses(tail, params, h_val, val, config)
    names = list(params)
    g_acc = dict(zip(names, torch.autograd.grad(acc, list(params.values()), retain_graph=True),
                     strict=True))
    g_fair = dict(zip(names, torch.autograd.grad(fair, list(params.values())), strict=True))
    params = {k: v.detach() for k, v in params.items()}
    if config.influence_layers == 1:
        dots = _last_layer_dots(tail, params, h_cand, (g_acc, g_fair))
    else:
        dots = _tail_dots(tail, params, h_cand, (g_acc, g_fair))
    scale = -config.step_size
    return Influence(accuracy=(scale * dots[0]).numpy(), fairness=(scale * dots[1]).numpy())


def _last_layer_dots(tail: nn.Module, params: dict[str, torch.Tensor], h: torch.Tensor,
                     grads: tuple[dict[str, torch.Tensor], ...]) -> list[torch.Tensor]:
    """<G, grad loss(x_i, k)> for every candidate i and label k, tail = one Linear layer.

    grad_W loss = (p - e_k) h^T and grad_b loss = p - e_k, so with v = h G_W^T + G_b the dot
    product is p.v - v_k: two matrix products for the whole pool.
    """
    weight = next(n for n in params if n.endswith("weight"))
    bias = next(n for n in params if n.endswith("bias"))
    with torch.no_grad():
        p = torch.softmax(functional_call(tail, params, (h,)), dim=1)
        out = []
        for g in grads:
            v = h @ g[weight].T + g[bias]
            out.append((p * v).sum(dim=1, keepdim=True) - v)
    return out


def _tail_dots(tail: nn.Module, params: dict[str, torch.Tensor], h: torch.Tensor,
               grads: tuple[dict[str, torch.Tensor], ...]) -> list[torch.Tensor]:
    """<G, grad loss(x_i, k)> for every candidate i and label k: per-sample gradients of the
    tail by vmap(grad), in chunks of candidates, one vmap call per label."""

    def loss_one(p: dict[str, torch.Tensor], hi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(tail, p, (hi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    num_classes = functional_call(tail, params, (h[:1],)).shape[1]
    out = [torch.empty(len(h), num_classes, dtype=h.dtype) for _ in grads]
    for start in range(0, len(h), _CHUNK):
        chunk = h[start:start + _CHUNK]
        for k in range(num_classes):
            labels = torch.full((len(chunk),), k, dtype=torch.long)
            g_each = per_sample(params, chunk, labels)
            for target, g in zip(out, grads, strict=True):
                target[start:start + len(chunk), k] = sum(
                    (g_each[n].flatten(1) * g[n].flatten()).sum(dim=1) for n in g)
    return out


# --- selection ---------------------------------------------------------------------------------

def select_candidates(influence: Influence, per_round: int) -> Selection:
    """Pseudo-label, filter and rank scored candidates.

    Each candidate's pseudo-label is the label whose accuracy influence is smallest in
    magnitude (ties: the lower label); candidates whose accuracy influence at that label is
    positive are discarded; of the rest, the `per_round` with the most negative fairness
    influence at their pseudo-label are chosen (ties: the earlier candidate).
    """
    if per_round < 1:
        raise InputError(f"per_round must be at least 1, got {per_round}", field="per_round")
    rows = np.arange(len(influence.accuracy))
    pseudo = np.argmin(np.abs(influence.accuracy), axis=1)
    acc = influence.accuracy[rows, pseudo]
    fair = influence.fairness[rows, pseudo]
    eligible = np.flatnonzero(acc <= 0)
    order = eligible[np.argsort(fair[eligible], kind="stable")][:per_round]
    return Selection(indices=order, pseudo_labels=pseudo[order], accuracy=acc[order],
                     fairness=fair[order], eligible=len(eligible))


# --- the sampling loop and its baselines -------------------------------------------------------

@dataclass
class _Run:
    """The mutable state of one sampling run."""

    x: np.ndarray
    y: np.ndarray
    remaining: np.ndarray
    result: SamplingResult


# A strategy picks rows among the pool positions `candidates` (its Selection's indices point
# into `candidates`): (model, candidates) -> Selection.
_Strategy = Callable[[nn.Sequential, np.ndarray], Selection]


def _run(method: str, x_train: np.ndarray, y_train: np.ndarray, x_pool: np.ndarray,
         pool_labels: np.ndarray | None, *, strategy: _Strategy | None, x_eval: np.ndarray | None,
         config: SamplingConfig, num_classes: int) -> SamplingResult:
    """Train, then `config.rounds` times: let `strategy` pick pool rows, add them with the
    pool's labels (else the pseudo-labels), retrain. `strategy` None adds nothing (ERM)."""
    rng = np.random.default_rng(config.seed)
    empty = np.zeros(0, dtype=np.int64)
    pool_labels = None if pool_labels is None else np.asarray(pool_labels)
    state = _Run(x=x_train, y=np.asarray(y_train), remaining=np.arange(len(x_pool)),
                 result=SamplingResult(method, [], [], [], [], [], np.full(config.rounds, -1),
                                       None))
    model = train_mlp(state.x, state.y, num_classes=num_classes, config=config)
    probas = [] if x_eval is None else [_proba(model, x_eval)]
    for t in range(config.rounds):
        chosen, sel = empty, Selection(empty, empty, np.zeros(0), np.zeros(0), -1)
        if strategy is not None and len(state.remaining):
            candidates = _candidates(state.remaining, config.candidates, rng)
            sel = strategy(model, candidates)
            chosen = candidates[sel.indices]
        labels = sel.pseudo_labels if pool_labels is None else pool_labels[chosen]
        _record(state, t, chosen, labels, sel, keep_pseudo=method == "fis")
        state.x = np.concatenate([state.x, x_pool[chosen]])
        state.y = np.concatenate([state.y, labels.astype(state.y.dtype)])
        state.remaining = np.setdiff1d(state.remaining, chosen, assume_unique=True)
        model = train_mlp(state.x, state.y, num_classes=num_classes, config=config,
                          model=model if config.warm_start else None)
        if x_eval is not None:
            probas.append(_proba(model, x_eval))
    eval_proba = np.stack(probas) if probas else None
    return dataclasses.replace(state.result, eval_proba=eval_proba)


def _candidates(remaining: np.ndarray, limit: int | None,
                rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= len(remaining):
        return remaining
    return np.sort(rng.choice(remaining, size=limit, replace=False))


def _record(state: _Run, t: int, chosen: np.ndarray, labels: np.ndarray, sel: Selection, *,
            keep_pseudo: bool) -> None:
    r = state.result
    r.selected.append(chosen)
    r.labels.append(np.asarray(labels, dtype=np.int64))
    r.pseudo_labels.append(np.asarray(sel.pseudo_labels if keep_pseudo else [], dtype=np.int64))
    r.accuracy_influence.append(sel.accuracy)
    r.fairness_influence.append(sel.fairness)
    r.eligible[t] = sel.eligible


def fair_influence_sampling(x_train: np.ndarray, y_train: np.ndarray, x_pool: np.ndarray, *,
                            x_val: np.ndarray, y_val: np.ndarray, groups_val: np.ndarray,
                            pool_labels: np.ndarray | None = None,
                            x_eval: np.ndarray | None = None,
                            config: SamplingConfig | None = None,
                            num_classes: int | None = None) -> SamplingResult:
    """Fair influential sampling: each round, score the pool by its influence on the
    validation accuracy and fairness losses, add the `per_round` candidates that do not hurt
    accuracy and most reduce the fairness loss, retrain.

    x_* are float feature matrices (standardise them first), y_* integer labels in
    [0, num_classes); `groups_val` any hashable group per validation row (two groups at
    least); `pool_labels`, when given, are the labels the chosen rows are trained with (the
    annotator), else their pseudo-labels; `x_eval` rows are predicted after every round.
    `num_classes` defaults to 1 + the largest label seen (at least 2).
    """
    config = config or SamplingConfig()
    k = _check_inputs(x_train, y_train, x_pool, pool_labels=pool_labels, x_eval=x_eval,
                      num_classes=num_classes)
    val = _validation(x_val, y_val, groups_val, config, features=x_train.shape[1])
    k = _with_validation_classes(k, val, fixed=num_classes is not None)
    _check_positive_class(config, k)

    def strategy(model: nn.Sequential, candidates: np.ndarray) -> Selection:
        scores = influence_scores(model, x_pool[candidates], val.x, val.y.numpy(),
                                  val.groups.numpy(), config=config)
        return select_candidates(scores, config.per_round)

    return _run("fis", x_train, y_train, x_pool, pool_labels, strategy=strategy, x_eval=x_eval,
                config=config, num_classes=k)


def random_sampling(x_train: np.ndarray, y_train: np.ndarray, x_pool: np.ndarray, *,
                    pool_labels: np.ndarray | None = None, x_eval: np.ndarray | None = None,
                    config: SamplingConfig | None = None,
                    num_classes: int | None = None) -> SamplingResult:
    """Baseline: each round add `per_round` pool rows drawn uniformly (seeded), with the pool's
    labels when given, else the model's predicted labels; same training as
    `fair_influence_sampling`."""
    config = config or SamplingConfig()
    k = _check_inputs(x_train, y_train, x_pool, pool_labels=pool_labels, x_eval=x_eval,
                      num_classes=num_classes)
    rng = np.random.default_rng([config.seed, 1])

    def strategy(model: nn.Sequential, candidates: np.ndarray) -> Selection:
        picked = rng.choice(len(candidates), size=min(config.per_round, len(candidates)),
                            replace=False)
        pseudo = _proba(model, x_pool[candidates[picked]]).argmax(axis=1)
        return Selection(picked, pseudo, np.zeros(0), np.zeros(0), -1)

    return _run("random", x_train, y_train, x_pool, pool_labels, strategy=strategy,
                x_eval=x_eval, config=config, num_classes=k)


def erm(x_train: np.ndarray, y_train: np.ndarray, *, x_eval: np.ndarray | None = None,
        config: SamplingConfig | None = None, num_classes: int | None = None) -> SamplingResult:
    """Baseline: plain empirical risk minimisation on the labelled set, trained on the same
    schedule (`rounds` + 1 trainings, nothing added)."""
    config = config or SamplingConfig()
    k = _check_inputs(x_train, y_train, None, pool_labels=None, x_eval=x_eval,
                      num_classes=num_classes)
    empty_pool = np.zeros((0, x_train.shape[1]))
    return _run("erm", x_train, y_train, empty_pool, None, strategy=None, x_eval=x_eval,
                config=config, num_classes=k)


# --- input checks ------------------------------------------------------------------------------

def _check_matrix(x: np.ndarray, name: str, features: int | None = None) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise InputError(f"{name} must be a 2-D numpy array (rows x features), got "
                         f"{getattr(x, 'shape', type(x).__name__)}", field=name)
    if features is not None and x.shape[1] != features:
        raise InputError(f"{name} has {x.shape[1]} features, x_train has {features}",
                         field=name)
    if not np.isfinite(x).all():
        raise InputError(f"{name} holds NaN or infinite values", field=name)


def _check_labels(y: np.ndarray, rows: int, name: str) -> int:
    y = np.asarray(y)
    if y.shape != (rows,):
        raise InputError(f"{name} must hold one label per row ({rows}), got shape {y.shape}",
                         field=name)
    if rows and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise InputError(f"{name} must be non-negative integer class labels", field=name)
    return int(y.max()) + 1 if rows else 0


def _check_inputs(x_train: np.ndarray, y_train: np.ndarray, x_pool: np.ndarray | None, *,
                  pool_labels: np.ndarray | None, x_eval: np.ndarray | None,
                  num_classes: int | None) -> int:
    """Shapes, finiteness and labels of the training, pool and eval inputs; the class count."""
    _check_matrix(x_train, "x_train")
    if len(x_train) == 0:
        raise InputError("the labelled training set is empty", field="x_train")
    d = x_train.shape[1]
    seen = _check_labels(y_train, len(x_train), "y_train")
    if x_pool is not None:
        _check_matrix(x_pool, "x_pool", d)
        if len(x_pool) == 0:
            raise InputError("the unlabelled pool is empty: there is nothing to sample",
                             field="x_pool")
        if pool_labels is not None:
            seen = max(seen, _check_labels(pool_labels, len(x_pool), "pool_labels"))
    if x_eval is not None:
        _check_matrix(x_eval, "x_eval", d)
    k = max(seen, 2) if num_classes is None else num_classes
    if k < 2 or seen > k:
        raise InputError(f"num_classes={k}, but labels go up to {seen - 1} (at least 2 classes "
                         f"are needed)", field="num_classes")
    return k


def _with_validation_classes(k: int, val: _Validation, *, fixed: bool) -> int:
    """The class count once the validation labels are seen (refused beyond a given count)."""
    seen = int(val.y.max()) + 1
    if seen > k and fixed:
        raise InputError(f"y_val holds label {seen - 1}, but num_classes={k}", field="y_val")
    return max(k, seen)


def _check_positive_class(config: SamplingConfig, k: int) -> None:
    if config.positive_class >= k:
        raise config.error("positive_class", f"{config.positive_class} is not a class of "
                           f"this task ({k} classes)")


def _validation(x_val: np.ndarray, y_val: np.ndarray, groups_val: np.ndarray,
                config: SamplingConfig, *, features: int | None = None) -> _Validation:
    """The validation set checked (rows, labels, at least two groups, and for eo two groups
    in every true-label slice) and converted to tensors."""
    _check_matrix(x_val, "x_val", features)
    if len(x_val) == 0:
        raise InputError("the validation set is empty", field="x_val")
    _check_labels(y_val, len(x_val), "y_val")
    groups = np.asarray(groups_val)
    if groups.shape != (len(x_val),):
        raise InputError(f"groups_val must hold one group per validation row ({len(x_val)}), "
                         f"got shape {groups.shape}", field="groups_val")
    names, codes = np.unique(groups, return_inverse=True)
    if len(names) < 2:
        raise InputError(f"the validation set has a single group ({names[0]!r}); the fairness "
                         f"loss compares at least two", field="groups_val")
    y = np.asarray(y_val)
    if config.fairness == "eo":
        for c in np.unique(y):
            if len(np.unique(codes[y == c])) < 2:
                raise InputError(f"eo: validation rows with label {c} come from a single "
                                 f"group; each label needs at least two", field="groups_val")
    return _Validation(x=x_val, y=torch.as_tensor(y, dtype=torch.long),
                       groups=torch.as_tensor(codes.reshape(-1), dtype=torch.long))
