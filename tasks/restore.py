"""`crediflow restore RUN`: bring back every stage output of a pipeline run, byte for byte.

A run is found by its MLflow run id (a pipeline's parent run, or one stage's child run) or by
its Airflow run id. What it produced is what its stages recorded: each stage's child run logs
its dvc.lock entry (`dvc_stage.json`), and the parent run carries `dvc.<path>` = md5 of every
output. Those hashes name DVC objects, so the data comes back through DVC's own machinery:

- the project's `dvc.repo.Repo` gives the local cache (`repo.cache.local`, content-addressed
  by md5) and the remote of params.yaml's `dvc.remote` (`repo.cloud`);
- what the cache lacks is pulled from the remote with `repo.cloud.pull` (a directory in two
  steps: its `.dir` listing first, then the files it names, since DVC's object transfer
  does not expand a listing it does not have yet);
- each output is written with dvc-data's `checkout` (the function `dvc checkout` uses, with
  the cache's link types), into the workspace or under another folder.

A run's dvc.lock is not the workspace's dvc.lock any more, so `Repo.checkout`, which reads
the workspace's, cannot be used; building the objects from the recorded hashes and checking
them out is the same operation on another lock state. Outputs that DVC does not cache
(`cache: false` reports such as metrics.json) are not in any DVC store; they come from the
stage run's MLflow artifacts (logged by tasks/lineage.py), checked against the md5 of the
lock entry before they are written. Nothing is written unless every output can be restored;
otherwise an InputError names the missing files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crediflow.errors import ConfigError, InputError
from tasks.lineage import experiment_id, mlflow_module
from tasks.runner import dvc_remote, open_repo
from tasks.settings import project_root

log = logging.getLogger("crediflow.restore")
RUN_ID_PATTERN = re.compile(r"^[\w.:+\-]+$")


class RestoreFailed(RuntimeError):
    """Restoring failed for a reason other than the input: retrying later can help."""


class RemoteUnavailable(RestoreFailed):
    """The DVC remote could not be read (unreachable, no permission)."""


class WorkspaceBusy(RestoreFailed):
    """Another DVC command (a stage running) holds the workspace."""


@dataclass(frozen=True)
class Output:
    """One output a run recorded: its project-relative path and DVC hash."""

    path: str
    md5: str
    hash_name: str = "md5"
    stage: str = ""
    run_id: str = ""  # the stage's MLflow child run (artifacts of uncached outputs)


@dataclass
class Restored:
    """What `restore` wrote: each output's path, hash and where it came from."""

    runs: list[str]
    target: Path
    outputs: list[dict[str, str]] = field(default_factory=list)


def _client() -> Any:
    return mlflow_module().MlflowClient()


def find_runs(run: str) -> list[Any]:
    """The MLflow runs `run` names: a pipeline or stage run by MLflow id, else every pipeline
    run of that Airflow run id; an InputError when there is none."""
    from mlflow.exceptions import MlflowException

    if not RUN_ID_PATTERN.match(run):
        raise InputError(f"unknown run {run!r}: not an MLflow or Airflow run id")
    client = _client()
    try:
        found = client.get_run(run)
    except MlflowException:
        found = None
    if found is not None:
        if found.data.tags.get("crediflow.role") not in ("pipeline", "stage"):
            raise InputError(f"MLflow run {run} is not a crediflow pipeline or stage run")
        return [found]
    runs = client.search_runs(
        [experiment_id()], order_by=["attributes.start_time ASC"],
        filter_string=f"tags.`crediflow.role` = 'pipeline' and tags.`airflow.run_id` = '{run}'")
    if not runs:
        raise InputError(f"unknown run {run!r}: no MLflow pipeline run has this id or this "
                         "Airflow run id")
    return list(runs)


def stage_runs(parent: Any) -> dict[str, Any]:
    """The last FINISHED child run of each stage of a pipeline run (a stage run: itself)."""
    if parent.data.tags.get("crediflow.role") == "stage":
        return {parent.data.tags.get("crediflow.stage", ""): parent}
    children = _client().search_runs(
        [parent.info.experiment_id], order_by=["attributes.start_time ASC"],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                      "and attributes.status = 'FINISHED'")
    return {c.data.tags.get("crediflow.stage", ""): c for c in children}


def stage_lock(run: Any) -> dict:
    """The dvc.lock entry a stage run logged (`dvc_stage.json`); {} when it has none."""
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/dvc_stage.json") or {}
    except Exception:  # noqa: BLE001 - a run without the artifact recorded no lock entry
        return {}


def run_outputs(run: Any) -> list[Output]:
    """Every output a pipeline (or stage) run recorded, from its stages' lock entries and,
    for any not found there, the parent's `dvc.<path>` tags."""
    outputs: dict[str, Output] = {}
    for stage, child in stage_runs(run).items():
        for out in stage_lock(child).get("outs", []):
            outputs[out["path"]] = Output(out["path"], out["md5"], out.get("hash", "md5"),
                                          stage, child.info.run_id)
    for key, value in run.data.tags.items():
        if key.startswith("dvc.") and key[4:] not in outputs and "/" in key and value:
            outputs[key[4:]] = Output(key[4:], value)
    return sorted(outputs.values(), key=lambda o: o.path)


def _odb(repo: Any, out: Output) -> Any:
    return repo.cache.local if out.hash_name == "md5" else repo.cache.legacy


def _hash_info(odb: Any, out: Output) -> Any:
    from dvc_data.hashfile.hash_info import HashInfo

    return HashInfo(odb.hash_name, out.md5)


def _load(odb: Any, out: Output) -> Any:
    """The output's DVC object (a file, or a Tree for a directory); None when the cache
    lacks it (or a directory's listing)."""
    from dvc_data.hashfile import load
    from dvc_objects.errors import ObjectFormatError

    try:
        obj = load(odb, _hash_info(odb, out))
    except (FileNotFoundError, ObjectFormatError):
        return None
    if not out.md5.endswith(".dir") and not odb.exists(out.md5):
        return None
    return obj


def missing_files(repo: Any, out: Output) -> list[str]:
    """The files of `out` that the local cache lacks (all of it when the object, or a
    directory's listing, is missing)."""
    odb = _odb(repo, out)
    obj = _load(odb, out)
    if obj is None:
        return [out.path]
    if not out.md5.endswith(".dir"):
        return []
    return [f"{out.path}/{'/'.join(key)}" for key, _, oid in obj if not odb.exists(oid.value)]


def _pull(repo: Any, outs: list[Output], remote: str) -> None:
    """Fetch `outs` from the remote into the local cache: listings of directories first, then
    every file they name and every single-file output."""
    from dvc.exceptions import DvcException

    # what is missing everywhere is reported once, by `restore`, not by DVC's warnings
    quiet = logging.getLogger("dvc.data_cloud")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        dirs = [_hash_info(_odb(repo, o), o) for o in outs if o.md5.endswith(".dir")]
        if dirs:
            repo.cloud.pull(dirs)
        wanted = []
        for out in outs:
            odb = _odb(repo, out)
            obj = _load(odb, out) if out.md5.endswith(".dir") else None
            wanted.append(_hash_info(odb, out))
            if obj is not None:
                wanted.extend(oid for _, _, oid in obj)
        repo.cloud.pull(wanted)
    except (DvcException, OSError) as exc:
        raise RemoteUnavailable(f"DVC remote {remote}: {exc}") from exc
    finally:
        quiet.setLevel(level)


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - DVC's content hash, not a security use
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_mlflow(out: Output, tmp: Path) -> Path | None:
    """An uncached output from its stage run's MLflow artifacts, if it is there with the
    recorded md5."""
    if not out.run_id or out.md5.endswith(".dir"):
        return None
    import mlflow

    try:
        got = Path(mlflow.artifacts.download_artifacts(run_id=out.run_id, artifact_path=out.path,
                                                       dst_path=str(tmp)))
    except Exception:  # noqa: BLE001 - not logged (too large, or an older run)
        return None
    return got if got.is_file() and _md5(got) == out.md5 else None


def _place(src: Path, dest: Path) -> None:
    """Copy `src` over `dest` atomically (a temporary file renamed into place)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def uncached_paths(repo: Any) -> set[str]:
    """Outputs the project's dvc.yaml keeps out of the DVC cache (`cache: false`)."""
    return {str(out.def_path) for stage in repo.index.stages for out in stage.outs
            if not out.use_cache}


def _plan(repo: Any, outs: list[Output], remote: str | None,
          tmp: Path) -> tuple[dict[str, Path], list[str]]:
    """Get every output into the cache (pulling from the remote what it lacks) or, for the
    outputs DVC does not cache, into a temporary file from MLflow; return the latter (path
    -> file) and the files still missing."""
    uncached = uncached_paths(repo)
    lacking = [o for o in outs if o.path not in uncached and missing_files(repo, o)]
    if lacking and remote is not None:
        log.info("fetching %d output(s) from the DVC remote %s", len(lacking), remote)
        _pull(repo, lacking, remote)
        lacking = [o for o in lacking if missing_files(repo, o)]
    artifacts: dict[str, Path] = {}
    missing: list[str] = []
    for out in lacking + [o for o in outs if o.path in uncached]:
        got = _from_mlflow(out, tmp)
        if got is not None:
            artifacts[out.path] = got
        else:
            missing.extend(missing_files(repo, out) if out.path not in uncached else [out.path])
    return artifacts, missing


@contextmanager
def _workspace_lock(repo: Any, hold: bool) -> Iterator[None]:
    """DVC's repo lock while restoring over the workspace, so that no stage (`dvc repro`)
    writes it at the same time; nothing when writing elsewhere."""
    if not hold:
        yield
        return
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    try:
        with lock_repo(repo):
            yield
    except LockError as exc:
        raise WorkspaceBusy(f"the DVC workspace is busy (a stage is running?): {exc}; "
                            "try again later or restore with --to DIR") from exc


def restore(run: str, to: Path | None = None, root: Path | None = None) -> Restored:
    """Write every output of `run` (an MLflow or Airflow run id) under `to` (default: the
    project, in place) exactly as the run produced it; an InputError names the missing files
    and nothing is written when any is missing."""
    from dvc_data.hashfile.checkout import checkout

    root = root or project_root()
    runs = find_runs(run)
    outs: dict[str, Output] = {}
    for found in runs:
        outs |= {o.path: o for o in run_outputs(found)}
    if not outs:
        raise InputError(f"run {run}: no stage outputs recorded (no finished stage logged "
                         "its dvc.lock entry)")
    target = (to or root).resolve()
    remote = dvc_remote(root)
    with open_repo(root, remote) as repo, tempfile.TemporaryDirectory() as tmp, \
            _workspace_lock(repo, to is None):
        artifacts, missing = _plan(repo, list(outs.values()), remote, Path(tmp))
        if missing:
            where = f"the DVC remote {remote}" if remote else "a DVC remote (none configured)"
            raise InputError(f"run {run}: {len(missing)} file(s) in neither the DVC cache nor "
                             f"{where}: {', '.join(missing)}")
        result = Restored([r.info.run_id for r in runs], target)
        for out in sorted(outs.values(), key=lambda o: o.path):
            dest = target / out.path
            if out.path in artifacts:
                _place(artifacts[out.path], dest)
                source = "mlflow"
            else:
                odb = _odb(repo, out)
                dest.parent.mkdir(parents=True, exist_ok=True)
                checkout(str(dest), repo.fs, _load(odb, out), odb, force=True)
                source = "dvc"
            result.outputs.append({"path": out.path, "md5": out.md5, "stage": out.stage,
                                   "source": source, "written": str(dest)})
    return result


def check_target(to: str | None) -> Path | None:
    """The `--to` folder: None for the workspace; a file there is a ConfigError."""
    if to is None:
        return None
    path = Path(to).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError("not a folder", source="the command line", key="to")
    return path
