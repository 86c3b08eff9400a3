"""The `crediflow` command: `restore` and `lineage` (tasks/ops.py, which need DVC and MLflow)
here in the tasks layer, everything else handed to the library's CLI (crediflow.cli), which
never imports the orchestration stack."""

from __future__ import annotations

import sys

from tasks.ops import COMMANDS


def main(argv: list[str] | None = None) -> None:
    """Dispatch one `crediflow` command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        from tasks.ops import main as ops_main

        ops_main(argv)
        return
    from crediflow.cli import main as library_main

    if not argv or argv[0] in ("-h", "--help"):
        try:
            library_main(argv)
        finally:
            print("\npipeline commands (DVC and MLflow):\n"
                  "  restore RUN [--to DIR]  bring back a pipeline run's outputs byte for byte\n"
                  "  lineage MODEL [--json]  a model's chain back to the raw data")
        return
    library_main(argv)


if __name__ == "__main__":
    main()
