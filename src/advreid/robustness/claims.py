"""The thesis' directional claims the demo can test, each judged by an interval of a difference (never by hand).

Every claim is ``difference > at_least`` for one or more parts; :func:`advreid.stats.verdict` judges each part and
:func:`combine` the claim: ``reproduced`` when every part is, ``not reproduced`` when any part is, else
``inconclusive``. The difference's interval comes from the units the numbers were measured on:

- values over the same seeds or models: the t-interval of the paired differences (:func:`advreid.stats.over_seeds`);
- two numbers with their own intervals (rank-1 over queries, certified accuracy over points, a mean over noise
  draws): :func:`advreid.stats.difference_bounds` of two intervals at the Bonferroni level (95% for the
  difference); conservative, valid whether or not the two share their units.

A claim whose numbers the demo did not produce (an ablation not in ``gan.demo_runs``) has an undefined interval
and is ``inconclusive``, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from advreid import stats
from advreid.robustness.matrix import Spread


@dataclass(frozen=True)
class Part:
    """One judged difference of a claim."""

    label: str
    difference: stats.Interval
    at_least: float
    run_ids: tuple[str, ...]
    numbers: dict[str, Any]

    @property
    def verdict(self) -> stats.Verdict:
        return stats.verdict(self.difference, at_least=self.at_least)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "difference": _interval_dict(self.difference),
            "at_least": self.at_least,
            "verdict": self.verdict,
            "run_ids": list(self.run_ids),
            "numbers": self.numbers,
        }


def combine(verdicts: list[stats.Verdict]) -> stats.Verdict:
    """A claim holding for every part: reproduced iff all parts are, not reproduced if any part is refuted."""
    if not verdicts:
        return "inconclusive"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "inconclusive"


class Matrix:
    """Read access to the cells of ``reports/metrics/robustness_matrix.json``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.cells: dict[str, dict[str, Any]] = data["cells"]

    def get(self, task: str, model: str, attack: str, budget: str) -> dict[str, Any] | None:
        return self.cells.get("/".join((task, model, attack, budget)))

    def spread(self, cell: dict[str, Any] | None, metric: str) -> Spread | None:
        if cell is None or metric not in cell["metrics"]:
            return None
        return Spread.from_dict(cell["metrics"][metric])

    def models(self, task: str) -> list[str]:
        return sorted({c["model"] for c in self.cells.values() if c["task"] == task})


def two_interval_part(label: str, matrix: Matrix, a: tuple, b: tuple, metric: str, *, scale: float = 1.0,
                      at_least: float = 0.0, level: float = stats.LEVEL) -> Part:  # fmt: skip
    """``a - scale * b > at_least`` for two cells ``(task, model, attack, budget)``, Bonferroni-combined."""
    cells = [matrix.get(*a), matrix.get(*b)]
    spreads = [matrix.spread(c, metric) for c in cells]
    names = ["/".join(a), "/".join(b)]
    if None in spreads:
        absent = [n for n, s in zip(names, spreads, strict=True) if s is None]
        return _undefined(label, at_least, {"missing": absent})
    each = stats.bonferroni_level(level)
    ia, ib = (s.interval(each) for s in spreads)
    numbers = {n: _interval_dict(i) | {"units": s.kind} for n, i, s in zip(names, (ia, ib), spreads, strict=True)}
    if scale != 1.0:
        numbers["scale"] = scale
    return Part(label, stats.difference_bounds(ia, ib, scale=scale), at_least, _run_ids(cells), numbers)


def paired_part(label: str, pairs: dict[str, tuple[float, float]], run_ids: tuple[str, ...], *,
                at_least: float = 0.0, units: str = "seeds", level: float = stats.LEVEL,
                missing: str = "") -> Part:  # fmt: skip
    """``a - b > at_least`` from values paired by unit (seed or model): the t-interval of the differences;
    ``missing`` says what to run when there are no pairs."""
    if not pairs:
        return _undefined(label, at_least, {"missing": [missing or units]})
    differences = [a - b for a, b in pairs.values()]
    interval = stats.over_seeds(differences, level).interval
    numbers = {"units": units, "pairs": {k: {"a": a, "b": b} for k, (a, b) in pairs.items()}}
    return Part(label, interval, at_least, run_ids, numbers)


def _undefined(label: str, at_least: float, numbers: dict[str, Any]) -> Part:
    nan = float("nan")
    return Part(label, stats.Interval(nan, nan, nan, 0, stats.LEVEL, "not measured"), at_least, (), numbers)


def _run_ids(cells: list[dict[str, Any] | None]) -> tuple[str, ...]:
    return tuple(c["run_id"] for c in cells if c is not None and c.get("run_id"))


def _interval_dict(interval: stats.Interval) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {"estimate": clean(interval.estimate), "low": clean(interval.low), "high": clean(interval.high),
            "n": interval.n, "level": interval.level, "method": interval.method}  # fmt: skip


# ---------------------------------------------------------------- the claims (spec: issue 12, thesis chapters 3-6)


def _seed_pairs(matrix: Matrix, a: str, b: str | None, metric: str) -> tuple[dict[str, tuple[float, float]], tuple]:
    """Per-seed values of adaptation run ``a`` against run ``b`` (same seeds) or, for ``b`` None, the direct
    transfer's deterministic value."""
    cell_a = matrix.get("adaptation", a, "clean", "-")
    if b is None:
        direct = [c for c in matrix.cells.values() if c["task"] == "adaptation" and "direct transfer" in c["model"]]
        cell_b = direct[0] if direct else None
    else:
        cell_b = matrix.get("adaptation", b, "clean", "-")
    if cell_a is None or cell_b is None:
        return {}, ()
    if b is None:
        base = cell_b["metrics"][metric]["estimate"]
        return {f"seed {s}": (v, base) for s, v in _by_seed(cell_a, metric).items()}, _run_ids([cell_a, cell_b])
    return _pairs_by_seed(cell_a, cell_b, metric), _run_ids([cell_a, cell_b])


def _by_seed(cell: dict[str, Any], metric: str) -> dict[int, float]:
    return dict(zip(cell["config"]["seeds"], cell["metrics"][metric]["values"], strict=True))


def _pairs_by_seed(a: dict[str, Any], b: dict[str, Any], metric: str, scale: float = 1.0) -> dict:
    """``{"seed <s>": (a's value, scale x b's value)}`` over the seeds both cells have, in ``a``'s order."""
    values_b = _by_seed(b, metric)
    return {f"seed {s}": (v, scale * values_b[s]) for s, v in _by_seed(a, metric).items() if s in values_b}


def claim_ipes_gan_beats_direct_transfer(m: Matrix) -> list[Part]:
    pairs, runs = _seed_pairs(m, "ipes_gan", None, "mAP")
    return [paired_part("IPES-GAN target mAP - direct transfer mAP, per seed", pairs, runs)]


def claim_cyclic_beats_single_encoding(m: Matrix) -> list[Part]:
    pairs, runs = _seed_pairs(m, "ipes_gan", "single_encoding", "mAP")
    missing = "adaptation/single_encoding: add single_encoding to gan.demo_runs (Table 3.4 ablation)"
    return [paired_part("cyclic (ipes_gan) - single encoding target mAP, paired by seed", pairs, runs, missing=missing)]


def unit_paired_part(label: str, a: dict[str, Any], b: dict[str, Any], metric: str, *, at_least: float = 0.0,
                     level: float = stats.LEVEL) -> Part | None:  # fmt: skip
    """``mean(a) - mean(b) > at_least`` on the same queries / images: paired bootstrap of the per-unit
    differences; None when either cell lacks per-unit values of equal length."""
    va, vb = a["metrics"].get(metric, {}).get("values"), b["metrics"].get(metric, {}).get("values")
    if not va or not vb or len(va) != len(vb):
        return None
    interval = stats.paired_bootstrap_difference(va, vb, seed=0, level=level)
    numbers = {"units": f"{len(va)} paired queries/images", "a": sum(va) / len(va), "b": sum(vb) / len(vb)}
    return Part(label, interval, at_least, _run_ids([a, b]), numbers)


def claim_wma_vs_pgd(m: Matrix, budget: str = "eps8") -> list[Part]:
    """Per model over training seeds when attack_seed ran for it, else on the same queries when attack_units ran
    (paired bootstrap), else paired by model."""
    maps, ssims, runs, per_model = {}, {}, [], []
    for model in m.models("attack"):
        wma, pgd = m.get("attack", model, "wma", budget), m.get("attack", model, "pgd", budget)
        if wma is None or pgd is None:
            continue
        maps[model] = (pgd["metrics"]["mAP"]["estimate"], wma["metrics"]["mAP"]["estimate"])
        if "ssim" in wma["metrics"] and "ssim" in pgd["metrics"]:
            ssims[model] = (wma["metrics"]["ssim"]["estimate"], pgd["metrics"]["ssim"]["estimate"])
        runs += _run_ids([wma, pgd])
        seeded = m.get("attack_seeds", model, "wma", budget), m.get("attack_seeds", model, "pgd", budget)
        if None not in seeded:
            per_model += [
                seed_part(f"{model}: mAP(PGD) - mAP(WMA) at {budget}", seeded[1], seeded[0], "mAP"),
                seed_part(f"{model}: SSIM(WMA) - SSIM(PGD) at {budget}", seeded[0], seeded[1], "ssim"),
            ]
            continue
        per_model += [
            unit_paired_part(f"{model}: mAP(PGD) - mAP(WMA) at {budget}, paired by query", pgd, wma, "mAP"),
            unit_paired_part(f"{model}: SSIM(WMA) - SSIM(PGD) at {budget}, paired by image", wma, pgd, "ssim"),
        ]
    if per_model and None not in per_model:
        return per_model
    return [
        paired_part(f"mAP(PGD) - mAP(WMA) at {budget}, paired by model", maps, tuple(runs), units="models"),
        paired_part(f"SSIM(WMA) - SSIM(PGD) at {budget}, paired by model", ssims, tuple(runs), units="models"),
    ]


def claim_wma_transfers(m: Matrix, budget: str = "eps8") -> list[Part]:
    """Per ordered model pair over training seeds when attack_seed ran for both, else over the scored queries."""
    parts = []
    for cell in sorted(m.cells.values(), key=lambda c: c["model"]):
        if cell["task"] == "transfer" and cell["attack"].startswith("wma from ") and cell["budget"] == budget:
            source, model = cell["attack"].removeprefix("wma from "), cell["model"]
            label = f"clean rank-1 - rank-1 under WMA crafted on {source}, scored on {model}"
            seeded = m.get("attack_seeds", model, "clean", "-"), m.get("attack_seeds", model, cell["attack"], budget)
            if None not in seeded:
                parts.append(seed_part(label, *seeded, "rank1"))
                continue
            parts.append(two_interval_part(
                label, m, ("attack", model, "clean", "-"), ("transfer", model, cell["attack"], budget), "rank1",
            ))  # fmt: skip
    return parts or [_undefined("WMA transfer", 0.0, {"missing": ["attack_report transfer cells"]})]


def seed_part(label: str, cell_a: dict[str, Any], cell_b: dict[str, Any], metric: str, *, scale: float = 1.0,
              at_least: float = 0.0) -> Part:  # fmt: skip
    """``a - scale * b > at_least`` for two cells holding per-seed values (``config.seeds``), paired by training
    seed: the t-interval over the seeds both have."""
    pairs = _pairs_by_seed(cell_a, cell_b, metric, scale)
    return paired_part(f"{label}, paired by training seed", pairs, _run_ids([cell_a, cell_b]), at_least=at_least,
                       units="training seeds")  # fmt: skip


def seed_paired_part(label: str, m: Matrix, a: str, b: str, attack: str, budget: str, metric: str = "rank1", *,
                     scale: float = 1.0, at_least: float = 0.0) -> Part | None:  # fmt: skip
    """``a - scale * b > at_least`` on chapter 5's ``defense_seeds`` cells, paired by training seed (the t-interval
    over seeds); None when either model has no such cell (``defense.replicates`` not run)."""
    cell_a, cell_b = m.get("defense_seeds", a, attack, budget), m.get("defense_seeds", b, attack, budget)
    if cell_a is None or cell_b is None:
        return None
    return seed_part(label, cell_a, cell_b, metric, scale=scale, at_least=at_least)


def _defense_part(label: str, m: Matrix, a: str, b: str, attack: str, budget: str, *, scale: float = 1.0,
                  at_least: float = 0.0) -> Part:  # fmt: skip
    """Over training seeds when ``defense_seed`` ran, else the main stages' one seed over evaluation draws."""
    over_seeds = seed_paired_part(label, m, a, b, attack, budget, scale=scale, at_least=at_least)
    if over_seeds is not None:
        return over_seeds
    cell_a, cell_b = ("defense", a, attack, budget), ("defense", b, attack, budget)
    return two_interval_part(f"{label}, one training seed", m, cell_a, cell_b, "rank1", scale=scale,
                             at_least=at_least)  # fmt: skip


def claim_mp_snn_triples_robust_rank1(m: Matrix, budget: str = "eps8") -> list[Part]:
    return [_defense_part("rank-1 under PGD: MP-SNN - 3 x vanilla", m, "mp_snn", "vanilla", "pgd", budget, scale=3.0)]


def claim_mp_snn_clean_drop(m: Matrix) -> list[Part]:
    label = "clean rank-1: MP-SNN - vanilla > -0.05"
    return [_defense_part(label, m, "mp_snn", "vanilla", "clean", "-", at_least=-0.05)]


def claim_fca_helps(m: Matrix, budget: str = "eps8") -> list[Part]:
    return [_defense_part("rank-1 under PGD: MP-SNN - MP-SNN w/o FCA", m, "mp_snn", "mp_snn_no_fca", "pgd", budget)]


def claim_meta_learning_helps(m: Matrix, budget: str = "eps8") -> list[Part]:
    label = "rank-1 under PGD: MP-SNN - L_Tot w/o meta-learning"
    return [_defense_part(label, m, "mp_snn", "l_tot", "pgd", budget)]


def certify_part(label: str, m: Matrix, a: tuple, b: tuple) -> Part:
    """Paired on the same test points (bootstrap of the 0/1 differences, McNemar's exact p-value) when both cells
    have per-point outcomes, else the Bonferroni bounds of the two Clopper-Pearson intervals."""
    cell_a, cell_b = m.get(*a), m.get(*b)
    if cell_a is not None and cell_b is not None:
        paired = unit_paired_part(label, cell_a, cell_b, "certified_accuracy")
        if paired is not None:
            va = cell_a["metrics"]["certified_accuracy"]["values"]
            vb = cell_b["metrics"]["certified_accuracy"]["values"]
            test = stats.mcnemar_exact([v > 0.5 for v in va], [v > 0.5 for v in vb])
            paired.numbers.update(mcnemar={"only_a": test.only_a, "only_b": test.only_b, "pvalue": test.pvalue})
            return paired
    return two_interval_part(label, m, a, b, "certified_accuracy")


def _certify_claim(label: str, m: Matrix, a: str, b: str, sigma: str) -> list[Part]:
    """Over seeds when certify_seed ran for both methods, else on the main stages' test points."""
    cells = [m.get("certify_seeds", method, f"sigma_{sigma}", "radius_0") for method in (a, b)]
    if None not in cells:
        return [seed_part(label, *cells, "certified_accuracy")]
    return [certify_part(label, m, ("certify", a, f"sigma_{sigma}", "radius_0"),
                         ("certify", b, f"sigma_{sigma}", "radius_0"))]  # fmt: skip


def claim_zo_ruds_beats_zo_ds(m: Matrix, sigma: str = "0.25") -> list[Part]:
    return _certify_claim(f"SCA at sigma {sigma}: ZO-RUDS - ZO-DS", m, "zo_ruds", "zo_ds", sigma)


def claim_zo_ae_ruds_at_least_zo_ae_ds(m: Matrix, sigma: str = "0.25") -> list[Part]:
    return _certify_claim(f"SCA at sigma {sigma}: ZO-AE-RUDS (C) - ZO-AE-DS (C)", m, "zo_ae_ruds", "zo_ae_ds", sigma)


@dataclass(frozen=True)
class ClaimSpec:
    id: str
    chapter: int
    claim: str
    thesis: str
    judge: Callable[[Matrix], list[Part]]


CLAIMS: tuple[ClaimSpec, ...] = (
    ClaimSpec("ipes_gan_beats_direct_transfer", 3, "IPES-GAN's adapted model has a higher target mAP than the "
              "source model applied directly to the target.", "Tables 3.1, 3.2, 3.4 (cyclic encoding vs direct "
              "testing: +13.1 / +10.2 CMC-1 on Duke / Market)", claim_ipes_gan_beats_direct_transfer),
    ClaimSpec("cyclic_beats_single_encoding", 3, "Cyclic encoding gives a higher target mAP than single encoding.",
              "Table 3.4", claim_cyclic_beats_single_encoding),
    ClaimSpec("wma_lowers_map_like_pgd_with_higher_ssim", 4, "At the same L-inf budget WMA lowers mAP at least as "
              "much as PGD, with a higher SSIM.", "Tables 4.1-4.3, 4.6", claim_wma_vs_pgd),
    ClaimSpec("wma_transfers_across_models", 4, "WMA images crafted on one Re-ID model lower another model's "
              "rank-1.", "Table 4.5", claim_wma_transfers),
    ClaimSpec("mp_snn_triples_robust_rank1", 5, "MP-SNN's rank-1 under white-box PGD is at least 3x the vanilla "
              "model's.", "Tables 5.1-5.3", claim_mp_snn_triples_robust_rank1),
    ClaimSpec("mp_snn_clean_drop_at_most_5_points", 5, "MP-SNN loses at most 5 points of clean rank-1.",
              "Tables 5.1-5.3", claim_mp_snn_clean_drop),
    ClaimSpec("fca_helps", 5, "Feature covariance alignment raises MP-SNN's robust rank-1.", "Table 5.6",
              claim_fca_helps),
    ClaimSpec("meta_learning_helps", 5, "Meta-learning raises MP-SNN's robust rank-1 over L_Tot without it.",
              "Table 5.7", claim_meta_learning_helps),
    ClaimSpec("zo_ruds_sca_beats_zo_ds", 6, "ZO-RUDS has a higher standard certified accuracy than ZO-DS at "
              "sigma = 0.25.", "Tables 6.1, 6.2", claim_zo_ruds_beats_zo_ds),
    ClaimSpec("zo_ae_ruds_at_least_zo_ae_ds", 6, "ZO-AE-RUDS (C) certifies at least as well as ZO-AE-DS (C) at "
              "sigma = 0.25.", "Tables 6.1, 6.2", claim_zo_ae_ruds_at_least_zo_ae_ds),
)  # fmt: skip


def judge_claims(matrix_data: dict[str, Any], specs: tuple[ClaimSpec, ...] = CLAIMS) -> list[dict[str, Any]]:
    """Every claim of ``specs`` judged on the matrix: the words, the thesis table, the parts and the verdict."""
    matrix = Matrix(matrix_data)
    entries = []
    for spec in specs:
        parts = spec.judge(matrix)
        run_ids = list(dict.fromkeys(r for p in parts for r in p.run_ids))
        pairs = [key for p in parts for key in p.numbers.get("pairs", {})]
        seeds = sorted({int(key.removeprefix("seed ")) for key in pairs if key.startswith("seed ")})
        entries.append({
            "id": spec.id,
            "chapter": spec.chapter,
            "claim": spec.claim,
            "thesis": spec.thesis,
            "verdict": combine([p.verdict for p in parts]),
            "parts": [p.as_dict() for p in parts],
            "run_ids": run_ids,
            "seeds": seeds,  # the training seeds the parts pair; [] = one training run (the main stages')
        })  # fmt: skip
    return entries


def _seeds_text(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds)) if seeds else "one run"


def claims_markdown(entries: list[dict[str, Any]]) -> str:
    """The claims as a Markdown table plus one line per part (difference, interval, units)."""
    lines = ["# The thesis' claims on the demo", "",
             "Verdicts are computed (advreid.stats.verdict on a 95% interval of each difference); see "
             "reports/claims.json for the numbers and the MLflow run ids.", "",
             "| chapter | claim | thesis | training seeds | verdict |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {e['chapter']} | {e['claim']} | {e['thesis']} | {_seeds_text(e.get('seeds', []))} | "
              f"**{e['verdict']}** |" for e in entries]  # fmt: skip
    lines.append("")
    for e in entries:
        lines.append(f"## {e['id']}: {e['verdict']}")
        for part in e["parts"]:
            d = part["difference"]
            if d["low"] is None:
                lines.append(f"- {part['label']}: not measured ({part['numbers']}) -> {part['verdict']}")
            else:
                lines.append(f"- {part['label']}: {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
                             f"({d['method']}, n={d['n']}, > {part['at_least']:g}?) -> {part['verdict']}")  # fmt: skip
        lines.append("")
    return "\n".join(lines)
