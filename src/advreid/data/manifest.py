"""Parquet manifests: one file per dataset split, one row per image.

Every manifest has the core columns below; readers may add dataset-specific columns (``frame`` for
Re-ID videos, ``class_name`` for classification, ``array_file`` / ``array_index`` for array formats).
Rows are sorted by ``path`` and written without a pandas index or pandas metadata, so the bytes (and
DVC's hash of them) depend only on the content.

Array formats (CIFAR, STL-10, MNIST, digits) store their pixels once in an uncompressed ``.npy`` file
per split (uint8, N x H x W x C, memory-mappable); a row points at its image with ``array_file``
(relative to the manifest's directory) and ``array_index``, and its ``path`` is
``"<array_file>#<array_index>"`` so paths stay unique.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from advreid.errors import BadInputError
from advreid.io import atomic_path

# (name, arrow type, meaning)
CORE_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("dataset", pa.string(), "dataset name, e.g. market1501"),
    ("split", pa.string(), "train, query, gallery, test or val"),
    ("domain", pa.string(), "domain the image belongs to (dataset name unless a generator says otherwise)"),
    ("path", pa.string(), "posix path relative to the dataset root (array formats: <array_file>#<index>)"),
    ("sha256", pa.string(), "sha256 of the file bytes (array formats: of the uint8 pixel bytes)"),
    ("width", pa.int32(), "image width in pixels"),
    ("height", pa.int32(), "image height in pixels"),
    ("label", pa.int64(), "person / vehicle / class id; Re-ID: -1 junk, 0 distractor"),
    ("camera", pa.int32(), "camera id (1-based); -1 where a dataset has no cameras"),
)
CORE_NAMES = tuple(name for name, _, _ in CORE_COLUMNS)
SPLITS = ("train", "query", "gallery", "test", "val")

EXTRA_TYPES: dict[str, pa.DataType] = {
    "frame": pa.int64(),
    "sequence": pa.int32(),
    "timestamp": pa.int64(),
    "class_name": pa.string(),
    "array_file": pa.string(),
    "array_index": pa.int64(),
}


class ManifestError(BadInputError, ValueError):
    """A manifest does not have the columns or types the contract requires."""


def to_table(frame: pd.DataFrame, source: str = "manifest") -> pa.Table:
    """Cast a frame to the manifest schema and sort it by path.

    Args:
        frame: one row per image with at least the core columns.
        source: what to name in error messages (a dataset or file).
    """
    missing = [c for c in CORE_NAMES if c not in frame.columns]
    if missing:
        raise ManifestError(f"{source}: manifest lacks column(s) {missing}")
    extras = sorted(c for c in frame.columns if c not in CORE_NAMES)
    unknown = [c for c in extras if c not in EXTRA_TYPES]
    if unknown:
        raise ManifestError(f"{source}: unknown manifest column(s) {unknown}; known extras: {sorted(EXTRA_TYPES)}")
    fields = [pa.field(n, t, nullable=False) for n, t, _ in CORE_COLUMNS]
    fields += [pa.field(c, EXTRA_TYPES[c], nullable=False) for c in extras]
    schema = pa.schema(fields)
    ordered = frame[list(schema.names)].sort_values(["path", "split"], kind="stable").reset_index(drop=True)
    try:
        table = pa.Table.from_pandas(ordered, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ManifestError(f"{source}: cannot cast manifest to its schema: {err}") from err
    return table.replace_schema_metadata(None)


def write_manifest(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a manifest atomically with settings that give stable bytes."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, store_schema=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """One manifest; a file that is not parquet or lacks a core column raises ManifestError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ManifestError(
            f"{path}: not a readable parquet manifest ({err}); re-run the ingest stage that writes it"
        ) from None
    missing = [c for c in CORE_NAMES if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{path}: manifest lacks column(s) {missing} (core columns: {list(CORE_NAMES)}); "
            "re-run the ingest stage that writes it"
        )
    return table.to_pandas()


def read_manifests(directory: str | os.PathLike) -> pd.DataFrame:
    """All split manifests of one dataset directory concatenated (splits in a fixed order)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.parquet"), key=lambda p: SPLITS.index(p.stem) if p.stem in SPLITS else 99)
    if not files:
        raise FileNotFoundError(f"no manifests (*.parquet) in {directory}")
    return pd.concat([read_manifest(p) for p in files], ignore_index=True)
