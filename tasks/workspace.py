"""The project's DVC workspace lock: held by every stage run (an Airflow task on the worker,
the stage runner inside a container, `python -m tasks.runner`), so that two runs never write
the workspace at once, whichever pool or machine their tasks run in, as long as they share the
project folder (a Docker bind mount, a Kubernetes volume claim whose file system honours
flock)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from tasks.settings import project_root

log = logging.getLogger("crediflow.workspace")
# inside .dvc/tmp, which DVC keeps out of git
WORKSPACE_LOCK = Path(".dvc") / "tmp" / "crediflow-workspace.lock"


@contextlib.contextmanager
def workspace_lock(holder: str) -> Iterator[None]:
    """Hold the project's DVC workspace while a stage runs; wait (and say for whom) while
    another run's stage holds it. Nothing to hold in a folder without DVC."""
    root = project_root()
    if not (root / ".dvc").is_dir():
        yield
        return
    path = root / WORKSPACE_LOCK
    path.parent.mkdir(exist_ok=True)
    with path.open("a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder_now = fh.read().strip() or "another run"
            log.info("waiting for the DVC workspace, held by %s", holder_now)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(holder)
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
