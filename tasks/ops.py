"""`crediflow restore RUN` and `crediflow lineage MODEL`: the pipeline's versions and lineage
on the command line (they need DVC and MLflow, so they live in the tasks layer; `crediflow`
reaches them through tasks/cli.py).

Exit status 65 with one line when the input is refused: an unknown run, model or alias, or
a run whose files are in neither the DVC cache nor the remote; 1 when the DVC remote cannot
be read or a stage holds the workspace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from crediflow.errors import ConfigError, CrediflowError
from tasks.settings import apply
from tasks.stage import EXIT_BAD_INPUT

COMMANDS = ("restore", "lineage")
_CLI = "the command line"


def _restore(args: argparse.Namespace) -> None:
    from tasks.restore import check_target, restore

    done = restore(args.run, to=check_target(args.to))
    if args.json:
        print(json.dumps({"runs": done.runs, "target": str(done.target),
                          "outputs": done.outputs}, indent=2))
        return
    print(f"restored {len(done.outputs)} output(s) of {', '.join(done.runs)} into {done.target}")
    for out in done.outputs:
        print(f"  {out['path']}  {out['md5']}  ({out['stage'] or '?'}, from {out['source']})")


def _lineage(args: argparse.Namespace) -> None:
    from tasks.provenance import as_json, as_text, chain

    links = chain(args.model)
    print(json.dumps(as_json(links), indent=2) if args.json else as_text(links))


def build_parser(prog: str = "crediflow") -> argparse.ArgumentParser:
    """The parser of the `restore` and `lineage` subcommands."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    restore = sub.add_parser(
        "restore", help="bring back every stage output of a pipeline run, byte for byte",
        description="Bring back every stage output of a pipeline run from the DVC cache or "
                    "params.yaml's DVC remote (dvc.remote), into the workspace or --to DIR.")
    restore.add_argument("run", metavar="RUN", help="an MLflow pipeline (or stage) run id, or "
                         "an Airflow run id")
    restore.add_argument("--to", metavar="DIR", help="write the outputs under DIR (same "
                         "relative paths) instead of over the workspace")
    restore.add_argument("--json", action="store_true", help="print what was written as JSON")
    restore.set_defaults(run_command=_restore)
    lineage = sub.add_parser(
        "lineage", help="a model's chain back to the raw data",
        description="model version -> training run -> token-cleaned -> selected -> fixed -> "
                    "audited -> ingested -> raw, with DVC hashes, params, git commit, Airflow "
                    "run and MLflow link of each.")
    lineage.add_argument("model", metavar="MODEL", help="NAME/VERSION (crediflow-sft/3), "
                         "NAME@ALIAS (crediflow-sft@champion) or an MLflow run id")
    lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
    lineage.set_defaults(run_command=_lineage)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run `restore` or `lineage`; exit 65 with one line on bad input, 1 when the DVC
    remote cannot be read or the workspace is busy."""
    from tasks.restore import RestoreFailed

    args = build_parser().parse_args(argv)
    apply()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    run: Callable[[argparse.Namespace], None] = args.run_command
    try:
        run(args)
    except CrediflowError as exc:
        if isinstance(exc, ConfigError) and exc.source is None:
            exc = exc.with_source(_CLI)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except RestoreFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
