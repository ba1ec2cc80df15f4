"""The ``gan`` params section and the two jobs its stages run: train one named run over every seed, and evaluate
every trained run (target retrieval beside direct transfer, MMD, SSIM, figure, thesis tables 3.1/3.3/3.4/3.5/3.8).

Layout: ``models/gan/<run>/checkpoints/seed<k>.pt`` (resumable, DVC ``persist``) and ``models/gan/<run>/seeds/
seed<k>/{generator.pt, discriminator.pt, model.pt}``; ``model.pt`` is the adapted E_id in train_reid's format, so
:func:`advreid.reid.checkpoint.load_trained_model` (eval, attack, defense stages) loads it unchanged.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advreid.data.torch_data import dataset_info
from advreid.gan.data import DomainImages, load_domain
from advreid.gan.evaluation import cycle_ssim, domain_mmd, translate_domains, translation_grid
from advreid.gan.networks import Generator
from advreid.gan.trainer import CURVE_COLUMNS, GANSettings, train_ipes_gan
from advreid.io import atomic_path, load_torch, sha256_file, write_text
from advreid.models.reid import ReIDModel
from advreid.params import ParamsError, build
from advreid.reid.checkpoint import load_trained_model
from advreid.reid.engine import save_checkpoint
from advreid.reid.evaluation import EvalSettings, domain_metrics, evaluate_domain


@dataclass(frozen=True)
class QualitySettings:
    """``gan.quality``: local pretrained weights for Table 3.6 (LPIPS, FID); a missing path = "not computed".

    Paths are absolute or relative to the project root; their sha256 is recorded in the metrics (lineage)."""

    inception_weights: str | None = None  # torchvision inception_v3 state dict (FID)
    lpips_alexnet_weights: str | None = None  # torchvision alexnet state dict (LPIPS backbone)
    lpips_linear_weights: str | None = None  # lpips v0.1 alex.pth (LPIPS linear layers)
    batch_size: int = 16

    def check(self, where: str = "gan.quality") -> QualitySettings:
        if (self.lpips_alexnet_weights is None) != (self.lpips_linear_weights is None):
            raise ParamsError(f"{where}: LPIPS needs both lpips_alexnet_weights and lpips_linear_weights, or neither")
        if self.batch_size < 1:
            raise ParamsError(f"{where}.batch_size: must be >= 1, got {self.batch_size}")
        return self


@dataclass(frozen=True)
class GANParams:
    """``gan``: domains, the teacher (a ``reid.models`` key), seeds, shared settings, named runs (overrides)."""

    source: str
    target: str
    teacher: str
    seeds: tuple[int, ...] = (0,)
    settings: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    demo_runs: tuple[str, ...] = ("ipes_gan",)
    main_run: str = "ipes_gan"
    eval: dict = field(default_factory=dict)
    grid_rows: int = 6
    eval_images: int = 64  # source images translated for MMD / SSIM / the grid (evenly spaced; also target images)
    device: str = "auto"
    threads: int = 1
    quality: dict = field(default_factory=dict)  # QualitySettings fields

    def check(self) -> GANParams:
        if self.source == self.target:
            raise ParamsError(f"gan.target: must differ from gan.source ('{self.source}')")
        if self.eval_images < 2 or self.grid_rows < 1:
            raise ParamsError("gan: need eval_images >= 2 and grid_rows >= 1")
        if not self.seeds:
            raise ParamsError("gan.seeds: name at least one seed")
        for name in (self.main_run, *self.demo_runs):
            if name not in self.runs:
                raise ParamsError(f"gan: run '{name}' is not a key of gan.runs ({sorted(self.runs)})")
        self.quality_settings()
        return self

    def quality_settings(self) -> QualitySettings:
        return build(QualitySettings, self.quality or {}, "gan.quality").check()

    def run_settings(self, run: str) -> GANSettings:
        if run not in self.runs:
            raise ParamsError(f"gan.runs has no '{run}'; known: {sorted(self.runs)}")
        overrides = self.runs[run] or {}
        return build(GANSettings, {**self.settings, **overrides}, f"gan.runs.{run}").check(f"gan.runs.{run}")


def load_teacher(path: Path, arch: str, size: tuple[int, int], source: str) -> tuple[ReIDModel, dict[str, Any]]:
    """E_std from train_reid's ``model.pt``, checked against the expected architecture, image size and source."""
    teacher, meta = load_trained_model(path)
    if meta["arch"] != arch:
        raise ValueError(f"{path}: teacher is a {meta['arch']} checkpoint, params ask for {arch}")
    if (meta["height"], meta["width"]) != size:
        raise ValueError(f"{path}: teacher takes {meta['height']}x{meta['width']} images, gan settings {size}")
    if meta.get("source") != source:
        raise ValueError(f"{path}: teacher was trained on '{meta.get('source')}', gan.source is '{source}'")
    return teacher, meta


def load_domains(params: GANParams, settings: GANSettings, root: Path) -> tuple[DomainImages, DomainImages]:
    processed, size = root / "data" / "processed", (settings.height, settings.width)
    source, target = (
        load_domain(
            processed / name,
            processed / "pose" / f"{name}.parquet",
            size,
            labelled=labelled,
            resize=settings.resize,
            root=root,
        )
        for name, labelled in ((params.source, True), (params.target, False))
    )
    return source, target


def train_run(
    params: GANParams, run: str, arch: str, root: Path, device: torch.device, on_log=None
) -> tuple[dict, dict[int, dict[str, Any]]]:
    """Train every seed of ``run``; write ``models/gan/<run>/seeds`` (atomically) and the loss-curve CSV.

    Returns the training metrics (per seed: final losses), which depend on the inputs only, and per seed how this
    call ran (``resumed_from``, ``iterations_per_second``: wall-clock, for MLflow, kept out of DVC's outputs)."""
    settings = params.run_settings(run)
    teacher_path = root / "models" / "reid" / params.teacher / "model.pt"
    teacher, teacher_meta = load_teacher(teacher_path, arch, (settings.height, settings.width), params.source)
    source, target = load_domains(params, settings, root)
    out_dir = root / "models" / "gan" / run
    processed, domains = root / "data" / "processed", (params.source, params.target)
    extra = {
        "teacher_sha256": sha256_file(teacher_path),
        "source": params.source,
        "target": params.target,
        **{f"{d}_train_sha256": dataset_info(processed / d)["splits"]["train"]["sha256"] for d in domains},
        **{f"{d}_pose_sha256": sha256_file(processed / "pose" / f"{d}.parquet") for d in domains},
    }
    rows, metrics = [], {"run": run, "seeds": {}}
    trained, progress = {}, {}
    for seed in params.seeds:
        result = train_ipes_gan(
            settings,
            source,
            target,
            teacher,
            arch,
            seed=seed,
            device=device,
            checkpoint_path=out_dir / "checkpoints" / f"seed{seed}.pt",
            fingerprint_extra=extra,
            description=f"{run} seed {seed}",
            on_log=on_log and (lambda i, r, s=seed: on_log(s, i, r)),
        )
        trained[seed] = result
        rows += [{"seed": seed, **r} for r in result.history]
        ran = settings.max_iter - result.resumed_from
        metrics["seeds"][str(seed)] = {k: result.history[-1][k] for k in CURVE_COLUMNS[1:]}
        progress[seed] = {
            "resumed_from": result.resumed_from,
            "iterations_per_second": ran / result.seconds if ran else None,
        }
    meta = {
        **{k: teacher_meta[k] for k in ("arch", "num_classes", "feature_dim", "height", "width", "source")},
        "pretrained": None,
        "adapted_to": params.target,
        "gan_run": run,
    }
    with atomic_path(out_dir / "seeds", is_dir=True) as tmp:
        for seed, result in trained.items():
            seed_dir = tmp / f"seed{seed}"
            seed_dir.mkdir(parents=True)
            gen_meta = {
                "settings": asdict(settings),
                "id_dim": result.identity.feature_dim,
                "source_cameras": source.num_cameras,
                "target_cameras": target.num_cameras,
            }
            for name, module in (("generator", result.generator), ("discriminator", result.discriminator)):
                save_checkpoint(seed_dir / f"{name}.pt", module, epoch=settings.max_iter, history=[], meta=gen_meta)
            save_checkpoint(
                seed_dir / "model.pt",
                result.identity,
                epoch=settings.max_iter,
                history=[],
                meta={**meta, "seed": seed, "fingerprint": result.fingerprint},
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("seed", *CURVE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "iteration": int(r["iteration"])} for r in rows)
    write_text(root / "reports" / "gan" / "train" / f"{run}.csv", buffer.getvalue())
    return metrics, progress


def subset(domain: DomainImages, count: int) -> DomainImages:
    """``count`` evenly spaced images of ``domain`` (all when it has fewer)."""
    return _rows(domain, torch.linspace(0, len(domain) - 1, min(count, len(domain))).round().long())


def load_generator(path: Path, device: torch.device) -> tuple[Generator, GANSettings]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_gan stage for this run first")
    checkpoint = load_torch(path, "IPES-GAN generator checkpoint")
    meta = checkpoint["meta"]
    settings = build(GANSettings, meta["settings"], str(path))
    generator = Generator(settings.sizes, meta["id_dim"], meta["source_cameras"], meta["target_cameras"])
    generator.load_state_dict(checkpoint["model"])
    return generator.to(device).eval(), settings


def _summary(per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
    block: dict[str, Any] = {"per_seed": per_seed}
    for key in next(iter(per_seed.values())):
        values = np.array([s[key] for s in per_seed.values()], dtype=float)
        block[key], block[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return block


def evaluate_runs(params: GANParams, root: Path, device: torch.device, grid_path: Path) -> dict[str, Any]:
    """Direct transfer (the teacher) and every run of ``gan.demo_runs`` per seed on the target query/gallery;
    MMD(target, source) and MMD(target, generated) on teacher features; SSIM of the cycles; the image grid."""
    eval_settings = build(EvalSettings, params.eval, "gan.eval").check("gan.eval")
    processed = root / "data" / "processed"
    teacher, meta = load_trained_model(root / "models" / "reid" / params.teacher / "model.pt", device)
    size = (meta["height"], meta["width"])
    direct = evaluate_domain(teacher, processed / params.target, eval_settings, size, device=device, root=root)
    metrics: dict[str, Any] = {"direct_transfer": domain_metrics(direct, eval_settings, "target")}
    quality = ImageQuality(params.quality_settings(), root, device)
    source = target = None
    for run in params.demo_runs:
        per_seed = {}
        for seed in params.seeds:
            seed_dir = root / "models" / "gan" / run / "seeds" / f"seed{seed}"
            model, _ = load_trained_model(seed_dir / "model.pt", device)
            block = domain_metrics(
                evaluate_domain(model, processed / params.target, eval_settings, size, device=device, root=root),
                eval_settings,
                "target",
            )
            generator, settings = load_generator(seed_dir / "generator.pt", device)
            if source is None:
                source, target = (subset(d, params.eval_images) for d in load_domains(params, settings, root))
                metrics["mmd"] = {
                    "target_source": domain_mmd(teacher, target.images.float() / 255, source.images.float() / 255)
                }
            translation = translate_domains(
                generator,
                model,
                source,
                target,
                pose_pairing=settings.pose_pairing,
                sigma=settings.pose_sigma,
                device=device,
            )
            ssims = cycle_ssim(translation)
            per_seed[str(seed)] = {
                "mAP": block["mAP"],
                "rank1": block["rank1"],
                "rank5": block["rank5"],
                "rank10": block["rank10"],
                "mmd_target_generated": domain_mmd(teacher, translation.target, translation.source_to_target),
                "ssim_cycle_source": ssims["source"],
                "ssim_cycle_target": ssims["target"],
            }
            per_seed[str(seed)].update(quality.scores(generator, model, source, target, settings))
            if run == params.main_run and seed == params.seeds[0]:
                translation_grid(
                    translation, grid_path, params.grid_rows, f"{run} seed {seed}: {params.source} -> {params.target}"
                )
        metrics[run] = _summary(per_seed)
    main = metrics[params.main_run]
    metrics["mmd"].update(
        target_generated=main["mmd_target_generated"], target_generated_std=main["mmd_target_generated_std"]
    )
    metrics["headline"] = {
        "mAP_gain": main["mAP"] - metrics["direct_transfer"]["mAP"],
        "rank1_gain": main["rank1"] - metrics["direct_transfer"]["rank1"],
        "seeds_above_direct_mAP": sum(s["mAP"] > metrics["direct_transfer"]["mAP"] for s in main["per_seed"].values()),
        "seeds": len(params.seeds),
    }
    metrics["image_quality"] = quality.summary(main)
    return metrics


class ImageQuality:
    """Table 3.6 per run and seed: LPIPS diversity and FID(target, S->T), each only when its local weights are set."""

    def __init__(self, settings: QualitySettings, root: Path, device: torch.device):
        from advreid.gan import quality

        self.settings, self.device, self.weights = settings, device, {}
        self.lpips = self.inception = None
        if settings.lpips_alexnet_weights is not None:
            alex, lin = (_resolve(root, p) for p in (settings.lpips_alexnet_weights, settings.lpips_linear_weights))
            self.lpips = quality.LPIPS(alex, lin)
            self.weights.update(lpips_alexnet=sha256_file(alex), lpips_linear=sha256_file(lin))
        if settings.inception_weights is not None:
            path = _resolve(root, settings.inception_weights)
            self.inception = quality.InceptionPool(path)
            self.weights["inception"] = sha256_file(path)

    def scores(self, generator, model, source: DomainImages, target: DomainImages, settings) -> dict[str, float]:
        from advreid.gan import quality

        out: dict[str, float] = {}
        if self.lpips is None and self.inception is None:
            return out
        options = {"pose_pairing": settings.pose_pairing, "sigma": settings.pose_sigma, "device": self.device}
        first = translate_domains(generator, model, source, target, **options)
        batch = {"batch_size": self.settings.batch_size, "device": self.device}
        if self.inception is not None:
            out["fid"] = quality.fid(first.target, first.source_to_target, self.inception, **batch)
        if self.lpips is not None:  # the same source images under other target environments (half a domain away)
            rows = (torch.arange(len(target)) + len(target) // 2) % len(target)
            other = translate_domains(generator, model, source, _rows(target, rows), **options)
            out["lpips_diversity"] = float(
                quality.lpips_distance(first.source_to_target, other.source_to_target, self.lpips, **batch).mean()
            )
        return out

    def summary(self, main: dict[str, Any]) -> dict[str, Any]:
        missing = "no local weights given in gan.quality (never downloaded)"
        out: dict[str, Any] = {"weights_sha256": self.weights}
        for key, name in (("lpips_diversity", "lpips"), ("fid", "fid")):
            if key in main:
                out[name], out[f"{name}_std"] = main[key], main[f"{key}_std"]
            else:
                out[name] = "not computed"
        out["reason"] = "computed from local weights" if self.weights else missing
        if self.weights and len(self.weights) < 3:
            out["reason"] += f" (only {sorted(self.weights)}; the others: {missing})"
        return out


def _resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _rows(domain: DomainImages, rows: torch.Tensor) -> DomainImages:
    labels = domain.labels[rows] if domain.labels is not None else None
    return replace(domain, images=domain.images[rows], cameras=domain.cameras[rows], keypoints=domain.keypoints[rows],
                   labels=labels)  # fmt: skip
