"""Project-local locations and quiet, telemetry-free defaults for every tool.

Caches, the MLflow database and Prefect's home live inside the project directory, never in the user's
home. Values already set in the environment win, so pointing at servers is configuration only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

QUIET_DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "DVC_NO_ANALYTICS": "1",
    "GLOG_minloglevel": "2",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}

# The thread budget of a stage process, set by the flow per parallel slot or per Kubernetes Job (OpenMP, MKL,
# OpenBLAS; ADVREID_THREADS is set too, though no stage reads it).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ADVREID_THREADS")

# Prefect's 20 s default for its ephemeral API server to answer fails on a loaded machine (measured: 2 of 2
# `make run` at load 7); a slow start costs nothing when the server comes up sooner.
PREFECT_STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PREFECT_STARTUP_TIMEOUT_SECONDS = 180

# glibc's malloc serves blocks above 128 KiB-32 MiB (its dynamic threshold) with fresh mmap pages and returns freed
# memory to the kernel: a CPU stage that allocates and frees activation-sized tensors every step then spends ~15% of
# its time in page faults (eval_defense@mp_snn: 12.6 M minor faults, 32 s system time of 214 s). Keeping freed
# memory in the heap cut one EOT-10 attack step of the demo MP-SNN by 10% (1.79 -> 1.61 CPU s) and its page faults
# 4x. Allocation never changes what is computed.
MALLOC_KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def project_root() -> Path:
    """The project directory: ``DVC_ROOT`` when DVC runs a stage, else the nearest parent with dvc.yaml."""
    if root := os.environ.get("ADVREID_ROOT") or os.environ.get("DVC_ROOT"):
        return Path(root).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file() or (candidate / ".dvc").is_dir():
            return candidate
    return here


def quiet_tools() -> None:
    """Quiet, telemetry-free defaults; call before importing Prefect, which reads its settings at import."""
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault(PREFECT_STARTUP_TIMEOUT_ENV, str(PREFECT_STARTUP_TIMEOUT_SECONDS))


def apply_environment(root: Path | None = None) -> Path:
    """Set project-local homes and quiet defaults (without overriding what the user set); return the root.

    Also puts this interpreter's ``bin`` directory first on ``PATH`` so that ``dvc repro`` started from here
    finds the ``advreid`` command of the same environment even when the venv is not activated.
    """
    root = (root or project_root()).resolve()
    quiet_tools()
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(root / ".dvc" / "tmp" / "site-cache"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    keep_freed_memory()
    return root


def keep_freed_memory(limit: int = MALLOC_KEEP_BYTES) -> bool:
    """glibc only: serve allocations up to ``limit`` bytes from the heap and keep up to ``limit`` freed bytes there
    (``mallopt`` M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), so steady-state tensor churn reuses pages instead of
    faulting fresh ones in. Returns whether it applied (False on other C libraries, or with
    ``ADVREID_MALLOC_DEFAULTS=1``)."""
    if os.environ.get("ADVREID_MALLOC_DEFAULTS") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
