"""Run a stage in a real subprocess and SIGKILL it mid-training, once its checkpoint shows enough progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def kill_stage_when(
    root: Path, stage: str, args: Sequence[str], ready: Callable[[], bool], timeout: float = 120
) -> None:
    """Start ``python -m advreid.stages.<stage> <args>`` in project ``root``, poll ``ready()`` every 50 ms and
    SIGKILL the process as soon as it is true; fail if the process ended first (then it was not killed)."""
    env = {
        **os.environ,
        "ADVREID_ROOT": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", f"advreid.stages.{stage}", *args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"{stage} ended (exit {process.returncode}) before it was killed"
