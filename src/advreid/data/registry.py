"""Dataset formats: which reader parses a layout and which validation rules its manifests must meet."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from advreid.data.formats.base import RawDataset
from advreid.params import ParamsError

# Re-ID id and camera ranges as each dataset declares them (label -1 = junk, 0 = distractor where used);
# image_size is given only where every image of the dataset has one size (Market-1501's crops are 128x64).
REID_RULES: dict[str, dict[str, Any]] = {
    "market1501": {"label_range": (-1, 1501), "camera_range": (1, 6), "image_size": (128, 64)},
    "dukemtmc": {"label_range": (0, 7140), "camera_range": (1, 8), "image_size": None},
    "msmt17": {"label_range": (0, 3059), "camera_range": (1, 15), "image_size": None},
    "cuhk03": {"label_range": (0, 1467), "camera_range": (1, 2), "image_size": None},
    "veri776": {"label_range": (0, 776), "camera_range": (1, 20), "image_size": None},
}
REID_SPLITS = ("train", "query", "gallery", "val")


def _readers() -> dict[str, Any]:
    from advreid.data.formats.classification import CLASSIFICATION_READERS
    from advreid.data.formats.reid import REID_READERS

    return {**REID_READERS, **CLASSIFICATION_READERS}


def formats() -> list[str]:
    return sorted(_readers())


def read_dataset(fmt: str, root: Path, name: str, domain: str | None = None, **options: Any) -> RawDataset:
    """Read the dataset at ``root`` in layout ``fmt`` and label its rows with ``name`` (and ``domain``)."""
    readers = _readers()
    if fmt not in readers:
        raise ParamsError(f"unknown dataset format '{fmt}'; valid formats: {sorted(readers)}")
    reader = readers[fmt]
    accepted = [name for name in inspect.signature(reader).parameters if name != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ParamsError(f"format '{fmt}': unknown option(s) {unknown}; valid options: {sorted(accepted)}")
    raw = reader(Path(root), **options)
    raw.name = name
    for frame in raw.frames.values():
        frame["dataset"] = name
        frame["domain"] = domain or name
    return raw


def rules_for(fmt: str, raw: RawDataset):
    """The validation rules a dataset of format ``fmt`` must meet."""
    from advreid.data.validation import ManifestRules

    if raw.kind == "reid":
        spec = REID_RULES[fmt]
        return ManifestRules(
            kind="reid",
            label_range=spec["label_range"],
            camera_range=spec["camera_range"],
            splits=REID_SPLITS,
            image_size=spec["image_size"],
        )
    return ManifestRules(
        kind="classification",
        label_range=(0, raw.num_classes - 1),
        camera_range=None,
        splits=tuple(sorted(raw.frames)),
        image_size=raw.image_size,
        num_classes=raw.num_classes,
    )
