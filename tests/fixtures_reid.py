"""Writers of tiny Re-ID datasets in the exact on-disk layouts of the real releases.

Each ``write_<name>(root, ...)`` writes real image files (random-noise JPEG or PNG made by PIL, a few
pixels in size) with the release's folder, file-name and list-file conventions, and returns a
:class:`WrittenDataset` describing what a reader with default options must return. Ids and cameras are
plain parameters so integration tests can shape the data; defaults give a few ids on a few cameras.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


@dataclass(frozen=True)
class WrittenDataset:
    """What a fixture writer put on disk.

    Attributes:
        root: the dataset root to pass to the reader.
        expected: one row per image a reader with default options returns: ``split``, ``path`` (relative
            to ``root``, posix), ``label``, ``camera``, ``frame`` and the dataset's extras (``sequence``,
            ``timestamp``); MSMT17 adds ``list`` (the list file's split), CUHK03-NP adds ``variant``.
            Images the reader must drop (junk in train) are not in it.
        counts: split -> number of rows a reader returns (for CUHK03-NP: per variant).
    """

    root: Path
    expected: pd.DataFrame
    counts: dict[str, int]


class _Writer:
    """Writes noise images under ``root`` and records the rows a reader should return."""

    def __init__(self, root: Path, size: tuple[int, int], seed: int) -> None:
        self.root = Path(root)
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.rows: list[dict] = []

    def image(self, relative: str, *, keep: bool = True, **row: object) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        height, width = self.size
        pixels = self.rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        if path.suffix == ".png":
            Image.fromarray(pixels).save(path, format="PNG")
        else:
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        if keep:
            self.rows.append({"path": relative, **row})

    def result(self, group: str | None = None) -> WrittenDataset:
        expected = pd.DataFrame(self.rows).sort_values("path", kind="stable").reset_index(drop=True)
        counted = expected if group is None else expected[expected[group] == expected[group].iloc[0]]
        counts = {str(k): int(v) for k, v in counted["split"].value_counts().items()}
        return WrittenDataset(root=self.root, expected=expected, counts=counts)


def write_text_lines(path: Path, lines: Iterable[str]) -> None:
    """A list file as the releases ship them: one entry per line, trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its bytes (a truncated JPEG / PNG)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def write_market1501(
    root: Path,
    *,
    train_ids: Iterable[int] = (1, 2, 3),
    test_ids: Iterable[int] = (4, 5),
    cameras: Iterable[int] = (1, 2, 3),
    per_camera: int = 2,
    junk: int = 2,
    distractors: int = 2,
    train_junk: int = 0,
    size: tuple[int, int] = (16, 8),
    seed: int = 0,
) -> WrittenDataset:
    """Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/``; ``PPPP_cCsS_FFFFFF_NN.jpg``.

    Train: ``per_camera`` images per train id and camera (plus ``train_junk`` images labelled -1 / 0,
    which readers drop). Query: one image per test id and camera. Gallery: ``per_camera`` per test id
    and camera, ``junk`` images with id -1 and ``distractors`` with id 0000. A ``Thumbs.db`` sits in
    each folder as in the release.
    """
    w = _Writer(root, size, seed)
    cameras = tuple(cameras)
    counter = iter(range(1, 1_000_000))

    def add(folder: str, split: str, pid: int, camera: int, nn: int, keep: bool = True) -> None:
        i = next(counter)
        sequence, frame = 1 + i % 6, 25 * i + 1
        stem = "-1" if pid == -1 else f"{pid:04d}"
        name = f"{stem}_c{camera}s{sequence}_{frame:06d}_{nn:02d}.jpg"
        w.image(
            f"{folder}/{name}",
            keep=keep,
            split=split,
            label=pid,
            camera=camera,
            frame=frame,
            sequence=sequence,
        )

    for pid in train_ids:
        for camera in cameras:
            for nn in range(1, per_camera + 1):
                add("bounding_box_train", "train", pid, camera, nn)
    for k in range(train_junk):
        add("bounding_box_train", "train", (-1, 0)[k % 2], cameras[k % len(cameras)], 1, keep=False)
    for pid in test_ids:
        for camera in cameras:
            add("query", "query", pid, camera, 0)
            for nn in range(1, per_camera + 1):
                add("bounding_box_test", "gallery", pid, camera, nn)
    for k in range(junk):
        add("bounding_box_test", "gallery", -1, cameras[k % len(cameras)], 1)
    for k in range(distractors):
        add("bounding_box_test", "gallery", 0, cameras[k % len(cameras)], 1)
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (Path(root) / folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    return w.result()


def write_dukemtmc(
    root: Path,
    *,
    train_ids: Iterable[int] = (1, 2, 3),
    test_ids: Iterable[int] = (4, 5),
    distractor_ids: Iterable[int] = (6,),
    cameras: Iterable[int] = (1, 2, 3),
    per_camera: int = 2,
    size: tuple[int, int] = (16, 8),
    seed: int = 0,
) -> WrittenDataset:
    """DukeMTMC-reID: the Market-1501 folders, names ``PPPP_cC_fFFFFFFF.jpg``.

    Train: ``per_camera`` images per train id and camera. Query: one per test id and camera. Gallery:
    ``per_camera`` per test id and camera, and as many per distractor id (ids only in the gallery,
    as Duke's 408 distractor identities are).
    """
    w = _Writer(root, size, seed)
    counter = iter(range(1, 1_000_000))

    def add(folder: str, split: str, pid: int, camera: int) -> None:
        frame = 120 * next(counter) + 7
        w.image(
            f"{folder}/{pid:04d}_c{camera}_f{frame:07d}.jpg",
            split=split,
            label=pid,
            camera=camera,
            frame=frame,
        )

    cameras = tuple(cameras)
    for pid in train_ids:
        for camera in cameras:
            for _ in range(per_camera):
                add("bounding_box_train", "train", pid, camera)
    for pid in test_ids:
        for camera in cameras:
            add("query", "query", pid, camera)
    for pid in (*test_ids, *distractor_ids):
        for camera in cameras:
            for _ in range(per_camera):
                add("bounding_box_test", "gallery", pid, camera)
    return w.result()


def write_msmt17(
    root: Path,
    *,
    version: str = "v1",
    train_ids: Iterable[int] = (0, 1, 2),
    test_ids: Iterable[int] = (0, 1),
    cameras: Iterable[int] = (1, 2, 3),
    per_camera: int = 2,
    val_per_id: int = 1,
    size: tuple[int, int] = (16, 8),
    seed: int = 0,
) -> WrittenDataset:
    """MSMT17: ``MSMT17_V1/{train,test}`` (v1) or ``MSMT17_V2/{mask_train_v2,mask_test_v2}`` (v2).

    Images live in one folder per id (``train/0000/0000_000_01_0303morning_0015_0.jpg``); the list files
    ``list_{train,val,query,gallery}.txt`` beside the image folders name them as ``0000/<name> pid``.
    Each train id has ``per_camera`` images per camera, its first ``val_per_id`` listed in
    ``list_val.txt``. Each test id has, per camera, one query and ``per_camera`` gallery images.
    ``expected`` has ``split`` as read by default (``list_val.txt`` rows in ``val``) and ``list`` naming the list file.
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', not {version!r}")
    main = f"MSMT17_{version.upper()}"
    train_dir, test_dir = ("train", "test") if version == "v1" else ("mask_train_v2", "mask_test_v2")
    w = _Writer(root, size, seed)
    times = ("morning", "noon", "afternoon")
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    counter = iter(range(1, 1_000_000))
    cameras = tuple(cameras)

    def add(folder: str, listed: str, pid: int, index: int, camera: int) -> None:
        i = next(counter)
        name = f"{pid:04d}_{index:03d}_{camera:02d}_0303{times[i % 3]}_{i:04d}_0.jpg"
        w.image(
            f"{main}/{folder}/{pid:04d}/{name}",
            split=listed,
            list=listed,
            label=pid,
            camera=camera,
            frame=-1,
        )
        lists[listed].append(f"{pid:04d}/{name} {pid}")

    for pid in train_ids:
        index = 0
        for camera in cameras:
            for _ in range(per_camera):
                add(train_dir, "val" if index < val_per_id else "train", pid, index, camera)
                index += 1
    for pid in test_ids:
        index = 0
        for camera in cameras:
            for listed in ("query",) + ("gallery",) * per_camera:
                add(test_dir, listed, pid, index, camera)
                index += 1
    for listed, lines in lists.items():
        write_text_lines(Path(root) / main / f"list_{listed}.txt", lines)
    return w.result()


def write_cuhk03_np(
    root: Path,
    *,
    train_ids: Iterable[int] = (1, 2, 3),
    test_ids: Iterable[int] = (4, 5),
    per_camera: int = 2,
    variants: Iterable[str] = ("labeled", "detected"),
    size: tuple[int, int] = (16, 8),
    seed: int = 0,
) -> WrittenDataset:
    """CUHK03-NP: ``{labeled,detected}/{bounding_box_train,query,bounding_box_test}/PPPP_cC_N.png``.

    Cameras 1 and 2. Train: ``per_camera`` images per train id and camera. Each test id has
    ``per_camera`` images per camera; the first of each camera is the query, the rest the gallery
    (as the new protocol's 1400 queries = 700 ids x 2 cameras). ``expected`` has a ``variant`` column;
    ``counts`` are per variant.
    """
    if per_camera < 2:
        raise ValueError(f"per_camera must be >= 2 so every test id has gallery images, not {per_camera}")
    w = _Writer(root, size, seed)
    for variant in variants:
        for pid in train_ids:
            n = 0
            for camera in (1, 2):
                for _ in range(per_camera):
                    n += 1
                    w.image(
                        f"{variant}/bounding_box_train/{pid:04d}_c{camera}_{n}.png",
                        split="train",
                        variant=variant,
                        label=pid,
                        camera=camera,
                        frame=-1,
                    )
        for pid in test_ids:
            n = 0
            for camera in (1, 2):
                for k in range(per_camera):
                    n += 1
                    folder, split = ("query", "query") if k == 0 else ("bounding_box_test", "gallery")
                    w.image(
                        f"{variant}/{folder}/{pid:04d}_c{camera}_{n}.png",
                        split=split,
                        variant=variant,
                        label=pid,
                        camera=camera,
                        frame=-1,
                    )
    return w.result(group="variant")


def write_veri776(
    root: Path,
    *,
    train_ids: Iterable[int] = (1, 2, 3),
    test_ids: Iterable[int] = (4, 5),
    cameras: Iterable[int] = (1, 2, 3),
    per_camera: int = 2,
    with_lists: bool = True,
    size: tuple[int, int] = (16, 8),
    seed: int = 0,
) -> WrittenDataset:
    """VeRi-776: ``image_train/``, ``image_query/``, ``image_test/`` and ``name_{train,query,test}.txt``.

    Names ``VVVV_cCCC_TTTTTTTT_0.jpg`` (vehicle id, camera, timestamp). Train: ``per_camera`` images
    per train id and camera; query: one per test id and camera; gallery (``image_test``): ``per_camera``
    per test id and camera. ``with_lists=False`` leaves the name lists out.
    """
    w = _Writer(root, size, seed)
    names: dict[str, list[str]] = {"train": [], "query": [], "test": []}
    counter = iter(range(1, 1_000_000))
    cameras = tuple(cameras)

    def add(listed: str, split: str, vid: int, camera: int) -> None:
        timestamp = 1000 * next(counter) + 30
        name = f"{vid:04d}_c{camera:03d}_{timestamp:08d}_0.jpg"
        w.image(f"image_{listed}/{name}", split=split, label=vid, camera=camera, frame=-1, timestamp=timestamp)
        names[listed].append(name)

    for vid in train_ids:
        for camera in cameras:
            for _ in range(per_camera):
                add("train", "train", vid, camera)
    for vid in test_ids:
        for camera in cameras:
            add("query", "query", vid, camera)
            for _ in range(per_camera):
                add("test", "gallery", vid, camera)
    if with_lists:
        for listed, lines in names.items():
            write_text_lines(Path(root) / f"name_{listed}.txt", sorted(lines))
    return w.result()


# One writer per reader in advreid.data.formats.reid.REID_READERS, under the same keys.
REID_WRITERS: dict[str, Callable[..., WrittenDataset]] = {
    "market1501": write_market1501,
    "dukemtmc": write_dukemtmc,
    "msmt17": write_msmt17,
    "cuhk03": write_cuhk03_np,
    "veri776": write_veri776,
}


def write_demo_project(root: Path, spec) -> Path:
    """A project root with both synthetic demo domains, raw (``data/raw``) and ingested (``data/processed``)."""
    from advreid.data.processed import write_dataset
    from advreid.data.registry import read_dataset
    from advreid.data.synthetic import generate_demo

    generate_demo(root / "data" / "raw" / "demo_a", root / "data" / "raw" / "demo_b", spec, progress=False)
    for name in ("demo_a", "demo_b"):
        raw = read_dataset("market1501", root / "data" / "raw" / name, name=name, domain=name)
        write_dataset(raw, root / "data" / "processed" / name, f"data/raw/{name}")
    return root
