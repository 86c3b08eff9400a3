"""Data-parallel fine-tuning: two processes launched through torchrun on the CPU (gloo), each
with half the batch, train like one process with the whole batch: the same loss, gradient
norm and learning rate at every step (to float rounding: the padding widths differ), the same
tokens, the same final weights; and bit for bit like one process that accumulates the same
half batches (the same arithmetic: halving and a sum of two are exact in floating point).

Two settings in one launch: full training with length-grouped batches, and LoRA (no
dropout: each process draws its own dropout masks) with plain shuffling and two
micro-batches per step. 24 records of 4 per step make 6 steps per epoch, so the 7 steps
cross an epoch boundary; 24 records also make the length groups of 2 records (one process's
share) differ from those of 4 (one step), which the processes must not use.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from crediflow.finetune.launch import launch
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.models.training import TrainSettings, save_model, train_sft

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("ddp_worker.py")
PROCESSES = 2
STEPS = 7
# (name, settings of one process with the global batch); each of the PROCESSES processes
# gets batch_size // PROCESSES records per micro-batch
RUNS = [
    ("full_length_grouped", TrainSettings(learning_rate=1e-3, batch_size=4, max_steps=STEPS,
                                          warmup_ratio=0.0, logging_steps=1, seed=3,
                                          group_by_length=True)),
    ("lora_shuffled_accum", TrainSettings(learning_rate=1e-2, batch_size=2, grad_accum=2,
                                          max_steps=STEPS, warmup_ratio=0.2, logging_steps=1,
                                          seed=5, group_by_length=False, lora=True, lora_r=4,
                                          lora_alpha=8, lora_dropout=0.0,
                                          lora_targets=("q_proj", "v_proj", "down_proj"))),
]
# float32 rounding differs from the whole-batch run (padding widths): measured at most 4e-7
# on the losses and gradient norms; different batches move the losses by 1e-2 and more.
# (At a learning rate of 1e-2, 7 full-training steps grow the gradient norm's gap to 3e-5:
# Adam turns rounding in tiny gradients into whole steps.)
RTOL = 1e-5
# the weights' distance from the whole-batch run's, over the size of that run's update:
# measured 4e-6 (full) and 2e-6 (LoRA)
WEIGHTS_RTOL = 1e-4


def synthetic_sft(vocab: int, n: int = 24, seed: int = 0) -> TokenizedSFT:
    """`n` records of random tokens, 6 to 24 long; the first third of each is a prompt
    (label IGNORE), the rest is trained."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 25, n)
    ids = rng.integers(3, vocab, lengths.sum()).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    labels = ids.copy()
    for start, length in zip(offsets[:-1], lengths, strict=True):
        labels[start:start + length // 3] = IGNORE
    return TokenizedSFT(ids, labels, offsets, np.arange(n, dtype=np.int64))


def one_process(folder: Path, sft: TokenizedSFT, settings: TrainSettings, work: Path
                ) -> tuple[list[dict], dict, dict]:
    """(logs, metrics, weights) of `settings` in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    logs: list[dict] = []
    result = train_sft(model, AutoTokenizer.from_pretrained(folder), sft, settings,
                       output_dir=work, on_log=logs.append)
    return logs, result.metrics, result.model.state_dict()


def per_process(settings: TrainSettings) -> dict:
    """The settings as the worker's JSON, with the batch split among the processes."""
    assert settings.batch_size % PROCESSES == 0
    values = dataclasses.asdict(dataclasses.replace(
        settings, batch_size=settings.batch_size // PROCESSES))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def steps(logs: list[dict], key: str) -> list[float]:
    return [log[key] for log in logs]


@pytest.fixture(scope="module")
def ddp_runs(tiny_lm, tmp_path_factory):
    """The saved tiny model, the records, and the runs' results from the two-process launch
    (status, {name: (logs, metrics, weights)})."""
    base = tmp_path_factory.mktemp("ddp")
    model, tokenizer = tiny_lm
    folder = save_model(copy.deepcopy(model), tokenizer, base / "model")
    sft = synthetic_sft(len(tokenizer))
    np.savez(base / "sft.npz", input_ids=sft.input_ids, labels=sft.labels,
             offsets=sft.offsets, rows=sft.rows)
    out = base / "out"
    out.mkdir()
    spec = {"model": str(folder), "sft": str(base / "sft.npz"), "out": str(out),
            "runs": [{"name": name, "settings": per_process(s)} for name, s in RUNS]}
    (base / "spec.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # 2 cores: one thread per process
        status = launch([str(WORKER), str(base / "spec.json")], processes=PROCESSES)
    results = {}
    for name, _ in RUNS:
        if (out / f"{name}.json").exists():
            saved = json.loads((out / f"{name}.json").read_text())
            results[name] = (saved["logs"], saved["metrics"],
                             torch.load(out / f"{name}.pt", weights_only=True))
    return folder, sft, status, results


@pytest.mark.parametrize(("name", "settings"), RUNS, ids=[name for name, _ in RUNS])
def test_two_processes_train_like_one_with_the_whole_batch(ddp_runs, name, settings,
                                                           one_torch_thread, tmp_path):
    folder, sft, status, results = ddp_runs
    assert status == 0
    logs, metrics, weights = results[name]
    want_logs, want_metrics, want_weights = one_process(folder, sft, settings, tmp_path / "a")

    assert steps(logs, "step") == steps(want_logs, "step") == list(range(1, STEPS + 1))
    assert steps(logs, "loss") == pytest.approx(steps(want_logs, "loss"), rel=RTOL)
    assert steps(logs, "grad_norm") == pytest.approx(steps(want_logs, "grad_norm"), rel=RTOL)
    assert steps(logs, "learning_rate") == pytest.approx(steps(want_logs, "learning_rate"))
    assert metrics["train_loss"] == pytest.approx(want_metrics["train_loss"], rel=RTOL)
    # the token counts are summed over the processes: the same records went through
    assert (metrics["tokens"], metrics["label_tokens"], metrics["steps"]) == (
        want_metrics["tokens"], want_metrics["label_tokens"], want_metrics["steps"])
    assert weights.keys() == want_weights.keys()
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert distance(weights, want_weights) < WEIGHTS_RTOL * distance(want_weights, initial)

    # one process accumulating the same micro-batches: the same sums, so without
    # accumulation in the processes (which adds the micro-batches in another order) the same
    # numbers bit for bit
    accumulated = dataclasses.replace(settings, batch_size=settings.batch_size // PROCESSES,
                                      grad_accum=settings.grad_accum * PROCESSES)
    same_logs, _, same_weights = one_process(folder, sft, accumulated, tmp_path / "c")
    exact = settings.grad_accum == 1
    for key in ("loss", "grad_norm"):
        assert steps(logs, key) == (steps(same_logs, key) if exact else pytest.approx(
            steps(same_logs, key), rel=1e-6))
    assert distance(weights, same_weights) <= (0 if exact else 1e-5) * distance(
        same_weights, initial)

    # the comparison can tell: another record order (another seed) gives other losses
    other = one_process(folder, sft, dataclasses.replace(settings, seed=settings.seed + 1),
                        tmp_path / "d")[0]
    gaps = np.abs(np.subtract(steps(other, "loss"), steps(want_logs, "loss")))
    assert gaps.max() > 1000 * RTOL * max(steps(want_logs, "loss"))


def distance(weights: dict, other: dict) -> float:
    """The L2 distance between two state dicts."""
    return float(sum(((weights[k] - other[k]).double() ** 2).sum() for k in other) ** 0.5)


def test_a_failing_process_gives_its_exit_status(tmp_path):
    """A process that exits 65 (refused input) makes `launch` return 65, not torchrun's 1."""
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nsys.exit(65 if os.environ['RANK'] == '1' else 0)\n")
    assert launch([str(script)], processes=2) == 65
