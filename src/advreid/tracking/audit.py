"""``advreid audit``: re-verify the lineage of an output, from the file back to the raw images.

Starting from an output path (or an MLflow run id, or a stage name) the audit finds the producing stage
in ``dvc.lock`` and walks upstream. At every stage it re-hashes the outs and deps against the lock and
compares the locked params with the current params file; every ``dataset.json`` found among the deps and
outs has its split manifests checked against the sha256 it records, and every raw file (or array row)
a manifest lists is re-hashed against its row. Nothing is taken from a cache: an audit reads every byte.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from advreid.io import sha256_bytes, sha256_file
from advreid.settings import project_root
from advreid.tracking import lineage
from advreid.tracking.lineage import LineageError, LockedPath, LockedStage

VERIFIED, CHANGED, MISSING, EXTERNAL = "verified", "changed", "missing", "external"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
NONE = "-"


@dataclass(frozen=True)
class Link:
    """One checked link of the lineage chain.

    Attributes:
        kind: ``out``, ``dep``, ``param``, ``manifest``, ``raw``, or ``run`` (an MLflow run's tag vs the
            lock).
        stage: the stage (or dataset, for raw rows) the link belongs to.
        name: what was checked: a path, a params key, ``<dataset>/<split>.parquet``, a raw file.
        expected: the recorded value (lock, dataset.json, manifest row, run tag).
        actual: the value found now (``-`` when absent).
        status: ``verified``, ``changed``, ``missing``, or ``external`` (package data or a remote
            path the audit cannot hash; reported, not failed).
    """

    kind: str
    stage: str
    name: str
    expected: str
    actual: str
    status: str


@dataclass
class AuditReport:
    target: str
    stage: str
    links: list[Link] = field(default_factory=list)

    @property
    def problems(self) -> list[Link]:
        return [link for link in self.links if link.status in (CHANGED, MISSING)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((VERIFIED, CHANGED, MISSING, EXTERNAL), 0)
        for link in self.links:
            counts[link.status] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "stage": self.stage,
            "ok": self.ok,
            "counts": self.counts(),
            "links": [asdict(link) for link in self.links],
        }

    def format_table(self) -> str:
        """A fixed-width table, hashes shortened to 12 characters, then a one-line verdict."""
        header = ("STATUS", "KIND", "STAGE", "NAME", "EXPECTED", "ACTUAL")
        rows = [header] + [
            (link.status, link.kind, link.stage, link.name, _short(link.expected), _short(link.actual))
            for link in self.links
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = [f"audit of {self.target} (stage {self.stage})"]
        lines += ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items() if n)
        verdict = "OK" if self.ok else f"FAILED: {len(self.problems)} link(s) changed or missing"
        lines.append(f"{verdict} ({counts})")
        return "\n".join(lines)


def audit(target: str, root: Path) -> AuditReport:
    """Audit the lineage of ``target``: an output path (a file or directory, a file inside an output
    directory, or a directory holding outputs), an MLflow run id (its ``advreid.stage`` tag names the
    stage), or a stage name.

    Raises:
        LineageError: no dvc.lock, or nothing in it produces ``target``.
    """
    root = root.resolve()
    lock = lineage.read_lock(root)
    stages, run_links = _resolve_target(target, root, lock)
    auditor = _Auditor(root, lock)
    auditor.links.extend(run_links)
    auditor.walk(stages)
    return AuditReport(target=target, stage=", ".join(stages), links=auditor.links)


def _resolve_target(target: str, root: Path, lock: dict[str, LockedStage]) -> tuple[list[str], list[Link]]:
    path = lineage.normalize(target, root)
    found = lineage.producer_of(path, lock)
    if found:
        return [found[0].name], []
    # a directory holding several outputs (``models``): audit each stage that writes into it
    inside = list(dict.fromkeys(stage.name for stage, _ in lineage.producers_within(path, lock)))
    if inside:
        return inside, []
    if target in lock:
        return [target], []
    if RUN_ID.match(target) and not (root / target).exists():
        stage, links = _resolve_run(target, root, lock)
        return [stage], links
    raise LineageError(f"no stage in {root / lineage.LOCK_FILE} produces {path!r} (nor is it a stage or run id)")


def _resolve_run(run_id: str, root: Path, lock: dict[str, LockedStage]) -> tuple[str, list[Link]]:
    """The stage an MLflow run tracked, and links comparing the run's lineage tags with the lock."""
    from mlflow.exceptions import MlflowException

    from advreid.tracking.mlflow_run import STAGE_TAG, get_client

    client = get_client(root)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise LineageError(f"no MLflow run {run_id} at {client.tracking_uri}: {err.message}") from err
    tags = run.data.tags
    stage_name = tags.get(STAGE_TAG)
    if not stage_name:
        raise LineageError(f"MLflow run {run_id} has no {STAGE_TAG!r} tag; it is not a stage run")
    if stage_name not in lock:
        raise LineageError(f"MLflow run {run_id} is stage {stage_name!r}, which dvc.lock does not record")
    stage = lock[stage_name]
    locked = {("dep", p.path): p.md5 for p in stage.deps} | {("out", p.path): p.md5 for p in stage.outs}
    links = []
    for key, value in sorted(tags.items()):
        match = re.fullmatch(r"advreid\.(dep|out)\.(.+)\.md5", key)
        if match:
            current = locked.get((match[1], match[2]))
            status = MISSING if current is None else VERIFIED if current == value else CHANGED
            links.append(Link("run", stage_name, f"{match[1]} {match[2]}", value, current or NONE, status))
        match = re.fullmatch(r"advreid\.manifest\.(.+)\.sha256", key)
        if match and f"advreid.manifest.{match[1]}.path" in tags:
            manifest = root / tags[f"advreid.manifest.{match[1]}.path"]
            current = sha256_file(manifest) if manifest.is_file() else None
            status = MISSING if current is None else VERIFIED if current == value else CHANGED
            links.append(Link("run", stage_name, f"manifest {match[1]}", value, current or NONE, status))
    return stage_name, links


class _Auditor:
    """Walks stages upstream, collecting links; hashes each path and raw file at most once."""

    def __init__(self, root: Path, lock: dict[str, LockedStage]) -> None:
        self.root = root
        self.lock = lock
        self.links: list[Link] = []
        self.ignore = lineage.dvc_ignore(root)
        self._hashes: dict[tuple[str, str], str] = {}
        self._params: dict[str, dict | None] = {}
        self._manifests: set[Path] = set()

    def walk(self, start: Iterable[str]) -> None:
        queue, seen = list(start), set()
        while queue:
            name = queue.pop(0)
            if name in seen:
                continue
            seen.add(name)
            stage = self.lock[name]
            self._check_paths("out", stage, stage.outs)
            self._check_params(stage)
            self._check_paths("dep", stage, stage.deps)
            for item in (*stage.outs, *stage.deps):
                for dataset_json in self._dataset_files(item):
                    self.links.extend(verify_dataset(dataset_json, self.root, stage.name))
            queue.extend(lineage.upstream_stages(stage, self.lock))

    def _check_paths(self, kind: str, stage: LockedStage, paths: Iterable[LockedPath]) -> None:
        for item in paths:
            expected = item.md5 or NONE
            if not item.is_local:
                self.links.append(Link(kind, stage.name, item.path, expected, NONE, EXTERNAL))
                continue
            actual = self._hash(item)
            status = MISSING if actual is None else VERIFIED if actual == item.md5 else CHANGED
            self.links.append(Link(kind, stage.name, item.path, expected, actual or NONE, status))

    def _hash(self, item: LockedPath) -> str | None:
        key = (item.path, item.hash_name)
        if key not in self._hashes:
            path = self.root / item.path
            if not path.exists():
                return None
            self._hashes[key] = lineage.hash_path(path, item.hash_name, ignore=self.ignore)
        return self._hashes[key]

    def _check_params(self, stage: LockedStage) -> None:
        for file, values in stage.params.items():
            if file not in self._params:
                path = self.root / file
                self._params[file] = lineage.read_params_file(path) if path.is_file() else None
            current = self._params[file]
            for key, locked in values.items():
                name = key if file == "params.yaml" else f"{file}:{key}"
                value = lineage.MISSING if current is None else lineage.lookup_param(current, key)
                if value is lineage.MISSING:
                    self.links.append(Link("param", stage.name, name, _show(locked), NONE, MISSING))
                else:
                    status = VERIFIED if value == locked else CHANGED
                    self.links.append(Link("param", stage.name, name, _show(locked), _show(value), status))

    def _dataset_files(self, item: LockedPath) -> list[Path]:
        """``dataset.json`` files inside a dep/out directory, or beside a dep/out file; each once."""
        if not item.is_local:
            return []
        path = self.root / item.path
        if path.is_dir():
            found = sorted(path.rglob("dataset.json"))
        elif path.name == "dataset.json" and path.is_file():
            found = [path]
        elif path.is_file() and (path.parent / "dataset.json").is_file():
            found = [path.parent / "dataset.json"]
        else:
            found = []
        new = [p for p in found if p.resolve() not in self._manifests]
        self._manifests.update(p.resolve() for p in new)
        return new


def verify_dataset(dataset_json: Path, root: Path, stage: str = "") -> list[Link]:
    """Check one dataset directory: each split's parquet sha256 against ``dataset.json``, then every raw
    file (or array row) against its manifest row: one summary link per split plus one per bad row.

    Args:
        dataset_json: ``data/processed/<dataset>/dataset.json``.
        root: project root; a relative dataset ``root`` is resolved against it.
        stage: the stage to name on the manifest links.
    """
    where = lineage.normalize(dataset_json, root)
    try:
        meta = json.loads(dataset_json.read_text(encoding="utf-8"))
        splits = meta["splits"]
        raw_root = str(meta["root"])
        if not isinstance(splits, dict):
            raise TypeError(f"'splits' is a {type(splits).__name__}, not a mapping")
    except (ValueError, KeyError, TypeError) as err:
        return [Link("manifest", stage, where, "valid dataset.json", f"unreadable: {err!r}", CHANGED)]
    name = str(meta.get("name") or dataset_json.parent.name)
    links = []
    for split, info in splits.items():
        parquet = dataset_json.parent / f"{split}.parquet"
        label = f"{name}/{split}.parquet"
        expected = str(info.get("sha256", NONE)) if isinstance(info, dict) else NONE
        if not parquet.is_file():
            links.append(Link("manifest", stage, label, expected, NONE, MISSING))
            continue
        actual = sha256_file(parquet)
        links.append(Link("manifest", stage, label, expected, actual, VERIFIED if actual == expected else CHANGED))
        frame = pq.read_table(parquet).to_pandas()
        links += _check_rows(name, split, raw_root, root, dataset_json.parent, frame)
    return links


def _check_rows(name: str, split: str, raw_root: str, root: Path, manifest_dir: Path, frame: Any) -> list[Link]:
    """Re-hash every raw file (or array row) of one split."""
    if "path" not in frame.columns or "sha256" not in frame.columns:
        return [Link("raw", name, f"{name}/{split}", "path and sha256 columns", NONE, MISSING)]
    links = []
    # "sklearn:digits": the images come from an installed package, pinned by its version, not by files.
    is_package = ":" in raw_root and not Path(raw_root).is_absolute() and not (root / raw_root).exists()
    if is_package:
        links.append(Link("raw", name, raw_root, "package data", _package_version(raw_root), EXTERNAL))
    if "array_file" in frame.columns:
        results = _array_rows(manifest_dir, frame)
        unit = "array rows"
    elif is_package:
        return links
    else:
        base = Path(raw_root) if Path(raw_root).is_absolute() else root / raw_root
        results = [(row.path, row.sha256, _sha256_or_none(base / row.path)) for row in frame.itertuples()]
        unit = "files"
    bad = [(path, expected, actual) for path, expected, actual in results if actual != expected]
    n = len(results)
    status = VERIFIED if not bad else CHANGED
    links.append(Link("raw", name, f"{name}/{split}: {n} {unit}", f"{n} {unit}", f"{n - len(bad)} verified", status))
    for path, expected, actual in bad:
        links.append(
            Link(
                "raw",
                name,
                f"{name}/{split}: {path}",
                expected,
                actual or NONE,
                MISSING if actual is None else CHANGED,
            )
        )
    return links


def _array_rows(manifest_dir: Path, frame: Any) -> list[tuple[str, str, str | None]]:
    results = []
    for array_file, rows in frame.groupby("array_file", sort=True):
        path = manifest_dir / str(array_file)
        # mmap: an array split can be larger than memory; rows are read one at a time.
        array = np.load(path, mmap_mode="r") if path.is_file() else None
        for row in rows.itertuples():
            index = int(row.array_index)
            ok = array is not None and 0 <= index < len(array)
            actual = sha256_bytes(np.ascontiguousarray(array[index]).tobytes()) if ok else None
            results.append((row.path, row.sha256, actual))
    return results


def _sha256_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _package_version(spec: str) -> str:
    """``sklearn:digits`` -> ``package data, sklearn 1.9.1``."""
    from importlib import metadata

    package = spec.split(":", 1)[0]
    distribution = {"sklearn": "scikit-learn"}.get(package, package)
    try:
        return f"package data, {package} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"package data, {package} not installed"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _short(text: str, width: int = 40) -> str:
    if re.fullmatch(r"[0-9a-f]{32,64}(\.dir)?", text):
        return text[:12] + (".dir" if text.endswith(".dir") else "")
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """``advreid audit <target> [--json] [--root DIR]``: 0 when every link verifies, 1 when any changed
    or is missing, 2 when the target cannot be audited."""
    parser = argparse.ArgumentParser(
        prog="advreid audit", description="Re-verify an output's lineage: outs, params, deps, manifests, raw."
    )
    parser.add_argument("target", help="output path, MLflow run id, or stage name")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--root", type=Path, default=None, help="project root (default: found from cwd)")
    args = parser.parse_args(argv)
    try:
        report = audit(args.target, args.root or project_root())
    except (LineageError, FileNotFoundError) as err:
        print(f"advreid audit: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
