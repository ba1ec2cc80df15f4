"""What every dataset reader returns, and the error it raises on bad input."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from advreid.errors import BadInputError


class DatasetFormatError(BadInputError, ValueError):
    """A dataset on disk does not match its documented layout; the message names the file and problem."""


def link_problem(path: Path) -> str | None:
    """``"a symbolic link loop"`` / ``"a broken symbolic link (to ...)"`` if ``path`` is one, else None.

    ``Path.is_file()`` and ``is_dir()`` answer False for both, which would drop a file silently or call it missing.
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
    return None


@dataclass
class RawDataset:
    """A dataset read from disk, before it becomes parquet manifests.

    Attributes:
        name: dataset name (the registry key), written to the ``dataset`` column.
        kind: ``"reid"`` or ``"classification"``; decides which validation suite applies.
        frames: split name -> one row per image with the manifest core columns (and extras).
        arrays: array file name (e.g. ``"train.npy"``) -> uint8 images N x H x W x C, for array formats.
        image_size: (height, width) every image must have, or None where sizes vary (Re-ID crops).
        num_classes: number of classes for classification datasets (for the class-balance check).
    """

    name: str
    kind: str
    frames: dict[str, pd.DataFrame]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("reid", "classification"):
            raise ValueError(f"RawDataset {self.name}: kind must be 'reid' or 'classification', not {self.kind!r}")
