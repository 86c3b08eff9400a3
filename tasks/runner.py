"""The one stage runner: every Airflow task, and `python -m tasks.runner`, go through it.

A stage runs as `dvc repro --single-item STAGE`, so DVC skips it (visibly, in the log) when
nothing it depends on changed, and records its hashes in dvc.lock; then the stage is logged
to MLflow as a child of the pipeline's run.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

import yaml

from tasks import lineage
from tasks.config import pipeline, stage_metrics
from tasks.settings import apply, project_root
from tasks.stage import EXIT_BAD_INPUT

log = logging.getLogger("crediflow.runner")
SKIPPED_MARK = "didn't change, skipping"


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message carries the end of its output."""


class InputRejected(StageFailed):
    """The stage refused its input; running it again on the same input cannot succeed."""


def _stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ) | apply() | (extra or {})
    bin_dir = str(Path(sys.executable).parent)  # `python` and `dvc` of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def dvc_repro(stage: str, root: Path | None = None, *, env: dict[str, str] | None = None) -> bool:
    """Run one stage through DVC, streaming its output; return True when DVC skipped it.
    `env` is added to the stage process's environment."""
    root = root or project_root()
    cmd = [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", stage]
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    tail: deque[str] = deque(maxlen=40)
    skipped = False
    with subprocess.Popen(cmd, cwd=root, env=_stage_env(env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            print(line, flush=True)
            tail.append(line)
            skipped |= SKIPPED_MARK in line
    if proc.returncode:
        errors = [ln for ln in tail if ln.startswith(("error:", "  "))]
        bad_input = any(f"exited with {EXIT_BAD_INPUT}" in ln for ln in tail)
        raise (InputRejected if bad_input else StageFailed)(
            f"stage {stage!r} failed:\n" + "\n".join(errors or list(tail)[-15:]))
    if skipped:
        log.info("stage %s: unchanged since the last run, DVC skipped it", stage)
    return skipped


def lock_entry(stage: str, root: Path | None = None) -> dict | None:
    """The stage's entry in dvc.lock (hashes of its deps and outs, its params), if any."""
    path = (root or project_root()) / "dvc.lock"
    if not path.exists():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage)


def run_stage(stage: str, *, pipeline_name: str, dag_id: str, run_id: str) -> dict:
    """Run one stage and log it under the pipeline run; raise StageFailed on failure."""
    parent = lineage.pipeline_run(pipeline_name, dag_id, run_id)
    child = lineage.start_stage_run(stage, parent)
    try:
        skipped = dvc_repro(stage, env={lineage.STAGE_RUN_ENV: child})
    except StageFailed as exc:
        lineage.log_stage(stage, parent, lock_entry(stage), skipped=False, error=str(exc),
                          run_id=child)
        raise
    lineage.log_stage(stage, parent, lock_entry(stage), skipped=skipped,
                      metrics_files=stage_metrics(stage), run_id=child)
    return {"stage": stage, "skipped": skipped, "mlflow_run_id": child, "mlflow_parent_id": parent,
            "rows": _rows(stage)}


def _rows(stage: str) -> int | None:
    """The row count a stage reports in its metrics (`rows` or `rows_out`), if any."""
    import json

    for name in stage_metrics(stage):
        path = project_root() / name
        if path.is_file():
            report = json.loads(path.read_text())
            value = report.get("rows_out", report.get("rows"))
            return int(value) if isinstance(value, int | float) else None
    return None


def finish(*, dag_id: str, run_id: str, pipeline_name: str,
           expected_stages: tuple[str, ...]) -> str:
    """Close the pipeline's parent run: FAILED unless every expected stage finished.

    Raises StageFailed in the failed case, so that the DAG run fails too.
    """
    parent = lineage.pipeline_run(pipeline_name, dag_id, run_id)
    done = lineage.finished_stages(parent)
    missing = [s for s in expected_stages if s not in done]
    lineage.finish_pipeline_run(parent, failed=bool(missing))
    if missing:
        raise StageFailed(f"pipeline {pipeline_name!r} run {run_id}: stages not finished: "
                          f"{', '.join(missing)}")
    return parent


def run_pipeline(name: str, run_id: str | None = None) -> str:
    """Run every stage of a pipeline in order without Airflow; return the MLflow parent run id."""
    run_id = run_id or f"manual__{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}"
    stages = pipeline(name).stages
    try:
        for stage in stages:
            run_stage(stage, pipeline_name=name, dag_id=name, run_id=run_id)
    finally:
        parent = finish(dag_id=name, run_id=run_id, pipeline_name=name, expected_stages=stages)
    return parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.runner", description=__doc__)
    parser.add_argument("pipeline", help="a pipeline of params.yaml, e.g. curate")
    args = parser.parse_args(argv)
    apply()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        parent = run_pipeline(args.pipeline)
    except StageFailed as exc:
        sys.exit(str(exc))
    print(f"MLflow parent run: {parent}")


if __name__ == "__main__":
    main()
