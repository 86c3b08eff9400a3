"""The finetune stage with `finetune.processes: 2`: `python -m tasks.finetune` (dvc.yaml's cmd
unchanged) starts itself twice through torchrun on the CPU, rank 0 alone writes the model and
the report and registers the model; bad launch params exit 65 naming the key, before any
process starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crediflow.data.schema import ID, NO_KEPT_TOKEN
from crediflow.models.sft import IGNORE, TokenizedSFT, sft_columns
from tasks.settings import project_root
from tasks.stage import EXIT_BAD_INPUT


def _records(n: int, vocab: int, seed: int) -> pa.Table:
    """What token_clean writes: `n` records of random tokens, a prompt of 4 (untrained), an
    answer of which every other token kept its label."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 16, n)
    ids = rng.integers(3, vocab, lengths.sum()).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    everything = ids.copy()
    for start in offsets[:-1]:
        everything[start:start + 4] = IGNORE
    cleaned = everything.copy()
    cleaned[1::2] = IGNORE
    sft = TokenizedSFT(ids, cleaned, offsets, np.arange(n, dtype=np.int64))
    return pa.table({ID: [f"r{seed}-{i}" for i in range(n)],
                     **sft_columns(sft, labels_all=everything),
                     NO_KEPT_TOKEN: [False] * n})


def _run(root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasks.finetune"], cwd=root,
                          env=os.environ | {"CREDIFLOW_HOME": str(root), "OMP_NUM_THREADS": "1",
                                            **env},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(build_project, tiny_lm):
    """build(finetune params) -> a project holding token_clean's output and a tiny base."""

    def setup(root: Path) -> None:
        model, tokenizer = tiny_lm
        model.save_pretrained(root / "base")
        tokenizer.save_pretrained(root / "base")
        folder = root / "data/token_cleaned"
        folder.mkdir(parents=True)
        pq.write_table(_records(12, len(tokenizer), 0), folder / "records.parquet")
        pq.write_table(_records(4, len(tokenizer), 1), folder / "heldout.parquet")

    def build(finetune: dict) -> Path:
        return build_project(setup, {"finetune": {
            "model": str(project_root() / "base"), "method": "full", "max_steps": 2,
            "batch_size": 2, "logging_steps": 1, "max_length": 64, "precision": "fp32",
            **finetune}})

    return build


def test_two_processes_train_and_rank_0_alone_publishes(project):
    root = project({"processes": 2, "compare_all_tokens": True})
    result = _run(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting 2 process(es) on each of 1 machine(s) through torchrun" in result.stderr
    metrics = json.loads((root / "reports/finetune/metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["train"]["steps"] == metrics["all_tokens"]["train"]["steps"] == 2
    assert metrics["train"]["label_tokens"] > 0
    assert np.isfinite(metrics["heldout_loss"]) and np.isfinite(
        metrics["all_tokens"]["heldout_loss"])
    assert (root / "models/finetune/model.safetensors").is_file()
    assert metrics["registered"]["version"] >= 1
    # rank 0 told the story once; rank 1 said nothing at INFO
    assert result.stderr.count("crediflow.finetune INFO finetune (full): held-out loss") == 1


@pytest.mark.parametrize(("finetune", "env", "key", "words"), [
    ({"processes": 0}, {}, "processes", "out of range"),
    ({"processes": 1.5}, {}, "processes", "expected int"),
    ({"machines": 2}, {"PET_MASTER_ADDR": ""}, "machines", "PET_MASTER_ADDR"),
])
def test_bad_launch_params_exit_65_naming_the_key(project, finetune, env, key, words):
    root = project(finetune)
    result = _run(root, **env)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert f"section 'finetune', key '{key}'" in result.stderr and words in result.stderr
    assert "through torchrun" not in result.stderr and not (root / "reports/finetune").exists()
