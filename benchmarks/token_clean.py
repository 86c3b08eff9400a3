"""Benchmark: token cleaning's scoring, global token selection and fine-tuning, against the
plain way of doing the same work with the same model.

Usage: python benchmarks/token_clean.py [--records 96] [--batch-size 8] [--max-length 256]
       [--repeats 2] [--tokens 100000000] [--sample-tokens 10000000]
       [--tokens-per-record 100] [--rho 0.6] [--steps 8] [--train-repeats 2]
       [--skip scoring selection finetune] [--out benchmarks/results/token_clean.json]

Model: the packaged SmolLM2-135M (`load_causal_lm(None)`), CPU, fp32, torch threads = the
CPUs this process may use. Records: the demo's `data/selected/records.parquet`, the rows that
select marked `selected`, the token_clean stage's seeded sample of `max_records`
(params.yaml), the first `--records` of it, tokenized with `tokenize_sft`.

1. scoring: `token_losses` next to a bare batched forward of the same model on the same
   batches (`batch_plan`: same records, same right-padding to the batch's longest computed
   length, `inference_mode`, full logits as `model(...).logits`, nothing else). The two take
   turns batch by batch (in alternating order), so that load from other processes falls on
   both alike; each batch's time is the best of `--repeats`. tokens/s counts real tokens
   (positions that are not padding). Per model: the base and a copy of it standing in for the
   reference (in the stage the reference is the base fine-tuned: same architecture, same
   cost). The losses of both ways are compared once (outside the timing).
2. selection: `select_tokens` on synthetic float32 scores, in a child process per size (its
   own peak). input_ids and labels are zero-copy broadcasts of one int64 token (every token
   labelled; TokenizedSFT does not check), offsets cut records of `--tokens-per-record`
   tokens; so the inputs are the scores plus the small offsets. Peak memory beyond the inputs:
   VmHWM (reset through /proc/self/clear_refs just before the call) minus VmRSS before the
   call, and tracemalloc's peak of the allocations during the call (numpy reports its arrays).
3. finetune: `train_sft` with the finetune section of params.yaml (`--steps` optimizer steps)
   next to a plain transformers `Trainer` (list-of-dicts dataset, DataCollatorForSeq2Seq, the
   same TrainingArguments values, length-grouped sampling like ours, LoRA by peft with the same
   config), each in a fresh child process (its own VmHWM), in alternating order. tokens/s:
   real (non-pad) tokens of the training steps over Trainer's train_runtime.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from report import machine, write_report

SCORING_GOALS = {"speed_ratio": 0.9, "padding_share": 0.9}
SELECTION_GOALS = {"seconds": 5.0, "peak_beyond_inputs_mb": 1024.0}
FINETUNE_GOAL = 0.95
ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
RECORDS = ROOT / "data/selected/records.parquet"


# --- shared helpers ----------------------------------------------------------------------------

def proc_status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def set_threads() -> int:
    """torch threads = the CPUs this process may use; returns that number."""
    import torch

    from crediflow.core.cpus import available_cpus

    torch.set_num_threads(available_cpus())
    return torch.get_num_threads()


def params_section(name: str) -> dict:
    import yaml

    return yaml.safe_load(PARAMS.read_text(encoding="utf-8")).get(name) or {}


def demo_messages(n: int) -> list:
    """The first `n` records (messages) of the token_clean stage's sample of the selected
    records."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not RECORDS.exists():
        raise SystemExit(f"{RECORDS} is missing: run the demo's curate DAG (make demo) first")
    table = pq.read_table(RECORDS, columns=["messages", "selected"])
    table = table.filter(pc.fill_null(table.column("selected"), False))
    clean = params_section("token_clean")
    limit, seed = clean.get("max_records"), int(clean.get("seed", 0))
    rows = np.arange(table.num_rows)
    if limit is not None and table.num_rows > limit:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, limit, replace=False))
    return table.column("messages").take(rows[:n]).to_pylist()


def tokenized(n: int, max_length: int):
    """(model, tokenizer, TokenizedSFT of the first `n` demo records)."""
    from crediflow.models.causal_lm import load_causal_lm
    from crediflow.models.sft import tokenize_sft

    model, tokenizer = load_causal_lm(None)
    return model, tokenizer, tokenize_sft(demo_messages(n), tokenizer, max_length=max_length)


def run_child(args: argparse.Namespace, child: str, **extra: object) -> dict:
    """Run this script as `--child child` in a fresh process; its last stdout line (JSON)."""
    cmd = [sys.executable, __file__, "--child", child, "--records", str(args.records),
           "--max-length", str(args.max_length), "--rho", str(args.rho),
           "--steps", str(args.steps), "--tokens-per-record", str(args.tokens_per_record)]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {child} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- 1. scoring --------------------------------------------------------------------------------

def padded(sft, records: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of the records right-padded (id 0) to their longest computed length."""
    ids = np.zeros((len(records), int(lengths.max())), np.int64)
    mask = np.zeros_like(ids)
    for row, (record, length) in enumerate(zip(records, lengths, strict=True)):
        start = sft.offsets[record]
        ids[row, :length] = sft.input_ids[start:start + length]
        mask[row, :length] = 1
    return ids, mask


def bare_forward(model, ids: np.ndarray, mask: np.ndarray):
    """The plain batched forward: every position's logits."""
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     use_cache=False).logits


def bare_losses(logits, sft, records: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The labelled tokens' cross-entropy from full logits, in batch order (for the check)."""
    import torch

    out = []
    for row, (record, length) in enumerate(zip(records, lengths, strict=True)):
        start = int(sft.offsets[record])
        labels = sft.labels[start + 1:start + length]
        cols = np.flatnonzero(labels != -100)
        logp = torch.log_softmax(logits[row, cols].float(), dim=-1)
        out.append(-logp[torch.arange(len(cols)), torch.from_numpy(labels[cols])].numpy())
    return np.concatenate(out)


def score_model(model, sft, batch_size: int, repeats: int) -> dict:
    """token_losses against the bare forward, batch by batch, taking turns."""
    from crediflow.models.token_loss import batch_plan, computed_lengths, token_losses

    lengths = computed_lengths(sft)
    plan = batch_plan(sft, batch_size)
    parts = [sft.subset(records) for records in plan]  # one batch each, same padding
    inputs = [padded(sft, records, lengths[records]) for records in plan]
    best = {"token_losses": np.full(len(plan), np.inf), "bare": np.full(len(plan), np.inf)}
    diffs = []
    bare_forward(model, *inputs[0])  # warm-up, untimed
    for rep in range(repeats):
        for i in range(len(plan)):
            order = ("token_losses", "bare") if (i + rep) % 2 == 0 else ("bare", "token_losses")
            for name in order:
                start = time.perf_counter()
                if name == "bare":
                    logits = bare_forward(model, *inputs[i])
                else:
                    ours = token_losses(model, parts[i], batch_size=batch_size)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
            if rep == 0:
                plain = bare_losses(logits, sft, plan[i], lengths[plan[i]])
                diffs.append(float(np.abs(ours[~np.isnan(ours)] - plain).max()))
    real = int(lengths.sum())
    rates = {name: real / float(t.sum()) for name, t in best.items()}
    return {
        "token_losses_tokens_per_s": round(rates["token_losses"], 1),
        "bare_forward_tokens_per_s": round(rates["bare"], 1),
        "speed_ratio": round(rates["token_losses"] / rates["bare"], 3),
        "speed_ratio_median_batch": round(float(np.median(best["bare"] / best["token_losses"])),
                                          3),
        "max_abs_loss_diff_vs_bare": float(f"{max(diffs):.3g}"),
        "batches": len(plan),
    }


def scoring_section(args: argparse.Namespace) -> dict:
    """Part 1 for the base model and its stand-in reference."""
    from crediflow.models.token_loss import computed_lengths, padding_share

    base, _, sft = tokenized(args.records, args.max_length)
    reference = copy.deepcopy(base)
    share = padding_share(sft, args.batch_size)
    models = {}
    for name, model in (("base", base), ("reference", reference)):
        models[name] = score_model(model, sft, args.batch_size, args.repeats)
        print(f"scoring {name}", json.dumps(models[name]), flush=True)
    met = all(m["speed_ratio"] >= SCORING_GOALS["speed_ratio"] for m in models.values())
    return {
        "records": len(sft), "tokens": int(sft.offsets[-1]),
        "real_tokens_computed": int(computed_lengths(sft).sum()),
        "label_tokens": int(sft.trained().sum()), "max_length": args.max_length,
        "batch_size": args.batch_size, "repeats": args.repeats, "padding_share": round(share, 4),
        "models": models,
        "reference": "a deep copy of the base: the stage's reference is the base fine-tuned "
                     "(same architecture, same cost)",
        "goal": f"speed_ratio >= {SCORING_GOALS['speed_ratio']} per model, padding_share >= "
                f"{SCORING_GOALS['padding_share']}",
        "goal_met": {"speed_ratio": met,
                     "padding_share": share >= SCORING_GOALS["padding_share"]},
    }


# --- 2. selection ------------------------------------------------------------------------------

def synthetic_sft(tokens: int, per_record: int):
    """A TokenizedSFT of `tokens` tokens, all labelled, inputs nearly free (broadcasts)."""
    from crediflow.models.sft import TokenizedSFT

    records = -(-tokens // per_record)
    offsets = np.minimum(np.arange(records + 1, dtype=np.int64) * per_record, tokens)
    ids = np.broadcast_to(np.int64(1), (tokens,))
    return TokenizedSFT(ids, ids, offsets, np.arange(records, dtype=np.int64))


def selection_child(tokens: int, granularity: str, rho: float, per_record: int,
                    repeats: int) -> dict:
    """select_tokens on `tokens` random float32 scores: seconds and memory beyond the inputs."""
    from crediflow.token_clean.selection import quota, select_tokens

    start = time.perf_counter()
    scores = np.random.default_rng(0).standard_normal(tokens, dtype=np.float32)
    sft = synthetic_sft(tokens, per_record)
    build_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        before = proc_status_mb("VmRSS")
        reset = reset_peak_rss()
        tracemalloc.start()
        start = time.perf_counter()
        keep = select_tokens(scores, sft, rho=rho, granularity=granularity)
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        peak = proc_status_mb("VmHWM") - before if reset else float("nan")
        kept = int(keep.sum())
        del keep
        runs.append({"seconds": round(seconds, 2), "peak_beyond_inputs_mb": round(peak),
                     "tracemalloc_peak_mb": round(traced)})
    expected = (int(quota(rho, np.array([tokens]))[0]) if granularity == "global"
                else int(quota(rho, np.diff(sft.offsets)).sum()))
    return {"tokens": tokens, "records": len(sft), "granularity": granularity, "rho": rho,
            "scores_mb": round(scores.nbytes / 2**20), "build_seconds": round(build_s, 2),
            "kept": kept, "kept_as_expected": kept == expected,
            "best_seconds": min(r["seconds"] for r in runs),
            "peak_beyond_inputs_mb": max(r["peak_beyond_inputs_mb"] for r in runs),
            "tracemalloc_peak_mb": max(r["tracemalloc_peak_mb"] for r in runs), "runs": runs,
            "peak_rss_mb": round(proc_status_mb("VmHWM"))}


def selection_section(args: argparse.Namespace) -> dict:
    out = {}
    for name, tokens, granularity in (("global", args.tokens, "global"),
                                      ("sample", args.sample_tokens, "sample")):
        out[name] = run_child(args, "selection", tokens=tokens, granularity=granularity,
                              repeats=args.repeats)
        print(f"selection {name}", json.dumps(out[name]), flush=True)
    g = out["global"]
    out["inputs"] = ("float32 scores; input_ids and labels are zero-copy broadcasts of one "
                     "int64 token (all labelled), offsets and rows int64 per record")
    out["goal"] = (f"global on {args.tokens:,} tokens: < {SELECTION_GOALS['seconds']} s and "
                   f"< {SELECTION_GOALS['peak_beyond_inputs_mb']:.0f} MB beyond the inputs")
    out["goal_met"] = {"seconds": g["best_seconds"] < SELECTION_GOALS["seconds"],
                       "memory": g["peak_beyond_inputs_mb"]
                       < SELECTION_GOALS["peak_beyond_inputs_mb"]}
    return out


# --- 3. fine-tuning ----------------------------------------------------------------------------

class _Counting:
    """A collator wrapper counting real tokens and padded positions of the first `batches`."""

    def __init__(self, collate, batches: int) -> None:
        self.collate, self.batches, self.tokens, self.positions, self.seen = collate, batches, \
            0, 0, 0

    def __call__(self, items, **kwargs):
        batch = self.collate(items, **kwargs)
        if self.seen < self.batches:
            mask = batch["attention_mask"]
            self.tokens += int(mask.sum())
            self.positions += int(mask.numel())
        self.seen += 1
        return batch


def finetune_settings(steps: int):
    from crediflow.finetune.config import FinetuneConfig

    values = {**params_section("finetune"), "max_steps": steps}
    return FinetuneConfig.from_mapping(values).to_settings("fp32")


def train_ours(args: argparse.Namespace, workdir: Path) -> dict:
    """train_sft, the stage's routine (collator wrapped only to count padded positions)."""
    from crediflow.models import training

    settings = finetune_settings(args.steps)
    model, tokenizer, sft = tokenized(args.records, args.max_length)
    counting = _Counting(training.pad_batch, args.steps * settings.grad_accum)
    training.pad_batch = counting
    peak = {}

    def on_log(record: dict) -> None:  # the last one comes after the last step, before merging
        peak["mb"] = round(proc_status_mb("VmHWM"))

    result = training.train_sft(model, tokenizer, sft, settings, output_dir=workdir,
                                on_log=on_log)
    metrics = result.metrics
    return {"seconds": metrics["seconds"], "tokens": metrics["tokens"],
            "peak_rss_mb_before_merge": peak.get("mb"),
            "positions": counting.positions, "train_loss": metrics["train_loss"],
            "steps": metrics["steps"]}


def train_plain(args: argparse.Namespace, workdir: Path) -> dict:
    """The same training the plain transformers way."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    s = finetune_settings(args.steps)
    model, tokenizer, sft = tokenized(args.records, args.max_length)
    data = [{"input_ids": sft.input_ids[a:b].tolist(), "labels": sft.labels[a:b].tolist()}
            for a, b in zip(sft.offsets[:-1], sft.offsets[1:], strict=True)]
    set_seed(s.seed)
    model = get_peft_model(model, LoraConfig(
        r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
        target_modules=list(s.lora_targets), bias="none", task_type="CAUSAL_LM"))
    arguments = TrainingArguments(
        output_dir=str(workdir), learning_rate=s.learning_rate, max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
        warmup_steps=s.warmup_ratio, lr_scheduler_type=s.scheduler, weight_decay=s.weight_decay,
        optim=s.optimizer, max_grad_norm=s.max_grad_norm, use_cpu=True,
        dataloader_pin_memory=False, seed=s.seed, logging_steps=s.logging_steps,
        report_to="none", save_strategy="no", train_sampling_strategy="group_by_length")
    counting = _Counting(DataCollatorForSeq2Seq(tokenizer, padding=True),
                         s.max_steps * s.grad_accum)
    trainer = Trainer(model=model, args=arguments, train_dataset=data, data_collator=counting)
    output = trainer.train()
    return {"seconds": float(output.metrics["train_runtime"]), "tokens": counting.tokens,
            "positions": counting.positions, "train_loss": float(output.training_loss),
            "steps": int(trainer.state.global_step)}


def finetune_child(args: argparse.Namespace, which: str) -> dict:
    threads = set_threads()
    with tempfile.TemporaryDirectory(prefix="bench-token-clean-") as work:
        out = (train_ours if which == "ours" else train_plain)(args, Path(work))
    out.update(tokens_per_s=round(out["tokens"] / out["seconds"], 1),
               padding_share=round(out["tokens"] / max(out["positions"], 1), 4),
               peak_rss_mb=round(proc_status_mb("VmHWM")), threads=threads,
               seconds=round(out["seconds"], 2), train_loss=round(out["train_loss"], 4))
    return out


def finetune_section(args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {"train_sft": [], "plain_trainer": []}
    for rep in range(args.train_repeats):
        order = ("ours", "plain") if rep % 2 == 0 else ("plain", "ours")
        for which in order:
            run = run_child(args, f"train-{which}")
            runs["train_sft" if which == "ours" else "plain_trainer"].append(run)
            print(f"finetune {which}", json.dumps(run), flush=True)
    best = {name: max(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    ratio = best["train_sft"] / best["plain_trainer"]
    return {
        "settings": {**params_section("finetune"), "max_steps": args.steps,
                     "precision": "fp32", "records": args.records},
        "train_sft_tokens_per_s": best["train_sft"],
        "plain_trainer_tokens_per_s": best["plain_trainer"],
        "speed_ratio": round(ratio, 3),
        "train_sft_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["train_sft"]),
        "plain_trainer_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["plain_trainer"]),
        "runs": runs,
        "plain_trainer": "Trainer on a list of dicts with DataCollatorForSeq2Seq, "
                         "train_sampling_strategy=group_by_length, peft LoRA of the same config",
        "goal": f"speed_ratio >= {FINETUNE_GOAL}", "goal_met": ratio >= FINETUNE_GOAL,
    }


# --- main --------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100_000_000)
    parser.add_argument("--sample-tokens", type=int, default=10_000_000)
    parser.add_argument("--tokens-per-record", type=int, default=100)
    parser.add_argument("--rho", type=float, default=0.6)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--train-repeats", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["scoring", "selection", "finetune"])
    parser.add_argument("--out", default="benchmarks/results/token_clean.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--granularity", default="global", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        if args.child == "selection":
            result = selection_child(args.tokens, args.granularity, args.rho,
                                     args.tokens_per_record, args.repeats)
        else:
            result = finetune_child(args, args.child.removeprefix("train-"))
        print(json.dumps(result))
        return
    import peft
    import torch
    import transformers

    load_before = os.getloadavg()
    start = time.perf_counter()
    report: dict = {"threads": set_threads()}
    sections = {"scoring": scoring_section, "selection": selection_section,
                "finetune": finetune_section}
    for name, section in sections.items():
        if name not in args.skip:
            report[name] = section(args)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["load_average_before"] = [round(v, 2) for v in load_before]
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report["machine"] = machine(f"torch {torch.__version__}, transformers "
                                f"{transformers.__version__}, peft {peft.__version__}, "
                                f"numpy {np.__version__}")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
