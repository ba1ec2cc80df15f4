"""MediaPipe pose estimation on 128x64 synthetic demo images: latency in one process, throughput of the pool.

Pool throughput is the slope between two runs of different size, so the workers' start-up (spawning a
process, importing MediaPipe, building its graph) is reported apart from the steady rate. Run with
``python -m benchmarks bench_pose``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from advreid.data.images import load_image
from advreid.data.synthetic import DemoSpec, generate_domain
from advreid.pose.estimator import EstimatorSettings, PoseEstimator, estimate_files

from .common import Measurement, best_time

SPEC = DemoSpec(num_train_ids=8, num_test_ids=4, cameras=2, images_per_camera=4)  # 96 images, 128x64
UPSCALE = 2  # the stage's default (params.yaml pose.upscale)


def _pool_seconds(paths: list[Path], workers: int) -> float:
    settings = EstimatorSettings(upscale=UPSCALE)
    start = time.perf_counter()
    estimate_files(paths, settings, workers=workers, progress=False)
    return time.perf_counter() - start


def run() -> list[Measurement]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        generate_domain(root, "a", SPEC, progress=False)
        paths = sorted(root.rglob("*.jpg"))
        images = [load_image(p) for p in paths]
        for upscale in (1, 2):
            with PoseEstimator(EstimatorSettings(upscale=upscale)) as estimator:
                seconds = best_time(lambda est=estimator: [est.estimate(im) for im in images], repeats=2)
            out.append(
                Measurement(
                    f"latency, upscale {upscale}",
                    1000 * seconds / len(images),
                    "ms/image",
                    "PoseEstimator.estimate in this process, decoded 128x64 images",
                )
            )
        for workers in (1, 2):
            few = paths[: 4 * workers]
            small, large = _pool_seconds(few, workers), _pool_seconds(paths, workers)
            rate = (len(paths) - len(few)) / max(large - small, 1e-9)
            out.append(
                Measurement(
                    f"pool throughput, {workers} worker(s)",
                    rate,
                    "images/s",
                    f"estimate_files on JPEG files, upscale {UPSCALE}, start-up excluded",
                )
            )
            startup = max(small - len(few) / rate, 0.0)
            out.append(Measurement(f"pool start-up, {workers} worker(s)", startup, "s", "spawn, import, build graph"))
    return out
