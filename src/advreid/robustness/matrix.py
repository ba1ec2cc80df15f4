"""The robustness matrix: every model and defense x every attack and budget, read from the stage outputs.

A cell is one (task, model, attack, budget) with its numbers and the raw counts behind their spread, so that an
interval can be recomputed at any level (the claims use Bonferroni levels):

- ``binomial``: rank-1 over queries (a proportion of hits) or certified accuracy over test points: Clopper-Pearson;
- ``draws``: a stochastic defense's mean and std over noise draws (or seeds): Student t;
- ``seeds``: the per-seed values (IPES-GAN, chapter 5's claim cells over training seeds): Student t;
- ``queries``: per-query (or per-image) values re-scored by ``attack_units``: percentile bootstrap of the mean;
- ``point``: one deterministic number with no stored unit-level values (e.g. mAP of a deterministic attack
  before ``attack_units`` ran): no interval (NaN bounds), never judged on its own.

Tasks: ``attack`` (chapter 4, every Re-ID model x attack), ``transfer`` (adversarial images of one model scored on
another, Table 4.5), ``defense`` (chapter 5, vanilla / PGD-AT / MP-SNN / ablations x adaptive attacks),
``defense_seeds`` (chapter 5's claim cells, vanilla and defenses retrained per seed: the main stages' seed and each
``defense_seed@<seed>``), ``attack_seeds`` (chapter 4's: the Re-ID models retrained per seed, clean, PGD / WMA and
WMA transferred, from the main stages and each ``attack_seed@<seed>``), ``adaptation`` (chapter 3: direct transfer vs
IPES-GAN on the target), ``certify`` (chapter 6, method x sigma x radius -> certified accuracy) and
``certify_seeds`` (chapter 6's claim cells per seed: the main stages and each ``certify_seed@<seed>``). The cell's
source file and the stage that wrote it (from ``dvc.lock``) give its lineage.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advreid import stats

TASKS = ("attack", "transfer", "defense", "defense_seeds", "attack_seeds", "adaptation", "certify", "certify_seeds")
CLEAN = "clean"


@dataclass(frozen=True)
class Spread:
    """The unit-level evidence behind one number (see the module docstring for the kinds)."""

    kind: str  # binomial | draws | seeds | queries | point
    estimate: float
    successes: int = 0
    trials: int = 0
    std: float = float("nan")
    n: int = 1
    values: tuple[float, ...] = ()

    def interval(self, level: float = stats.LEVEL) -> stats.Interval:
        """The interval of the estimate at ``level`` (undefined for a point or a single draw)."""
        if self.kind == "binomial":
            return stats.clopper_pearson(self.successes, self.trials, level)
        if self.kind == "seeds":
            return stats.over_seeds(self.values, level).interval
        if self.kind == "queries":
            return stats.bootstrap_mean(self.values, seed=0, level=level)
        if self.kind == "draws":
            return stats.over_seeds_from_summary(self.estimate, self.std, self.n, level)
        nan = float("nan")
        return stats.Interval(self.estimate, nan, nan, self.n, level, "point")

    def as_dict(self) -> dict[str, Any]:
        interval = self.interval()
        out: dict[str, Any] = {
            "kind": self.kind,
            "estimate": self.estimate,
            "low": _finite_or_none(interval.low),
            "high": _finite_or_none(interval.high),
            "n": interval.n,
            "method": interval.method,
        }
        if self.kind == "binomial":
            out.update(successes=self.successes, trials=self.trials)
        if self.kind in ("draws", "seeds"):
            out["std"] = _finite_or_none(self.std if self.kind == "draws" else stats.over_seeds(self.values).std)
        if self.values:
            out["values"] = list(self.values)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spread:
        std = data.get("std")
        return cls(
            kind=data["kind"],
            estimate=float(data["estimate"]),
            successes=int(data.get("successes", 0)),
            trials=int(data.get("trials", 0)),
            std=float("nan") if std is None else float(std),
            n=int(data.get("n", 1)),
            values=tuple(float(v) for v in data.get("values", ())),
        )


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix; ``source`` is the metrics file it was read from (relative to the project root)."""

    task: str
    model: str
    attack: str
    budget: str
    metrics: dict[str, Spread]
    source: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return "/".join((self.task, self.model, self.attack, self.budget))

    def fingerprint(self, lineage_hashes: dict[str, str]) -> str:
        """sha256 of the cell's numbers, config and the upstream hashes: equal fingerprints need no recompute."""
        payload = {
            "key": self.key,
            "metrics": {name: spread.as_dict() for name, spread in sorted(self.metrics.items())},
            "config": self.config,
            "lineage": dict(sorted(lineage_hashes.items())),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "attack": self.attack,
            "budget": self.budget,
            "source": self.source,
            "config": self.config,
            "metrics": {name: spread.as_dict() for name, spread in sorted(self.metrics.items())},
        }


def binomial(rate: float, trials: int) -> Spread:
    """A proportion measured on ``trials`` units (rank-1 over queries, accuracy over points) as hit counts."""
    if trials < 1:
        raise ValueError(f"binomial: need at least one trial, got {trials}")
    successes = round(rate * trials)
    if abs(successes - rate * trials) > 1e-3 * trials:
        raise ValueError(f"binomial: rate {rate} is not a count out of {trials} units")
    return Spread("binomial", successes / trials, successes=successes, trials=trials, n=trials)


def queries(values: Iterable[float]) -> Spread:
    values = tuple(float(v) for v in values)
    return Spread("queries", sum(values) / len(values), n=len(values), values=values)


def with_hits(spread: Spread, hits: Iterable[float]) -> Spread:
    """A binomial rank-1 that also keeps its per-query hits (for paired differences); they must add up."""
    hits = tuple(float(h) for h in hits)
    if len(hits) != spread.trials or round(sum(hits)) != spread.successes:
        raise ValueError(f"per-query hits ({sum(hits):g} of {len(hits)}) do not match rank-1 "
                         f"{spread.successes} of {spread.trials}")  # fmt: skip
    return Spread("binomial", spread.estimate, spread.successes, spread.trials, n=spread.n, values=hits)


def draws(mean: float, std: float, n: int) -> Spread:
    return Spread("draws", float(mean), std=float(std), n=int(n))


def point(value: float) -> Spread:
    return Spread("point", float(value))


def seeds(values: Iterable[float]) -> Spread:
    values = tuple(float(v) for v in values)
    return Spread("seeds", sum(values) / len(values), n=len(values), values=values)


def _split_cell_name(name: str) -> tuple[str, str]:
    """``"pgd-eps8"`` -> ``("pgd", "eps8")``; ``"clean"`` -> ``("clean", "-")``."""
    attack, _, budget = name.rpartition("-")
    return (attack, budget) if attack else (name, "-")


def attack_cells(
    model: str, metrics: dict[str, Any], source: str, units: dict[str, Any] | None = None
) -> Iterator[Cell]:
    """Chapter 4: ``reports/metrics/attack/<model>.json`` -> the clean cell and one cell per attack x budget; with
    ``units`` (``reports/matrix/units/<model>.json``) mAP and SSIM get per-query / per-image values."""
    query_counts = {c["images"] for c in metrics["cells"].values() if c.get("side") == "query"}
    if len(query_counts) != 1:
        raise ValueError(f"{source}: cannot tell the number of queries from the query-side cells ({query_counts})")
    n_queries = query_counts.pop()
    units = units or {}
    named = [(CLEAN, metrics["clean"], {"dataset": metrics.get("dataset"), **metrics.get("protocol", {})})]
    for name, cell in sorted(metrics["cells"].items()):
        named.append((name, cell, {k: cell[k] for k in ("method", "objective", "side", "eps", "steps") if k in cell}))
    for name, cell, config in named:
        attack, budget = _split_cell_name(name)
        numbers = {"rank1": binomial(cell["rank1"], n_queries), "mAP": point(cell["mAP"])}
        numbers.update({k: point(cell[k]) for k in ("ssim", "mmd", "mINP") if k in cell})
        if name in units:
            numbers["rank1"] = with_hits(numbers["rank1"], units[name]["rank1_hit"])
            numbers["mAP"] = queries(units[name]["ap"])
            if "ssim" in units[name]:
                numbers["ssim"] = queries(units[name]["ssim"])
        yield Cell("attack", model, attack, budget, numbers, source, config)


def transfer_cells(report: dict[str, Any], queries: dict[str, int], source: str) -> Iterator[Cell]:
    """Table 4.5: ``attack_report.json`` ``transfer["A->B"][attack]`` = B scored on A's adversarial images."""
    for pair, cells in sorted(report.get("transfer", {}).items()):
        crafted_on, _, scored_on = pair.partition("->")
        if scored_on not in queries:
            raise ValueError(f"{source}: transfer pair {pair!r} names a model with no attack metrics")
        for name, cell in sorted(cells.items()):
            if name == CLEAN:
                continue
            attack, budget = _split_cell_name(name)
            numbers = {"rank1": binomial(cell["rank1"], queries[scored_on]), "mAP": point(cell["mAP"])}
            yield Cell("transfer", scored_on, f"{attack} from {crafted_on}", budget, numbers, source,
                       {"crafted_on": crafted_on})  # fmt: skip


def defense_cells(model: str, metrics: dict[str, Any], source: str) -> Iterator[Cell]:
    """Chapter 5: ``reports/metrics/defense/<model>.json``: mean ± std over noise draws (stochastic models) or
    rank-1 hits over the evaluation queries (deterministic ones)."""
    queries = int(metrics["queries"])
    for name, cell in sorted(metrics["cells"].items()):
        attack, budget = _split_cell_name(name)
        n = int(cell.get("draws", 1))
        if n > 1:
            numbers = {k: draws(cell[k], cell[f"{k}_std"], n) for k in ("rank1", "mAP")}
        else:
            numbers = {"rank1": binomial(cell["rank1"], queries), "mAP": point(cell["mAP"])}
        config = {k: cell[k] for k in ("eps", "steps", "eot_samples", "transfer", "draws") if k in cell}
        yield Cell("defense", model, attack, budget, numbers, source, config)


def defense_seed_cells(
    main: dict[str, dict[str, Any]], main_seed: int, replicates: list[dict[str, Any]], source: str
) -> Iterator[Cell]:
    """Chapter 5 over training seeds: for each model and cell of the ``defense_seed`` outputs (``replicates``: the
    parsed ``reports/metrics/defense_seeds/seed<k>.json``), the per-seed means over evaluation draws, the main
    stages' (``main``: model -> ``reports/metrics/defense/<model>.json``, trained with ``main_seed``) first. A cell
    that the main stages or any replicate lack is left out."""
    if not replicates:
        return
    ordered = sorted(replicates, key=lambda r: int(r["seed"]))
    for model in sorted(ordered[0]["cells"]):
        if model not in main:
            continue
        for name in sorted(ordered[0]["cells"][model]):
            blocks = [main[model]["cells"].get(name)] + [r["cells"].get(model, {}).get(name) for r in ordered]
            if any(b is None for b in blocks):
                continue
            attack, budget = _split_cell_name(name)
            numbers = {k: seeds(b[k] for b in blocks) for k in ("rank1", "mAP")}
            config = {"seeds": [int(main_seed)] + [int(r["seed"]) for r in ordered], "draws": int(blocks[0]["draws"])}
            yield Cell("defense_seeds", model, attack, budget, numbers, source, config)


def attack_seed_cells(
    main: dict[str, dict[str, Any]], transfer: dict[str, dict[str, Any]], replicates: list[dict[str, Any]], source: str
) -> Iterator[Cell]:
    """Chapter 4 over training seeds: for each model and cell of the ``attack_seed`` outputs (``replicates``: the
    parsed ``reports/metrics/attack_seeds/seed<k>.json``, each naming the main stages' seed per model in
    ``main_seeds``), the per-seed values, the main stages' first (``main``: model -> ``reports/metrics/attack/
    <model>.json``; ``transfer``: ``attack_report.json``'s ``transfer``). Transferred cells are ``<attack> from
    <model>`` on the model scored. A cell that the main stages or any replicate lack is left out."""
    if not replicates:
        return
    ordered = sorted(replicates, key=lambda r: int(r["seed"]))
    first = ordered[0]

    def main_block(model: str, name: str, crafted_on: str | None) -> dict[str, Any] | None:
        if crafted_on is not None:
            return transfer.get(f"{crafted_on}->{model}", {}).get(name)
        if model not in main:
            return None
        return main[model]["clean"] if name == CLEAN else main[model]["cells"].get(name)

    rows = [(model, name, None) for model in sorted(first["cells"]) for name in sorted(first["cells"][model])]
    for pair in sorted(first.get("transfer", {})):
        crafted_on, _, scored_on = pair.partition("->")
        rows += [(scored_on, name, crafted_on) for name in sorted(first["transfer"][pair])]
    for model, name, crafted_on in rows:
        if crafted_on is None:
            blocks = [main_block(model, name, None)] + [r["cells"].get(model, {}).get(name) for r in ordered]
        else:
            pair = f"{crafted_on}->{model}"
            blocks = [main_block(model, name, crafted_on)] + [r.get("transfer", {}).get(pair, {}).get(name)
                                                              for r in ordered]  # fmt: skip
        if any(b is None for b in blocks):
            continue
        attack, budget = _split_cell_name(name)
        if crafted_on is not None:
            attack = f"{attack} from {crafted_on}"
        metrics = [k for k in ("rank1", "mAP", "ssim") if all(k in b for b in blocks)]
        numbers = {k: seeds(b[k] for b in blocks) for k in metrics}
        config = {"seeds": [int(first["main_seeds"][model])] + [int(r["seed"]) for r in ordered]}
        if crafted_on is not None:
            config["crafted_on"] = crafted_on
        yield Cell("attack_seeds", model, attack, budget, numbers, source, config)


def certify_seed_cells(
    main: dict[str, dict[str, Any]], main_seed: int, replicates: list[dict[str, Any]], source: str
) -> Iterator[Cell]:
    """Chapter 6 over seeds: for each method of the ``certify_seed`` outputs (``replicates``: the parsed
    ``reports/metrics/certify_seeds/seed<k>.json``, one sigma each) the per-seed certified accuracy at each radius,
    the main stages' (``main``: method -> ``reports/metrics/certify/<method>.json``, run with ``main_seed``) first."""
    if not replicates:
        return
    ordered = sorted(replicates, key=lambda r: int(r["seed"]))
    sigma = f"{float(ordered[0]['sigma']):g}"
    if any(f"{float(r['sigma']):g}" != sigma for r in ordered):
        raise ValueError(f"{source}: the certify_seed outputs certify different sigmas; rerun them")
    for method in sorted(ordered[0]["cells"]):
        block = main.get(method, {}).get("sigma", {}).get(sigma)
        blocks = [block] + [r["cells"].get(method) for r in ordered]
        if any(b is None for b in blocks):
            continue
        radii = [k for k in blocks[0] if k == "sca" or k.startswith("rca_")]
        for key in sorted(radii, key=lambda k: 0.0 if k == "sca" else float(k.removeprefix("rca_"))):
            if not all(key in b for b in blocks):
                continue
            radius = "0" if key == "sca" else key.removeprefix("rca_")
            config = {
                "seeds": [int(main_seed)] + [int(r["seed"]) for r in ordered],
                "points": int(ordered[0]["points"]),
            }
            yield Cell("certify_seeds", method, f"sigma_{sigma}", f"radius_{radius}",
                       {"certified_accuracy": seeds(b[key] for b in blocks)}, source, config)  # fmt: skip


def adaptation_cells(report: dict[str, Any], teacher: str, source: str) -> Iterator[Cell]:
    """Chapter 3: ``ipes_gan.json``: the teacher applied directly to the target, and every trained IPES-GAN run
    (the main model and any ablation of ``gan.demo_runs``: each a block with ``per_seed``) over its seeds."""
    direct = report["direct_transfer"]
    queries = int(direct["num_valid_queries"])
    yield Cell("adaptation", f"{teacher} (direct transfer)", CLEAN, "-",
               {"rank1": binomial(direct["rank1"], queries), "mAP": point(direct["mAP"])}, source)  # fmt: skip
    for run, block in sorted(report.items()):
        if not isinstance(block, dict) or "per_seed" not in block:
            continue
        order = sorted(block["per_seed"], key=int)
        numbers = {k: seeds(block["per_seed"][s][k] for s in order) for k in ("rank1", "mAP")}
        yield Cell("adaptation", run, CLEAN, "-", numbers, source, {"seeds": [int(s) for s in order]})


POINT_COLUMNS = ("index", "label", "prediction", "radius", "correct")


def read_points(path: Path) -> list[tuple[bool, float]]:
    """``reports/certify/points/<method>_sigma_<s>.csv`` (written by ``certify``): (correct, radius) per test point
    in index order."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != POINT_COLUMNS:
            raise ValueError(f"{path}: expected columns {list(POINT_COLUMNS)}, got {reader.fieldnames}")
        rows = sorted(reader, key=lambda row: int(row["index"]))
    return [(row["correct"].strip().lower() in ("1", "true"), float(row["radius"])) for row in rows]


def certify_cells(method: str, metrics: dict[str, Any], source: str, points_dir: Path | None = None) -> Iterator[Cell]:
    """Chapter 6: ``reports/metrics/certify/<method>.json`` -> certified accuracy per sigma and radius (``sca`` is
    radius 0) over the certified test points; with the per-point files of ``points_dir`` each cell also keeps its
    0/1 outcome per point (certified correct: right prediction and radius >= r) for paired tests."""
    points = int(metrics["settings"]["points"])
    for sigma, block in sorted(metrics["sigma"].items(), key=lambda item: float(item[0])):
        radii = {"0": block["sca"]} | {k.removeprefix("rca_"): v for k, v in block.items() if k.startswith("rca_")}
        per_point_path = None if points_dir is None else points_dir / f"{method}_sigma_{sigma}.csv"
        per_point = read_points(per_point_path) if per_point_path and per_point_path.is_file() else None
        for radius, value in sorted(radii.items(), key=lambda item: float(item[0])):
            spread = binomial(value, points)
            if per_point is not None:
                try:
                    spread = with_hits(spread, [float(c and r >= float(radius)) for c, r in per_point])
                except ValueError as err:
                    raise ValueError(f"{per_point_path} at radius {radius}: {err}") from err
            yield Cell("certify", method, f"sigma_{sigma}", f"radius_{radius}",
                       {"certified_accuracy": spread}, source, {"points": points})  # fmt: skip


def collect(
    root: Path, *, teacher: str, main_seed: int = 0, certify_main_seed: int = 0
) -> tuple[list[Cell], list[dict[str, str]]]:
    """Every cell the stage outputs under ``root/reports/metrics`` hold, and the cells no stage has produced yet
    (each model x the attacks of its task it was not run on; the IPES-GAN model is not attacked by any stage).
    ``main_seed``: the training seed of the main chapter-5 stages; ``certify_main_seed``: chapter 6's ``seed``."""
    metrics_dir = root / "reports" / "metrics"
    cells: list[Cell] = []
    queries: dict[str, int] = {}
    attacked = {}
    for path in sorted((metrics_dir / "attack").glob("*.json")):
        units_path = root / "reports" / "matrix" / "units" / path.name
        units = _read(units_path) if units_path.is_file() else None
        attacked[path.stem] = _read(path)
        found = list(attack_cells(path.stem, attacked[path.stem], _rel(path, root), units))
        queries[path.stem] = found[0].metrics["rank1"].trials
        cells += found
    transfer = {}
    if (path := metrics_dir / "attack_report.json").is_file():
        report = _read(path)
        transfer = report.get("transfer", {})
        cells += transfer_cells(report, queries, _rel(path, root))
    if replicate_paths := sorted((metrics_dir / "attack_seeds").glob("seed*.json")):
        replicates = [_read(p) for p in replicate_paths]
        cells += attack_seed_cells(attacked, transfer, replicates, _rel(replicate_paths[0], root))
    main = {}
    for path in sorted((metrics_dir / "defense").glob("*.json")):
        if not path.stem.startswith("train_"):
            main[path.stem] = _read(path)
            cells += defense_cells(path.stem, main[path.stem], _rel(path, root))
    replicate_paths = sorted((metrics_dir / "defense_seeds").glob("seed*.json"))
    if replicate_paths:
        replicates = [_read(p) for p in replicate_paths]
        cells += defense_seed_cells(main, main_seed, replicates, _rel(replicate_paths[0], root))
    if (path := metrics_dir / "ipes_gan.json").is_file():
        cells += adaptation_cells(_read(path), teacher, _rel(path, root))
    certified = {}
    for path in sorted((metrics_dir / "certify").glob("*.json")):
        certified[path.stem] = _read(path)
        cells += certify_cells(
            path.stem, certified[path.stem], _rel(path, root), root / "reports" / "certify" / "points"
        )
    if replicate_paths := sorted((metrics_dir / "certify_seeds").glob("seed*.json")):
        replicates = [_read(p) for p in replicate_paths]
        cells += certify_seed_cells(certified, certify_main_seed, replicates, _rel(replicate_paths[0], root))
    return cells, missing_cells(cells)


def missing_cells(cells: list[Cell]) -> list[dict[str, str]]:
    """Model x attack x budget combinations of the attack and defense tasks that no stage output holds."""
    missing = []
    for task in ("attack", "defense"):
        rows = {c.model for c in cells if c.task == task}
        columns = {(c.attack, c.budget) for c in cells if c.task == task}
        have = {(c.model, c.attack, c.budget) for c in cells if c.task == task}
        missing += [
            {"task": task, "model": m, "attack": a, "budget": b}
            for m in sorted(rows)
            for a, b in sorted(columns)
            if (m, a, b) not in have
        ]
    if any(c.model == "ipes_gan" for c in cells):
        missing += [
            {"task": "attack", "model": "ipes_gan", "attack": a, "budget": b}
            for a, b in sorted({(c.attack, c.budget) for c in cells if c.task == "attack"})
        ]
    return missing


def grid(cells: list[Cell], task: str, metric: str, budget: str | None = None) -> tuple[list[str], list[str], list]:
    """Rows (models), columns (attack[@budget]) and the estimate of ``metric`` per cell (None where missing)."""
    chosen = [c for c in cells if c.task == task and metric in c.metrics and (budget is None or c.budget == budget)]
    rows = sorted({c.model for c in chosen})
    columns = sorted({_column(c) for c in chosen}, key=lambda name: (name != CLEAN, name))
    values = {(c.model, _column(c)): c.metrics[metric].estimate for c in chosen}
    return rows, columns, [[values.get((r, col)) for col in columns] for r in rows]


def _column(cell: Cell) -> str:
    return cell.attack if cell.budget == "-" else f"{cell.attack} {cell.budget}"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
