"""Prune: layer pruning of a decoder-only causal LM (Lu et al., "Reassessing Layer Pruning
in LLMs"): choose layers by a selector, build a shallower model, pick the parameters that
partial-layer fine-tuning trains."""

from crediflow.prune.config import PruneConfig
from crediflow.prune.layers import (
    decoder_layers,
    layers_to_remove,
    prune,
    trainable_for_partial,
)

__all__ = ["PruneConfig", "decoder_layers", "layers_to_remove", "prune",
           "trainable_for_partial"]
