"""`crediflow lineage MODEL`: a model's chain back to the raw data.

model version -> training run -> token-cleaned data -> selected -> fixed -> audited (and
embeddings) -> ingested -> raw, each with its DVC hash, params, code version (git commit),
Airflow run and MLflow link.

Where each link comes from:
- the registered version (`name/3`, `name@champion`) carries `dvc.<path>` tags for every
  upstream output, `git.commit`, `airflow.run_id` and `crediflow.stage`; its run is the
  training stage's child run;
- a stage run's `dvc_stage.json` (its dvc.lock entry) gives its params and the hashes of
  what it read and wrote; which stage writes a path comes from the project's DVC stages
  (`dvc.repo.Repo(...).index.stages`);
- the run that made an upstream output is found through the pipeline runs' `dvc.<path>`
  tags (the run that first produced that hash, not one where DVC skipped the stage); when a
  hash is not known (a file read from inside a directory output), the newest run of that
  stage that started before its consumer stands in;
- the logged models a stage run read (prune: the fine-tuned model; evaluate: each model it
  measured) are its MLflow model inputs, shown with their registered versions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crediflow.errors import InputError
from tasks.config import dvc_stages
from tasks.lineage import experiment_id, mlflow_module, run_url, ui_url
from tasks.restore import RUN_ID_PATTERN, stage_lock
from tasks.runner import open_repo


@dataclass
class Link:
    """One element of the chain: a model version, a stage run, or the raw source."""

    kind: str  # model | stage | raw
    name: str  # the model's name and version, the stage, or the raw path
    outputs: dict[str, str] = field(default_factory=dict)  # path -> DVC hash
    params: dict[str, Any] = field(default_factory=dict)
    git_commit: str = ""
    airflow_run: str = ""
    mlflow_run: str = ""
    mlflow_url: str = ""
    note: str = ""
    # the logged models the stage run read (MLflow model inputs): NAME/VERSION (MODEL_ID)
    model_inputs: list[str] = field(default_factory=list)


def _client() -> Any:
    return mlflow_module().MlflowClient()


def _version(ref: str) -> Any | None:
    """The model version `name/version` or `name@alias` names; None for anything else."""
    from mlflow.exceptions import MlflowException

    client = _client()
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise InputError(f"unknown model or alias {ref!r}") from None
    name, _, number = ref.rpartition("/")
    if name and number.isdigit():
        try:
            return client.get_model_version(name, number)
        except MlflowException:
            raise InputError(f"unknown model version {ref!r}") from None
    return None


def resolve(ref: str) -> tuple[Any | None, Any]:
    """(model version or None, the training/stage run) for a model reference or run id."""
    from mlflow.exceptions import MlflowException

    version = _version(ref)
    client = _client()
    if version is None:
        if not RUN_ID_PATTERN.match(ref):
            raise InputError(f"unknown model or run {ref!r}")
        try:
            run = client.get_run(ref)
        except MlflowException:
            raise InputError(f"unknown model or run {ref!r}: expected NAME/VERSION, "
                             "NAME@ALIAS or an MLflow run id") from None
        made = client.search_model_versions(f"run_id = '{ref}'")
        if made:  # the newest version it made, fetched again for its aliases
            newest = max(made, key=lambda v: int(v.version))
            version = client.get_model_version(newest.name, newest.version)
        return version, _stage_run_of(run)
    return version, client.get_run(version.run_id)


def _stage_run_of(run: Any) -> Any:
    """A stage run as it is; for a pipeline run, its last finished stage."""
    if run.data.tags.get("crediflow.role") != "pipeline":
        return run
    from tasks.restore import stage_runs

    children = stage_runs(run)
    if not children:
        raise InputError(f"pipeline run {run.info.run_id} has no finished stage")
    order = list(dvc_stages())
    return max(children.values(),
               key=lambda c: order.index(s) if (s := c.data.tags.get("crediflow.stage"))
               in order else -1)


def producers(root: Path | None = None) -> dict[str, str]:
    """Each cached or uncached output path of the project's DVC stages -> its stage."""
    with open_repo(root) as repo:
        return {str(out.def_path): stage.name for stage in repo.index.stages
                for out in stage.outs}


def _producer(path: str, outs: dict[str, str]) -> tuple[str, str] | None:
    """(stage, output path) of the output that holds `path` (itself or a folder above)."""
    for out, stage in outs.items():
        if path == out or path.startswith(out.rstrip("/") + "/"):
            return stage, out
    return None


def _is_data(path: str) -> bool:
    return not path.endswith((".py", ".yaml", ".yml", ".toml")) and not path.startswith(
        ("crediflow/", "tasks/"))


def find_producer_run(stage: str, out: str, md5: str | None, before: int) -> Any | None:
    """The stage run that produced `out` with hash `md5` (the first run that did not skip);
    without a hash, the newest finished run of `stage` that started before `before`."""
    client = _client()
    exp = experiment_id()
    if md5:
        parents = client.search_runs(
            [exp], order_by=["attributes.start_time ASC"],
            filter_string=f"tags.`crediflow.role` = 'pipeline' and tags.`dvc.{out}` = '{md5}'")
        candidates = []
        for parent in parents:
            candidates += client.search_runs(
                [exp], order_by=["attributes.start_time ASC"],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                              f"tags.`crediflow.stage` = '{stage}' and attributes.status = "
                              "'FINISHED'")
        made = [c for c in candidates if c.data.tags.get("dvc.skipped") != "true"]
        return (made or candidates or [None])[0]
    runs = client.search_runs(
        [exp], order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`crediflow.stage` = '{stage}' and tags.`crediflow.role` = "
                      f"'stage' and attributes.status = 'FINISHED' and "
                      f"attributes.start_time <= {before}")
    return runs[0] if runs else None


def _model_name(client: Any, model_id: str) -> str:
    """A logged model as `NAME/VERSION (MODEL_ID)` when a registered version holds it, else
    its model id."""
    from mlflow.exceptions import MlflowException

    try:
        logged = client.get_logged_model(model_id)
        versions = client.search_model_versions(f"run_id = '{logged.source_run_id}'")
    except MlflowException:
        return model_id
    for version in versions:
        # a version of a logged model: its model_id, or (the SQL store leaves that empty) its
        # source models:/MODEL_ID
        source = str(version.source or "").removeprefix("models:/")
        if model_id in (getattr(version, "model_id", None), source):
            return f"{version.name}/{version.version} ({model_id})"
    return model_id


def model_inputs(run_id: str) -> list[str]:
    """The logged models run `run_id` records as its inputs, named as `_model_name` does."""
    client = _client()
    run = client.get_run(run_id)
    return [_model_name(client, m.model_id)
            for m in (run.inputs.model_inputs if run.inputs else [])]


def _run_link(run: Any, stage: str, lock: dict) -> Link:
    tags = run.data.tags
    exp = run.info.experiment_id
    return Link(kind="stage", name=stage,
                outputs={o["path"]: o["md5"] for o in lock.get("outs", [])},
                params=lock.get("params", {}).get("params.yaml", {}),
                git_commit=tags.get("git.commit", ""), airflow_run=tags.get("airflow.run_id", ""),
                mlflow_run=run.info.run_id,
                mlflow_url=run_url(run.info.run_id, exp),
                note="DVC skipped it (unchanged)" if tags.get("dvc.skipped") == "true" else "",
                model_inputs=model_inputs(run.info.run_id))


def _model_link(version: Any) -> Link:
    tags = dict(version.tags)
    aliases = ", ".join(getattr(version, "aliases", []) or [])
    return Link(kind="model", name=f"{version.name}/{version.version}",
                outputs={k[4:]: v for k, v in tags.items() if k.startswith("dvc.")},
                params={k: v for k, v in tags.items() if not k.startswith(("dvc.", "git."))},
                git_commit=tags.get("git.commit", ""), airflow_run=tags.get("airflow.run_id", ""),
                mlflow_run=version.run_id,
                mlflow_url=f"{ui_url()}/#/models/{version.name}/versions/{version.version}",
                note=f"aliases: {aliases}" if aliases else "")


def chain(ref: str, root: Path | None = None) -> list[Link]:
    """The chain of `ref` (NAME/VERSION, NAME@ALIAS or a run id), newest first: the model
    version (when there is one), the stage runs upstream in the order of dvc.yaml, then the
    raw data."""
    version, start = resolve(ref)
    known = dict(_model_link(version).outputs) if version else {}
    outs = producers(root)
    order = list(dvc_stages(root))
    links: dict[str, Link] = {}
    raw: dict[str, str] = {}
    first = start.data.tags.get("crediflow.stage") or (
        version.tags.get("crediflow.stage", "") if version else "")
    todo = [(first, start)]
    while todo:
        stage, run = todo.pop(0)
        if stage in links:
            continue
        lock = stage_lock(run)
        links[stage] = _run_link(run, stage, lock)
        for dep in lock.get("deps", []):
            if not _is_data(dep["path"]):
                continue
            found = _producer(dep["path"], outs)
            if found is None:
                raw[dep["path"]] = dep["md5"]
                continue
            up, out = found
            md5 = known.get(out) or (dep["md5"] if dep["path"] == out else None)
            up_run = None if up in links else find_producer_run(up, out, md5,
                                                                run.info.start_time)
            if up_run is None and up not in links:
                links[up] = Link(kind="stage", name=up, outputs={out: md5 or ""},
                                 note="no MLflow run found for this output")
            elif up_run is not None:
                todo.append((up, up_run))
    ordered = sorted(links.values(),
                     key=lambda lk: -order.index(lk.name) if lk.name in order else 1)
    head = [_model_link(version)] if version else []
    return head + ordered + [Link(kind="raw", name=p, outputs={p: m}) for p, m in raw.items()]


def as_json(links: list[Link]) -> list[dict[str, Any]]:
    """The chain as plain data (`--json`)."""
    return [asdict(link) for link in links]


def _params_line(params: dict[str, Any]) -> str:
    from tasks.lineage import flatten

    return ", ".join(f"{k}={v}" for k, v in flatten(params).items())


def as_text(links: list[Link]) -> str:
    """The chain for people: one block per link, arrows between them."""
    lines: list[str] = []
    for i, link in enumerate(links):
        arrow = "" if i == 0 else "<- "
        trained = link.kind == "stage" and i > 0 and links[i - 1].kind == "model"
        head = {"model": f"model {link.name}",
                "stage": f"{'training run, ' if trained else ''}stage {link.name}",
                "raw": f"raw data {link.name}"}[link.kind]
        lines.append(f"{arrow}{head}" + (f"  ({link.note})" if link.note else ""))
        lines += [f"     {path}  {md5}" for path, md5 in link.outputs.items()]
        if link.params:
            lines.append(f"     params: {_params_line(link.params)}")
        if link.model_inputs:
            lines.append(f"     model inputs: {', '.join(link.model_inputs)}")
        facts = [f"git {link.git_commit[:12]}" if link.git_commit else "",
                 f"airflow run {link.airflow_run}" if link.airflow_run else "",
                 f"mlflow run {link.mlflow_run}" if link.mlflow_run else ""]
        if any(facts):
            lines.append("     " + ", ".join(f for f in facts if f))
        if link.mlflow_url:
            lines.append(f"     {link.mlflow_url}")
    return "\n".join(lines)
