"""Layer pruning: which decoder layers to remove, the model without them, and what partial
fine-tuning trains.

Supported models keep their decoder layers in `model.model.layers` (Llama, Qwen2, Mistral
and their kin) or `model.transformer.h` (GPT-2). Selectors score every layer and remove the
k with the lowest score:

- reverse: the last k layers (no scores);
- random: k layers drawn with `seed`;
- magnitude: sum over the layer's weights of |W| (l1) or W^2 (l2);
- taylor: |sum over the layer's weights of W * dL/dW|, L the mean label loss on the
  calibration records (first-order estimate of the loss change when the layer is zeroed);
- block_influence: 1 - cosine between the hidden state entering and leaving the layer,
  averaged over the calibration tokens (in float32; the last layer is scored like every
  other, before the final norm);
- perplexity: the mean label loss with the layer skipped (its output replaced by its input).

`prune` never deletes layers in place: it builds a new model of the same class from a copy
of the config with fewer layers and copies the kept weights into it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from crediflow.errors import InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.models.token_loss import mean_label_loss
from crediflow.prune.config import CALIBRATED, PruneConfig

# where supported model classes keep their decoder layers, tried in order
_LAYER_PATHS = (("model", "layers"), ("transformer", "h"))
# names of the final norm on the layers' parent module
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")
# per-layer lists in a config that must follow the kept layers
_PER_LAYER_CONFIG = ("layer_types",)
_BATCH = 8  # calibration records per forward pass


def _layers_path(model: Any) -> tuple[str, Any, Any]:
    """(prefix of the layers' parameter names, the layers' parent module, the ModuleList)."""
    import torch

    for parent_name, list_name in _LAYER_PATHS:
        parent = getattr(model, parent_name, None)
        layers = getattr(parent, list_name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return f"{parent_name}.{list_name}", parent, layers
    raise InputError(f"cannot find the decoder layers of a {type(model).__name__} (supported: "
                     f"models with model.layers, like Llama, Qwen2 and Mistral, or with "
                     f"transformer.h, like GPT-2)")


def decoder_layers(model: Any) -> Any:
    """The model's decoder layers (a torch ModuleList); InputError naming the model class when
    it keeps them elsewhere."""
    return _layers_path(model)[2]


def remove_count(config: PruneConfig, n_layers: int) -> int:
    """k: `count`, else round(ratio * layers); a ConfigError (naming the key) when that
    removes no layer or every layer."""
    key = "count" if config.count is not None else "ratio"
    k = config.count if config.count is not None else round(config.ratio * n_layers)
    what = f"count {k}" if key == "count" else f"ratio {config.ratio} x {n_layers} layers"
    if k < 1:
        raise config.error(key, f"{what} removes no layer; remove at least 1 of "
                                f"{n_layers}")
    if k >= n_layers:
        raise config.error(key, f"{what} removes every layer ({k} of {n_layers}); keep at "
                                f"least 1")
    return int(k)


def layers_to_remove(model: Any, config: PruneConfig, *,
                     calibration: TokenizedSFT | None = None) -> list[int]:
    """The indices (ascending) of the decoder layers that `config.selector` removes.

    taylor, block_influence and perplexity score layers on the first
    `config.calibration_records` records of `calibration` (InputError without it).
    """
    n_layers = len(decoder_layers(model))
    k = remove_count(config, n_layers)
    if config.selector == "reverse":
        return list(range(n_layers - k, n_layers))
    if config.selector == "random":
        drawn = np.random.default_rng(config.seed).choice(n_layers, size=k, replace=False)
        return sorted(int(i) for i in drawn)
    if config.selector == "magnitude":
        scores = _magnitude_scores(model, config.norm)
    else:
        calib = _calibration(calibration, config)
        scores = _SCORERS[config.selector](model, calib)
    order = np.argsort(np.asarray(scores, np.float64), kind="stable")
    return sorted(int(i) for i in order[:k])


def _calibration(calibration: TokenizedSFT | None, config: PruneConfig) -> TokenizedSFT:
    """The first `calibration_records` records; InputError when there is nothing to score."""
    if calibration is None or not len(calibration):
        raise InputError(f"the {config.selector} selector needs calibration records (one of "
                         f"{', '.join(CALIBRATED)}); pass calibration=")
    calib = calibration.subset(np.arange(min(config.calibration_records, len(calibration))))
    if not np.any(calib.labels != IGNORE):
        raise InputError("the calibration records have no labelled token", field="labels")
    return calib


def _magnitude_scores(model: Any, norm: str) -> list[float]:
    """Per layer: sum of |W| (l1) or W^2 (l2) over all its parameters."""
    import torch

    power = 1 if norm == "l1" else 2
    with torch.no_grad():
        return [float(sum(p.detach().float().abs().pow(power).sum().item()
                          for p in layer.parameters()))
                for layer in decoder_layers(model)]


def _batches(model: Any, sft: TokenizedSFT) -> Iterator[dict[str, Any]]:
    """Right-padded batches of `sft` on the model's device: input_ids, attention_mask,
    labels (IGNORE on padding)."""
    import torch

    device = next(model.parameters()).device
    for start in range(0, len(sft), _BATCH):
        records = np.arange(start, min(start + _BATCH, len(sft)))
        lengths = sft.lengths[records]
        columns = np.arange(int(lengths.max()))
        real = columns[None, :] < lengths[:, None]
        flat = np.where(real, sft.offsets[records][:, None] + columns[None, :], 0)
        ids = np.where(real, sft.input_ids[flat], 0)
        labels = np.where(real, sft.labels[flat], IGNORE)
        yield {"input_ids": torch.from_numpy(ids).to(device),
               "attention_mask": torch.from_numpy(real.astype(np.int64)).to(device),
               "labels": torch.from_numpy(labels).to(device)}


class _EvalMode:
    """Context: the model in eval mode, restored to its former mode afterwards."""

    def __init__(self, model: Any) -> None:
        self.model, self.training = model, model.training

    def __enter__(self) -> Any:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.training)


def _taylor_scores(model: Any, calib: TokenizedSFT) -> list[float]:
    """Per layer: |sum W * dL/dW|, L the mean label loss of each calibration batch (the
    per-batch sums averaged before the absolute value)."""
    import torch

    layers = decoder_layers(model)
    params = [list(layer.parameters()) for layer in layers]
    flat = [p for group in params for p in group]
    flags = [p.requires_grad for p in flat]
    totals = np.zeros(len(layers), np.float64)
    batches = 0
    try:
        for p in flat:
            p.requires_grad_(True)
        with _EvalMode(model):
            for batch in _batches(model, calib):
                if not bool((batch["labels"][:, 1:] != IGNORE).any()):
                    continue
                loss = model(**batch, use_cache=False).loss
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
                totals += _per_layer_products(params, grads)
                batches += 1
    finally:
        for p, flag in zip(flat, flags, strict=True):
            p.requires_grad_(flag)
    return list(np.abs(totals / max(batches, 1)))


def _per_layer_products(params: list[list[Any]], grads: tuple[Any, ...]) -> np.ndarray:
    """Per layer: sum over its parameters of W * grad (an unused parameter adds 0)."""
    out = np.zeros(len(params), np.float64)
    it = iter(grads)
    for i, group in enumerate(params):
        for p in group:
            g = next(it)
            if g is not None:
                out[i] += float((p.detach().float() * g.float()).sum().item())
    return out


def _hidden(value: Any) -> Any:
    """The hidden-state tensor of a layer's input or output (a tensor or a tuple's first)."""
    return value[0] if isinstance(value, tuple | list) else value


def _layer_input(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _block_influence_scores(model: Any, calib: TokenizedSFT) -> list[float]:
    """Per layer: mean over the calibration tokens of 1 - cos(input, output), in float32."""
    import torch

    layers = decoder_layers(model)
    sums = np.zeros(len(layers), np.float64)
    state: dict[str, Any] = {}

    def hook(index: int) -> Callable:
        def record(_module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x, y = _layer_input(args, kwargs).float(), _hidden(output).float()
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
            sums[index] += float((1 - cos)[state["mask"]].sum().item())
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    tokens = 0
    try:
        with _EvalMode(model), torch.no_grad():
            for batch in _batches(model, calib):
                state["mask"] = batch["attention_mask"].bool()
                tokens += int(state["mask"].sum().item())
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return list(sums / max(tokens, 1))


def _perplexity_scores(model: Any, calib: TokenizedSFT) -> list[float]:
    """Per layer: the mean label loss with that layer skipped (output = input)."""
    def skip(_module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        x = _layer_input(args, kwargs)
        if isinstance(output, tuple):
            return (x, *output[1:])
        return x

    scores = []
    with _EvalMode(model):
        for layer in decoder_layers(model):
            handle = layer.register_forward_hook(skip, with_kwargs=True)
            try:
                scores.append(mean_label_loss(model, calib, batch_size=_BATCH))
            finally:
                handle.remove()
    return scores


_SCORERS: dict[str, Callable[[Any, TokenizedSFT], list[float]]] = {
    "taylor": _taylor_scores, "block_influence": _block_influence_scores,
    "perplexity": _perplexity_scores}


def _pruned_config(model: Any, keep: list[int]) -> Any:
    """A copy of the model's config with `len(keep)` layers (and per-layer lists cut)."""
    n_layers = len(decoder_layers(model))
    config = copy.deepcopy(model.config)
    for name in _PER_LAYER_CONFIG:
        values = getattr(config, name, None)
        if isinstance(values, list | tuple) and len(values) == n_layers:
            setattr(config, name, [values[i] for i in keep])
    config.num_hidden_layers = len(keep)  # GPT-2 maps this to n_layer
    return config


def _renumbered_state(model: Any, prefix: str, keep: list[int]) -> dict[str, Any]:
    """The model's state dict with kept layer i's keys renamed to its new index; the removed
    layers' keys dropped."""
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            if int(index) not in new_index:
                continue
            key = f"{prefix}.{new_index[int(index)]}.{rest}"
        state[key] = value
    return state


def prune(model: Any, remove: list[int]) -> Any:
    """A NEW model of the same class without the decoder layers `remove` (the original is
    untouched): kept layers, embeddings, final norm and lm_head copied; every per-layer index
    (`layer_idx`, used by the KV cache) renumbered. Returned in eval mode, on the original's
    device and dtype."""
    prefix, _, layers = _layers_path(model)
    n_layers = len(layers)
    bad = sorted({int(i) for i in remove if not 0 <= int(i) < n_layers})
    if bad:
        raise InputError(f"layer {bad[0]} does not exist; the model has layers 0..{n_layers - 1}")
    gone = {int(i) for i in remove}
    keep = [i for i in range(n_layers) if i not in gone]
    if not keep:
        raise InputError("cannot remove every decoder layer")
    first = next(model.parameters())
    new = type(model)(_pruned_config(model, keep))
    new.load_state_dict(_renumbered_state(model, prefix, keep), strict=True)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    for index, layer in enumerate(decoder_layers(new)):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    return new.to(device=first.device, dtype=first.dtype).eval()


def head_is_tied(model: Any) -> bool:
    """Whether the lm_head and the input embeddings are one tensor (SmolLM2, GPT-2)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and embed is not None and head.weight is embed.weight


def untie_head(model: Any) -> Any:
    """Give a tied lm_head its own copy of the embedding matrix (in place; the config says
    so, and a saved model reloads untied), so that training the head leaves the input
    embeddings alone. Costs vocab x hidden parameters more. Returns the model."""
    import torch

    if head_is_tied(model):
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        text = getattr(model.config, "get_text_config", None)
        if text is not None:
            text().tie_word_embeddings = False
    return model


def trainable_for_partial(model: Any, last: int) -> list[str]:
    """Names of the parameters that partial-layer fine-tuning trains: the final norm, the
    lm_head and the last `last` decoder layers, in `named_parameters` order.

    When the lm_head is tied to the input embeddings they are one tensor: training the head
    trains the embeddings too, so both names are listed (the choice follows the paper, which
    trains the head; untie the weights first to keep the embeddings frozen).
    """
    if last < 0:
        raise InputError(f"the number of trained layers cannot be negative, got {last}")
    _, parent, layers = _layers_path(model)
    modules = list(layers)[len(layers) - min(last, len(layers)):]
    head = model.get_output_embeddings()
    norm = next((getattr(parent, n) for n in _FINAL_NORMS if hasattr(parent, n)), None)
    modules += [m for m in (head, norm) if m is not None]
    chosen = {id(p) for m in modules for p in m.parameters()}
    return [name for name, p in model.named_parameters(remove_duplicate=False)
            if id(p) in chosen]
