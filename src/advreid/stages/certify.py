"""Stage ``certify@<method>`` (and ``certify_baseline``): randomized-smoothing certification and Table 6.3.

For each sigma of ``certify.settings.sigmas``, Cohen et al.'s CERTIFY runs on evenly spaced test images with
the base classifier ``f(D(x + eta))`` queried as a black box; the certified accuracy at radius r counts the
points whose prediction is right (dataset label) and whose radius is at least r (SCA at r = 0, RCA above).
The reconstruction defense is evaluated under 40-step L2 PGD (Table 6.3). ``baseline`` certifies the
classifier alone (no denoiser) and evaluates the undefended reconstruction network ("Vanilla").

Outputs: ``reports/metrics/certify/<method>.json`` and ``reports/certify/curves/<method>.csv`` (certified
accuracy per radius, one column per sigma).
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn
from tqdm import tqdm

from advreid.io import write_json, write_text
from advreid.params import ParamsError, build, load_params, require, require_counts
from advreid.settings import apply_environment

BASELINE = "baseline"
THESIS_N = 10_000


@dataclass(frozen=True)
class ReconstructionEvalParams:
    epsilons: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
    steps: int = 40
    noise_samples: int = 10
    num_points: int = 100

    def check(self, where: str) -> ReconstructionEvalParams:
        for index, eps in enumerate(self.epsilons):
            require(eps >= 0, f"{where}.epsilons[{index}]", ">= 0", eps)
        require_counts(self, where, ("steps", "noise_samples", "num_points"))
        return self


@dataclass(frozen=True)
class CertifyParams:
    sigmas: tuple[float, ...]
    n0: int = 100
    n: int = THESIS_N
    alpha: float = 0.001
    batch_size: int = 1000
    num_points: int = 500
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    curve_step: float = 0.01
    reconstruction: dict = field(default_factory=dict)
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def check(self, where: str) -> CertifyParams:
        if not self.sigmas or not self.radii:
            raise ParamsError(f"{where}: sigmas and radii need at least one value each")
        for index, sigma in enumerate(self.sigmas):
            require(sigma > 0, f"{where}.sigmas[{index}]", "> 0 (the smoothing noise level)", sigma)
        for index, radius in enumerate(self.radii):
            require(radius >= 0, f"{where}.radii[{index}]", ">= 0", radius)
        require_counts(self, where, ("n0", "n", "batch_size", "num_points"))
        require(
            self.n0 <= self.n, f"{where}.n0", f"<= n = {self.n} (selection draws may not outnumber estimation)", self.n0
        )
        require(0 < self.alpha < 1, f"{where}.alpha", "in (0, 1)", self.alpha)
        require(self.curve_step > 0, f"{where}.curve_step", "> 0", self.curve_step)
        require(self.threads >= 0, f"{where}.threads", ">= 0 (0 = torch's default)", self.threads)
        return self


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid certify", description=__doc__.splitlines()[0])
    parser.add_argument("method", help=f"a trained defense method, or '{BASELINE}' for no denoiser")
    args = parser.parse_args(argv)
    root = apply_environment()
    params = build(CertifyParams, load_params("certify.settings", root / "params.yaml"), "certify.settings")
    params.check("certify.settings")
    where = "certify.settings.reconstruction"
    recon = build(ReconstructionEvalParams, params.reconstruction, where).check(where)
    dataset = load_params("train_classifier.dataset", root / "params.yaml")
    recon_dataset = load_params("train_classifier.reconstruction.dataset", root / "params.yaml")
    seed = load_params("seed", root / "params.yaml")

    from advreid.certify.reconstruction import evaluate_reconstruction
    from advreid.certify.training import get_method
    from advreid.data.torch_data import dataset_info
    from advreid.device import select_device, set_threads
    from advreid.stages.train_classifier import load_classifier, load_images, load_reconstructor
    from advreid.stages.train_denoiser import load_defense
    from advreid.tracking.mlflow_run import stage_run

    method = None if args.method == BASELINE else get_method(args.method)
    name = BASELINE if method is None else method.name
    device = select_device(params.device)
    set_threads(params.threads, "certify.settings.threads")
    processed = root / "data" / "processed" / dataset
    test_x, test_y = load_images(processed, "test", root, device)
    classifier = load_classifier(root / "models" / "classifier" / f"{dataset}.pt", device)
    degrade, reconstructor = load_reconstructor(root / "models" / "reconstructor" / f"{recon_dataset}.pt", device)
    recon_x, _ = load_images(root / "data" / "processed" / recon_dataset, "test", root, device)
    defenses = root / "models" / "denoisers" / name
    num_classes = int(dataset_info(processed)["num_classes"])
    stage = f"certify_{BASELINE}" if method is None else f"certify@{name}"
    with stage_run(stage, {**asdict(params), "method": name}) as run:
        points = evenly_spaced(test_x.shape[0], params.num_points)
        grid = np.round(np.arange(0.0, max(params.radii) + params.curve_step / 2, params.curve_step), 10)
        results, curves = {}, {}
        for sigma in params.sigmas:
            defense = None if method is None else load_defense(defenses / f"sigma_{sigma:g}.pt", device)[0]
            base = nn.Sequential(defense, classifier) if defense is not None else classifier
            started = time.perf_counter()
            results[f"{sigma:g}"], curves[f"{sigma:g}"] = certify_sigma(
                base, test_x[points], test_y[points], num_classes, sigma, params, grid, seed, f"{name} sigma={sigma:g}"
            )
            run.log_metrics({f"sigma_{sigma:g}.seconds": time.perf_counter() - started})
        recon_defense, recon_meta = (
            (None, {"sigma": 0.0}) if method is None else load_defense(defenses / "reconstruction.pt", device)
        )
        recon_points = evenly_spaced(recon_x.shape[0], recon.num_points)
        reconstruction = evaluate_reconstruction(
            reconstructor, recon_defense, degrade(recon_x[recon_points]), recon_x[recon_points], recon.epsilons,
            steps=recon.steps, sigma=recon_meta["sigma"], noise_samples=recon.noise_samples, seed=seed,
        )  # fmt: skip
        metrics = {
            "method": name,
            "label": "no denoiser" if method is None else method.label,
            "white_box": None if method is None else not method.zeroth_order,
            "settings": {"n0": params.n0, "n": params.n, "alpha": params.alpha, "points": len(points),
                         "thesis_n": THESIS_N},
            "sigma": results,
            "reconstruction": reconstruction,
        }  # fmt: skip
        write_json(root / "reports" / "metrics" / "certify" / f"{name}.json", metrics)
        curve_path = root / "reports" / "certify" / "curves" / f"{name}.csv"
        write_text(curve_path, curve_table(grid, curves))
        run.log_metrics({f"sigma_{s}.{k}": v for s, d in results.items() for k, v in d.items()})
        run.log_metrics({f"reconstruction.eps_{e}.{k}": v for e, d in reconstruction.items() for k, v in d.items()})
        run.log_artifact(curve_path, "certify")
    first = results[f"{params.sigmas[0]:g}"]
    print(
        f"certify@{name}: sigma {params.sigmas[0]:g}: SCA {first.get('sca', float('nan')):.3f} on {len(points)} points"
        f" (n = {params.n}{'' if params.n >= THESIS_N else f', thesis n = {THESIS_N}'})"
    )
    return 0


def certify_sigma(
    base: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    sigma: float,
    params: CertifyParams,
    grid: np.ndarray,
    seed: int,
    desc: str,
) -> tuple[dict[str, float], list[float]]:
    """One noise level: the table row (SCA, RCA at ``params.radii``, abstentions, radius statistics) and the
    certified-accuracy curve over ``grid``."""
    predictions, radii, queries = certify_points(base, images, num_classes, sigma, params, seed, desc)
    accuracy = certified_accuracy_table(predictions, radii, labels, params.radii)
    row = {("sca" if r == 0 else f"rca_{r:g}"): v for r, v in zip(params.radii, accuracy, strict=True)}
    row.update(
        abstain=float((predictions == -1).double().mean()),
        mean_radius=float(radii.mean()),
        max_certifiable_radius=max_certifiable_radius(sigma, params.n, params.alpha),
        queries_per_point=queries,
    )
    return row, certified_accuracy_table(predictions, radii, labels, grid)


def certify_points(
    base: nn.Module,
    images: Tensor,
    num_classes: int,
    sigma: float,
    params: CertifyParams,
    seed: int,
    desc: str = "certify",
) -> tuple[Tensor, Tensor, float]:
    """CERTIFY every image through a query-only view of ``base``.

    Returns:
        ``(predictions (N,), radii (N,), black-box queries per point)``; abstentions are -1 with radius 0.
    """
    from advreid.certify.blackbox import BlackBox
    from advreid.certify.smoothing import Smooth

    black_box = BlackBox(base, max_batch=params.batch_size)
    smooth = Smooth(black_box, num_classes, sigma)
    generator = torch.Generator(images.device).manual_seed(seed)
    predictions, radii = [], []
    for image in tqdm(images, desc=desc, unit="point", leave=False):
        prediction, radius = smooth.certify(image, params.n0, params.n, params.alpha, params.batch_size, generator)
        predictions.append(prediction)
        radii.append(radius)
    return torch.tensor(predictions), torch.tensor(radii, dtype=torch.float64), black_box.query_count / len(images)


def certified_accuracy_table(predictions: Tensor, radii: Tensor, labels: Tensor, grid) -> list[float]:
    """Certified accuracy at each radius of ``grid`` (a list, for JSON and CSV)."""
    from advreid.certify.smoothing import certified_accuracy

    grid = torch.as_tensor(np.asarray(grid, dtype=np.float64))
    return [float(v) for v in certified_accuracy(predictions, radii, labels.cpu(), grid)]


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n samples: all n agree, pA_lower = alpha^(1/n)."""
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (all of them when count >= total)."""
    if count < 1:
        raise ParamsError(f"certify: the number of test points must be >= 1, got {count}")
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def curve_table(grid, curves: dict[str, list[float]]) -> str:
    """CSV ``radius,sigma_<s>,...`` of certified accuracy curves."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["radius", *(f"sigma_{s}" for s in curves)])
    for i, radius in enumerate(grid):
        writer.writerow([f"{radius:g}", *(repr(curve[i]) for curve in curves.values())])
    return out.getvalue()
