"""Stage ``demo_data``: draw the synthetic two-domain Re-ID demo and copy scikit-learn's digits file.

Outputs: ``data/raw/demo_a`` and ``data/raw/demo_b`` (Market-1501 layout + ``keypoints.json``),
``data/raw/digits/digits.csv.gz`` and a picture of sample identities, ``reports/demo/samples.png``.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import asdict
from pathlib import Path

from advreid.data.formats.classification import DIGITS_FILE, sklearn_digits_file
from advreid.data.images import load_image
from advreid.data.synthetic import DemoSpec, generate_demo
from advreid.io import atomic_path
from advreid.params import build, load_params
from advreid.plots import image_grid
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="advreid demo-data", description=__doc__.splitlines()[0]).parse_args(argv)
    root = apply_environment()
    # the demo section plus the global seed is exactly the generator's DemoSpec (which validates itself)
    seed = load_params("seed", root / "params.yaml")
    spec = build(DemoSpec, {**load_params("demo", root / "params.yaml"), "seed": seed}, "demo")

    from advreid.tracking.mlflow_run import stage_run

    raw = root / "data" / "raw"
    with stage_run("demo_data", asdict(spec)) as run:
        counts = generate_demo(raw / "demo_a", raw / "demo_b", spec)
        with atomic_path(raw / "digits", is_dir=True) as tmp:
            shutil.copyfile(sklearn_digits_file(), tmp / DIGITS_FILE)
        figure = sample_grid(raw, root / "reports" / "demo" / "samples.png", spec)
        run.log_metrics(
            {f"demo.{d}.{k}": float(v) for d, c in counts.items() for k, v in c.items() if isinstance(v, int)}
        )
        run.log_artifact(figure, "demo")
    for domain, c in counts.items():
        print(
            f"demo_data: domain {domain}: {c['images']} images ({c['bounding_box_train']} train, "
            f"{c['query']} query, {c['bounding_box_test']} gallery)"
        )
    return 0


def sample_grid(raw: Path, path: Path, spec: DemoSpec, ids: int = 6) -> Path:
    """First image of a few identities (columns) under every camera (rows), for each domain."""
    ids = min(ids, spec.num_train_ids)
    rows, labels = [], []
    for domain in ("demo_a", "demo_b"):
        files = sorted((raw / domain / "bounding_box_train").glob("*.jpg"))
        for camera in range(1, spec.cameras + 1):
            row = []
            for pid in range(1, ids + 1):
                match = next(f for f in files if f.name.startswith(f"{pid:04d}_c{camera}s"))
                row.append(load_image(match))
            rows.append(row)
            labels.append(f"{domain} cam {camera}")
    return image_grid(
        rows,
        path,
        row_labels=labels,
        col_labels=[f"id {i}" for i in range(1, ids + 1)],
        title="Synthetic demo: identities (columns) across cameras (rows) of the two domains",
    )
