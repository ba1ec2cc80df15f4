"""The Re-ID training engine: epochs, warm-up + step/cosine schedules, AMP, checkpoints and resume, DDP-aware.

:class:`ReIDEngine` trains with L_V = L_CE + L_Tri (thesis Eq. 5.1). A new training method subclasses it and
overrides only :meth:`ReIDEngine.forward_backward`, ``batch -> {name: float}``; the loop averages those numbers
over the epoch's images. Every epoch ends with one checkpoint (model, optimizer, scheduler, AMP scaler, epoch,
history, random states) written atomically to ``checkpoint_dir/last.pt`` by rank 0; a run that finds ``last.pt``
continues from it, and on CPU with a fixed seed the result is bit-identical to an uninterrupted run.

The same code runs under ``torchrun --standalone --nproc_per_node N``::

    rank, world_size, device = init_distributed(preference)          # advreid.device
    model = wrap_distributed(build_reid_model(...).to(device), device)
    sampler = PKSampler(labels, p, k, seed, rank, world_size)
    history = train(model, DataLoader(dataset, p * k, sampler=sampler), sampler, optimizer, scheduler, ...)
    cleanup_distributed()
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from advreid.device import barrier, get_rank, is_distributed, rng_state, set_rng_state, supports_amp, unwrap
from advreid.errors import CheckpointError
from advreid.io import atomic_path, load_torch
from advreid.progress import progress
from advreid.reid.losses import vanilla_reid_loss

LAST_CHECKPOINT = "last.pt"
SCHEDULES = ("step", "cosine")
# Wall-clock numbers vary run to run: they reach on_epoch_end (MLflow) but never the history a checkpoint stores,
# so a retraining with identical weights writes identical bytes (and DVC hashes).
TIMINGS = ("images_per_second",)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and Python from the per-worker seed torch already derived."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_scheduler(
    optimizer: Optimizer,
    kind: str = "step",
    epochs: int = 1,
    warmup_epochs: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    *,
    warmup_factor: float = 0.01,
) -> LambdaLR:
    """Per-epoch learning-rate factor: linear warm-up, then step decay or cosine annealing.

    For epoch e (0-based, the scheduler stepped once per epoch):
      e < W: warmup_factor + (1 - warmup_factor) e / W;
      step: gamma ** (number of milestones <= e);  cosine: (1 + cos(pi (e - W) / (epochs - W))) / 2.
    """
    if kind not in SCHEDULES:
        raise KeyError(f"unknown schedule '{kind}'; valid: {list(SCHEDULES)}")
    if epochs < 1 or not 0 <= warmup_epochs <= epochs:
        raise ValueError(
            f"build_scheduler: need epochs >= 1 and 0 <= warmup_epochs <= epochs, got {epochs}, {warmup_epochs}"
        )
    if gamma <= 0 or not 0 < warmup_factor <= 1:
        raise ValueError(f"build_scheduler: need gamma > 0 and 0 < warmup_factor <= 1, got {gamma}, {warmup_factor}")
    steps = sorted(int(m) for m in milestones)
    if any(m < 1 for m in steps):
        raise ValueError(f"build_scheduler: milestones must be positive epochs, got {list(milestones)}")

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return warmup_factor + (1.0 - warmup_factor) * epoch / warmup_epochs
        if kind == "step":
            return gamma ** bisect_right(steps, epoch)
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    *,
    epoch: int,
    history: list[dict[str, float]],
    rng: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write the one checkpoint format atomically: state dicts, completed ``epoch``, ``history``, random states."""
    checkpoint = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        # Interned keys: pickle writes a string once per object, so records whose keys are equal but distinct
        # objects (f-strings, or records read back from a checkpoint) would otherwise give other bytes.
        "history": [{sys.intern(key): value for key, value in record.items()} for record in history],
        "rng": rng,
        "meta": meta or {},
    }
    # Through a file handle: given a path, torch.save records the (random) temporary name inside the zip,
    # and identical training runs would give files with different bytes (and DVC hashes).
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into the given objects; return the whole checkpoint dict."""
    checkpoint = load_torch(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path}: not a checkpoint written by advreid (no 'model' entry)")
    try:
        unwrap(model).load_state_dict(checkpoint["model"])
    except RuntimeError as err:  # torch lists every mismatched tensor; the first line says what kind
        raise CheckpointError(f"{path}: its weights do not fit this model ({str(err).splitlines()[0]})") from None
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if target is None:
            continue
        if checkpoint[name] is None:
            raise ValueError(f"checkpoint {path} has no {name} state to resume from")
        target.load_state_dict(checkpoint[name])
    return checkpoint


def resumable_epochs(last: str | Path, fingerprint: str, epochs: int, *, stage: str, written_with: str) -> int:
    """Epochs completed in the checkpoint ``last`` if a training of ``epochs`` epochs with ``fingerprint`` can
    resume from it; else 0, after rank 0 deletes it and says why on stderr (``written_with`` names what the
    fingerprint covers, e.g. "settings, data or number of processes"). DDP-aware: every rank reads it first."""
    last = Path(last)
    if not last.is_file():
        return 0
    try:
        checkpoint = load_torch(last)
        done, found = int(checkpoint["epoch"]), checkpoint.get("meta", {}).get("fingerprint")
        reason = None
        if found != fingerprint:
            reason = f"it was written with other {written_with}"
        elif done >= epochs:
            reason = "that training had finished, so this run is a retraining"
    except CheckpointError as err:  # names the problem without torch's advice to unpickle unsafely
        done, reason = 0, f"it cannot be read ({err})"
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        done, reason = 0, f"it is not a training checkpoint ({type(err).__name__}: {err})"
    barrier()  # every rank has read it before rank 0 removes it
    if reason is None:
        return done
    if get_rank() == 0:
        print(f"{stage}: discarding checkpoint {last}: {reason}; training from epoch 1", file=sys.stderr)
        last.unlink()
    barrier()
    return 0


class ReIDEngine:
    """Trains ``model`` (already on ``device``, possibly DDP-wrapped) with cross-entropy + batch-hard triplet.

    Args:
        amp: float16 autocast with gradient scaling; honoured on CUDA only (a warning says when it is not).
        epsilon, margin, soft_margin, triplet_weight: loss settings (see :mod:`advreid.reid.losses`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler | None = None,
        *,
        device: torch.device,
        amp: bool = False,
        epsilon: float = 0.1,
        margin: float = 0.3,
        soft_margin: bool = False,
        triplet_weight: float = 1.0,
    ) -> None:
        parameter = next(model.parameters(), None)
        if parameter is not None and parameter.device.type != device.type:
            raise ValueError(f"model is on {parameter.device}, engine device is {device}: move the model first")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.amp = amp and supports_amp(device)
        if amp and not self.amp:
            warnings.warn(f"amp=True ignored: mixed precision is used on CUDA only, not {device}", stacklevel=2)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.epsilon, self.margin, self.soft_margin, self.triplet_weight = epsilon, margin, soft_margin, triplet_weight

    def autocast(self) -> torch.autocast:
        """Context for the forward pass (float16 on CUDA when ``amp``, a no-op otherwise)."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward through ``loss`` and one optimizer step, with AMP loss scaling when enabled."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def forward_backward(self, batch: Sequence[Any]) -> dict[str, float]:
        """One training step on ``batch`` = (images (B, 3, H, W) in [0, 1], labels (B,), ...); returns batch means."""
        images = batch[0].to(self.device, non_blocking=True)
        labels = batch[1].to(self.device, non_blocking=True)
        with self.autocast():
            out = self.model(images)
        loss, loss_ce, loss_triplet = vanilla_reid_loss(
            out.logits,
            out.feat_triplet,
            labels,
            epsilon=self.epsilon,
            margin=self.margin,
            soft_margin=self.soft_margin,
            triplet_weight=self.triplet_weight,
        )
        self.optimizer_step(loss)
        accuracy = (out.logits.argmax(1) == labels).float().mean()
        return {
            "loss_ce": loss_ce.item(),
            "loss_triplet": loss_triplet.item(),
            "loss": loss.item(),
            "acc": accuracy.item(),
        }

    def train_epoch(self, loader: Iterable, description: str = "", log_every: int = 10) -> dict[str, float]:
        """One pass over ``loader``; image-weighted means of :meth:`forward_backward`'s numbers, over all ranks."""
        self.model.train()
        totals: dict[str, float] = {}
        images = 0
        show = get_rank() == 0
        start = time.perf_counter()
        with progress(loader, desc=description, unit="batch", enabled=get_rank() == 0) as bar:
            for step, batch in enumerate(bar, 1):
                size = len(batch[0])
                stats = self.forward_backward(batch)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value * size
                images += size
                if show and step % log_every == 0:
                    rate = images / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{rate:.0f}")
        elapsed = time.perf_counter() - start
        if images == 0:
            raise RuntimeError("train_epoch: the loader yielded no batches")
        keys = sorted(totals)
        if is_distributed():
            # every rank computes the same key set, so one all-reduce of the sums gives global means
            summed = torch.tensor([totals[k] for k in keys] + [images], dtype=torch.float64, device=self.device)
            dist.all_reduce(summed)
            totals = dict(zip(keys, summed[:-1].tolist(), strict=True))
            images = int(summed[-1].item())
        record = {key: totals[key] / images for key in keys}
        record["images_per_second"] = images / elapsed
        return record

    def run(
        self,
        loader: Iterable,
        sampler: Any,
        epochs: int,
        checkpoint_dir: str | Path | None,
        *,
        log_every: int = 10,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``epochs`` epochs are done, resuming from ``checkpoint_dir/last.pt`` when it exists.

        ``sampler.set_epoch(epoch)`` is called before each epoch when the sampler has it. ``on_epoch_end(epoch,
        record)`` runs on every rank after the checkpoint is written, with the epoch's history record plus its
        :data:`TIMINGS` (``images_per_second``); random draws it makes do not reach training (the random states
        are restored after it), so evaluating there keeps resume exact. Under DDP every rank resumes with rank 0's
        saved random states.
        Returns the history: one dict per epoch with the averaged losses, ``acc``, ``lr`` (during the epoch) and
        ``epoch`` (1-based), no timings.
        """
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        last = Path(checkpoint_dir) / LAST_CHECKPOINT if checkpoint_dir is not None else None
        history: list[dict[str, float]] = []
        start_epoch = 0
        if last is not None and last.is_file():
            checkpoint = load_checkpoint(last, self.model, self.optimizer, self.scheduler, self.scaler)
            start_epoch, history = int(checkpoint["epoch"]), [_without_timings(r) for r in checkpoint["history"]]
            set_rng_state(checkpoint["rng"])
            generator = getattr(loader, "generator", None)
            if generator is not None and "loader" in checkpoint["rng"]:
                generator.set_state(checkpoint["rng"]["loader"])
        for epoch in range(start_epoch, epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            record = self.train_epoch(loader, f"epoch {epoch + 1}/{epochs}", log_every)
            record.update(lr=lr, epoch=epoch + 1)
            if self.scheduler is not None:
                self.scheduler.step()
            history.append(_without_timings(record))
            state = rng_state()
            generator = getattr(loader, "generator", None)  # a DataLoader's own shuffling generator, if given
            if generator is not None:
                state["loader"] = generator.get_state()
            if last is not None and get_rank() == 0:
                save_checkpoint(
                    last,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    self.scaler,
                    epoch=epoch + 1,
                    history=history,
                    rng=state,
                    meta=meta,
                )
            barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
                set_rng_state(state)
        return history


def _without_timings(record: dict[str, float]) -> dict[str, float]:
    # also for checkpoints written before timings were kept out of them
    return {key: value for key, value in record.items() if key not in TIMINGS}


def train(
    model: nn.Module,
    loader: Iterable,
    sampler: Any,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    epochs: int,
    checkpoint_dir: str | Path | None,
    *,
    device: torch.device,
    amp: bool = False,
    log_every: int = 10,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    engine_cls: type[ReIDEngine] = ReIDEngine,
    meta: dict[str, Any] | None = None,
    **loss_options: Any,
) -> list[dict[str, float]]:
    """Train ``model`` with ``engine_cls`` (default: CE + batch-hard triplet); see :meth:`ReIDEngine.run`.

    ``loss_options`` go to the engine (``epsilon``, ``margin``, ``soft_margin``, ``triplet_weight``); ``meta``
    is stored in every checkpoint (e.g. the model name and number of classes).
    """
    engine = engine_cls(model, optimizer, scheduler, device=device, amp=amp, **loss_options)
    return engine.run(
        loader, sampler, epochs, checkpoint_dir, log_every=log_every, on_epoch_end=on_epoch_end, meta=meta
    )
