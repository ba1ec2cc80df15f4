"""Readers for the Re-ID benchmarks in their published on-disk layouts.

Market-1501, DukeMTMC-reID, MSMT17 (v1 and v2), CUHK03-NP and VeRi-776, following torchreid's
conventions for which folder or list file is which split, except that:

- ids are kept as published (no relabelling to contiguous training labels; that happens at training time);
- camera ids stay 1-based, as written in the file names;
- Market-style junk (label -1) and distractor (label 0) images are kept in the gallery, so evaluation
  can drop junk and keep distractors (the standard protocol); they are dropped from train, and a query
  with either label is an error. MSMT17 numbers its identities from 0, so there label 0 is an ordinary
  person and no label is treated specially.

Every row carries the manifest core columns plus ``frame`` (-1 where the file name has none) and, per
dataset, ``sequence`` (Market-1501) or ``timestamp`` (VeRi-776). ``path`` is relative to ``root``.
Files without an image suffix (``Thumbs.db``, ``readme.txt``) and hidden files are ignored; an image
whose name does not follow the dataset's pattern is an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from advreid.data.formats.base import DatasetFormatError, RawDataset, link_problem
from advreid.data.images import ImageReadError, describe_image

DEFAULT_MAX_PIXELS = 4096 * 4096  # person / vehicle crops are far smaller; bigger is a broken or hostile file
JUNK_LABEL = -1
DISTRACTOR_LABEL = 0

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_MARKET_SPLITS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))
_VERI_SPLITS = (
    ("train", "image_train", "name_train.txt"),
    ("query", "image_query", "name_query.txt"),
    ("gallery", "image_test", "name_test.txt"),
)
_CORE = ("dataset", "split", "domain", "path", "sha256", "width", "height", "label", "camera", "frame")


@dataclass(frozen=True)
class _NameFormat:
    """How one dataset names its image files.

    The pattern's named groups are integers: ``label`` and ``camera`` always, ``frame``, ``sequence``
    or ``timestamp`` where the name encodes them (they become manifest columns).
    """

    dataset: str
    pattern: re.Pattern[str]
    example: str
    max_camera: int
    max_label: int | None = None
    market_labels: bool = True  # -1 junk / 0 distractor semantics apply

    @property
    def extras(self) -> tuple[str, ...]:
        return tuple(g for g in self.pattern.groupindex if g not in ("label", "camera", "frame"))

    def parse(self, name: str, where: str | Path) -> dict[str, int]:
        match = self.pattern.fullmatch(name)
        if match is None:
            raise DatasetFormatError(
                f"{self.dataset}: {where}: file name {name!r} does not match the {self.dataset} "
                f"naming pattern (e.g. {self.example})"
            )
        fields = {key: int(value) for key, value in match.groupdict().items()}
        if not 1 <= fields["camera"] <= self.max_camera:
            raise DatasetFormatError(f"{self.dataset}: {where}: camera {fields['camera']} outside 1..{self.max_camera}")
        if self.max_label is not None and fields["label"] > self.max_label:
            raise DatasetFormatError(
                f"{self.dataset}: {where}: id {fields['label']} above the largest id {self.max_label}"
            )
        return fields


_MARKET = _NameFormat(
    "market1501",
    re.compile(r"(?P<label>-1|\d+)_c(?P<camera>\d)s(?P<sequence>\d+)_(?P<frame>\d+)_\d+\.jpg"),
    "0002_c1s1_000451_03.jpg",
    max_camera=6,
    max_label=1501,
)
_DUKE = _NameFormat(
    "dukemtmc",
    re.compile(r"(?P<label>-1|\d+)_c(?P<camera>\d)_f(?P<frame>\d+)\.jpg"),
    "0001_c2_f0046182.jpg",
    max_camera=8,
)
_CUHK03 = _NameFormat(
    "cuhk03",
    re.compile(r"(?P<label>-1|\d+)_c(?P<camera>\d)_\d+\.png"),
    "0001_c1_1.png",
    max_camera=2,
    max_label=1467,
)
# Only the camera field is documented (torchreid reads name.split('_')[2]); the rest is not parsed.
_MSMT17 = _NameFormat(
    "msmt17",
    re.compile(r"(?P<label>\d+)_\d+_(?P<camera>\d+)_.+\.jpg"),
    "0000_000_01_0303morning_0015_0.jpg",
    max_camera=15,
    market_labels=False,
)
_VERI776 = _NameFormat(
    "veri776",
    re.compile(r"(?P<label>\d+)_c(?P<camera>\d+)_(?P<timestamp>\d+)_\d+\.jpg"),
    "0002_c002_00030600_0.jpg",
    max_camera=20,
)


def read_market1501(root: Path, *, domain: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> RawDataset:
    """Market-1501: ``bounding_box_train/`` (train), ``query/``, ``bounding_box_test/`` (gallery).

    Names ``PPPP_cCsS_FFFFFF_NN.jpg`` give id, camera (1..6), sequence S and frame F; id -1 is junk and
    0000 a distractor: both kept in the gallery, dropped from train, an error in the query.
    """
    root = _existing_root(root, _MARKET.dataset, max_pixels)
    return _read_split_folders(root, root, _MARKET_SPLITS, _MARKET, domain, max_pixels)


def read_dukemtmc(root: Path, *, domain: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> RawDataset:
    """DukeMTMC-reID: the Market-1501 folders, names ``PPPP_cC_fFFFFFFF.jpg`` (cameras 1..8, frame F).

    Label -1 / 0 images (none in the release) would follow the Market-1501 rules.
    """
    root = _existing_root(root, _DUKE.dataset, max_pixels)
    return _read_split_folders(root, root, _MARKET_SPLITS, _DUKE, domain, max_pixels)


def read_cuhk03(
    root: Path, *, variant: str = "labeled", domain: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> RawDataset:
    """CUHK03 new protocol (CUHK03-NP, 767 / 700 ids): ``{labeled,detected}/`` each with Market folders.

    Names ``PPPP_cC_N.png`` (cameras 1..2, N an image index, not a frame, so ``frame`` is -1).

    Args:
        root: the ``cuhk03-np`` folder holding ``labeled/`` and ``detected/``.
        variant: ``"labeled"`` (hand-drawn boxes) or ``"detected"`` (DPM boxes).
    """
    if variant not in ("labeled", "detected"):
        raise DatasetFormatError(f"cuhk03: variant must be 'labeled' or 'detected', not {variant!r}")
    root = _existing_root(root, _CUHK03.dataset, max_pixels)
    return _read_split_folders(root, root / variant, _MARKET_SPLITS, _CUHK03, domain, max_pixels)


def read_msmt17(
    root: Path,
    *,
    merge_val: bool = False,
    version: str | None = None,
    domain: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> RawDataset:
    """MSMT17, v1 (``MSMT17_V1/{train,test}``) or v2 (``MSMT17_V2/{mask_train_v2,mask_test_v2}``).

    The list files beside the image folders are the source of truth: ``list_train.txt`` and
    ``list_val.txt`` name images under the train folder, ``list_query.txt`` and ``list_gallery.txt``
    under the test folder, one ``relative/path.jpg pid`` per line. The camera (1..15) is the third
    ``_`` field of the file name; the pid must equal the name's first field.

    Args:
        root: the folder holding ``MSMT17_V1`` or ``MSMT17_V2``, or one of those folders itself.
        merge_val: put ``list_val.txt`` rows in ``train`` instead of a ``val`` split. Off by default, as in
            torchreid and fast-reid, which merge only when asked (``combineall``): published MSMT17 numbers
            train on ``list_train.txt`` alone.
        version: ``"v1"`` or ``"v2"``; needed only when both are present.
    """
    root = _existing_root(root, _MSMT17.dataset, max_pixels)
    base, train_dir, test_dir = _msmt17_layout(root, version)
    lists = (
        ("train", train_dir, "list_train.txt"),
        ("train" if merge_val else "val", train_dir, "list_val.txt"),
        ("query", test_dir, "list_query.txt"),
        ("gallery", test_dir, "list_gallery.txt"),
    )
    entries: dict[str, list[tuple[Path, dict[str, int]]]] = {}
    for split, image_dir, list_name in lists:
        entries.setdefault(split, []).extend(_read_list(base / list_name, image_dir, _MSMT17, labelled=True))
    _reject_duplicates(entries, _MSMT17.dataset)
    return _dataset(root, entries, _MSMT17, domain, max_pixels)


def read_veri776(root: Path, *, domain: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> RawDataset:
    """VeRi-776: ``image_train/`` (train), ``image_query/`` (query), ``image_test/`` (gallery).

    Names ``VVVV_cCCC_TTTTTTTT_N.jpg`` give vehicle id, camera (1..20) and timestamp T (stored in
    ``timestamp``; ``frame`` is -1). Where ``name_train.txt`` / ``name_query.txt`` / ``name_test.txt``
    exist they list the split's images and are the source of truth; otherwise the folder is scanned.
    """
    root = _existing_root(root, _VERI776.dataset, max_pixels)
    entries: dict[str, list[tuple[Path, dict[str, int]]]] = {}
    for split, folder, list_name in _VERI_SPLITS:
        list_path = root / list_name
        if list_path.is_file():
            if not (root / folder).is_dir():
                raise DatasetFormatError(f"veri776: split folder {root / folder} is missing")
            entries[split] = _read_list(list_path, root / folder, _VERI776, labelled=False)
        else:
            entries[split] = _scan_folder(root / folder, _VERI776)
    _reject_duplicates(entries, _VERI776.dataset)
    return _dataset(root, entries, _VERI776, domain, max_pixels)


REID_READERS: dict[str, Callable[..., RawDataset]] = {
    "market1501": read_market1501,
    "dukemtmc": read_dukemtmc,
    "msmt17": read_msmt17,
    "cuhk03": read_cuhk03,
    "veri776": read_veri776,
}


def _existing_root(root: Path, dataset: str, max_pixels: int) -> Path:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DatasetFormatError(f"{dataset}: option max_pixels must be an integer >= 1, got {max_pixels!r}")
    root = Path(root)
    problem = link_problem(root)
    if problem:
        raise DatasetFormatError(f"{dataset}: dataset root {root} is {problem}")
    if not root.is_dir():
        raise DatasetFormatError(f"{dataset}: dataset root {root} is not a directory")
    return root


def _read_split_folders(
    root: Path,
    base: Path,
    splits: tuple[tuple[str, str], ...],
    fmt: _NameFormat,
    domain: str | None,
    max_pixels: int,
) -> RawDataset:
    entries = {split: _scan_folder(base / folder, fmt) for split, folder in splits}
    return _dataset(root, entries, fmt, domain, max_pixels)


def _scan_folder(folder: Path, fmt: _NameFormat) -> list[tuple[Path, dict[str, int]]]:
    """Every image file directly in ``folder`` with its parsed name fields."""
    problem = link_problem(folder)
    if problem:
        raise DatasetFormatError(f"{fmt.dataset}: split folder {folder} is {problem}")
    if not folder.is_dir():
        raise DatasetFormatError(f"{fmt.dataset}: split folder {folder} is missing")
    candidates = [p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES]
    for p in candidates:
        problem = link_problem(p)  # is_file() would call a loop "not a file" and drop the image silently
        if problem:
            raise DatasetFormatError(f"{fmt.dataset}: {p} is {problem}; replace it with the image or remove it")
    files = sorted(p for p in candidates if p.is_file())
    if not files:
        raise DatasetFormatError(f"{fmt.dataset}: split folder {folder} contains no images")
    return [(p, fmt.parse(p.name, p)) for p in files]


def _read_list(list_path: Path, image_dir: Path, fmt: _NameFormat, labelled: bool) -> list[tuple[Path, dict[str, int]]]:
    """The images a list file names, one per non-blank line: ``path`` or ``path pid`` (``labelled``)."""
    if not list_path.is_file():
        raise DatasetFormatError(f"{fmt.dataset}: list file {list_path} is missing")
    entries = []
    for number, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_path} line {number}"
        if len(fields) != (2 if labelled else 1):
            shape = "'relative/path.jpg pid'" if labelled else "one file name"
            raise DatasetFormatError(f"{fmt.dataset}: {where}: expected {shape}, got {line.strip()!r}")
        relative = PurePosixPath(fields[0])
        if relative.is_absolute() or ".." in relative.parts:
            raise DatasetFormatError(f"{fmt.dataset}: {where}: path {fields[0]!r} must stay inside {image_dir}")
        path = image_dir.joinpath(*relative.parts)
        problem = link_problem(path)
        if problem:
            raise DatasetFormatError(f"{fmt.dataset}: {where}: listed image {path} is {problem}")
        if not path.is_file():
            raise DatasetFormatError(f"{fmt.dataset}: {where}: listed image {fields[0]} does not exist ({path})")
        parsed = fmt.parse(relative.name, f"{where} ({fields[0]})")
        if labelled:
            try:
                pid = int(fields[1])
            except ValueError:
                raise DatasetFormatError(f"{fmt.dataset}: {where}: pid {fields[1]!r} is not an integer") from None
            if pid != parsed["label"]:
                raise DatasetFormatError(
                    f"{fmt.dataset}: {where}: pid {pid} but id {parsed['label']} in {relative.name}"
                )
        entries.append((path, parsed))
    return entries


def _reject_duplicates(entries: dict[str, list[tuple[Path, dict[str, int]]]], dataset: str) -> None:
    seen: dict[Path, str] = {}
    for split, items in entries.items():
        for path, _ in items:
            if path in seen:
                raise DatasetFormatError(f"{dataset}: {path} is listed twice (splits {seen[path]} and {split})")
            seen[path] = split


def _msmt17_layout(root: Path, version: str | None) -> tuple[Path, Path, Path]:
    """(folder holding the lists, train image folder, test image folder) for MSMT17 v1 or v2."""
    if version not in (None, "v1", "v2"):
        raise DatasetFormatError(f"msmt17: version must be 'v1', 'v2' or None, not {version!r}")
    names = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}
    found = {}
    for v in ("v1", "v2") if version is None else (version,):
        for base in (root / f"MSMT17_{v.upper()}", root):
            train, test = (_child_dir(base, n) for n in names[v])
            if train is not None and test is not None:
                found[v] = (base, train, test)
                break
    if not found:
        wanted = " or ".join(f"MSMT17_{v.upper()}/{{{','.join(names[v])}}}" for v in ("v1", "v2"))
        raise DatasetFormatError(f"msmt17: {root} has no image folders {wanted} (nor those folders directly)")
    if len(found) > 1:
        raise DatasetFormatError(f"msmt17: {root} holds both MSMT17_V1 and MSMT17_V2; pass version='v1' or 'v2'")
    return next(iter(found.values()))


def _child_dir(base: Path, name: str) -> Path | None:
    """The sub-folder of ``base`` called ``name``, ignoring case (some v2 copies say ``mask_train_V2``)."""
    if not base.is_dir():
        return None
    for child in base.iterdir():
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def _dataset(
    root: Path,
    entries: dict[str, list[tuple[Path, dict[str, int]]]],
    fmt: _NameFormat,
    domain: str | None,
    max_pixels: int,
) -> RawDataset:
    frames = {}
    for split, items in entries.items():
        if fmt.market_labels:
            items = _apply_junk_rules(split, items, fmt.dataset)
        rows = [_row(root, path, split, fields, fmt, domain or fmt.dataset, max_pixels) for path, fields in items]
        columns = list(_CORE) + list(fmt.extras)
        frame = pd.DataFrame(rows, columns=columns)
        for column in ("width", "height", "label", "camera", "frame", *fmt.extras):
            frame[column] = frame[column].astype("int64")
        frames[split] = frame.sort_values("path", kind="stable").reset_index(drop=True)
    return RawDataset(name=fmt.dataset, kind="reid", frames=frames, image_size=None)


def _apply_junk_rules(
    split: str, items: list[tuple[Path, dict[str, int]]], dataset: str
) -> list[tuple[Path, dict[str, int]]]:
    """Train drops junk and distractors, a query must not have them, the gallery keeps them."""
    special = (JUNK_LABEL, DISTRACTOR_LABEL)
    if split == "train":
        return [(p, f) for p, f in items if f["label"] not in special]
    if split == "query":
        for path, fields in items:
            if fields["label"] in special:
                kind = "junk" if fields["label"] == JUNK_LABEL else "distractor"
                raise DatasetFormatError(f"{dataset}: query image {path} has the {kind} label {fields['label']}")
    return items


def _row(
    root: Path, path: Path, split: str, fields: dict[str, int], fmt: _NameFormat, domain: str, max_pixels: int
) -> dict:
    try:
        sha256, width, height = describe_image(path, max_pixels)
    except ImageReadError as err:
        raise DatasetFormatError(f"{fmt.dataset}: {err}") from err
    return {
        "dataset": fmt.dataset,
        "split": split,
        "domain": domain,
        "path": path.relative_to(root).as_posix(),
        "sha256": sha256,
        "width": width,
        "height": height,
        "label": fields["label"],
        "camera": fields["camera"],
        "frame": fields.get("frame", -1),
        **{key: fields[key] for key in fmt.extras},
    }
