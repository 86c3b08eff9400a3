"""One process of the data-parallel training test (test_training_ddp.py), started by torchrun.

Usage: ddp_worker.py SPEC.json. The spec names a saved model folder, an .npz of a
TokenizedSFT, an output folder and a list of runs (name and TrainSettings fields). Each run
trains a fresh copy of the model with `train_sft`; rank 0 writes `<name>.json` (the per-step
logs and the metrics) and `<name>.pt` (the trained weights) into the output folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from crediflow.models.sft import TokenizedSFT
from crediflow.models.training import TrainSettings, process_rank, train_sft


def load_sft(path: Path) -> TokenizedSFT:
    """A TokenizedSFT saved by `np.savez` of its four arrays."""
    arrays = np.load(path)
    return TokenizedSFT(arrays["input_ids"], arrays["labels"], arrays["offsets"],
                        arrays["rows"])


def train(spec: dict, run: dict) -> tuple[list[dict], dict, dict]:
    """(per-step logs, metrics, trained state dict) of one run of `spec`."""
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    settings = TrainSettings(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in run["settings"].items()})
    logs: list[dict] = []
    result = train_sft(model, tokenizer, load_sft(Path(spec["sft"])), settings,
                       output_dir=Path(spec["out"]) / f"work-{run['name']}-{process_rank()}",
                       on_log=logs.append)
    return logs, result.metrics, result.model.state_dict()


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    for run in spec["runs"]:
        logs, metrics, state = train(spec, run)
        if process_rank() == 0:
            (out / f"{run['name']}.json").write_text(json.dumps({"logs": logs,
                                                                 "metrics": metrics}))
            torch.save(state, out / f"{run['name']}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
