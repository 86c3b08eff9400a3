"""Run pipeline DAGs once through Airflow (`dag.test()`) and say where their results are.

`python -m tasks.demo curate train` is what `make demo` runs after building the demo data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tasks.catalog import STAGE_FOLDERS, Catalog
from tasks.config import pipeline
from tasks.settings import apply, project_root


def run_dag(dag_id: str):
    """Parse the project's DAG folder and run `dag_id` once in this process; return the DagRun."""
    apply()
    from airflow.dag_processing.dagbag import DagBag

    from tasks.settings import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if dag_id not in bag.dags:
        raise SystemExit(f"DAG {dag_id!r} not found; import errors: {bag.import_errors}")
    return bag.dags[dag_id].test()


def summarize(dag_id: str, run) -> None:
    """Where the run's outputs, reports, MLflow runs and registered model are."""
    from tasks import lineage

    parent = lineage.pipeline_run(dag_id, dag_id, run.run_id)
    root = project_root()
    print("\n" + "=" * 72)
    print(f"DAG {dag_id} run {run.run_id}: {run.state}")
    print(f"MLflow: parent run {parent} in experiment "
          f"{lineage.experiment_id()} ({root / 'mlflow.db'}); `make mlflow`, then "
          f"http://localhost:5000")
    catalog = Catalog(root)
    for stage in pipeline(dag_id).stages:
        reports = catalog.reports(stage)
        outputs = (f"outputs in {catalog.folder(STAGE_FOLDERS[stage])}, "
                   if stage in STAGE_FOLDERS else "")
        print(f"  {stage}: {outputs}reports in {reports}")
        metrics = reports / "metrics.json"
        if metrics.exists():
            report = json.loads(metrics.read_text())
            summary = {k: v for k, v in report.items() if not isinstance(v, dict | list)}
            print(f"    {summary}")
            if "registered" in report:
                model = report["registered"]
                alias = model.get("aliases", ["candidate"])[0]
                print(f"    model: {catalog.folder(STAGE_FOLDERS[stage])}; MLflow registered "
                      f"model {model['name']!r} version {model['version']} (alias {alias}), "
                      f"models:/{model['name']}@{alias}")
            _print_evaluation(report)
        if (reports / "tokens.html").exists():
            print(f"    kept and dropped tokens: {reports / 'tokens.html'}")
    print("Airflow UI: `make airflow`, then http://localhost:8080")
    print("=" * 72)


def _print_evaluation(report: dict) -> None:
    """The evaluate stage's table and the gate's verdict, when `report` is its metrics."""
    if "models" not in report or "gate" not in report:
        return
    for role, row in report["models"].items():
        print(f"    {role:>9}: perplexity {row['perplexity']:.3f}, "
              f"{row['tokens_per_second']:.1f} tokens/s, {row['params'] / 1e6:.1f}M params")
    gate = report["gate"]
    for role, reason in gate["reasons"].items():
        print(f"    gate, {role}: {'passed' if gate['passed'][role] else 'failed'}: {reason}")
    state = "now" if gate.get("changed") else "still"
    version = gate.get("champion_version")
    print(f"    champion: {state} version {version} of {gate.get('registered_model')!r}"
          if version is not None else "    champion: none yet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo", description=__doc__)
    parser.add_argument("dag_ids", nargs="*", default=["curate", "train"],
                        help="DAGs to run, in order (default: curate train)")
    args = parser.parse_args(argv)
    logging.getLogger("airflow").setLevel(logging.WARNING)
    for dag_id in args.dag_ids:
        run = run_dag(dag_id)
        summarize(dag_id, run)
        if str(run.state) != "success":
            sys.exit(1)


if __name__ == "__main__":
    main()
