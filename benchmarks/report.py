"""What every benchmark script shares: writing its JSON report (and echoing it)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out: str | Path, *, echo: bool = True) -> Path:
    """Write `report` as indented JSON to `out`, creating its folder; print it when `echo`."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")
    print(text if echo else f"wrote {path}", end="" if echo else "\n")
    return path
