"""Stage `prune`: the fine-tuned model without the decoder layers a selector picks (Lu et al.,
"Reassessing Layer Pruning in LLMs"), trained again on the token-cleaned records through the
finetune stage's training code (partial-layer by default, or LoRA), published and registered
(alias `pruned`); its MLflow run has the fine-tuned logged model as its model input and the
pruned one as its output.

Run as `python -m tasks.prune` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from crediflow.finetune.config import FinetuneConfig
from crediflow.models.causal_lm import load_causal_lm
from crediflow.models.precision import describe, detect_device, resolve_precision
from crediflow.models.token_loss import mean_label_loss
from crediflow.models.training import count_params, save_model, train_sft
from crediflow.prune import (
    PruneConfig,
    decoder_layers,
    head_is_tied,
    layers_to_remove,
    prune,
    remove_count,
    trainable_for_partial,
    untie_head,
)
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.io import write_json
from tasks.stage import stage_main
from tasks.tracking import live_logger, register_stage_model, reported_model_id
from tasks.training_data import training_records

log = logging.getLogger("crediflow.prune")
UPSTREAM = ("ingest", "embed", "audit", "fix", "select", "token_clean", "finetune")


def run() -> dict:
    """Select layers, prune, train the pruned model, publish and register it."""
    config = stage_config(PruneConfig)
    train_config = stage_config(FinetuneConfig)
    device = detect_device("cpu")
    precision = resolve_precision(train_config.precision, device, stage="finetune")
    config.recovery_settings(train_config.to_settings(precision))  # params first: cheap
    catalog = Catalog()
    cleaned, heldout = training_records(catalog)
    model, tokenizer = load_causal_lm(str(catalog.folder("finetuned")))
    n_layers = len(decoder_layers(model))
    remove_count(config, n_layers)  # a ratio that removes no layer or every layer: refused now
    start = time.perf_counter()
    remove = layers_to_remove(model, config, calibration=cleaned)
    select_seconds = time.perf_counter() - start
    pruned = prune(model, remove)
    del model
    tied = head_is_tied(pruned)
    if config.finetune == "partial" and config.tied_head == "untie":
        untie_head(pruned)
    eval_kwargs = {"batch_size": train_config.batch_size, "precision": precision}
    metrics: dict[str, Any] = {
        "selector": config.selector, "removed_layers": remove, "layers_before": n_layers,
        "layers_after": n_layers - len(remove), "select_seconds": round(select_seconds, 3),
        "params": count_params(pruned)[1], "tied_head": tied, "tied_head_choice": config.tied_head,
        "finetune": config.finetune,
        "heldout_loss_before_training": mean_label_loss(pruned, heldout, **eval_kwargs)}
    trainable = (tuple(trainable_for_partial(pruned, config.trainable_last))
                 if config.finetune == "partial" else ())
    settings = config.recovery_settings(train_config.to_settings(precision), trainable)
    if settings is not None:
        with tempfile.TemporaryDirectory(prefix="prune-") as work:
            trained = train_sft(pruned, tokenizer, cleaned, settings,
                                output_dir=Path(work) / "run", on_log=live_logger())
        pruned = trained.model
        metrics["train"] = trained.metrics
    metrics |= {"heldout_loss": mean_label_loss(pruned, heldout, **eval_kwargs),
                "records": len(cleaned), "resolved": describe(device, precision)}
    with catalog.publish("prune") as out:
        save_model(pruned, tokenizer, out.pending)
    # the fine-tuned logged model it was made from: the prune run's model input in MLflow
    finetuned = reported_model_id(catalog.reports("finetune") / "metrics.json")
    if finetuned is None:
        log.warning("the finetune stage's report names no logged model: the prune run gets "
                    "no model input")
    metrics["registered"] = register_stage_model(
        Path(catalog.folder("pruned")), stage="prune", upstream=UPSTREAM,
        inputs=(finetuned,) if finetuned else (),
        extra={"prune.selector": config.selector, "prune.removed_layers": remove,
               "prune.finetune": config.finetune,
               "heldout_loss": f"{metrics['heldout_loss']:.6f}"},
        aliases=("pruned",),
        description=f"{config.selector} layer pruning ({len(remove)} of {n_layers} layers) "
                    f"+ {config.finetune} fine-tuning")
    write_json(catalog.reports("prune") / "metrics.json", metrics)
    log.info("prune (%s): removed layers %s of %d; held-out loss %.4f before training, %.4f "
             "after (%s); registered %s version %s", config.selector, remove, n_layers,
             metrics["heldout_loss_before_training"], metrics["heldout_loss"], config.finetune,
             metrics["registered"]["name"], metrics["registered"]["version"])
    return metrics


if __name__ == "__main__":
    stage_main(run)
