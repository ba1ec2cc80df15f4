"""The processed form of an ingested dataset: one parquet manifest per split (+ ``.npy`` pixel arrays for array
formats) and ``dataset.json`` (name, kind, raw root, image size, classes, per-split rows and manifest sha256)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from advreid.data.formats.base import RawDataset
from advreid.data.manifest import to_table, write_manifest
from advreid.io import atomic_path, sha256_file, write_json


def write_dataset(raw: RawDataset, out_dir: Path, raw_root: str) -> dict[str, str]:
    """Write manifests, pixel arrays and dataset.json into ``out_dir`` atomically; return split -> sha256."""
    hashes = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        for split, frame in sorted(raw.frames.items()):
            write_manifest(to_table(frame, f"{raw.name}/{split}"), tmp / f"{split}.parquet")
            hashes[split] = sha256_file(tmp / f"{split}.parquet")
        for name, array in sorted(raw.arrays.items()):
            np.save(tmp / name, np.ascontiguousarray(array), allow_pickle=False)
        write_json(
            tmp / "dataset.json",
            {
                "name": raw.name,
                "kind": raw.kind,
                "root": raw_root,
                "image_size": raw.image_size,
                "num_classes": raw.num_classes,
                "splits": {s: {"rows": len(raw.frames[s]), "sha256": hashes[s]} for s in sorted(raw.frames)},
            },
        )
    return hashes


def summarise(raw: RawDataset, validated: bool) -> dict[str, Any]:
    """Rows, labels (and cameras for Re-ID) per split, and whether validation passed: the ingest metrics."""
    rows = {split: len(frame) for split, frame in sorted(raw.frames.items())}
    labels = {split: int(frame["label"].nunique()) for split, frame in sorted(raw.frames.items())}
    out: dict[str, Any] = {"rows": rows, "labels": labels, "validated": validated}
    if raw.kind == "reid":
        out["cameras"] = {s: int(f["camera"].nunique()) for s, f in sorted(raw.frames.items())}
    return out
