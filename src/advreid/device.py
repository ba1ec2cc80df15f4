"""Device selection and process-group helpers: the one place in the project that names CUDA.

The same training entry point runs alone or under ``torchrun --standalone --nproc_per_node N``: torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, and :func:`init_distributed` picks NCCL on GPUs and Gloo on CPUs.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from advreid.params import ParamsError

_CUDA = "cuda"


def set_threads(threads: int, where: str) -> None:
    """Use ``threads`` intra-op CPU threads (0 keeps torch's default); ``where`` names the param in errors."""
    if threads < 0:
        raise ParamsError(f"{where}: must be >= 0 (0 = torch's default), got {threads}")
    if threads > 0:
        torch.set_num_threads(threads)


def make_deterministic(threads: int, where: str) -> None:
    """Make training repeat bit for bit on this machine: ``threads`` intra-op CPU threads (0 keeps torch's default,
    one per core, so results then depend on the core count) and torch's deterministic algorithms.

    Measured on CPU (README, "Determinism"): runs repeat exactly at a fixed thread count, and 1 vs 2 threads give
    different weights (the partition of parallel reductions follows the thread count); deterministic algorithms
    change nothing on CPU but make CUDA kernels (cuDNN, scatter/index adds, cuBLAS with the workspace setting
    below) repeat. What no flag removes is the instruction set: ATen's vectorised kernels, oneDNN's JIT kernels and
    MKL's GEMM each pick AVX-512, AVX2 or SSE code by CPU, and those round differently.
    """
    set_threads(threads, where)
    # cuBLAS reads this when its first handle is created: reproducible GEMM reductions on CUDA
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a CUDA op without a deterministic kernel warns instead of stopping the stage
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def select_device(preference: str = "auto") -> torch.device:
    """The device to run on: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: ``preference`` is not a device name.
        RuntimeError: a CUDA device was asked for and none (or not that index) is available.
    """
    if preference == "auto":
        return torch.device(_CUDA if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as err:
        raise ValueError(f"device preference '{preference}' is not a device name (auto, cpu, cuda, cuda:N)") from err
    if device.type == _CUDA:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device preference '{preference}': CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device preference '{preference}': only {torch.cuda.device_count()} CUDA device(s) available"
            )
    return device


def supports_amp(device: torch.device) -> bool:
    """Whether float16 autocast with a GradScaler is used on ``device`` (CUDA only)."""
    return device.type == _CUDA


def rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and every CUDA device), as checkpointable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # plain ints so the checkpoint loads with torch.load(weights_only=True)
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state[_CUDA] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if _CUDA in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state[_CUDA])


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_distributed(
    preference: str = "auto",
    *,
    init_method: str = "env://",
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
) -> tuple[int, int, torch.device]:
    """Join the process group described by the arguments or torchrun's environment; return (rank, world_size, device).

    Without ``WORLD_SIZE`` > 1 (or ``world_size`` > 1) this is a plain single-process run: no group is created
    and the device comes from :func:`select_device`. Under DDP each process takes GPU ``LOCAL_RANK`` with NCCL,
    or the CPU with Gloo when the selected device is not CUDA.
    """
    rank_ = int(os.environ.get("RANK", 0)) if rank is None else rank
    size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local = int(os.environ.get("LOCAL_RANK", rank_)) if local_rank is None else local_rank
    if size < 1 or not 0 <= rank_ < size:
        raise ValueError(f"init_distributed: invalid rank {rank_} for world_size {size}")
    device = select_device(preference)
    if size == 1:
        return 0, 1, device
    if device.type == _CUDA:
        device = torch.device(_CUDA, local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == _CUDA else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank_, world_size=size)
    return rank_, size, device


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` (already on ``device``) in DistributedDataParallel when a process group is running."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == _CUDA else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
