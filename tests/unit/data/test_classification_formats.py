"""Classification readers on tiny datasets written in the real on-disk formats."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advreid.data.formats.base import DatasetFormatError, RawDataset
from advreid.data.formats.classification import (
    CLASSIFICATION_READERS,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_mnist,
    read_stl10,
    read_tinyimagenet,
    sklearn_digits_file,
)
from advreid.data.manifest import to_table
from tests.fixtures_classification import (
    CIFAR10_NAMES,
    STL10_NAMES,
    write_cifar10,
    write_cifar100,
    write_mnist,
    write_py2_pickle,
    write_stl10,
    write_tinyimagenet,
)


def check_array_rows(ds: RawDataset, split: str, labels: np.ndarray, class_names: list[str]) -> None:
    """The rows of ``split`` point into its array, in order, with hashes of the pixel bytes."""
    frame, images = ds.frames[split], ds.arrays[f"{split}.npy"]
    n = len(labels)
    assert len(frame) == n == len(images)
    assert images.dtype == np.uint8 and images.flags.c_contiguous
    assert list(frame["array_file"]) == [f"{split}.npy"] * n
    assert list(frame["array_index"]) == list(range(n))
    assert list(frame["path"]) == [f"{split}.npy#{i}" for i in range(n)]
    assert list(frame["sha256"]) == [hashlib.sha256(images[i].tobytes()).hexdigest() for i in range(n)]
    np.testing.assert_array_equal(frame["label"].to_numpy(), labels)
    assert list(frame["class_name"]) == [class_names[v] for v in labels]
    assert set(frame["split"]) == {split}
    assert set(frame["dataset"]) == set(frame["domain"]) == {ds.name}
    assert set(frame["camera"]) == {-1}
    assert set(frame["height"]) == {ds.image_size[0]} and set(frame["width"]) == {ds.image_size[1]}
    to_table(frame, ds.name)  # the rows fit the manifest schema


# --- CIFAR --------------------------------------------------------------------------------------


def test_cifar10_reads_all_batches_with_names_and_pixels(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, per_batch=4, test_count=3)
    ds = read_cifar10(written.root)
    assert (ds.name, ds.kind, ds.image_size, ds.num_classes) == ("cifar10", "classification", (32, 32), 10)
    assert set(ds.frames) == {"train", "test"}
    assert ds.arrays["train.npy"].shape == (20, 32, 32, 3) and ds.arrays["test.npy"].shape == (3, 32, 32, 3)
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.arrays[f"{split}.npy"], written.images[split])
        check_array_rows(ds, split, written.labels[split], CIFAR10_NAMES)


def test_cifar10_channel_order_against_the_raw_row(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    with (written.root / "cifar-10-batches-py" / "data_batch_2").open("rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][1]  # trusted fixture: plain pickle is fine here
    image = read_cifar10(written.root).arrays["train.npy"][4 + 1]  # second image of the second batch
    # the real layout: 1024 red values, 1024 green, 1024 blue, each plane row-major
    for c in range(3):
        for y in range(32):
            for x in range(32):
                assert image[y, x, c] == row[c * 1024 + y * 32 + x]


def test_cifar10_accepts_the_batches_folder_itself(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    ds = read_cifar10(written.root / "cifar-10-batches-py")
    np.testing.assert_array_equal(ds.arrays["test.npy"], written.images["test"])


def test_cifar10_missing_batch_is_named(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    (written.root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        read_cifar10(written.root)


def test_cifar10_truncated_pickle_is_named(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    batch = written.root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DatasetFormatError, match="test_batch.*corrupted or truncated"):
        read_cifar10(written.root)


def test_cifar10_label_out_of_range_is_named(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    path = written.root / "cifar-10-batches-py" / "test_batch"
    data = np.zeros((2, 3072), dtype=np.uint8)
    write_py2_pickle(path, {b"data": data, b"labels": [3, 10], b"filenames": [b"a.png", b"b.png"]})
    with pytest.raises(DatasetFormatError, match=r"test_batch.*label 10 at index 1"):
        read_cifar10(written.root)


class _RunsCommand:
    """Pickles as a call of ``os.system`` (spelled ``posix.system`` by Python on Linux)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("spelling", ["os.system by hand", "posix.system from __reduce__"])
def test_restricted_unpickler_refuses_os_system(tmp_path: Path, spelling: str) -> None:
    written = write_cifar10(tmp_path)
    marker = tmp_path / "executed"
    command = f"touch {marker}"
    if spelling.startswith("os.system"):
        payload = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command.encode() + b"\x85R."
        refused = "os.system"
    else:
        payload = pickle.dumps(_RunsCommand(command), protocol=2)
        refused = f"{os.system.__module__}.system"
    batch = written.root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(payload)
    with pytest.raises(DatasetFormatError, match="data_batch_1") as info:
        read_cifar10(written.root)
    assert refused in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, train_count=6, test_count=4)
    ds = read_cifar100(written.root)
    assert (ds.image_size, ds.num_classes) == ((32, 32), 100)
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.arrays[f"{split}.npy"], written.images[split])
        check_array_rows(ds, split, written.labels[split], written.class_names)
    assert ds.frames["train"]["class_name"].str.startswith("fine_").all()


# --- STL-10 -------------------------------------------------------------------------------------


def test_stl10_column_major_pixels_and_one_based_labels(tmp_path: Path) -> None:
    written = write_stl10(tmp_path, train_count=3, test_count=2)
    ds = read_stl10(written.root)
    assert (ds.image_size, ds.num_classes) == ((96, 96), 10)
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.arrays[f"{split}.npy"], written.images[split])
        check_array_rows(ds, split, written.labels[split], STL10_NAMES)
    raw = np.fromfile(written.root / "stl10_binary" / "train_X.bin", dtype=np.uint8)
    on_disk = np.fromfile(written.root / "stl10_binary" / "train_y.bin", dtype=np.uint8)
    np.testing.assert_array_equal(ds.frames["train"]["label"].to_numpy(), on_disk.astype(np.int64) - 1)
    image = ds.arrays["train.npy"][2]
    y, x, c = np.meshgrid(np.arange(96), np.arange(96), np.arange(3), indexing="ij")
    # the real layout: per channel, 96 columns of 96 rows each
    np.testing.assert_array_equal(image, raw[2 * 27648 + c * 9216 + x * 96 + y])


def test_stl10_bad_file_size_is_named(tmp_path: Path) -> None:
    written = write_stl10(tmp_path)
    x_file = written.root / "stl10_binary" / "test_X.bin"
    x_file.write_bytes(x_file.read_bytes()[:-5])
    with pytest.raises(DatasetFormatError, match="test_X.bin.*27648"):
        read_stl10(written.root / "stl10_binary")


# --- Tiny ImageNet ------------------------------------------------------------------------------


def test_tinyimagenet_labels_names_and_decoded_pixels(tmp_path: Path) -> None:
    written = write_tinyimagenet(tmp_path, num_classes=3, per_class=2, val_count=4)
    ds = read_tinyimagenet(written.root)
    assert (ds.image_size, ds.num_classes) == ((64, 64), 3)
    assert set(ds.frames) == {"train", "val"}
    assert ds.arrays["train.npy"].shape == (6, 64, 64, 3) and ds.arrays["val.npy"].shape == (4, 64, 64, 3)
    wnids = (written.root / "tiny-imagenet-200" / "wnids.txt").read_text().split()
    assert written.class_names == [f"thing {wnids.index(w)}, object {wnids.index(w)}" for w in sorted(wnids)]
    for split in ("train", "val"):
        check_array_rows(ds, split, written.labels[split], written.class_names)
        for i, path in enumerate(written.files[split]):
            with Image.open(path) as im:
                np.testing.assert_array_equal(ds.arrays[f"{split}.npy"][i], np.asarray(im.convert("RGB")))
    gray = ds.arrays["train.npy"][0]  # written as a one-channel JPEG
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_tinyimagenet_annotation_naming_missing_file(tmp_path: Path) -> None:
    written = write_tinyimagenet(tmp_path)
    (written.root / "tiny-imagenet-200" / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DatasetFormatError, match=r"val_annotations.txt line 3: image val_2.JPEG"):
        read_tinyimagenet(written.root)


def test_tinyimagenet_wrong_image_size_is_named(tmp_path: Path) -> None:
    written = write_tinyimagenet(tmp_path)
    Image.new("RGB", (32, 64)).save(written.files["val"][1], "JPEG")
    with pytest.raises(DatasetFormatError, match=r"val_1.JPEG.*32x64"):
        read_tinyimagenet(written.root / "tiny-imagenet-200")


# --- MNIST --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("gzipped", "raw_subfolder"), [(False, False), (True, False), (True, True)])
def test_mnist_plain_gzipped_and_raw_subfolder(tmp_path: Path, gzipped: bool, raw_subfolder: bool) -> None:
    written = write_mnist(tmp_path, train_count=5, test_count=3, gzipped=gzipped, raw_subfolder=raw_subfolder)
    ds = read_mnist(written.root)
    assert (ds.image_size, ds.num_classes) == ((28, 28), 10)
    assert ds.arrays["train.npy"].shape == (5, 28, 28, 1)
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.arrays[f"{split}.npy"], written.images[split])
        check_array_rows(ds, split, written.labels[split], [str(d) for d in range(10)])
    folder = written.root / "MNIST" / "raw" if raw_subfolder else written.root
    raw = (folder / ("t10k-images-idx3-ubyte" + (".gz" if gzipped else ""))).read_bytes()
    raw = gzip.decompress(raw) if gzipped else raw
    # idx3: 16-byte header, then images row-major
    assert ds.arrays["test.npy"][2, 5, 7, 0] == raw[16 + 2 * 784 + 5 * 28 + 7]


def test_mnist_wrong_magic_names_file_and_magic(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    path = written.root / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 2051) + path.read_bytes()[4:])  # an images magic on a labels file
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte: magic number 2051"):
        read_mnist(written.root)


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    written = write_mnist(tmp_path, train_count=5)
    path = written.root / "train-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 2049, 4) + bytes([1, 2, 3, 4]))
    with pytest.raises(DatasetFormatError, match=r"train-labels-idx1-ubyte: 4 labels.*5 images"):
        read_mnist(written.root)


def test_mnist_truncated_images(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    path = written.root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte: .* bytes, expected"):
        read_mnist(written.root)


# --- digits -------------------------------------------------------------------------------------


def test_digits_split_is_stratified_deterministic_and_scaled(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    shutil.copy(sklearn_digits_file(), tmp_path / "digits.csv.gz")  # the raw copy the demo stage makes
    ds = read_digits(tmp_path, test_fraction=0.25, seed=0)
    assert (ds.image_size, ds.num_classes) == ((8, 8), 10)
    train, test = ds.frames["train"], ds.frames["test"]
    assert len(train) + len(test) == 1797 and len(test) == 450  # sklearn rounds the test share up
    for label in range(10):
        share = (test["label"] == label).sum() / (digits.target == label).sum()
        assert abs(share - 0.25) < 0.02
    for split in ("train", "test"):
        check_array_rows(ds, split, ds.frames[split]["label"].to_numpy(), [str(d) for d in range(10)])

    # pixel scaling v -> round(v * 255 / 16), checked as multisets of (image bytes, label)
    table = np.array([round(v * 255 / 16) for v in range(17)], dtype=np.uint8)
    expected = sorted(
        (table[img.astype(int)].tobytes(), int(t)) for img, t in zip(digits.images, digits.target, strict=True)
    )
    got = sorted(
        (img.tobytes(), int(t))
        for split in ("train", "test")
        for img, t in zip(ds.arrays[f"{split}.npy"], ds.frames[split]["label"], strict=True)
    )
    assert got == expected
    assert table[16] == 255 and table[8] == 128

    again = read_digits(tmp_path, test_fraction=0.25, seed=0)
    assert list(again.frames["test"]["sha256"]) == list(test["sha256"])
    other = read_digits(tmp_path, test_fraction=0.25, seed=1)
    assert list(other.frames["test"]["sha256"]) != list(test["sha256"])


def test_digits_rejects_bad_fraction_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        read_digits(None, test_fraction=1.0)
    with pytest.raises(DatasetFormatError, match="digits.csv.gz: digits file not found"):
        read_digits(tmp_path)
    (tmp_path / "digits.csv.gz").write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(DatasetFormatError, match="digits.csv.gz: expected rows of 64 pixels"):
        read_digits(tmp_path)


# --- registry -----------------------------------------------------------------------------------


def test_registry_lists_every_reader() -> None:
    assert CLASSIFICATION_READERS == {
        "cifar10": read_cifar10,
        "cifar100": read_cifar100,
        "stl10": read_stl10,
        "tinyimagenet": read_tinyimagenet,
        "mnist": read_mnist,
        "digits": read_digits,
    }


@pytest.mark.parametrize("name", sorted(set(CLASSIFICATION_READERS) - {"digits"}))
def test_empty_root_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetFormatError, match=str(tmp_path)):
        CLASSIFICATION_READERS[name](tmp_path)


def test_a_cifar_batch_pickled_by_python3_at_protocol_2_loads(tmp_path: Path) -> None:
    """Python 3 writes bytes at protocol 2 as _codecs.encode(str, 'latin1'); such a batch is harmless and loads."""
    written = write_cifar10(tmp_path)
    folder = written.root / "cifar-10-batches-py"
    reference = read_cifar10(written.root)
    for name in ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        payload = pickle.dumps(batch, protocol=2)
        assert b"_codecs" in payload  # the form the restricted unpickler used to refuse
        (folder / name).write_bytes(payload)
    again = read_cifar10(written.root)
    for name in reference.arrays:
        assert np.array_equal(again.arrays[name], reference.arrays[name])
    for split in reference.frames:
        assert again.frames[split]["label"].tolist() == reference.frames[split]["label"].tolist()


def test_codecs_encode_is_allowed_only_as_latin1_bytes(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    batch = written.root / "cifar-10-batches-py" / "data_batch_1"
    # _codecs.encode("x", "rot13") pickled by hand: any codec but latin1 is refused
    batch.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DatasetFormatError, match=r"data_batch_1.*only as \(str, 'latin1'\)"):
        read_cifar10(written.root)


@pytest.mark.parametrize("name", ["cifar10", "stl10", "mnist"])
def test_a_dataset_file_that_is_a_symlink_loop_is_named(tmp_path: Path, name: str) -> None:
    written = {"cifar10": write_cifar10, "stl10": write_stl10, "mnist": write_mnist}[name](tmp_path)
    stem = {"cifar10": "data_batch_1", "stl10": "train_X.bin", "mnist": "train-images-idx3-ubyte"}[name]
    victim = next(p for p in sorted(written.root.rglob("*")) if p.name.startswith(stem))
    victim.unlink()
    victim.symlink_to(victim.name)
    with pytest.raises(DatasetFormatError, match="symbolic link loop") as info:
        CLASSIFICATION_READERS[name](written.root)
    assert victim.name in str(info.value)
