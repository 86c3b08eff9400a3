"""Benchmark: what orchestration costs and buys. One function per measurement, each returning
its part of the report; `main` runs those asked for and merges them into the JSON report
(a part not run keeps its previous result).

- `embedding_throughput`: the embed stage's work split into 1, 2 and 4 shards, each shard its
  own process running the shard runner (`python -m tasks.shards embed --shard I --of N`, what
  DAG `curate`'s mapped task `embed_shards` runs), all shards at once, on a cold cache (a
  fresh cache folder per configuration), with the packaged encoder and embed's params. Per
  configuration: texts/s end to end (process start, imports and model load included, until
  the last shard ends: what a DAG run waits for) and texts/s of the embedding itself (rows /
  the longest shard's embedding time), each shard's rows and times. Torch threads per shard:
  the CPUs divided among the shards (at least 1), and for N > 1 also every CPU in every shard
  (oversubscribed, what a shard gets when nothing divides them).

- `overhead`: the orchestration's own cost on the demo. The DAGs (`curate`, `train`) run once
  through Airflow as `make demo` runs them (`python -m tasks.demo`: `dag.test()`, each task
  through the stage runner: DVC, MLflow runs, lineage, the asset event), and the same stages
  run directly as `python -m tasks.<stage>`, each in a fresh copy of the project (the code,
  dvc.yaml, params.yaml and the demo's raw data, under git and DVC; cold data caches; its own
  Airflow and MLflow stores; the converted SmolLM2 in ~/.cache is shared and already there).
  (`python -m tasks.demo` reads the DAGs of the copy.) Per stage: the Airflow task's
  duration (task_instance.duration) against the direct run's wall time; per DAG: the whole
  `dag.test()` against the sum of its direct stages. Goal: at most 10% or 15 s more per
  stage. Takes as long as two demo runs (about 26 min on 2 cores).

Data: the first `--rows` records of the demo data (data/raw/demo.jsonl after `make demo`;
built with crediflow.synthetic.demo when missing), ingested as the ingest stage does.

Usage: python benchmarks/orchestration.py [--measure embedding_throughput|overhead] [--rows 2000]
       [--shards 1,2,4] [--out benchmarks/results/orchestration.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from report import machine, write_report

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_MARK = "crediflow-shard:"  # the last line a shard prints (tasks/shards.py)


def demo_records(rows: int, folder: Path) -> Path:
    """The first `rows` demo records as the ingest stage writes them, in a project folder's
    catalog (`data/ingested/records.parquet`); return the project folder."""
    import pyarrow.parquet as pq

    from crediflow.ingest.ingest import ingest

    raw = ROOT / "data/raw/demo.jsonl"
    if not raw.is_file():
        from crediflow.synthetic.demo import write_demo

        raw = folder / "raw/demo.jsonl"
        write_demo(raw, folder / "raw/labels.csv", n=max(rows, 2000), seed=0)
    records = ingest(str(raw), max_reject_fraction=1.0).records
    if records.num_rows < rows:
        raise SystemExit(f"the demo data has {records.num_rows} records, fewer than {rows}")
    out = folder / "data/ingested"
    out.mkdir(parents=True)
    pq.write_table(records.slice(0, rows), out / "records.parquet")
    return folder


def _use_cache(project: Path, cache: str) -> None:
    """The project's params.yaml: the shipped one with `catalog.cache` set to `cache`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["catalog"]["cache"] = cache
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False),
                                         encoding="utf-8")


def run_shards(project: Path, stage: str, shards: int, threads: int) -> dict:
    """Run `shards` shard processes of `stage` at once; their summaries and the wall time."""
    env = os.environ | {"CREDIFLOW_HOME": str(project)}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "tasks.shards", stage, "--shard", str(i),
                               "--of", str(shards), "--threads", str(threads)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(shards)]
    outputs = [proc.communicate() for proc in procs]
    wall = time.perf_counter() - start
    summaries = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode:
            raise SystemExit(f"a {stage} shard failed (exit {proc.returncode}):\n{err[-2000:]}")
        line = next(ln for ln in reversed(out.splitlines()) if ln.startswith(SUMMARY_MARK))
        summaries.append(json.loads(line.removeprefix(SUMMARY_MARK)))
    return {"wall_s": wall, "shards": summaries}


def embedding_throughput(rows: int, shard_counts: list[int]) -> dict:
    """Texts/s of the embed stage's work in each shard count (see the module's docstring)."""
    from crediflow.core.cpus import available_cpus

    cpus = available_cpus()
    configs = [(n, max(1, cpus // n)) for n in shard_counts]
    configs += [(n, cpus) for n in shard_counts if n > 1 and cpus // n != cpus]
    results = []
    with tempfile.TemporaryDirectory(prefix="crediflow-orchestration-") as tmp:
        project = demo_records(rows, Path(tmp))
        _use_cache(project, ".cache-warmup")  # page in the libraries and the model, untimed
        start = time.perf_counter()
        warmup = subprocess.run(
            [sys.executable, "-m", "tasks.shards", "embed", "--shard", "0", "--of", "20"],
            cwd=ROOT, env=os.environ | {"CREDIFLOW_HOME": str(project)}, capture_output=True,
            text=True)
        if warmup.returncode:
            raise SystemExit(f"the warm-up shard failed:\n{warmup.stderr[-2000:]}")
        print(f"warm-up (1/20 of the rows, one process) {time.perf_counter() - start:.1f} s",
              flush=True)
        for shards, threads in configs:
            _use_cache(project, f".cache-{shards}x{threads}")  # a cold cache each
            run = run_shards(project, "embed", shards, threads)
            parts = run["shards"]
            computed = sum(p["computed"] for p in parts)
            if computed != rows:
                raise SystemExit(f"{shards} shards computed {computed} of {rows} rows")
            embed_s = max(p.get("seconds", 0.0) for p in parts)
            result = {
                "shards": shards,
                "threads_per_shard": threads,
                "rows": rows,
                "wall_s": round(run["wall_s"], 2),
                "texts_per_s_end_to_end": round(rows / run["wall_s"], 1),
                "embedding_s": round(embed_s, 2),
                "texts_per_s_embedding": round(rows / embed_s, 1),
                "per_shard": [{k: p.get(k) for k in ("shard", "shard_rows", "load_seconds",
                                                     "seconds", "texts_per_second")}
                              for p in parts],
            }
            print(json.dumps({k: v for k, v in result.items() if k != "per_shard"}), flush=True)
            results.append(result)
    return {
        "what": "embed stage's work in N shard processes at once (python -m tasks.shards "
                "embed), cold cache, packaged MiniLM with embed's params; texts/s end to end "
                "(process start to the last shard's end) and of the embedding alone",
        "cpus": cpus,
        "rows": rows,
        "results": results,
    }


def _fresh_project(base: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A fresh copy of this project in base/name (see `overhead`) and its environment."""
    from tasks.settings import defaults

    root = base / name
    root.mkdir(parents=True)
    for folder in ("crediflow", "tasks", "dags"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / file, root / file)
    for folder in ("data/raw", "data/truth"):
        shutil.copytree(ROOT / folder, root / folder)
    env = {k: v for k, v in os.environ.items() if k not in defaults()} | defaults(root)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "."],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"],
                ["airflow", "db", "migrate"],
                [sys.executable, "-m", "tasks.airflow_tasks", "pools"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root, env


def _timed(cmd: list[str], root: Path, env: dict[str, str], log: Path) -> float:
    """Run `cmd` in `root`, its output into `log`; its wall time in seconds."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")
    return time.perf_counter() - start


def overhead(dag_ids: list[str]) -> dict:
    """Airflow (dag.test, stage runner, DVC, MLflow) against the stages run directly."""
    from tasks.config import pipeline

    stages = {dag: list(pipeline(dag).stages) for dag in dag_ids}
    with tempfile.TemporaryDirectory(prefix="crediflow-overhead-") as tmp:
        base = Path(tmp)
        root, env = _fresh_project(base, "direct")
        direct = {}
        for dag in dag_ids:
            for stage in stages[dag]:
                direct[stage] = _timed([sys.executable, "-m", f"tasks.{stage}"], root, env,
                                       base / f"direct-{stage}.log")
                print(f"direct {stage}: {direct[stage]:.1f} s", flush=True)
        shutil.rmtree(root)
        root, env = _fresh_project(base, "airflow")
        walls = {}
        for dag in dag_ids:
            walls[dag] = _timed([sys.executable, "-m", "tasks.demo", dag], root, env,
                                base / f"airflow-{dag}.log")
            print(f"airflow {dag}: {walls[dag]:.1f} s", flush=True)
        with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
            tasks = {(dag, task): duration for dag, task, duration in db.execute(
                "SELECT dag_id, task_id, duration FROM task_instance")}
    rows = []
    for dag in dag_ids:
        for stage in stages[dag]:
            via = float(tasks[(dag, stage)])
            extra = via - direct[stage]
            rows.append({"dag": dag, "stage": stage, "direct_s": round(direct[stage], 1),
                         "airflow_task_s": round(via, 1), "overhead_s": round(extra, 1),
                         "overhead_pct": round(100 * extra / direct[stage], 1),
                         "goal_met": extra <= max(0.10 * direct[stage], 15.0)})
    dags = {dag: {"direct_s": round(sum(direct[s] for s in stages[dag]), 1),
                  "airflow_s": round(walls[dag], 1),
                  "other_tasks_s": {task: round(float(d), 1) for (d_id, task), d in tasks.items()
                                    if d_id == dag and task not in stages[dag]}}
            for dag in dag_ids}
    for row in dags.values():
        row["overhead_s"] = round(row["airflow_s"] - row["direct_s"], 1)
        row["overhead_pct"] = round(100 * row["overhead_s"] / row["direct_s"], 1)
    return {"what": "the demo's DAGs through Airflow (python -m tasks.demo: dag.test, the "
                    "stage runner, DVC, MLflow) vs the same stages run as python -m "
                    "tasks.<stage>, each in a fresh project copy; goal <= 10% or <= 15 s "
                    "per stage",
            "stages": rows, "dags": dags,
            "goal_met": all(r["goal_met"] for r in rows)}


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "embedding_throughput": lambda args: embedding_throughput(args.rows, args.shards),
    "overhead": lambda args: overhead(args.dags),
}


def main() -> None:
    """Run the measurements asked for and merge them into the report at `--out`."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="append", choices=sorted(MEASUREMENTS),
                        help="a measurement to run (repeatable; default: all)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--shards", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4])
    parser.add_argument("--dags", type=lambda s: s.split(","), default=["curate", "train"],
                        help="overhead: the DAGs to run, in order (default: curate,train)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/orchestration.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # crediflow and tasks of this checkout
    os.environ.setdefault("CREDIFLOW_HOME", str(ROOT))
    from tasks.settings import apply

    apply()
    out = Path(args.out)
    report = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    report.update({"benchmark": "orchestration", "machine": machine()})
    for name in args.measure or sorted(MEASUREMENTS):
        report[name] = MEASUREMENTS[name](args)
    write_report(report, out)


if __name__ == "__main__":
    main()
