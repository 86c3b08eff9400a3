"""Benchmark on a CUDA device: fine-tuning throughput (LoRA and full, bf16 autocast) through
`train_sft`, and greedy generation speed of a model with 25% of its layers pruned, on a
SmolLM2-135M-shaped model.

Usage: python benchmarks/gpu.py --model DIR --records PARQUET [--steps 30]
       [--out benchmarks/results/gpu.json]

DIR holds a causal LM's config and tokenizer (the packaged SmolLM2's converted folder,
~/.cache/crediflow/models/..., without its weights): the model is built from the config with
random weights, because the machine that has the GPU cannot hold the packaged weights (the
transfer limit). Throughput and speed do not depend on the weights' values; losses do, so
none is reported. PARQUET is a token-cleaned records file (`data/token_cleaned/records.parquet`
of a finished demo): the same records, lengths and label masks as the demo's fine-tuning.
On a machine without CUDA it runs on the CPU (a smoke run: pass --steps 2).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from report import machine, write_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crediflow.evaluate import generation_speed, prompts_of  # noqa: E402
from crediflow.models.precision import detect_device, resolve_precision  # noqa: E402
from crediflow.models.sft import sft_from_table  # noqa: E402
from crediflow.models.training import TrainSettings, pad_id, train_sft  # noqa: E402
from crediflow.prune import PruneConfig, layers_to_remove, prune  # noqa: E402


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu.json"))
    return parser.parse_args()


def _train(model, tokenizer, sft, *, lora: bool, batch_size: int, steps: int,
           precision: str) -> dict:
    """One training run of `steps` optimizer steps; its throughput and peak memory."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    settings = TrainSettings(lora=lora, batch_size=batch_size, max_steps=steps,
                             precision=precision, logging_steps=max(steps // 3, 1),
                             learning_rate=1e-4)
    with tempfile.TemporaryDirectory() as work:
        result = train_sft(copy.deepcopy(model), tokenizer, sft, settings, output_dir=Path(work))
    m = result.metrics
    return {"method": "lora" if lora else "full", "batch_size": batch_size, "steps": m["steps"],
            "seconds": round(m["seconds"], 2), "tokens_per_second": round(m["tokens_per_second"]),
            "label_tokens_per_second": round(m["label_tokens_per_second"]),
            "trainable_params": m["trainable_params"],
            "peak_gpu_memory_gb": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                   if torch.cuda.is_available() else None)}


def main() -> None:
    args = _args()
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = detect_device("auto")
    precision = resolve_precision("auto", device, stage="finetune")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model))
    model.to("cuda" if device.kind == "cuda" else "cpu")
    sft = sft_from_table(pq.read_table(args.records))

    training = []
    for lora in (True, False):
        for batch_size in (4, 16):
            start = time.perf_counter()
            row = _train(model, tokenizer, sft, lora=lora, batch_size=batch_size,
                         steps=args.steps, precision=precision)
            row["wall_seconds"] = round(time.perf_counter() - start, 2)
            print(row, flush=True)
            training.append(row)

    remove = layers_to_remove(model, PruneConfig(selector="reverse", ratio=0.25))
    pruned = prune(model, remove)
    speeds = generation_speed({"unpruned": model.eval(), "pruned": pruned},
                              prompts_of(sft, args.prompts), max_new_tokens=args.max_new_tokens,
                              repeats=args.repeats, pad_id=pad_id(tokenizer))
    generation = {name: round(s.tokens_per_second, 1) for name, s in speeds.items()}
    report = {
        "machine": machine(f"torch {torch.__version__}, transformers {transformers.__version__}"),
        "device": f"{device.kind} {device.name}",
        "precision": precision,
        "model": f"{model.config.model_type}, {model.config.num_hidden_layers} layers, "
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
                 f"(random weights)",
        "records": sft.lengths.size,
        "training": training,
        "generation_tokens_per_second": generation,
        "removed_layers": remove,
        "generation_speedup": round(generation["pruned"] / generation["unpruned"], 3),
        "generation_setup": f"{args.prompts} prompts x {args.max_new_tokens} new tokens, "
                            f"greedy, KV cache, batch 1, median of {args.repeats} passes",
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
