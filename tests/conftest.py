"""Shared fixtures. The project environment (offline switches, an Airflow home of the test
session's own) is set before anything imports Airflow, MLflow or DVC."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="crediflow-tests-"))
os.environ["CREDIFLOW_HOME"] = str(_SESSION_HOME / "project")
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_HOME / 'project' / 'mlflow.db'}"

from tasks.settings import apply  # noqa: E402

apply()


@pytest.fixture
def write_jsonl(tmp_path: Path):
    """Write rows (dicts, or raw strings for broken lines) as a JSONL file; return its path."""

    def write(rows: list, name: str = "data.jsonl", folder: Path | None = None) -> Path:
        path = (folder or tmp_path / "src") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def chat():
    """Make a valid OpenAI-style record."""

    def make(user: str, answer: str, **extra) -> dict:
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": answer}], **extra}

    return make


# Text the tiny tokenizer is trained on: rating prompts and short Q/A pairs like the tests'.
_TINY_CORPUS = ["Rate it 1 to 5.\n{text}\nOne digit.", "1 2 3 4 5",
                *(f"Q: what does json dumps do? A: {'it serializes obj ' * n}" for n in range(12))]
_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm():
    """(model, tokenizer): a 2-layer Llama (hidden 64) with an offline-trained byte-level BPE
    tokenizer and a ChatML chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_TINY_CORPUS * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    # A large init scale makes the score distribution far from uniform, so that a wrong
    # mask or position shows up as a large difference.
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         initializer_range=0.3, pad_token_id=tokenizer.pad_token_id)
    # One thread: for a model this small, more threads only add synchronisation, which gets
    # very slow when other processes load the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LlamaForCausalLM(config).eval(), tokenizer
    torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: small models only pay for synchronisation with
    more, which gets very slow when other processes load the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_in(root: Path, *cmd: str) -> None:
    """Run a command of the venv (git, dvc, airflow) in `root`."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})


@pytest.fixture(scope="session")
def build_project():
    """build(setup, params, *, airflow=False) -> the session's project folder: emptied (the
    MLflow store stays, its connections are open), the code, dvc.yaml, params.yaml and
    .gitignore copied, `setup(root)` writes the data, `params` updates params.yaml section by
    section, then git and DVC (and with `airflow`, Airflow's DB) are initialised."""
    import shutil

    import yaml

    from tasks.settings import PROJECT_ROOT, project_root

    def build(setup, params: dict[str, dict], *, airflow: bool = False) -> Path:
        root = project_root()
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            if old.name not in ("mlflow.db", "mlartifacts"):
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for name in ("crediflow", "tasks"):
            shutil.copytree(PROJECT_ROOT / name, root / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", "params.yaml", ".gitignore"):
            shutil.copy(PROJECT_ROOT / name, root / name)
        setup(root)
        values = yaml.safe_load((root / "params.yaml").read_text())
        for section, changes in params.items():
            values.setdefault(section, {}).update(changes)
        (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        run_in(root, "git", "init", "-q")
        run_in(root, "dvc", "init", "-q")
        run_in(root, "git", "add", ".")
        run_in(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
        if airflow:
            run_in(root, "airflow", "db", "migrate")
        return root

    return build
