"""A stage task that is stopped (timeout, kill) stops the stage's whole process group."""

from __future__ import annotations

import os
import subprocess
import time

from tasks.runner import stop_group


def test_stopping_a_stage_stops_its_children(tmp_path):
    pids = tmp_path / "pids"
    proc = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {pids}; wait"],
                            start_new_session=True)
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pids.read_text())
    stop_group(proc)
    assert proc.poll() is not None
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the stage's child process survived")
