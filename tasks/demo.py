"""Run a pipeline DAG once through Airflow (`dag.test()`) and say where its results are.

`python -m tasks.demo curate` is what `make demo` runs after building the demo data.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo", description=__doc__)
    parser.add_argument("dag_id", nargs="?", default="curate")
    args = parser.parse_args(argv)
    logging.getLogger("airflow").setLevel(logging.WARNING)
    run = run_dag(args.dag_id)
    from tasks import lineage

    parent = lineage.pipeline_run(args.dag_id, args.dag_id, run.run_id)
    root = project_root()
    print("\n" + "=" * 72)
    print(f"DAG {args.dag_id} run {run.run_id}: {run.state}")
    print(f"MLflow: parent run {parent} in experiment "
          f"{lineage.experiment_id()} ({root / 'mlflow.db'}); `make mlflow`, then "
          f"http://localhost:5000")
    catalog = Catalog(root)
    for stage in pipeline(args.dag_id).stages:
        reports = catalog.reports(stage)
        print(f"  {stage}: outputs in {catalog.folder(STAGE_FOLDERS[stage])}, reports in "
              f"{reports}")
        metrics = reports / "metrics.json"
        if metrics.exists():
            summary = {k: v for k, v in json.loads(metrics.read_text()).items()
                       if not isinstance(v, dict | list)}
            print(f"    {summary}")
    print("Airflow UI: `make airflow`, then http://localhost:8080")
    print("=" * 72)
    if str(run.state) != "success":
        sys.exit(1)


if __name__ == "__main__":
    main()
