"""The ``reid`` params section and the checkpoint of a trained Re-ID model, shared by every stage that loads one.

``model.pt`` is written by ``train_reid`` (``advreid.reid.engine.save_checkpoint`` with ``meta``: arch, num_classes,
feature_dim, height, width, source); :func:`load_trained_model` is the one way to read it back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advreid.errors import CheckpointError
from advreid.io import load_torch
from advreid.models.reid import REID_MODELS, ReIDModel, build_reid_model
from advreid.params import ParamsError

MODEL_KEYS = ("arch", "train", "eval")


@dataclass(frozen=True)
class ReIDParams:
    """The ``reid`` section: domains, device, CPU threads (0: torch's default) and the models by name."""

    source: str
    targets: tuple[str, ...]
    models: dict = field(default_factory=dict)
    device: str = "auto"
    threads: int = 0

    def check(self) -> ReIDParams:
        if self.source in self.targets:
            raise ParamsError(f"reid.targets: the source domain '{self.source}' cannot also be a target")
        if not self.models:
            raise ParamsError("reid.models: name at least one model")
        if self.threads < 0:
            raise ParamsError(f"reid.threads: must be >= 0 (0 = torch's default), got {self.threads}")
        return self


def model_entry(models: dict, name: str) -> dict[str, Any]:
    """``reid.models.<name>`` checked: ``arch`` a registered backbone, ``train`` / ``eval`` mappings."""
    if name not in models:
        raise ParamsError(f"params.yaml: reid.models has no '{name}'; known: {sorted(models)}")
    entry = models[name]
    where = f"reid.models.{name}"
    if not isinstance(entry, dict) or "arch" not in entry:
        raise ParamsError(f"{where}: expected a mapping with an 'arch' key, got {entry!r}")
    unknown = sorted(set(entry) - set(MODEL_KEYS))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; valid keys: {list(MODEL_KEYS)}")
    if entry["arch"] not in REID_MODELS:
        raise ParamsError(f"{where}.arch: unknown backbone {entry['arch']!r}; valid: {sorted(REID_MODELS)}")
    return entry


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[ReIDModel, dict[str, Any]]:
    """The model saved by ``train_reid`` (``model.pt``), in eval mode on ``device``, and its ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_reid stage for this model first")
    checkpoint = load_torch(path, "Re-ID model")
    meta = (checkpoint.get("meta") if isinstance(checkpoint, dict) else None) or {}
    missing = [key for key in ("arch", "num_classes", "height", "width") if key not in meta]
    if missing or "model" not in checkpoint:
        raise CheckpointError(f"{path}: not a train_reid model file (meta lacks {missing or 'nothing'}, or no weights)")
    with warnings.catch_warnings():
        # the trained weights replace the initialisation at once; "starts from scratch" would mislead
        warnings.filterwarnings("ignore", message=".*no pretrained_path given.*")
        model = build_reid_model(meta["arch"], meta["num_classes"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:  # torch lists every mismatched tensor; the first line says what kind
        raise CheckpointError(
            f"{path}: its weights do not fit the {meta['arch']} backbone its meta names "
            f"({str(err).splitlines()[0]}); retrain with the train_reid stage"
        ) from None
    return model.to(device).eval(), meta
