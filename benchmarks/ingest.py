"""Benchmark: ingest (read, map, dedupe, validate) of generated prompt/response JSONL.

Usage: python benchmarks/ingest.py [--rows 1000000] [--out benchmarks/results/ingest.json]
The data is generated in a child process first, so peak memory is the ingest's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import machine, peak_rss_mb, write_report


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` prompt/response records with varied lengths and two labels."""
    rng = np.random.default_rng(seed)
    vocabulary = ("the a model data label review answer question python film good bad clean "
                  "noisy sample token layer prune fair group rate score value")
    words = np.array(vocabulary.split(" "))
    n_words = rng.integers(5, 40, size=rows)
    labels = np.where(rng.random(rows) < 0.2, "harmful", "harmless")
    pool = rng.choice(words, size=(rows, 40))
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            prompt = " ".join(pool[i, : n_words[i]])
            fh.write(json.dumps({"prompt": f"{i}: {prompt}?", "response": prompt[::-1],
                                 "label": str(labels[i])}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default="benchmarks/results/ingest.json")
    parser.add_argument("--generate", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(Path(args.generate), args.rows)
        return

    from crediflow.ingest.ingest import ingest
    from tasks.io import write_parquet

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        data = src / "rows.jsonl"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--generate",
                        str(data)], check=True)
        gen_s = time.perf_counter() - t0
        start = time.perf_counter()
        result = ingest(str(src), classes=["harmless", "harmful"], max_reject_fraction=0.0)
        ingest_s = time.perf_counter() - start
        out_dir = Path(tmp) / "ingested"
        out_dir.mkdir()
        write_parquet(out_dir / "records.parquet", result.records)
        write_parquet(out_dir / "rejected.parquet", result.rejected)
        seconds = time.perf_counter() - start
        size = data.stat().st_size
    peak_mb = peak_rss_mb()
    report = {
        "benchmark": "ingest",
        "rows": args.rows,
        "file_mb": round(size / 2**20, 1),
        "rows_out": result.records.num_rows,
        "rejected": result.rejected.num_rows,
        "seconds": round(seconds, 2),
        "seconds_without_parquet_write": round(ingest_s, 2),
        "rows_per_s": round(args.rows / seconds),
        "peak_rss_mb": round(peak_mb),
        "generate_seconds": round(gen_s, 1),
        "goal": "1M rows < 60 s and < 4096 MB peak",
        "machine": machine(),
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
