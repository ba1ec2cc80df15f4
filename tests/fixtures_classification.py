"""Writers of tiny classification datasets in their exact real on-disk formats.

Each writer fills ``root`` with a few random images in the layout the real download has and returns a
:class:`WrittenDataset` holding what it wrote (images as N x H x W x C uint8, labels 0-based), so tests
can compare a reader's output with the truth. CIFAR pickles are written as Python 2 wrote them
(protocol 2, str as BINSTRING, so they load as bytes with ``encoding="bytes"``).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@dataclass
class WrittenDataset:
    """What a writer put on disk: the folder a reader should be given, and the truth per split."""

    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    files: dict[str, list[Path]] = field(default_factory=dict)  # image files per split (Tiny ImageNet)


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes str and bytes as Python 2 str (BINSTRING), like the real CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def write_py2_pickle(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def _random_split(rng: np.random.Generator, n: int, side: int, channels: int, num_classes: int):
    images = rng.integers(0, 256, size=(n, side, side, channels), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    return images, labels


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 3072 rows: the red 32x32 plane row-major, then green, then blue."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_cifar10(root: Path, per_batch: int = 4, test_count: int = 4, seed: int = 0) -> WrittenDataset:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, tiny batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    written = WrittenDataset(root=root, class_names=list(CIFAR10_NAMES))
    write_py2_pickle(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": per_batch,
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072,
        },
    )
    train_images, train_labels = [], []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_count)]:
        images, labels = _random_split(rng, n, 32, 3, 10)
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": [int(v) for v in labels],
            b"data": _cifar_rows(images),
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
        }
        write_py2_pickle(folder / name, batch)
        if name == "test_batch":
            written.images["test"], written.labels["test"] = images, labels
        else:
            train_images.append(images)
            train_labels.append(labels)
    written.images["train"] = np.concatenate(train_images)
    written.labels["train"] = np.concatenate(train_labels)
    return written


def write_cifar100(root: Path, train_count: int = 6, test_count: int = 4, seed: int = 0) -> WrittenDataset:
    """``root/cifar-100-python/{train, test, meta}`` with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    written = WrittenDataset(root=root, class_names=fine_names)
    write_py2_pickle(
        folder / "meta",
        {
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
        },
    )
    for split, n in (("train", train_count), ("test", test_count)):
        images, labels = _random_split(rng, n, 32, 3, 100)
        batch = {
            b"filenames": [f"img_{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split} batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in labels],
            b"coarse_labels": [int(v) // 5 for v in labels],
            b"data": _cifar_rows(images),
        }
        write_py2_pickle(folder / split, batch)
        written.images[split], written.labels[split] = images, labels
    return written


def write_stl10(root: Path, train_count: int = 3, test_count: int = 2, seed: int = 0) -> WrittenDataset:
    """``root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt``; images column-major."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    written = WrittenDataset(root=root, class_names=list(STL10_NAMES))
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    for split, n in (("train", train_count), ("test", test_count), ("unlabeled", 1)):
        images, labels = _random_split(rng, n, 96, 3, 10)
        # on disk: per image, per channel, column after column (x outer, y inner)
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
            written.images[split], written.labels[split] = images, labels
    return written


def _jpeg(path: Path, rng: np.random.Generator, grayscale: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (64, 64) if grayscale else (64, 64, 3)  # a 2-D array becomes a one-channel (L) JPEG
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path, "JPEG")


def write_tinyimagenet(
    root: Path, num_classes: int = 3, per_class: int = 2, val_count: int = 4, seed: int = 0
) -> WrittenDataset:
    """``root/tiny-imagenet-200``: wnids.txt (unsorted), words.txt (more wnids than used), train, val, test.

    The first training image of the first class and the last val image are grayscale JPEGs. ``images`` is
    left empty (JPEG is lossy); ``files`` lists the JPEGs per split in reader order, ``labels`` their labels.
    """
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    wnids = [f"n{9_000_000 - 1000 * i:08d}" for i in range(num_classes)]  # descending: wnids.txt is not sorted
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = {w: f"thing {i}, object {i}" for i, w in enumerate(wnids)}
    words["n00000001"] = "entity"  # words.txt covers all of WordNet, not only the 200 classes
    (folder / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in sorted(words.items())))

    order = sorted(wnids)
    written = WrittenDataset(root=root, class_names=[words[w] for w in order])
    train_files, train_labels = [], []
    for label, wnid in enumerate(order):
        boxes = []
        for i in range(per_class):
            name = f"{wnid}_{i}.JPEG"
            _jpeg(folder / "train" / wnid / "images" / name, rng, grayscale=(label == 0 and i == 0))
            boxes.append(f"{name}\t0\t0\t63\t63\n")
            train_files.append(folder / "train" / wnid / "images" / name)
            train_labels.append(label)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines, val_files, val_labels = [], [], []
    for i in range(val_count):
        label = int(rng.integers(0, num_classes))
        name = f"val_{i}.JPEG"
        _jpeg(folder / "val" / "images" / name, rng, grayscale=(i == val_count - 1))
        lines.append(f"{name}\t{order[label]}\t1\t2\t40\t50\n")
        val_files.append(folder / "val" / "images" / name)
        val_labels.append(label)
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    _jpeg(folder / "test" / "images" / "test_0.JPEG", rng, grayscale=False)
    written.files = {"train": train_files, "val": val_files}
    written.labels = {"train": np.asarray(train_labels), "val": np.asarray(val_labels)}
    return written


def _idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(
    root: Path,
    train_count: int = 5,
    test_count: int = 3,
    seed: int = 0,
    gzipped: bool = False,
    raw_subfolder: bool = False,
) -> WrittenDataset:
    """The four idx files (``.gz`` if ``gzipped``) in ``root`` (``root/MNIST/raw`` if ``raw_subfolder``)."""
    rng = np.random.default_rng(seed)
    folder = root / "MNIST" / "raw" if raw_subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    written = WrittenDataset(root=root, class_names=[str(d) for d in range(10)])
    for split, prefix, n in (("train", "train", train_count), ("test", "t10k", test_count)):
        images, labels = _random_split(rng, n, 28, 1, 10)
        for stem, payload in (
            (f"{prefix}-images-idx3-ubyte", _idx_images(images[..., 0])),
            (f"{prefix}-labels-idx1-ubyte", _idx_labels(labels)),
        ):
            if gzipped:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(payload, mtime=0))
            else:
                (folder / stem).write_bytes(payload)
        written.images[split], written.labels[split] = images, labels
    return written
