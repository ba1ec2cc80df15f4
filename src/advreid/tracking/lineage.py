"""Lineage from DVC: which stage produced a path, what it consumed, and the hashes DVC recorded.

``dvc.lock`` is plain YAML keyed by resolved stage names (``ingest@market1501``), so it is read directly;
``dvc.yaml`` may be templated (``foreach`` / ``matrix`` / ``${...}``), so the stages it declares are
resolved through DVC's own API. Paths are posix strings relative to the project root, as DVC writes
them for a ``dvc.yaml`` at the root without ``wdir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

from advreid.errors import BadInputError
from advreid.io import load_yaml, write_json

LOCK_FILE = "dvc.lock"
# DVC 3 writes ``hash: md5`` (plain md5); entries without it come from DVC 2, which hashed text files
# after converting CRLF to LF ("md5-dos2unix").
LEGACY_HASH = "md5-dos2unix"


class LineageError(BadInputError, ValueError):
    """The DVC files do not say what the caller asked about; the message names the file and path."""


@dataclass(frozen=True)
class LockedPath:
    """One dep or out of a locked stage: its path and the hash DVC recorded for it."""

    path: str
    md5: str | None
    hash_name: str = "md5"

    @property
    def is_local(self) -> bool:
        return "://" not in self.path


@dataclass(frozen=True)
class LockedStage:
    """A stage as ``dvc.lock`` records it after its last successful run."""

    name: str
    cmd: str
    deps: tuple[LockedPath, ...]
    outs: tuple[LockedPath, ...]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # params file -> key -> locked value


def normalize(path: str | os.PathLike, root: Path) -> str:
    """``path`` as a posix string relative to ``root`` (the form dvc.lock uses); absolute paths inside
    ``root`` are made relative, ``..`` segments are collapsed."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root.resolve())
        except ValueError:
            return p.as_posix()
    return PurePosixPath(os.path.normpath(p.as_posix())).as_posix()


def is_within(path: str, parent: str) -> bool:
    """True when ``path`` equals ``parent`` or lies below it (posix, relative paths)."""
    return path == parent or parent == "." or path.startswith(parent.rstrip("/") + "/")


def read_lock(root: Path) -> dict[str, LockedStage]:
    """Parse ``<root>/dvc.lock`` into locked stages keyed by resolved stage name."""
    lock_path = root / LOCK_FILE
    if not lock_path.is_file():
        raise LineageError(f"{lock_path} does not exist: run `dvc repro` first")
    try:
        data = load_yaml(lock_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise LineageError(f"{lock_path} is not valid YAML: {err}") from err
    stages = data.get("stages")
    if not isinstance(stages, dict):
        raise LineageError(f"{lock_path} has no 'stages' mapping (schema {data.get('schema')!r})")
    return {name: _locked_stage(name, entry, lock_path) for name, entry in stages.items()}


def _locked_stage(name: str, entry: dict, lock_path: Path) -> LockedStage:
    def paths(key: str) -> tuple[LockedPath, ...]:
        items = entry.get(key) or []
        for item in items:
            if "path" not in item:
                raise LineageError(f"{lock_path}: stage {name!r} has a {key} entry without 'path': {item}")
        return tuple(
            LockedPath(
                path=item["path"],
                md5=item.get("md5") or item.get("checksum") or item.get("etag"),
                hash_name=item.get("hash", LEGACY_HASH),
            )
            for item in items
        )

    cmd = entry.get("cmd", "")
    return LockedStage(
        name=name,
        cmd=" && ".join(cmd) if isinstance(cmd, list) else str(cmd),
        deps=paths("deps"),
        outs=paths("outs"),
        params={str(f): dict(values or {}) for f, values in (entry.get("params") or {}).items()},
    )


def producer_of(path: str, lock: dict[str, LockedStage]) -> tuple[LockedStage, LockedPath] | None:
    """The locked stage whose out is ``path`` or a directory containing it, with that out."""
    for stage in lock.values():
        for out in stage.outs:
            if is_within(path, out.path):
                return stage, out
    return None


def producers_within(path: str, lock: dict[str, LockedStage]) -> list[tuple[LockedStage, LockedPath]]:
    """Locked stages whose outs lie strictly inside the directory ``path`` (a dep on a parent dir)."""
    return [
        (stage, out) for stage in lock.values() for out in stage.outs if out.path != path and is_within(out.path, path)
    ]


def upstream_stages(stage: LockedStage, lock: dict[str, LockedStage]) -> list[str]:
    """Names of the locked stages that produce any of ``stage``'s deps (in dep order, no repeats)."""
    names: list[str] = []
    for dep in stage.deps:
        found = [p for p in [producer_of(dep.path, lock)] if p] + producers_within(dep.path, lock)
        for producer, _ in found:
            if producer.name != stage.name and producer.name not in names:
                names.append(producer.name)
    return names


def hash_path(path: str | os.PathLike, hash_name: str = "md5", *, ignore: Any = None) -> str:
    """The hash DVC records for ``path``: a file's md5, or for a directory the md5 of its ``.dir``
    listing followed by ``.dir``.

    Args:
        path: a file or directory.
        hash_name: ``"md5"`` (DVC 3) or ``"md5-dos2unix"`` (entries written by DVC 2).
        ignore: a ``dvc.ignore.DvcIgnoreFilter`` so directory hashes skip what ``.dvcignore`` skips
            (see :func:`dvc_ignore`); None hashes every file.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import MemoryFileSystem, localfs

    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"cannot hash {path}: it does not exist")
    # dry_run computes hashes without copying objects; the in-memory ODB only holds the staged tree.
    odb = HashFileDB(MemoryFileSystem(), "/advreid-hash", hash_name=hash_name)
    _, _, obj = build(odb, path, localfs, hash_name, dry_run=True, ignore=ignore)
    return obj.hash_info.value


def dvc_ignore(root: Path) -> Any:
    """DVC's ignore filter for the repository at ``root`` (reads ``.dvcignore`` files)."""
    from dvc.ignore import DvcIgnoreFilter
    from dvc_objects.fs import localfs

    return DvcIgnoreFilter(localfs, os.fspath(root.resolve()))


def stage_deps(root: Path, stage: str) -> list[str]:
    """The data and code deps (not params) that ``dvc.yaml`` declares for ``stage``, resolved by DVC
    (``foreach`` / ``matrix`` names such as ``ingest@market1501`` work), as root-relative paths.

    Returns an empty list when ``root`` has no ``dvc.yaml``; raises :class:`LineageError` when it has
    one that does not declare ``stage``.
    """
    if not (root / "dvc.yaml").is_file():
        return []
    if ":" not in stage:
        resolved = resolved_pipeline(root)
        if "error" in resolved:
            raise LineageError(f"{root / 'dvc.yaml'}: cannot resolve stage {stage!r}: {resolved['error']}")
        if stage in resolved["deps"]:
            return list(resolved["deps"][stage])
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # DVC resolves a bare stage name against the current directory's dvc.yaml; name the file explicitly.
    target = os.path.join(root, stage) if ":" in stage else f"{root / 'dvc.yaml'}:{stage}"
    try:
        with Repo(os.fspath(root)) as repo:
            stages = repo.stage.collect(target)
    except DvcException as err:
        raise LineageError(f"{root / 'dvc.yaml'}: cannot resolve stage {stage!r}: {err}") from err
    return [
        normalize(dep.fs_path, root) for found in stages for dep in found.deps if not isinstance(dep, ParamsDependency)
    ]


def dep_hashes(root: Path, stage: str, lock: dict[str, LockedStage] | None = None) -> dict[str, str]:
    """For each dep of ``stage``: the md5 ``dvc.lock`` records for it among the outs of the upstream
    stage that produced it, or, for a dep no stage produces (source code, raw data) or a file inside
    an upstream out directory, its md5 computed now the way DVC does. Either is the value DVC will
    record for this dep once the stage has run.
    """
    deps = stage_deps(root, stage)
    if not deps:
        return {}
    if lock is None:
        lock = read_lock(root) if (root / LOCK_FILE).is_file() else {}
    ignore = dvc_ignore(root)
    hashes: dict[str, str] = {}
    for dep in deps:
        found = producer_of(dep, lock)
        if found and found[1].path == dep and found[1].md5:
            hashes[dep] = found[1].md5
        elif (root / dep).exists():
            hashes[dep] = hash_path(root / dep, ignore=ignore)
    return hashes


def read_params_file(path: Path) -> dict[str, Any]:
    """Load a DVC params file (YAML, JSON or TOML) as a dict."""
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data = load_yaml(text)
    elif suffix == ".json":
        data = json.loads(text)
    elif suffix == ".toml":
        data = tomllib.loads(text)
    else:
        raise LineageError(f"params file {path}: unsupported format {suffix!r} (yaml, json or toml)")
    return data or {}


MISSING: Final = object()  # sentinel: a params key that is not there


def lookup_param(params: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` (``train.lr``), or :data:`MISSING` when absent."""
    node: Any = params
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def git_state(root: Path) -> tuple[str, str]:
    """(commit sha, dirty) for the git work tree at ``root``; both are ``"unknown"`` without git or a commit.

    dirty (``"true"``/``"false"``) is over what a user changes: tracked source and params, and untracked files
    that are not ignored. The pipeline's own products are left out (``dvc.lock``, every out ``dvc.lock``
    records, git-tracked ``cache: false`` reports included, and the ``.gitignore`` files DVC writes beside
    cached outs), so a clean clone stays clean after ``dvc repro``.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", *(f":(top,exclude){p}" for p in pipeline_products(root))],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", "unknown"
    return commit, "true" if status.strip() else "false"


RESOLVED_CACHE: Final = ".dvc/tmp/advreid-resolved-pipeline.json"


def resolved_pipeline(root: Path) -> dict[str, Any]:
    """What ``dvc.yaml`` declares, as DVC resolves it (``foreach`` / ``matrix`` over params): ``{"outs": [out
    paths], "deps": {stage: [data and code deps]}}``, root-relative; ``{"error": message}`` when DVC cannot read it.

    Opening a DVC ``Repo`` to resolve them costs about a second, in every stage (its lineage tags), so the answer is
    kept in :data:`RESOLVED_CACHE` under the hash of what it depends on: ``dvc.yaml``, ``params.yaml`` and the files
    of ``dvc.yaml``'s top-level ``vars``."""
    text = (root / "dvc.yaml").read_bytes()
    inputs = [text]
    with contextlib.suppress(yaml.YAMLError, AttributeError, UnicodeDecodeError):
        files = [v.split(":")[0] for v in (load_yaml(text.decode()) or {}).get("vars", []) if isinstance(v, str)]
        inputs += [(root / f).read_bytes() for f in files if (root / f).is_file()]
    if (root / "params.yaml").is_file():
        inputs.append((root / "params.yaml").read_bytes())
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()
    cache = root / RESOLVED_CACHE
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["pipeline"]
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(os.fspath(root)) as repo:
            stages = list(repo.index.stages)
            resolved = {
                "outs": sorted(normalize(out.fs_path, root) for out in repo.index.outs if out.is_in_repo),
                "deps": {  # the stages of the root dvc.yaml, by name (``addressing`` depends on the cwd)
                    stage.name: [
                        normalize(dep.fs_path, root) for dep in stage.deps if not isinstance(dep, ParamsDependency)
                    ]
                    for stage in stages
                    if os.path.abspath(stage.path) == os.path.abspath(root / "dvc.yaml")
                },
            }
    except DvcException as err:
        return {"error": str(err)}
    with contextlib.suppress(OSError):  # a read-only project still works, uncached
        write_json(cache, {"key": key, "pipeline": resolved})
    return resolved


def pipeline_products(root: Path) -> list[str]:
    """Paths (relative to ``root``) that ``dvc repro`` writes: ``dvc.lock``, every out that ``dvc.yaml``
    declares (resolved by DVC) or ``dvc.lock`` records, and DVC's ``.gitignore`` files beside them."""
    outs: set[str] = set()
    with contextlib.suppress(LineageError):
        outs.update(out.path for stage in read_lock(root).values() for out in stage.outs if out.is_local)
    if (root / "dvc.yaml").is_file():
        # A dvc.yaml DVC cannot read leaves the locked outs: dirty then errs on the side of "true".
        outs.update(resolved_pipeline(root).get("outs", []))
    ignores = {PurePosixPath(path).parent.joinpath(".gitignore").as_posix() for path in outs}
    return [LOCK_FILE, *sorted(outs), *sorted(ignores)]
