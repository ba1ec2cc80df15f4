"""The synthetic two-domain demo generator: seconds for the demo size, images per second for one domain.

The demo size is 2 domains x 48 identities x 3 cameras x 4 images (1152 JPEGs, written to a temporary
directory). Run with ``python -m benchmarks bench_synthetic``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from advreid.data.synthetic import DemoSpec, generate_demo, generate_domain

from .common import Measurement, best_time

DEMO = DemoSpec(num_train_ids=24, num_test_ids=24, cameras=3, images_per_camera=4)


def run() -> list[Measurement]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = best_time(lambda: generate_demo(root / "a", root / "b", DEMO, progress=False), repeats=1)
        one = best_time(lambda: generate_domain(root / "b", "b", DEMO, progress=False), repeats=2, warmup=0)
    images = DEMO.cameras * DEMO.images_per_camera * (DEMO.num_train_ids + DEMO.num_test_ids)
    return [
        Measurement("demo: 2 domains, 1152 images", demo, "s", "generate_demo, 128x64 JPEG, 1 process"),
        Measurement("domain b throughput", images / one, "images/s", "draw, camera, encode, write"),
    ]
