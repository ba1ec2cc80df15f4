"""PyTorch datasets over manifests, and the P x K identity sampler of batch-hard triplet training."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from advreid.data.images import load_image
from advreid.data.manifest import read_manifest


def dataset_info(processed_dir: str | Path) -> dict:
    """The ``dataset.json`` written by the ingest stage beside the manifests."""
    path = Path(processed_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the ingest stage for this dataset first")
    return json.loads(path.read_text())


def load_split(processed_dir: str | Path, split: str, project_root: str | Path = ".") -> tuple[pd.DataFrame, Path]:
    """Return (manifest rows of ``split``, the raw dataset root its paths are relative to)."""
    processed_dir = Path(processed_dir)
    info = dataset_info(processed_dir)
    if split not in info["splits"]:
        raise KeyError(f"{processed_dir}: no split '{split}'; splits: {sorted(info['splits'])}")
    raw_root = Path(info["root"])
    if not raw_root.is_absolute():
        raw_root = Path(project_root) / raw_root
    return read_manifest(processed_dir / f"{split}.parquet"), raw_root


class ManifestImages(Dataset):
    """Images of a manifest as float tensors in [0, 1] (C, H, W), with label, camera and row index.

    Array formats are read from their memory-mapped ``.npy``; file formats through the one image loader.
    ``relabel=True`` maps identities to contiguous 0..N-1 training classes (sorted by original id).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        raw_root: str | Path,
        *,
        array_dir: str | Path | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        relabel: bool = False,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        self.raw_root = Path(raw_root)
        self.array_dir = Path(array_dir) if array_dir is not None else None
        self.transform = transform
        self.size = size
        labels = self.frame["label"].to_numpy()
        if relabel:
            classes = np.unique(labels)
            self.labels = np.searchsorted(classes, labels)
            self.num_classes = len(classes)
        else:
            self.labels = labels
            self.num_classes = int(len(np.unique(labels)))
        self.cameras = self.frame["camera"].to_numpy()
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frame)

    def image(self, index: int) -> Tensor:
        row = self.frame.iloc[index]
        if "array_file" in self.frame.columns and isinstance(row.get("array_file"), str):
            if self.array_dir is None:
                raise ValueError("ManifestImages: array_dir is required for array-format manifests")
            name = row["array_file"]
            if name not in self._arrays:
                self._arrays[name] = np.load(self.array_dir / name, mmap_mode="r")
            pixels = np.array(self._arrays[name][int(row["array_index"])])  # a writable copy out of the memory map
        else:
            pixels = load_image(self.raw_root / row["path"])
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
        if self.size is not None and tuple(image.shape[1:]) != tuple(self.size):
            image = torch.nn.functional.interpolate(
                image.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False, antialias=True
            ).squeeze(0)
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), int(self.cameras[index]), index


class PKSampler(Sampler[int]):
    """Batches of P identities x K images each (Hermans et al. 2017), reshuffled per epoch by seed.

    Identities with fewer than K images are sampled with replacement. Under DDP each rank takes every
    ``world_size``-th batch, so ranks see disjoint batches and the same number of them.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: p and k must be >= 1, got p={p}, k={k}")
        self.labels = np.asarray(labels)
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, seed, rank, world_size
        self.by_label = {lab: np.flatnonzero(self.labels == lab) for lab in np.unique(self.labels)}
        if len(self.by_label) < p:
            raise ValueError(f"PKSampler: {len(self.by_label)} identities, fewer than P={p}")
        self.epoch = 0
        total_batches = len(self.by_label) // p
        self.num_batches = max(1, total_batches // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.p * self.k

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        labels = rng.permutation(sorted(self.by_label))
        batches = []
        for b in range(self.num_batches * self.world_size):
            chosen = labels[(b * self.p) % len(labels) : (b * self.p) % len(labels) + self.p]
            if len(chosen) < self.p:  # wrap around for the last batch
                chosen = np.concatenate([chosen, labels[: self.p - len(chosen)]])
            batch = []
            for lab in chosen:
                members = self.by_label[lab]
                batch.extend(rng.choice(members, size=self.k, replace=len(members) < self.k).tolist())
            batches.append(batch)
        for batch in batches[self.rank :: self.world_size]:
            yield from batch
