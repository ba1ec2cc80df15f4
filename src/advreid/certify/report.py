"""The chapter-6 tables (Tables 6.1-6.7) from the per-method certification results, as a dict and as Markdown."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

BASELINE = "baseline"
MAIN_SIGMA = 0.25  # Tables 6.1-6.5 and 6.8 are at sigma = 0.25
TABLE_6_2_METHODS = ("zo_ds", "zo_ae_ds", "zo_ruds", "zo_ae_ruds")
TABLE_6_4_METHODS = ("zo_ae_ruds_ce", "zo_ae_ruds_ce_cs", "zo_ae_ruds")
TABLE_6_5_METHODS = ("zo_ae_ruds_finetune", "zo_ae_ruds")


def build_tables(results: dict[str, dict], q: int, dataset: str) -> dict[str, Any]:
    """The chapter-6 tables from the per-method certification results (``baseline`` = no denoiser)."""
    base = results[BASELINE]
    sigmas = list(base["sigma"])
    main = f"{MAIN_SIGMA:g}" if f"{MAIN_SIGMA:g}" in sigmas else sigmas[0]
    methods = [m for m in results if m != BASELINE]
    settings = dict(base["settings"])
    settings.update(
        dataset=dataset,
        q=q,
        main_sigma=float(main),
        demo=settings["n"] < settings["thesis_n"],
        max_certifiable_radius={s: base["sigma"][s]["max_certifiable_radius"] for s in sigmas},
    )
    tables: dict[str, Any] = {"settings": settings, "labels": {m: results[m]["label"] for m in results}}
    tables["table_6_1"] = {"sigma": float(main), "rows": _rows(results, [BASELINE, *methods], main)}
    tables["table_6_2"] = _subset(results, TABLE_6_2_METHODS, main, q=q)
    tables["table_6_3"] = {
        "rows": {("vanilla" if m == BASELINE else m): results[m]["reconstruction"] for m in [BASELINE, *methods]}
    }
    tables["table_6_4"] = _subset(results, TABLE_6_4_METHODS, main, require_all=True)
    tables["table_6_5"] = _subset(results, TABLE_6_5_METHODS, main, require_all=True)
    tables["table_6_6_7"] = {
        "dataset": dataset,
        "sigmas": {s: _rows(results, methods, s) for s in sigmas if s != main},
    }
    return tables


def _rows(results: dict[str, dict], names: list[str], sigma: str) -> dict[str, dict[str, Any]]:
    rows = {}
    for name in names:
        entry = results[name]["sigma"][sigma]
        white_box = results[name]["white_box"]
        row: dict[str, Any] = {"type": "-" if white_box is None else "W" if white_box else "B"}
        rca = sorted((k for k in entry if k.startswith("rca_")), key=lambda k: float(k.removeprefix("rca_")))
        row.update({k: entry[k] for k in ["sca", *rca] if k in entry})  # SCA, then RCA by radius (thesis order)
        rows[name] = row
    return rows


def _subset(results: dict[str, dict], wanted: tuple[str, ...], sigma: str, require_all: bool = False, **extra):
    present = [m for m in wanted if m in results]
    missing = [m for m in wanted if m not in results]
    if not present or (require_all and missing):
        return {"status": f"not run: add {missing} to train_denoiser.methods", **extra}
    return {**extra, "sigma": float(sigma), "rows": _rows(results, present, sigma)}


def render_markdown(tables: dict[str, Any], results: dict[str, dict]) -> str:
    """The tables as Markdown, headed by the certification settings."""
    s = tables["settings"]
    labels = tables["labels"]
    lines = [
        "# Chapter 6: certified black-box defense",
        "",
        f"Dataset `{s['dataset']}`, {s['points']} test points, CERTIFY with n0 = {s['n0']}, n = {s['n']}, "
        f"alpha = {s['alpha']}, q = {s['q']}.",
    ]
    if s["demo"]:
        radii = ", ".join(f"{r:.3f} at sigma {sig}" for sig, r in s["max_certifiable_radius"].items())
        lines += [
            "",
            f"**Demo settings: n = {s['n']} noise samples per point instead of the thesis's n = {s['thesis_n']}.** "
            f"With n samples no radius above sigma * Phi^-1(alpha^(1/n)) can be certified ({radii}), so the "
            "certified accuracy at larger radii is 0 by construction; the numbers are not comparable with the thesis.",
        ]
    lines += ["", f"## Table 6.1 (sigma = {tables['table_6_1']['sigma']:g}; baseline = classifier without denoiser)"]
    lines += _markdown_rows(tables["table_6_1"]["rows"], labels)
    for key, title in (("table_6_2", "Table 6.2 (ZO methods, q = {q})"), ("table_6_4", "Table 6.4 (loss ablation)"),
                       ("table_6_5", "Table 6.5 (training strategy)")):  # fmt: skip
        table = tables[key]
        lines += ["", "## " + title.format(q=s["q"])]
        lines += [table["status"]] if "status" in table else _markdown_rows(table["rows"], labels)
    for sigma, rows in tables["table_6_6_7"]["sigmas"].items():
        lines += ["", f"## Tables 6.6/6.7 (sigma = {sigma})"] + _markdown_rows(rows, labels)
    lines += ["", "## Table 6.3 (reconstruction under L2 PGD: RMSE / SSIM)"]
    epsilons = list(next(iter(tables["table_6_3"]["rows"].values())))
    lines += ["| method | " + " | ".join(f"eps {e}" for e in epsilons) + " |", "|---" * (len(epsilons) + 1) + "|"]
    for name, row in tables["table_6_3"]["rows"].items():
        cells = " | ".join(f"{row[e]['rmse']:.4f} / {row[e]['ssim']:.4f}" for e in epsilons)
        lines.append(f"| {'Vanilla' if name == 'vanilla' else labels[name]} | {cells} |")
    return "\n".join(lines) + "\n"


def _markdown_rows(rows: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    keys = [k for k in next(iter(rows.values())) if k != "type"]
    out = ["| method | type | " + " | ".join(k.upper().replace("_", " ") for k in keys) + " |"]
    out.append("|---" * (len(keys) + 2) + "|")
    for name, row in rows.items():
        out.append(f"| {labels[name]} | {row['type']} | " + " | ".join(f"{100 * row[k]:.2f}" for k in keys) + " |")
    return out


def read_json(path: Path) -> dict:
    """A certify stage's metrics JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run its certify stage first")
    return json.loads(path.read_text())


def read_csv(path: Path) -> dict[str, list[float]]:
    """A numeric CSV as ``{column: values}`` (empty cells are skipped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return {key: [float(row[key]) for row in rows if row[key] != ""] for key in rows[0]}
