"""Benchmark: layer pruning of the demo's fine-tuned SmolLM2 at 25% of its layers, for each
selector: held-out perplexity before and after the training that follows pruning, generation
speed relative to the unpruned model, and the time each selector takes to choose.

Usage: python benchmarks/prune.py [--selectors reverse random ...] [--ratio 0.25]
       [--steps 8] [--learning-rate 1e-4] [--finetune partial|lora|none]
       [--calibration-records 8] [--prompts 4] [--max-new-tokens 32] [--repeats 3]
       [--out benchmarks/results/prune.json]

Needs a finished demo (`make demo`): the model is `models/finetune` (else the packaged
SmolLM2), the training records `data/token_cleaned/records.parquet` (the rows that keep a
token) and the held-out split `data/token_cleaned/heldout.parquet`, as in the prune and
evaluate stages. Training: `train_sft` with params.yaml's finetune section (batch size,
schedule, precision) and `--steps`/`--learning-rate`, the same for every selector. Speed:
`generation_speed` (greedy, KV cache, exactly `--max-new-tokens` per prompt, the models
taking turns pass by pass, median pass): the unpruned model and every pruned model together.
Goal: speed-up >= 1.25x (ideal 1 / 0.75 = 1.33x).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from report import machine, write_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crediflow.data.schema import NO_KEPT_TOKEN  # noqa: E402
from crediflow.evaluate import generation_speed, perplexity, prompts_of  # noqa: E402
from crediflow.finetune.config import FinetuneConfig  # noqa: E402
from crediflow.models.causal_lm import load_causal_lm  # noqa: E402
from crediflow.models.sft import sft_from_table  # noqa: E402
from crediflow.models.token_loss import mean_label_loss  # noqa: E402
from crediflow.models.training import pad_id, train_sft  # noqa: E402
from crediflow.prune import (  # noqa: E402
    PruneConfig,
    decoder_layers,
    layers_to_remove,
    prune,
    trainable_for_partial,
)
from crediflow.prune.config import SELECTORS  # noqa: E402

SPEEDUP_GOAL = 1.25


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=SELECTORS)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--finetune", default="partial", choices=("partial", "lora", "none"))
    parser.add_argument("--calibration-records", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune.json"))
    return parser.parse_args()


def _data() -> tuple:
    folder = ROOT / "data/token_cleaned"
    table = pq.read_table(folder / "records.parquet")
    table = table.filter(pc.invert(pc.fill_null(table.column(NO_KEPT_TOKEN), False)))
    return sft_from_table(table), sft_from_table(pq.read_table(folder / "heldout.parquet"))


def _one(model, tokenizer, selector: str, *, args, data: tuple, settings) -> tuple[dict, object]:
    """Select, prune, measure, train, measure: one selector's row and its trained model."""
    train, heldout = data
    config = PruneConfig(selector=selector, ratio=args.ratio, finetune=args.finetune,
                         calibration_records=args.calibration_records,
                         learning_rate=args.learning_rate, max_steps=args.steps)
    start = time.perf_counter()
    remove = layers_to_remove(model, config, calibration=train)
    select_seconds = time.perf_counter() - start
    pruned = prune(model, remove)
    loss_before = mean_label_loss(pruned, heldout, batch_size=settings.batch_size)
    trainable = (tuple(trainable_for_partial(pruned, config.trainable_last))
                 if args.finetune == "partial" else ())
    recovery = config.recovery_settings(settings, trainable)
    row = {"selector": selector, "removed_layers": remove,
           "select_seconds": round(select_seconds, 3),
           "perplexity_before_training": perplexity(loss_before)}
    if recovery is not None:
        with tempfile.TemporaryDirectory() as work:
            result = train_sft(pruned, tokenizer, train, recovery, output_dir=Path(work))
        pruned = result.model
        row |= {"train_seconds": round(result.metrics["seconds"], 1),
                "trainable_params": result.metrics["trainable_params"]}
    row["perplexity_after_training"] = perplexity(
        mean_label_loss(pruned, heldout, batch_size=settings.batch_size))
    print(f"{selector}: layers {remove}, perplexity {row['perplexity_before_training']:.1f} -> "
          f"{row['perplexity_after_training']:.1f}, chosen in {select_seconds:.1f} s",
          flush=True)
    return row, pruned


def main() -> None:
    args = _args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = FinetuneConfig.from_mapping(params["finetune"]).to_settings("fp32")
    settings = dataclasses.replace(settings, logging_steps=max(args.steps, 1))
    source = ROOT / "models/finetune"
    model, tokenizer = load_causal_lm(str(source) if source.is_dir() else None)
    data = _data()
    baseline = perplexity(mean_label_loss(model, data[1], batch_size=settings.batch_size))
    rows, models = [], {"unpruned": model}
    for selector in args.selectors:
        row, pruned = _one(model, tokenizer, selector, args=args, data=data, settings=settings)
        rows.append(row)
        models[selector] = pruned
    speeds = generation_speed(models, prompts_of(data[1], args.prompts),
                              max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                              pad_id=pad_id(tokenizer))
    for row in rows:
        row["tokens_per_second"] = speeds[row["selector"]].tokens_per_second
        row["speedup"] = row["tokens_per_second"] / speeds["unpruned"].tokens_per_second
        row["speedup_goal_met"] = row["speedup"] >= SPEEDUP_GOAL
    best = min(rows, key=lambda r: r["perplexity_after_training"])
    write_report({
        "benchmark": "prune", "machine": machine(),
        "model": str(source) if source.is_dir() else "SmolLM2-135M-Instruct (packaged)",
        "layers": len(decoder_layers(model)), "ratio": args.ratio,
        "train_records": len(data[0]), "heldout_records": len(data[1]),
        "training": {"finetune": args.finetune, "steps": args.steps,
                     "learning_rate": args.learning_rate, "batch_size": settings.batch_size},
        "unpruned": {"perplexity": baseline,
                     "tokens_per_second": speeds["unpruned"].tokens_per_second},
        "speedup_goal": SPEEDUP_GOAL, "selectors": rows,
        "best_after_training": best["selector"]}, args.out)


if __name__ == "__main__":
    main()
