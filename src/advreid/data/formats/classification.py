"""Readers for the image-classification datasets (CIFAR-10/100, STL-10, Tiny ImageNet, MNIST, digits).

Every reader returns a :class:`RawDataset` in array storage: the pixels of each split go to
``arrays["<split>.npy"]`` (uint8, N x H x W x C, in the dataset's own file order) and each manifest row
points at its image with ``array_file`` / ``array_index``; ``sha256`` is of the image's uint8 bytes.

The CIFAR files are Python 2 pickles. They are read with a restricted unpickler that can rebuild only
dicts, lists, bytes, numbers and numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from advreid.data.formats.base import DatasetFormatError, RawDataset, link_problem
from advreid.data.images import ImageReadError, load_image

# numpy.core.multiarray._reconstruct, whatever this numpy calls its module (numpy 2 moved it to numpy._core)
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` does in a Python 3 protocol-2 pickle: bytes objects are written as
    ``_codecs.encode(<latin-1 str>, "latin1")``. Only that use is allowed (no other codec, no other argument)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


# The globals a pickled numpy array needs, and nothing else: no builtins, no os, no callables beyond these.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,  # bytes in a protocol-2 pickle written by Python 3
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the same function pickled under numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

CIFAR_SIDE = 32
STL_SIDE = 96
STL_IMAGE_BYTES = 3 * STL_SIDE * STL_SIDE  # 27648
TINY_SIDE = 64
MNIST_SIDE = 28
MNIST_IMAGE_MAGIC = 2051
MNIST_LABEL_MAGIC = 2049


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_PICKLE_GLOBALS``."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        # The files were pickled by Python 2: its str objects load as bytes (keys like b"data").
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetFormatError(
                f"{self._source}: pickle references the global {module}.{name}, which is refused "
                f"(only numpy arrays and plain containers are allowed)"
            ) from None


def _require_file(path: Path) -> None:
    """A dataset file must exist as a regular file; a symbolic link loop or dangling link is named as such."""
    problem = link_problem(path)
    if problem:
        raise DatasetFormatError(f"{path}: is {problem}")
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file is missing")


def _load_pickle(path: Path) -> dict[bytes, Any]:
    """Load a CIFAR pickle safely; errors name the file."""
    _require_file(path)
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DatasetFormatError:
        raise
    except Exception as err:  # a damaged pickle can fail in many ways (EOFError, UnpicklingError, ...)
        raise DatasetFormatError(f"{path}: corrupted or truncated pickle ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    # Python 2 wrote the keys as str, which loads as bytes; a batch re-pickled by Python 3 may have str keys
    return {key.encode("latin1") if isinstance(key, str) else key: value for key, value in obj.items()}


def _field(batch: dict[bytes, Any], key: bytes, path: Path) -> Any:
    if key not in batch:
        raise DatasetFormatError(f"{path}: missing key {key.decode()!r} (has {list(batch)})")
    return batch[key]


def _names(values: Any, key: bytes, path: Path, count: int) -> list[str]:
    if not isinstance(values, list) or len(values) != count:
        raise DatasetFormatError(f"{path}: {key.decode()!r} must be a list of {count} class names")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _labels(values: Any, count: int, num_classes: int, source: str, first: int = 0) -> np.ndarray:
    """Labels as int64 0..num_classes-1 (from ``first``-based values), checked against the image count."""
    try:
        labels = np.asarray(values, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{source}: labels are not integers ({err})") from err
    if labels.size != count:
        raise DatasetFormatError(f"{source}: {labels.size} labels for {count} images")
    labels = labels - first
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        last = num_classes - 1 + first
        raise DatasetFormatError(f"{source}: label {int(labels[i]) + first} at index {i} is outside {first}..{last}")
    return labels


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch as (N x 32 x 32 x 3 uint8 images, N labels)."""
    batch = _load_pickle(path)
    data = _field(batch, b"data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DatasetFormatError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
        raise DatasetFormatError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072 (3x32x32)")
    labels = _labels(_field(batch, label_key, path), len(data), num_classes, f"{path} {label_key.decode()!r}")
    # each row is the red plane, then green, then blue, each 32x32 row-major
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _dataset_dir(root: Path, folder: str, marker: str) -> Path:
    """The dataset folder: ``root/folder`` or ``root`` itself, whichever holds ``marker``."""
    root = Path(root)
    for candidate in (root / folder, root):
        if (candidate / marker).exists():
            return candidate
    raise DatasetFormatError(f"{root}: neither {root / folder / marker} nor {root / marker} exists")


def _build(
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
    image_size: tuple[int, int],
) -> RawDataset:
    """Array-storage RawDataset from split -> (N x H x W x C uint8 images, N labels)."""
    frames: dict[str, pd.DataFrame] = {}
    arrays: dict[str, np.ndarray] = {}
    for split, (images, labels) in splits.items():
        images = np.ascontiguousarray(images, dtype=np.uint8)
        array_file = f"{split}.npy"
        n, height, width = images.shape[:3]
        frames[split] = pd.DataFrame(
            {
                "dataset": name,
                "split": split,
                "domain": name,
                "path": [f"{array_file}#{i}" for i in range(n)],
                "sha256": [hashlib.sha256(image.tobytes()).hexdigest() for image in images],
                "width": np.full(n, width, dtype=np.int32),
                "height": np.full(n, height, dtype=np.int32),
                "label": labels.astype(np.int64),
                "camera": np.full(n, -1, dtype=np.int32),
                "class_name": [class_names[label] for label in labels],
                "array_file": array_file,
                "array_index": np.arange(n, dtype=np.int64),
            }
        )
        arrays[array_file] = images
    return RawDataset(
        name=name,
        kind="classification",
        frames=frames,
        arrays=arrays,
        image_size=image_size,
        num_classes=len(class_names),
    )


def read_cifar10(root: Path) -> RawDataset:
    """CIFAR-10, python version: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Args:
        root: the ``cifar-10-batches-py`` folder or its parent.
    """
    folder = _dataset_dir(root, "cifar-10-batches-py", "batches.meta")
    meta_path = folder / "batches.meta"
    class_names = _names(_field(_load_pickle(meta_path), b"label_names", meta_path), b"label_names", meta_path, 10)
    train = [_cifar_batch(folder / f"data_batch_{i}", b"labels", 10) for i in range(1, 6)]
    splits = {
        "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
        "test": _cifar_batch(folder / "test_batch", b"labels", 10),
    }
    return _build("cifar10", splits, class_names, (CIFAR_SIDE, CIFAR_SIDE))


def read_cifar100(root: Path) -> RawDataset:
    """CIFAR-100, python version: ``cifar-100-python/{train, test, meta}``, with the 100 fine labels.

    Args:
        root: the ``cifar-100-python`` folder or its parent.
    """
    folder = _dataset_dir(root, "cifar-100-python", "meta")
    meta_path = folder / "meta"
    meta = _load_pickle(meta_path)
    class_names = _names(_field(meta, b"fine_label_names", meta_path), b"fine_label_names", meta_path, 100)
    splits = {split: _cifar_batch(folder / split, b"fine_labels", 100) for split in ("train", "test")}
    return _build("cifar100", splits, class_names, (CIFAR_SIDE, CIFAR_SIDE))


def _stl_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    for path in (x_path, y_path):
        _require_file(path)
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size == 0 or raw.size % STL_IMAGE_BYTES:
        raise DatasetFormatError(
            f"{x_path}: size {raw.size} bytes is not a positive multiple of {STL_IMAGE_BYTES} (3x96x96)"
        )
    # each image is stored column-major: per channel, column after column of 96 rows
    images = raw.reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 3, 2, 1)
    labels = _labels(np.fromfile(y_path, dtype=np.uint8), len(images), 10, str(y_path), first=1)
    return np.ascontiguousarray(images), labels


def read_stl10(root: Path) -> RawDataset:
    """STL-10 binary: ``stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt}``.

    Labels 1..10 on disk become 0..9; the unlabeled split is not read.

    Args:
        root: the ``stl10_binary`` folder or its parent.
    """
    folder = _dataset_dir(root, "stl10_binary", "class_names.txt")
    names_path = folder / "class_names.txt"
    class_names = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
    if len(class_names) != 10:
        raise DatasetFormatError(f"{names_path}: expected 10 class names, found {len(class_names)}")
    splits = {split: _stl_split(folder, split) for split in ("train", "test")}
    return _build("stl10", splits, class_names, (STL_SIDE, STL_SIDE))


def _tiny_image(path: Path) -> np.ndarray:
    try:
        image = load_image(path)  # RGB, so the few grayscale JPEGs get three equal channels
    except ImageReadError as err:
        raise DatasetFormatError(str(err)) from err
    if image.shape[:2] != (TINY_SIDE, TINY_SIDE):
        raise DatasetFormatError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected 64x64")
    return image


def _stack_images(paths: list[Path]) -> np.ndarray:
    # filled in place so the 100k training images (~1.2 GB) are held once, not twice as with np.stack
    images = np.empty((len(paths), TINY_SIDE, TINY_SIDE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        images[i] = _tiny_image(path)
    return images


def read_tinyimagenet(root: Path) -> RawDataset:
    """Tiny ImageNet: ``tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/...}``.

    Labels are the wnid's index in sorted wnids.txt order; class names come from words.txt. Train rows
    follow sorted wnids, then sorted file names; val rows follow ``val/val_annotations.txt``. The JPEGs
    are decoded into the split arrays (``sha256`` is of the decoded pixels). The unlabeled test split is
    not read.

    Args:
        root: the ``tiny-imagenet-200`` folder or its parent.
    """
    folder = _dataset_dir(root, "tiny-imagenet-200", "wnids.txt")
    wnids_path = folder / "wnids.txt"
    wnids = sorted({line.strip() for line in wnids_path.read_text().splitlines() if line.strip()})
    if not wnids:
        raise DatasetFormatError(f"{wnids_path}: lists no wnids")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    words_path = folder / "words.txt"
    _require_file(words_path)
    words = dict(line.split("\t", 1) for line in words_path.read_text().splitlines() if "\t" in line)
    missing = [wnid for wnid in wnids if wnid not in words]
    if missing:
        raise DatasetFormatError(f"{words_path}: no words for wnid(s) {missing[:5]}")
    class_names = [words[wnid].strip() for wnid in wnids]

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise DatasetFormatError(f"{images_dir}: training folder of wnid {wnid} is missing")
        files = sorted(images_dir.glob("*.JPEG"))
        if not files:
            raise DatasetFormatError(f"{images_dir}: no .JPEG images")
        train_paths += files
        train_labels += [index[wnid]] * len(files)

    annotations = folder / "val" / "val_annotations.txt"
    _require_file(annotations)
    val_paths: list[Path] = []
    val_labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetFormatError(f"{annotations} line {number}: expected '<file>\\t<wnid>\\t<box>', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DatasetFormatError(f"{annotations} line {number}: wnid {wnid!r} is not in {wnids_path.name}")
        path = folder / "val" / "images" / name
        if link_problem(path):
            raise DatasetFormatError(f"{annotations} line {number}: image {path} is {link_problem(path)}")
        if not path.is_file():
            raise DatasetFormatError(f"{annotations} line {number}: image {name} does not exist ({path})")
        val_paths.append(path)
        val_labels.append(index[wnid])
    if not val_paths:
        raise DatasetFormatError(f"{annotations}: lists no images")

    splits = {
        "train": (_stack_images(train_paths), np.asarray(train_labels, dtype=np.int64)),
        "val": (_stack_images(val_paths), np.asarray(val_labels, dtype=np.int64)),
    }
    return _build("tinyimagenet", splits, class_names, (TINY_SIDE, TINY_SIDE))


def _idx_bytes(folder: Path, stem: str) -> tuple[Path, bytes]:
    """The bytes of ``stem`` or ``stem.gz`` (plain preferred when both exist)."""
    plain, packed = folder / stem, folder / f"{stem}.gz"
    for candidate in (plain, packed):
        if link_problem(candidate):
            raise DatasetFormatError(f"{candidate}: is {link_problem(candidate)}")
    if plain.is_file():
        return plain, plain.read_bytes()
    if packed.is_file():
        try:
            with gzip.open(packed, "rb") as f:
                return packed, f.read()
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetFormatError(f"{packed}: cannot decompress ({err})") from err
    raise DatasetFormatError(f"{folder}: neither {stem} nor {stem}.gz exists")


def _mnist_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    image_path, data = _idx_bytes(folder, f"{prefix}-images-idx3-ubyte")
    if len(data) < 16:
        raise DatasetFormatError(f"{image_path}: {len(data)} bytes is shorter than the 16-byte idx3 header")
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != MNIST_IMAGE_MAGIC:
        raise DatasetFormatError(f"{image_path}: magic number {magic}, expected {MNIST_IMAGE_MAGIC} (idx3 uint8)")
    if (rows, cols) != (MNIST_SIDE, MNIST_SIDE):
        raise DatasetFormatError(f"{image_path}: images are {rows}x{cols}, expected 28x28")
    expected = 16 + n * rows * cols
    if len(data) != expected:
        raise DatasetFormatError(f"{image_path}: {len(data)} bytes, expected {expected} for {n} images of 28x28")
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols, 1)

    label_path, data = _idx_bytes(folder, f"{prefix}-labels-idx1-ubyte")
    if len(data) < 8:
        raise DatasetFormatError(f"{label_path}: {len(data)} bytes is shorter than the 8-byte idx1 header")
    magic, count = struct.unpack(">II", data[:8])
    if magic != MNIST_LABEL_MAGIC:
        raise DatasetFormatError(f"{label_path}: magic number {magic}, expected {MNIST_LABEL_MAGIC} (idx1 uint8)")
    if len(data) != 8 + count:
        raise DatasetFormatError(f"{label_path}: {len(data)} bytes, expected {8 + count} for {count} labels")
    if count != n:
        raise DatasetFormatError(f"{label_path}: {count} labels but {image_path.name} has {n} images")
    labels = _labels(np.frombuffer(data, dtype=np.uint8, offset=8), n, 10, str(label_path))
    return images.copy(), labels


def read_mnist(root: Path) -> RawDataset:
    """MNIST idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    The files may sit in ``root`` or ``root/MNIST/raw`` (torchvision's layout); plain files win over
    ``.gz`` when both exist. The t10k files become the ``test`` split; class names are the digits.
    """
    root = Path(root)
    marker = "train-images-idx3-ubyte"
    for folder in (root, root / "MNIST" / "raw"):
        for candidate in (folder / marker, folder / f"{marker}.gz"):
            if link_problem(candidate):
                raise DatasetFormatError(f"{candidate}: is {link_problem(candidate)}")
        if (folder / marker).is_file() or (folder / f"{marker}.gz").is_file():
            break
    else:
        raise DatasetFormatError(f"{root}: no {marker}[.gz] here or in {root / 'MNIST' / 'raw'}")
    splits = {"train": _mnist_split(folder, "train"), "test": _mnist_split(folder, "t10k")}
    return _build("mnist", splits, [str(d) for d in range(10)], (MNIST_SIDE, MNIST_SIDE))


DIGITS_FILE = "digits.csv.gz"


def sklearn_digits_file() -> Path:
    """The digits file that ships inside scikit-learn (64 pixel columns 0..16, then the label)."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / DIGITS_FILE


def read_digits(root: Path | None = None, test_fraction: float = 0.25, seed: int = 0) -> RawDataset:
    """scikit-learn's 8x8 digits (1797 images) from ``root/digits.csv.gz``, split train/test stratified by class.

    The file is scikit-learn's own ``digits.csv.gz`` (the demo stage copies it into ``data/raw/digits`` so DVC
    and the lineage audit see a raw file); with ``root=None`` the copy inside scikit-learn is read.
    Pixels 0..16 become uint8 ``round(v * 255 / 16)``. Rows keep the dataset's order within each split.

    Args:
        root: directory holding ``digits.csv.gz``, or None for scikit-learn's copy.
        test_fraction: share of each class that goes to ``test``, in (0, 1).
        seed: seed of the split.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"read_digits: test_fraction must be in (0, 1), got {test_fraction}")
    path = sklearn_digits_file() if root is None else Path(root) / DIGITS_FILE
    if not path.is_file():
        raise DatasetFormatError(f"{path}: digits file not found")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetFormatError(f"{path}: cannot parse digits CSV ({err})") from err
    if table.ndim != 2 or table.shape[1] != 65 or table.min() < 0 or table[:, :64].max() > 16:
        raise DatasetFormatError(f"{path}: expected rows of 64 pixels in 0..16 and a label, got shape {table.shape}")
    pixels = np.round(table[:, :64].reshape(-1, 8, 8) * 255.0 / 16.0).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    target = table[:, 64].astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(target)), test_size=test_fraction, random_state=seed, stratify=target
    )
    splits = {
        split: (pixels[np.sort(idx)], target[np.sort(idx)]) for split, idx in (("train", train_idx), ("test", test_idx))
    }
    class_names = [str(name) for name in range(10)]
    return _build("digits", splits, class_names, (8, 8))


CLASSIFICATION_READERS: dict[str, Callable[..., RawDataset]] = {
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "stl10": read_stl10,
    "tinyimagenet": read_tinyimagenet,
    "mnist": read_mnist,
    "digits": read_digits,
}
