"""The shard runner: compute one shard of a stage's rows into the stage's content-addressed
cache, ahead of the stage, so that N processes (Airflow's mapped tasks, one per shard) share
the work of the stages whose cost grows with the data.

    python -m tasks.shards embed --shard 0 [--of N] [--threads T]
    python -m tasks.shards select --shard 0 [--of N] [--threads T]

`embed` embeds the ingested records' texts (the texts the embed stage embeds) into the
embedding cache; `select` rates the fixed records' texts with the configured LLM rater into
the rating cache (the `column` rater has nothing to compute: the shard does nothing). A shard
is the rows whose text hashes to it (`crediflow.data.shards`: deterministic, every distinct
text in exactly one shard). `--of` defaults to `pipelines.curate.shards.<stage>` of
params.yaml. The runner writes nothing but cache entries (each a new Parquet file, written
under a temporary name and renamed, so concurrent shards never see a partial one): the DVC
stage that runs next finds every row cached, computes nothing, and writes the same outputs as
an unsharded run. Bad params or input exit 65 with one line naming the key. The last line of
the output is `crediflow-shard: {json}`: rows, computed, reused, seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from crediflow.data.shards import shard_rows
from crediflow.errors import ConfigError
from tasks.config import SHARDED_STAGES, pipeline, stage_config
from tasks.runner import stop_group
from tasks.settings import apply, project_root
from tasks.stage import EXIT_BAD_INPUT, stage_main

log = logging.getLogger("crediflow.shards")
SUMMARY_MARK = "crediflow-shard:"


class ShardFailed(RuntimeError):
    """A shard's process exited non-zero; the message carries the end of its output."""


class ShardRejected(ShardFailed):
    """The shard refused its params or input (exit 65): running it again cannot help."""


def _embed_shard(shard: int, of: int, threads: int | None) -> dict[str, Any]:
    """Embed shard `shard` of `of` of the embed stage's texts into the embedding cache."""
    import pyarrow as pa

    from crediflow.data.cache import EmbeddingCache
    from crediflow.embed import embed_texts
    from crediflow.embed.config import EmbedConfig
    from tasks import embed
    from tasks.catalog import Catalog

    config = stage_config(EmbedConfig)
    catalog = Catalog()
    _, texts = embed.stage_texts(catalog, config)
    rows = shard_rows(texts, shard=shard, of=of)
    summary: dict[str, Any] = {"rows": len(texts), "shard_rows": len(rows)}
    if not len(rows):
        return {**summary, "computed": 0, "reused": 0}
    start = time.perf_counter()
    encoder = embed.stage_encoder(config, threads=threads)
    cache = EmbeddingCache(catalog.cache("embeddings"), model_id=encoder.model_id)
    loaded = time.perf_counter()
    _, reused = embed_texts(pa.array(texts, pa.string()).take(pa.array(rows)), encoder,
                            cache=cache, batch_size=config.batch_size)
    seconds = time.perf_counter() - loaded
    return {**summary, "computed": len(rows) - reused, "reused": reused,
            "load_seconds": round(loaded - start, 2), "seconds": round(seconds, 2)}


def _select_shard(shard: int, of: int, threads: int | None) -> dict[str, Any]:
    """Rate shard `shard` of `of` of the select stage's texts into the rating cache."""
    from crediflow.data.schema import MESSAGES_COLUMN
    from crediflow.select.config import SelectConfig
    from crediflow.select.rating import rate
    from tasks import select
    from tasks.catalog import Catalog

    config = stage_config(SelectConfig)
    catalog = Catalog()
    texts = select.stage_texts(catalog.read("fixed", columns=[MESSAGES_COLUMN]))
    rows = shard_rows(texts, shard=shard, of=of)
    summary: dict[str, Any] = {"rows": len(texts), "shard_rows": len(rows)}
    if config.rater == "column":
        log.info("select.rater is 'column': the ratings are in the data, nothing to compute")
        return {**summary, "computed": 0, "reused": 0}
    if not len(rows):
        return {**summary, "computed": 0, "reused": 0}
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    rated = rate(np.asarray(texts, dtype=object)[rows].tolist(), config,
                 cache_folder=catalog.cache("ratings"))
    seconds = time.perf_counter() - start
    return {**summary, "computed": rated.metrics["rated"],
            "reused": rated.metrics["ratings_from_cache"],
            "load_seconds": round(seconds - rated.metrics["rating_seconds"], 2),
            "seconds": rated.metrics["rating_seconds"]}


_FILL = {"embed": _embed_shard, "select": _select_shard}


def fill_cache(stage: str, *, shard: int, of: int, threads: int | None = None) -> dict[str, Any]:
    """Compute shard `shard` of `of` of `stage`'s rows into the stage's cache, in this
    process; return {stage, shard, of, rows, shard_rows, computed, reused, seconds, ...}.
    `threads` sets torch's intra-op threads (None: the CPUs available)."""
    if stage not in SHARDED_STAGES:
        raise ConfigError(f"no shard runner for stage {stage!r}; stages with one: "
                          f"{', '.join(SHARDED_STAGES)}", source="the command line", key="stage")
    if isinstance(of, bool) or not isinstance(of, int) or of < 1:
        raise ConfigError(f"expected an integer >= 1, got {of!r}", source="the command line",
                          key="of")
    if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < of:
        raise ConfigError(f"expected an integer in 0..{of - 1}, got {shard!r}",
                          source="the command line", key="shard")
    if threads is not None and threads < 1:
        raise ConfigError(f"expected an integer >= 1, got {threads!r}",
                          source="the command line", key="threads")
    summary = {"stage": stage, "shard": shard, "of": of,
               **_FILL[stage](shard, of, threads)}
    computed = summary["computed"]
    summary["texts_per_second"] = (round(computed / summary["seconds"], 1)
                                   if computed and summary.get("seconds") else None)
    log.info("%s shard %d of %d: %d of %d rows in this shard, %d computed, %d already cached",
             stage, shard, of, summary["shard_rows"], summary["rows"], computed,
             summary["reused"])
    return summary


def shard_command(stage: str, *, shard: int, of: int, threads: int | None = None) -> list[str]:
    """The command line that runs one shard in its own process."""
    cmd = [sys.executable, "-m", "tasks.shards", stage, "--shard", str(shard), "--of", str(of)]
    return cmd + (["--threads", str(threads)] if threads is not None else [])


def run_shard(stage: str, *, shard: int, of: int, threads: int | None = None,
              root: Path | None = None) -> dict[str, Any]:
    """Run one shard in its own process (and process group, stopped with the caller) in the
    project folder, streaming its output; return its summary. Raise ShardRejected on exit 65,
    ShardFailed on any other failure."""
    root = root or project_root()
    env = dict(os.environ) | apply(root)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    tail: deque[str] = deque(maxlen=30)
    summary = None
    log.info("running %s in %s", " ".join(shard_command(stage, shard=shard, of=of,
                                                        threads=threads)[1:]), root)
    with subprocess.Popen(shard_command(stage, shard=shard, of=of, threads=threads), cwd=root,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                line = line.rstrip()
                print(line, flush=True)
                tail.append(line)
                if line.startswith(SUMMARY_MARK):
                    summary = json.loads(line.removeprefix(SUMMARY_MARK))
        except BaseException:
            stop_group(proc)
            raise
    if proc.returncode or summary is None:
        error = ShardRejected if proc.returncode == EXIT_BAD_INPUT else ShardFailed
        raise error(f"{stage} shard {shard} of {of} failed (exit {proc.returncode}):\n"
                    + "\n".join(list(tail)[-15:]))
    return summary


def main(argv: list[str] | None = None) -> None:
    """`python -m tasks.shards STAGE --shard I [--of N] [--threads T]`."""
    parser = argparse.ArgumentParser(prog="python -m tasks.shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=SHARDED_STAGES)
    parser.add_argument("--shard", type=int, required=True, help="this shard, 0..N-1")
    parser.add_argument("--of", type=int, default=None,
                        help="N, the number of shards (default: pipelines.curate.shards.STAGE "
                             "of params.yaml, else 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (default: the CPUs available)")
    args = parser.parse_args(argv)

    def run() -> None:
        of = pipeline("curate").stage_shards(args.stage) if args.of is None else args.of
        summary = fill_cache(args.stage, shard=args.shard, of=of, threads=args.threads)
        print(f"{SUMMARY_MARK} {json.dumps(summary)}", flush=True)

    stage_main(run)


if __name__ == "__main__":
    main()
