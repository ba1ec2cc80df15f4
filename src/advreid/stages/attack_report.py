"""Stage ``attack_report``: the chapter-4 tables from ``attack@<model>`` and ``attack_sweep``, cross-model transfer
(Table 4.5) and the attack figures.

Tables (``reports/metrics/attack_report.json``, and ``reports/attack/tables.md`` for reading): white-box rank-1/5/10
and mAP before and after every attack on every model (Tables 4.1-4.4), the targeted attack's success, SSIM and MMD
(Table 4.6), transfer (Table 4.5: the adversarial images made on model A scored by model B, for every ordered pair of
models and every cell) and WMA's lambda / kernel-size sweeps. Figures: ``reports/attack/cmc.png`` (CMC before and
after, one panel per model) and ``reports/attack/samples/<model>.png``: clean / perturbation / adversarial images per
attack (Figs. 4.4-4.5).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advreid.attacks.evaluation import ReIDSplit, rank_scores
from advreid.device import select_device, set_threads
from advreid.io import atomic_path, load_torch, write_json, write_text
from advreid.params import ParamsError, build, load_params
from advreid.plots import image_grid, save_figure, to_uint8_image
from advreid.reid.checkpoint import ReIDParams, load_trained_model, model_entry
from advreid.reid.evaluation import EvalSettings
from advreid.reid.metrics import evaluate_rank
from advreid.settings import apply_environment
from advreid.stages.attack import AttackParams, evenly_spaced, load_source

SCORES = ("rank1", "rank5", "rank10", "mAP")


@dataclass(frozen=True)
class ReportSettings:
    """``attack.report``."""

    images: int = 2  # samples per attack in the clean / perturbation / adversarial grids

    def check(self) -> ReportSettings:
        if self.images < 1:
            raise ParamsError(f"attack.report.images: must be >= 1, got {self.images}")
        return self


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (dvc repro attack_report)")
    return json.loads(path.read_text())


def load_adversarial(path: Path) -> dict[str, Any]:
    """One ``data/adversarial/<model>/<cell>.pt`` written by the attack stage."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the attack stage of its model first")
    return load_torch(path, "adversarial examples file")


def features_of(
    model: nn.Module, images: Tensor, size: tuple[int, int], batch_size: int, device: torch.device
) -> Tensor:
    """Features (N, D) of uint8 images (N, 3, H, W), resized (bilinear, antialiased) to the model's ``size``."""
    out = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            x = batch.to(device).float() / 255
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            out.append(model(x).float().cpu())
    return torch.cat(out)


def score_with(splits: dict[str, ReIDSplit], side: str, features: Tensor, settings: EvalSettings) -> dict[str, float]:
    """Retrieval scores with ``features`` in place of the clean features of the ``side`` split."""
    query, gallery = splits["query"], splits["gallery"]
    qf, gf = (features, gallery.features) if side == "query" else (query.features, features)
    result = evaluate_rank(
        qf,
        gf,
        query.labels,
        gallery.labels,
        query.cameras,
        gallery.cameras,
        metric=settings.metric,
        ap_convention=settings.ap_convention,
    )
    return rank_scores(result)


def transfer_table(
    models: list[str],
    cells: dict[str, list[str]],
    root: Path,
    reid: ReIDParams,
    batch_size: int,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Table 4.5: for every ordered pair of different models (A, B), B's retrieval scores on the adversarial images
    made on A, per cell (``cells[A]``), next to B's clean scores. Keys ``"A->B"``."""
    table: dict[str, dict[str, Any]] = {}
    processed = root / "data" / "processed" / reid.source
    for target in models:
        if len(models) < 2:
            break
        where = f"reid.models.{target}.eval"
        settings = build(EvalSettings, model_entry(reid.models, target).get("eval", {}), where).check(where)
        model, meta = load_trained_model(root / "models" / "reid" / target / "model.pt", device)
        size = (meta["height"], meta["width"])
        splits = load_source(model, processed, size, batch_size, device, root)
        clean = score_with(splits, "query", splits["query"].features, settings)
        for source in models:
            if source == target:
                continue
            row: dict[str, Any] = {"clean": clean}
            for cell in cells[source]:
                saved = load_adversarial(root / "data" / "adversarial" / source / f"{cell}.pt")
                split = splits[saved["split"]]
                if saved["path"] != split.images.frame["path"].astype(str).tolist():
                    raise ValueError(
                        f"data/adversarial/{source}/{cell}.pt: its {saved['split']} rows differ from "
                        f"{processed.name}'s manifest; rerun attack@{source}"
                    )
                features = features_of(model, saved["images"], size, batch_size, device)
                row[cell] = score_with(splits, saved["split"], features, settings)
            table[f"{source}->{target}"] = row
    return table


def build_tables(
    results: dict[str, dict[str, Any]], transfer: dict[str, dict[str, Any]], sweep: dict[str, Any] | None
) -> dict[str, Any]:
    """The report's metrics JSON: white_box (Tables 4.1-4.4), targeted, quality (Table 4.6), transfer (Table 4.5),
    sweep (Figs. 4.6-4.7)."""
    white_box, targeted, quality = {}, {}, {}
    for model, result in results.items():
        rows = {"clean": {k: result["clean"][k] for k in SCORES}}
        rows.update({cell: {k: m[k] for k in SCORES} for cell, m in result["cells"].items()})
        white_box[model] = rows
        quality[model] = {cell: {"ssim": m["ssim"], "mmd": m["mmd"]} for cell, m in result["cells"].items()}
        hits = {
            cell: {"target_rank1": m["target_rank1"], "target_mAP": m["target_mAP"]}
            for cell, m in result["cells"].items()
            if "target_rank1" in m
        }
        if hits:
            targeted[model] = hits
    tables: dict[str, Any] = {"white_box": white_box, "quality": quality, "transfer": transfer}
    if targeted:
        tables["targeted"] = targeted
    if sweep is not None:
        tables["sweep"] = {
            "model": sweep["model"],
            "queries": sweep["queries"],
            "clean": {k: sweep["clean"][k] for k in ("rank1", "mAP")},
            "lambda": {
                lam: {k: m[k] for k in ("rank1", "mAP", "ssim", "mean_abs", "smoothness")}
                for lam, m in sweep["lambda"].items()
            },
            "kernel": {
                k: {e: {key: m[key] for key in ("rank1", "mAP")} for e, m in by_eps.items()}
                for k, by_eps in sweep["kernel"].items()
            },
        }
    return tables


def render_markdown(tables: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """The tables as Markdown, with the attack settings they were computed with."""
    lines = ["# Chapter 4: attacks on the Re-ID models", ""]
    for model, rows in tables["white_box"].items():
        cells = results[model]["cells"]
        lines += [
            f"## White box: {model} on {results[model]['dataset']} (Tables 4.1-4.4; %)",
            "",
            "| attack | budget | method | objective | R-1 | R-5 | R-10 | mAP |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, scores in rows.items():
            cell = cells.get(name, {"attack": "clean", "budget": "", "method": "", "objective": ""})
            budget = f"{cell['budget']} ({cell['eps']:g}/255, {cell['steps']} steps)" if name in cells else ""
            lines.append(
                f"| {cell['attack']} | {budget} | {cell['method']} | {cell['objective']} | "
                + " | ".join(f"{100 * scores[k]:.1f}" for k in SCORES)
                + " |"
            )
        lines.append("")
    if "targeted" in tables:
        lines += ["## Targeted attack: retrieval of the target identity (%)", "", "| model | cell | R-1 | mAP |"]
        lines.append("|---|---|---|---|")
        for model, hits in tables["targeted"].items():
            for cell, m in hits.items():
                lines.append(f"| {model} | {cell} | {100 * m['target_rank1']:.1f} | {100 * m['target_mAP']:.1f} |")
        lines.append("")
    lines += ["## Image quality (Table 4.6): SSIM to the clean images, MMD of clean vs adversarial features", ""]
    lines += ["| model | cell | SSIM | MMD |", "|---|---|---|---|"]
    for model, cells in tables["quality"].items():
        lines += [f"| {model} | {cell} | {m['ssim']:.4f} | {m['mmd']:.4f} |" for cell, m in cells.items()]
    lines.append("")
    if tables["transfer"]:
        lines += ["## Cross-model transfer (Table 4.5): made on A, scored by B (%)", ""]
        lines += ["| A -> B | cell | R-1 | R-5 | R-10 | mAP |", "|---|---|---|---|---|---|"]
        for pair, row in tables["transfer"].items():
            for cell, scores in row.items():
                lines.append(f"| {pair} | {cell} | " + " | ".join(f"{100 * scores[k]:.1f}" for k in SCORES) + " |")
        lines.append("")
    if "sweep" in tables:
        sweep = tables["sweep"]
        lines += [f"## WMA sweeps on {sweep['model']} ({sweep['queries']} queries; %)", ""]
        lines += ["| lambda | R-1 | mAP | SSIM | mean abs. perturbation (1/255) | smoothness |"]
        lines.append("|---|---|---|---|---|---|")
        clean = sweep["clean"]
        lines.append(f"| clean | {100 * clean['rank1']:.1f} | {100 * clean['mAP']:.1f} | 1 | 0 | |")
        for lam, m in sorted(sweep["lambda"].items(), key=lambda item: float(item[0])):
            lines.append(
                f"| {lam} | {100 * m['rank1']:.1f} | {100 * m['mAP']:.1f} | {m['ssim']:.4f} | {m['mean_abs']:.2f} | "
                f"{m['smoothness']:.3f} |"
            )
        lines += ["", "| kernel | eps | R-1 | mAP |", "|---|---|---|---|"]
        for k, by_eps in sorted(sweep["kernel"].items(), key=lambda item: _number(item[0])):
            lines += [
                f"| {k} | {e} | {100 * m['rank1']:.1f} | {100 * m['mAP']:.1f} |"
                for e, m in sorted(by_eps.items(), key=lambda item: _number(item[0]))
            ]
        spread = kernel_spread(sweep["kernel"])
        if len(sweep["kernel"]) > 1 and spread < 0.005:
            lines += [
                "",
                f"The kernel size moves mAP by at most {100 * spread:.3f} points: within its max_iter Sinkhorn",
                "iterations the projection barely changes the stepped images (see the WMA note in params.yaml).",
            ]
        lines.append("")
    lines += [
        "Scores are single forward passes (no mirror-image averaging) under each model's distance and AP convention;",
        "eps in 1/255 pixel units; the adversarial images are 8-bit. Smoothness: lag-one spatial autocorrelation of",
        "the perturbation (0: per-pixel noise; towards 1: blur-like).",
        "",
    ]
    return "\n".join(lines)


def kernel_spread(kernel: dict[str, dict[str, dict[str, float]]]) -> float:
    """The largest mAP difference between kernel sizes at one L-inf radius of the kernel sweep."""
    radii = {e for by_eps in kernel.values() for e in by_eps}
    values = [[by_eps[e]["mAP"] for by_eps in kernel.values() if e in by_eps] for e in radii]
    return max((max(v) - min(v) for v in values if v), default=0.0)


def read_cmc(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the attack stage of its model first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in rows[0]} if rows else {}


def plot_cmc(curves: dict[str, dict[str, list[float]]], path: Path) -> Path:
    """CMC before (black) and after each attack, one panel per model."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    for ax, (model, columns) in zip(axes[0], curves.items(), strict=True):
        ranks = columns["rank"]
        colours = plt.get_cmap("tab20").colors  # twenty distinct colours: the default cycle repeats after ten
        for i, (name, values) in enumerate((n, v) for n, v in columns.items() if n != "rank"):
            clean = name == "clean"
            colour = "black" if clean else colours[(i - 1) % len(colours)]
            ax.plot(ranks, values, color=colour, linewidth=2.5 if clean else 1, label=name)
        ax.set_title(model)
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate")
        ax.set_ylim(0, 1.02)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("CMC before and after each attack", fontsize=9)
    return save_figure(fig, path)


def sample_grid(model: str, result: dict[str, Any], root: Path, count: int, path: Path) -> Path:
    """Figs. 4.4-4.5: one row per cell: for ``count`` evenly spaced attacked images, clean | perturbation
    (+-eps spans black to white) | adversarial."""
    from advreid.data.torch_data import ManifestImages, load_split

    processed = root / "data" / "processed" / result["dataset"]
    rows, labels, frames = [], [], {}
    for cell, metrics in result["cells"].items():
        saved = load_adversarial(root / "data" / "adversarial" / model / f"{cell}.pt")
        if saved["split"] not in frames:
            frames[saved["split"]] = load_split(processed, saved["split"], root)
        frame, raw_root = frames[saved["split"]]
        images = ManifestImages(frame, raw_root, size=tuple(saved["images"].shape[-2:]))
        row = []
        for i in evenly_spaced(count, len(saved["images"])).tolist():
            clean = images.image(i)
            adversarial = saved["images"][i].float() / 255
            noise = 0.5 + (adversarial - clean) * (0.5 / max(metrics["eps"] / 255, 1e-12))
            row += [to_uint8_image(clean), to_uint8_image(noise), to_uint8_image(adversarial)]
        rows.append(row)
        labels.append(f"{cell}\n({saved['split']})")
    columns = ["clean", "perturbation", "adversarial"] * count
    title = f"{model}: clean + perturbation = adversarial (rank-1 / mAP in tables.md)"
    return image_grid(rows, path, row_labels=labels, col_labels=columns, title=title)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid attack-report", description=__doc__.splitlines()[0]).parse_args(argv)
    root = apply_environment()
    reid = build(ReIDParams, load_params("reid", root / "params.yaml"), "reid").check()
    params = build(AttackParams, load_params("attack", root / "params.yaml"), "attack").check()
    settings = build(ReportSettings, params.report, "attack.report").check()
    models = list(reid.models)
    results = {m: read_json(root / "reports" / "metrics" / "attack" / f"{m}.json") for m in models}
    cells = {m: [cell.name for cell in params.grid()] for m in models}  # in params order
    for m in models:
        missing = sorted(set(cells[m]) - set(results[m]["cells"]))
        if missing:
            raise ValueError(f"reports/metrics/attack/{m}.json lacks cells {missing} of params.yaml: rerun attack@{m}")
        results[m]["cells"] = {name: results[m]["cells"][name] for name in cells[m]}
    sweep_path = root / "reports" / "metrics" / "attack_sweep.json"
    sweep = read_json(sweep_path) if sweep_path.is_file() else None
    curves = {m: read_cmc(root / "reports" / "attack" / "cmc" / f"{m}.csv") for m in models}
    set_threads(reid.threads, "reid.threads")
    device = select_device(reid.device)

    from advreid.tracking.mlflow_run import stage_run

    out = root / "reports" / "attack"
    with stage_run("attack_report", {"models": models, "source": reid.source, "report": params.report}) as run:
        transfer = transfer_table(models, cells, root, reid, params.batch_size, device)
        tables = build_tables(results, transfer, sweep)
        metrics_path = root / "reports" / "metrics" / "attack_report.json"
        write_json(metrics_path, tables)
        write_text(out / "tables.md", render_markdown(tables, results))
        figures = [plot_cmc(curves, out / "cmc.png")]
        with atomic_path(out / "samples", is_dir=True) as tmp:
            for m in models:
                sample_grid(m, results[m], root, settings.images, tmp / f"{m}.png")
        for path in [metrics_path, out / "tables.md", *figures, *(out / "samples").glob("*.png")]:
            run.log_artifact(path, "attack")
        run.log_metrics(
            {
                f"transfer.{pair.replace('->', '_to_')}.{cell}.mAP": s["mAP"]  # MLflow keys allow no '>'
                for pair, row in transfer.items()
                for cell, s in row.items()
            }
        )
    for model, rows in tables["white_box"].items():
        clean = rows["clean"]
        worst = min((c for c in rows if c != "clean"), key=lambda c: rows[c]["mAP"])
        print(
            f"attack_report: {model}: clean mAP {clean['mAP']:.3f}; "
            f"lowest after attack {rows[worst]['mAP']:.3f} ({worst})"
        )
    for pair, row in transfer.items():
        print(f"attack_report: transfer {pair}: " + ", ".join(f"{c} mAP {s['mAP']:.3f}" for c, s in row.items()))
    return 0


def _number(key: str) -> float:
    """The number in a JSON key such as ``k7``, ``eps16`` or ``3000`` (JSON keys sort as text)."""
    return float(key.lstrip("keps"))


if __name__ == "__main__":
    sys.exit(main())
