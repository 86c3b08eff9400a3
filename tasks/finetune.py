"""Stage `finetune`: SFT of the base model on the token-cleaned labels (transformers' Trainer,
full or LoRA), the held-out loss of the base and the fine-tuned model, and the model in the
MLflow registry with its lineage (alias `candidate`).

Run as `python -m tasks.finetune` (the cmd of its DVC stage). With `finetune.processes` or
`finetune.machines` above 1 it checks the params and the training data, then starts itself
again through torchrun (crediflow/finetune/launch.py) and exits with its status; each copy
trains its share of every step (DDP), and only rank 0 evaluates, writes the model and the
report, and logs to MLflow and registers the model; the other ranks log warnings only.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from crediflow.data.schema import LABELS_ALL
from crediflow.finetune.config import FinetuneConfig
from crediflow.finetune.launch import check_launch, launch, wants_launch
from crediflow.models.causal_lm import load_causal_lm, model_folder
from crediflow.models.precision import describe, detect_device, resolve_precision
from crediflow.models.sft import sft_from_table
from crediflow.models.token_loss import mean_label_loss
from crediflow.models.training import (
    check_trainable,
    process_rank,
    save_model,
    train_sft,
    world_size,
)
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.io import write_json
from tasks.stage import stage_main
from tasks.tracking import live_logger, register_stage_model
from tasks.training_data import training_records

log = logging.getLogger("crediflow.finetune")
UPSTREAM = ("ingest", "embed", "audit", "fix", "select", "token_clean")


def fingerprint(model: Any) -> str:
    """A content hash of a model's weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def main() -> None:
    """The stage as a program: train here, or, when params ask for several processes and
    this is not one of them, check params and data and start them through torchrun."""
    config = stage_config(FinetuneConfig)
    if not wants_launch(config.processes, config.machines):
        run()
        return
    resolve_precision(config.precision, detect_device("cpu"), stage="finetune")
    check_launch(config.processes, config.machines)
    cleaned, _ = training_records(Catalog())
    check_trainable(cleaned)
    _convert_once(config.model)
    log.info("finetune: starting %d process(es) on each of %d machine(s) through torchrun",
             config.processes, config.machines)
    code = launch(["-m", "tasks.finetune"], processes=config.processes,
                  machines=config.machines)
    if code:
        raise SystemExit(code)


def run() -> dict:
    """Fine-tune, evaluate on the held-out records, publish and register the model; in a
    launch of several processes, only rank 0 does more than train (the others return {})."""
    lead = process_rank() == 0
    if not lead:
        _quiet()
    config = stage_config(FinetuneConfig)
    device = detect_device("cpu")
    precision = resolve_precision(config.precision, device, stage="finetune")
    settings = config.to_settings(precision)
    catalog = Catalog()
    cleaned, heldout = training_records(catalog)
    base, tokenizer = load_causal_lm(config.model)
    eval_kwargs = {"batch_size": config.batch_size, "precision": precision}
    metrics: dict[str, Any] = {}
    if lead:
        base_print = fingerprint(base)
        metrics["base_heldout_loss"] = mean_label_loss(base, heldout, **eval_kwargs)
    baseline = copy.deepcopy(base) if config.compare_all_tokens else None
    with tempfile.TemporaryDirectory(prefix="finetune-") as work:
        trained = train_sft(base, tokenizer, cleaned, settings, output_dir=Path(work) / "run",
                            on_log=live_logger() if lead else None)
        metrics["train"] = trained.metrics
        if lead:
            metrics["heldout_loss"] = mean_label_loss(trained.model, heldout, **eval_kwargs)
        if baseline is not None:
            metrics["all_tokens"] = _all_tokens_run(baseline, tokenizer, catalog, settings,
                                                    steps=trained.metrics["steps"],
                                                    heldout=heldout if lead else None,
                                                    workdir=Path(work))
    if not lead:
        return {}
    metrics |= {"records": len(cleaned), "heldout_records": len(heldout),
                "method": config.method, "resolved": describe(device, precision),
                "processes": world_size()}
    with catalog.publish("finetune") as out:
        save_model(trained.model, tokenizer, out.pending)
    metrics["registered"] = _register(catalog, config, base_print, metrics)
    write_json(catalog.reports("finetune") / "metrics.json", metrics)
    log.info("finetune (%s): held-out loss %.4f (base %.4f%s); registered %s version %s",
             config.method, metrics["heldout_loss"], metrics["base_heldout_loss"],
             f", all tokens {metrics['all_tokens']['heldout_loss']:.4f}"
             if "all_tokens" in metrics else "", metrics["registered"]["name"],
             metrics["registered"]["version"])
    return metrics


def _convert_once(name: str | None) -> None:
    """Convert a GGUF base (the packaged SmolLM2) to its cached copy here, once, rather than
    in every process at the same time (each would spend the minute and the memory)."""
    if name is not None and not str(name).lower().endswith(".gguf"):
        return
    folder = model_folder(name)
    if folder is not None and not (folder / "config.json").exists():
        load_causal_lm(name)


def _quiet() -> None:
    """Warnings and errors only, no progress bars: rank 0 tells the story, once."""
    from transformers.utils import logging as hf_logging

    logging.getLogger().setLevel(logging.WARNING)
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()


def _all_tokens_run(model: Any, tokenizer: Any, catalog: Catalog, settings: Any, *,
                    steps: int, heldout: Any, workdir: Path) -> dict:
    """The same training for the same steps on every response token of every record (those
    that kept no token included): the comparison; its held-out loss when `heldout` is given
    (rank 0)."""
    everything = sft_from_table(catalog.read("token_cleaned"), labels=LABELS_ALL)
    result = train_sft(model, tokenizer, everything,
                       dataclasses.replace(settings, max_steps=int(steps)),
                       output_dir=workdir / "all_tokens")
    if heldout is None:
        return {"train": result.metrics}
    return {"train": result.metrics,
            "heldout_loss": mean_label_loss(result.model, heldout,
                                            batch_size=settings.batch_size,
                                            precision=settings.precision)}


def _register(catalog: Catalog, config: FinetuneConfig, base_print: str, metrics: dict) -> dict:
    """Register the published model with the hashes of every upstream output and more."""
    return register_stage_model(
        Path(catalog.folder("finetuned")), stage="finetune", upstream=UPSTREAM,
        extra={"base_model": config.model or "SmolLM2-135M-Instruct (packaged)",
               "base_model.fingerprint": base_print,
               "heldout_loss": f"{metrics['heldout_loss']:.6f}"},
        aliases=("candidate",), description=f"{config.method} fine-tune on token-cleaned data")


if __name__ == "__main__":
    stage_main(main)
