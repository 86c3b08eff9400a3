"""Input checks shared by every package: each raises an InputError that names the field and,
where there is one, the first bad row."""

from __future__ import annotations

from collections.abc import Sequence

from crediflow.errors import InputError


def check_strings(texts: Sequence[str]) -> list[str]:
    """`texts` as a list of str, or an InputError naming the first bad row."""
    if isinstance(texts, str | bytes):
        raise InputError("texts must be a sequence of strings, not a single string",
                         field="texts")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise InputError(f"{len(bad)} text(s) are not strings, first at row {bad[0] + 1} "
                         f"({type(out[bad[0]]).__name__})", field="texts")
    return out


def check_subsampling(repeats: int, repeats_name: str, sample_fraction: float) -> None:
    """Validate how often a graph is subsampled (rounds, epochs) and what share each keeps."""
    if repeats < 1:
        raise InputError(f"{repeats_name} must be at least 1, got {repeats}", field=repeats_name)
    if not 0.0 < sample_fraction <= 1.0:
        raise InputError(f"sample_fraction must be in (0, 1], got {sample_fraction}",
                         field="sample_fraction")
