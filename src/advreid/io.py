"""The one way to write outputs: to a temporary sibling, then an atomic rename.

A crash or an exception never leaves a partial file or directory at the output path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the output is an ordinary directory
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what an earlier writer of ``path`` killed mid-write left beside it; return what was removed.

    Only names :func:`atomic_path` makes for this very path match (``.<name>.<8 random chars>.tmp`` and
    ``.<name>.old``), so other outputs' temporaries in the same folder are left alone.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:[a-z0-9_]{8}\.tmp|old)")
    removed = []
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            if pattern.fullmatch(sibling.name):
                if sibling.is_dir() and not sibling.is_symlink():
                    shutil.rmtree(sibling, ignore_errors=True)
                else:
                    sibling.unlink(missing_ok=True)
                removed.append(sibling)
    return sorted(removed)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline (stable bytes for DVC)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml's C parser when PyYAML has it (6x faster on dvc.lock, which every stage
    reads for its lineage), else the pure-Python one; the same documents either way."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: str | os.PathLike) -> str:
    """MD5 of a file's bytes, as DVC records it in dvc.lock."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """The one way to read a ``.pt`` file: ``torch.load(weights_only=True)`` on CPU, errors that name the file.

    A missing file raises FileNotFoundError; a truncated, foreign or unsafe file raises CheckpointError saying
    what is wrong. torch's own message is not passed on: it advises ``weights_only=False``, which would run
    whatever code the file carries.
    """
    import pickle

    import torch

    from advreid.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f" (the global {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load this {what}: it references Python objects other than tensors, numbers, "
            f"strings and containers{detail}; a file written by advreid never does, so it is foreign or tampered "
            "with (regenerate it with the stage that writes it)"
        ) from None
    except Exception as err:  # any failure to parse is the file's: say so and name it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in first:  # never pass on torch's advice to unpickle unsafely
            first = type(err).__name__
        raise CheckpointError(
            f"{path}: cannot read this {what}: the file is truncated or not a torch file ({first}); "
            "regenerate it with the stage that writes it"
        ) from None
