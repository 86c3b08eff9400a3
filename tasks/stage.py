"""What every stage entry point shares: paths relative to the project, logging, and turning
crediflow's own errors into one clear line and a non-zero exit instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from crediflow.errors import ConfigError, CrediflowError
from tasks.settings import apply

# The exit status of a stage that refused its input (sysexits' EX_DATAERR): retrying cannot help.
EXIT_BAD_INPUT = 65


def stage_main(run: Callable[[], object]) -> None:
    """Run one stage as a program: exit 0 on success, EXIT_BAD_INPUT and the reason on bad input."""
    apply()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run()
    except CrediflowError as exc:
        if isinstance(exc, ConfigError) and exc.source is None:
            exc = exc.with_source("params.yaml")  # a stage's settings come from params.yaml
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
