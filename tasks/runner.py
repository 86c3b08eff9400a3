"""The one stage runner: every Airflow task, and `python -m tasks.runner`, go through it.

A stage runs as `dvc repro --single-item STAGE`, so DVC skips it (visibly, in the log) when
nothing it depends on changed, and records its hashes in dvc.lock; then the stage is logged
to MLflow as a child of the pipeline's run. When params.yaml names a DVC remote (`dvc.remote`),
a pipeline run that finished every stage pushes its stages' outputs there (`Repo.push`), so
that `crediflow restore RUN` can bring them back on any machine.

An MLflow tracking server that does not answer stops a task before any DVC work, with one
line naming the URI and the fix (`TrackingUnavailable`, exit status EXIT_TRACKING_UNAVAILABLE,
which Airflow retries with its backoff; 65 is the status it does not retry). A stage that
fails (the server going away half-way included) leaves its outputs as dvc.lock records them:
DVC's cache gives back the cached ones, a copy taken before the run the others.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from crediflow.errors import ConfigError
from tasks import lineage
from tasks.config import dvc_stages, load_params, pipeline, stage_metrics
from tasks.lineage import TrackingUnavailable
from tasks.settings import apply, project_root
from tasks.stage import EXIT_BAD_INPUT
from tasks.workspace import workspace_lock

log = logging.getLogger("crediflow.runner")
# The exit status when the MLflow tracking server does not answer (sysexits' EX_UNAVAILABLE):
# worth retrying, unlike EXIT_BAD_INPUT.
EXIT_TRACKING_UNAVAILABLE = 69
SKIPPED_MARK = "didn't change, skipping"
# The name DVC knows params.yaml's remote by when `dvc.remote` is a folder or a URL (in memory
# only: nothing is written to .dvc/config).
REMOTE_NAME = "crediflow"


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message carries the end of its output."""


class InputRejected(StageFailed):
    """The stage refused its input; running it again on the same input cannot succeed."""


class PushFailed(RuntimeError):
    """The outputs could not be pushed to the DVC remote (unreachable, no permission); unlike
    StageFailed this is worth retrying, and nothing is lost: the outputs stay in the cache."""


def _stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ) | apply() | (extra or {})
    bin_dir = str(Path(sys.executable).parent)  # `python` and `dvc` of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group that `proc` leads (a stage, a shard); SIGKILL it when still
    there after 10 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def dvc_repro(stage: str, root: Path | None = None, *, env: dict[str, str] | None = None) -> bool:
    """Run one stage through DVC, streaming its output; return True when DVC skipped it.
    `env` is added to the stage process's environment."""
    root = root or project_root()
    cmd = [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", stage]
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    tail: deque[str] = deque(maxlen=40)
    skipped = False
    # its own process group: a task that times out or is killed stops DVC and the stage too
    with subprocess.Popen(cmd, cwd=root, env=_stage_env(env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1,
                          start_new_session=True) as proc:
        try:
            for line in proc.stdout:
                line = line.rstrip()
                print(line, flush=True)
                tail.append(line)
                skipped |= SKIPPED_MARK in line
        except BaseException:
            stop_group(proc)
            raise
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


def _declares_uncached(stage: str, root: Path | None = None) -> bool:
    """Whether dvc.yaml declares an output of `stage` with `cache: false` (read without DVC)."""
    declared = dvc_stages(root).get(stage, {})
    entries = [*declared.get("outs", []), *declared.get("metrics", []), *declared.get("plots", [])]
    return any(isinstance(entry, dict) and any(isinstance(opts, dict) and opts.get("cache") is False
                                               for opts in entry.values())
               for entry in entries)


def stage_outputs(stage: str, root: Path | None = None) -> dict[str, bool]:
    """Every output dvc.yaml declares for `stage` (metrics and plots included), as a
    project-relative path -> whether DVC caches it."""
    root = root or project_root()
    with open_repo(root) as repo:
        stages = repo.stage.collect(f"{root / 'dvc.yaml'}:{stage}")
        return {str(out.def_path): bool(out.use_cache) for found in stages for out in found.outs}


def keep_uncached(outputs: dict[str, bool], folder: Path, root: Path | None = None
                  ) -> dict[str, bool]:
    """Copy the outputs DVC does not cache (`outputs`: path -> cached) into `folder`, so that
    a failed run can put them back; return path -> whether it existed."""
    root = root or project_root()
    kept = {}
    for path, cached in outputs.items():
        if cached:
            continue
        source, copy = root / path, folder / path
        kept[path] = source.exists()
        if source.is_dir():
            shutil.copytree(source, copy, symlinks=True)
        elif source.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
    return kept


def put_back(stage: str, outputs: dict[str, bool], folder: Path, kept: dict[str, bool],
             root: Path | None = None) -> bool:
    """Return the outputs of a failed run of `stage` to what dvc.lock records: the cached ones
    checked out of DVC's cache, the others (`kept` by `keep_uncached` in `folder`) copied
    back. False when dvc.lock has no entry for the stage (nothing recorded to go back to)."""
    from dvc.exceptions import DvcException

    root = root or project_root()
    if lock_entry(stage, root) is None:
        return False
    cached = [str(root / path) for path, is_cached in outputs.items() if is_cached]
    try:
        if cached:
            with open_repo(root) as repo:
                repo.checkout(targets=cached, force=True)
    except (DvcException, OSError) as exc:  # e.g. the cache lost a file (dvc gc)
        log.warning("stage %s failed and its outputs could not be put back: %s", stage, exc)
        return False
    for path, existed in kept.items():
        target, copy = root / path, folder / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if existed and copy.is_dir():
            shutil.copytree(copy, target, symlinks=True)
        elif existed:
            shutil.copy2(copy, target)
    log.info("stage %s failed: its outputs are back as dvc.lock records them", stage)
    return True


def _raise_if_tracking_gone(note: str, stage_run: str | None = None) -> None:
    """Raise TrackingUnavailable (ending with `note`) when the tracking server does not
    answer now (one attempt), after dropping the stage run's system metrics."""
    try:
        lineage.check_tracking_server(attempts=1, note=note)
    except TrackingUnavailable:
        if stage_run:
            lineage.stop_system_metrics(stage_run, wait_s=0)
        raise


@contextlib.contextmanager
def _tracking(note: str, stage_run: str | None = None) -> Iterator[None]:
    """MLflow calls whose failure, when the tracking server stopped answering, becomes
    TrackingUnavailable ending with `note` (what became of the stage); other failures pass."""
    try:
        yield
    except (StageFailed, TrackingUnavailable):
        raise
    except Exception:
        _raise_if_tracking_gone(note, stage_run)  # raises when the server is gone
        raise


def run_stage(stage: str, *, pipeline_name: str, dag_id: str, run_id: str) -> dict:
    """Run one stage and log it under the pipeline run, holding the DVC workspace (waiting
    while another run's stage holds it). Raises TrackingUnavailable, before
    any DVC work, when the tracking server does not answer; StageFailed when the stage fails,
    after putting its outputs back as dvc.lock records them."""
    with workspace_lock(f"{dag_id} {run_id} {stage}"):
        return _run_stage(stage, pipeline_name=pipeline_name, dag_id=dag_id, run_id=run_id)


def _run_stage(stage: str, *, pipeline_name: str, dag_id: str, run_id: str) -> dict:
    untouched = f"stage {stage} did not run and the workspace is unchanged"
    lineage.check_tracking_server(note=untouched)
    with _tracking(untouched):
        parent = lineage.pipeline_run(pipeline_name, dag_id, run_id)
        child = lineage.start_stage_run(stage, parent)
    # DVC is opened for the outputs' list only when some must be copied now (uncached ones)
    outputs = stage_outputs(stage) if _declares_uncached(stage) else None
    with tempfile.TemporaryDirectory(prefix=f"crediflow-{stage}-") as folder:
        kept = keep_uncached(outputs or {}, Path(folder))
        try:
            skipped = dvc_repro(stage, env={lineage.STAGE_RUN_ENV: child})
        except StageFailed as exc:
            back = not isinstance(exc, InputRejected) and put_back(
                stage, stage_outputs(stage) if outputs is None else outputs, Path(folder), kept)
            failed = (f"stage {stage} failed and its outputs are back as dvc.lock records "
                      f"them" if back else f"stage {stage} failed and dvc.lock is unchanged")
            _raise_if_tracking_gone(failed, child)
            with _tracking(failed, child):
                lineage.log_stage(stage, parent, lock_entry(stage), skipped=False,
                                  error=str(exc), run_id=child)
            raise
    with _tracking(f"stage {stage} finished and dvc.lock records its outputs (a retry finds "
                   f"it unchanged); only its MLflow run is incomplete", child):
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


def dvc_remote(root: Path | None = None) -> str | None:
    """params.yaml's `dvc.remote`: a remote name of .dvc/config, a folder or a URL (s3://...);
    None when the section or the key is absent or null (nothing is pushed)."""
    section = load_params(root).get("dvc")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping of keys to values, got {section!r}",
                          source="params.yaml", section="dvc")
    for key in section:
        if key != "remote":
            raise ConfigError("unknown key; the keys of this section are remote",
                              source="params.yaml", section="dvc", key=key)
    value = section.get("remote")
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"expected a remote name, a folder or a URL, got {value!r}",
                          source="params.yaml", section="dvc", key="remote")
    return value


def open_repo(root: Path | None = None, remote: str | None = None) -> Any:
    """The project's `dvc.repo.Repo`; with `remote` (a remote of .dvc/config, a folder or a
    URL) as its default remote, set in memory only. The caller closes it."""
    from dvc.repo import Repo

    root = root or project_root()
    if remote is None:
        return Repo(str(root))
    with Repo(str(root)) as repo:
        known = remote in repo.config["remote"]
    if known:
        return Repo(str(root), config={"core": {"remote": remote}})
    url = remote if "://" in remote else str((root / Path(remote).expanduser()).resolve())
    return Repo(str(root), config={"core": {"remote": REMOTE_NAME},
                                   "remote": {REMOTE_NAME: {"url": url}}})


def push_outputs(stages: tuple[str, ...], root: Path | None = None) -> int | None:
    """Push the cached outputs of `stages` (as dvc.lock records them) to params.yaml's DVC
    remote; return the number of files sent, or None when no remote is configured."""
    remote = dvc_remote(root)
    if remote is None:
        return None
    from dvc.exceptions import DvcException

    root = root or project_root()
    log.info("pushing the outputs of %s to the DVC remote %s", ", ".join(stages), remote)
    # DVC resolves a bare stage name against the process's working directory, so each
    # target names its dvc.yaml too
    targets = [f"{root / 'dvc.yaml'}:{stage}" for stage in stages]
    try:
        with open_repo(root, remote) as repo:
            return int(repo.push(targets=targets) or 0)
    except (DvcException, OSError) as exc:  # OSError: a folder remote that cannot be written
        raise PushFailed(f"dvc push to {remote} failed: {exc}") from exc


def finish(*, dag_id: str, run_id: str, pipeline_name: str,
           expected_stages: tuple[str, ...]) -> str:
    """Close the pipeline's parent run: FAILED unless every expected stage finished. When
    every stage finished and params.yaml names a DVC remote, push the stages' outputs first
    (tags `dvc.remote` and `dvc.pushed` on the parent run).

    Raises StageFailed in the failed case, so that the DAG run fails too, PushFailed
    when the push failed (the parent run is FAILED until a retry pushes), and
    TrackingUnavailable when the tracking server does not answer (nothing pushed).
    """
    open_run = f"pipeline run {run_id} is not closed yet and nothing was pushed"
    lineage.check_tracking_server(note=open_run)
    with _tracking(open_run):
        parent = lineage.pipeline_run(pipeline_name, dag_id, run_id)
        done = lineage.finished_stages(parent)
    missing = [s for s in expected_stages if s not in done]
    if missing:
        lineage.finish_pipeline_run(parent, failed=True)
        raise StageFailed(f"pipeline {pipeline_name!r} run {run_id}: stages not finished: "
                          f"{', '.join(missing)}")
    client = lineage.mlflow_module().MlflowClient()
    try:
        pushed = push_outputs(expected_stages)
    except PushFailed as exc:
        client.set_tag(parent, "dvc.push_error", str(exc)[-4000:])
        lineage.finish_pipeline_run(parent, failed=True)
        raise
    if pushed is not None:
        client.set_tag(parent, "dvc.remote", str(dvc_remote()))
        client.set_tag(parent, "dvc.pushed", str(pushed))
    lineage.finish_pipeline_run(parent, failed=False)
    return parent


def run_pipeline(name: str, run_id: str | None = None) -> str:
    """Run every stage of a pipeline in order without Airflow; return the MLflow parent run id.
    Without an answering tracking server it raises TrackingUnavailable and leaves the parent
    run open (closing it needs the server)."""
    run_id = run_id or f"manual__{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}"
    stages = pipeline(name).stages
    try:
        for stage in stages:
            run_stage(stage, pipeline_name=name, dag_id=name, run_id=run_id)
    except TrackingUnavailable:
        raise
    except BaseException:
        finish(dag_id=name, run_id=run_id, pipeline_name=name, expected_stages=stages)
        raise
    return finish(dag_id=name, run_id=run_id, pipeline_name=name, expected_stages=stages)


def _main_stage(pipeline_name: str, stage: str, dag_id: str, run_id: str) -> None:
    """`--stage`: run one stage as a task of the pipeline run `run_id` (what a container task
    runs); print its result as JSON; exit with the stage's bad-input code when it refused its
    input, with EXIT_TRACKING_UNAVAILABLE when the tracking server does not answer."""
    import json

    if stage not in pipeline(pipeline_name).stages:
        sys.exit(f"pipeline {pipeline_name!r} has no stage {stage!r}")
    try:
        result = run_stage(stage, pipeline_name=pipeline_name, dag_id=dag_id, run_id=run_id)
    except InputRejected as exc:
        print(exc, file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except StageFailed as exc:
        sys.exit(str(exc))
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_TRACKING_UNAVAILABLE)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.runner", description=__doc__)
    parser.add_argument("pipeline", help="a pipeline of params.yaml, e.g. curate")
    parser.add_argument("--stage", help="run only this stage, as one task of the Airflow run "
                        "--run-id (what a container task runs); the run is not finished")
    parser.add_argument("--run-id", help="with --stage: the Airflow run id of the pipeline run")
    parser.add_argument("--dag-id", help="with --stage: the DAG id (default: the pipeline)")
    args = parser.parse_args(argv)
    if args.stage and not args.run_id:
        parser.error("--stage needs --run-id")
    apply()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.stage:
        _main_stage(args.pipeline, args.stage, args.dag_id or args.pipeline, args.run_id)
        return
    try:
        parent = run_pipeline(args.pipeline)
    except (StageFailed, PushFailed) as exc:
        sys.exit(str(exc))
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_TRACKING_UNAVAILABLE)
    print(f"MLflow parent run: {parent}")


if __name__ == "__main__":
    main()
