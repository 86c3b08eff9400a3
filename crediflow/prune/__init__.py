"""Prune: layer pruning of a decoder-only causal LM (Lu et al., "Reassessing Layer Pruning
in LLMs"): choose layers by a selector, build a shallower model, pick the parameters that
partial-layer fine-tuning trains."""

from crediflow.prune.config import PruneConfig
from crediflow.prune.layers import (
    decoder_layers,
    head_is_tied,
    layers_to_remove,
    prune,
    remove_count,
    trainable_for_partial,
    untie_head,
)

__all__ = ["PruneConfig", "decoder_layers", "head_is_tied", "layers_to_remove", "prune",
           "remove_count", "trainable_for_partial", "untie_head"]
