"""Ingest throughput on the synthetic Re-ID data: read + hash + decode, GX validation, manifest write."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from advreid.data.processed import write_dataset
from advreid.data.registry import read_dataset, rules_for
from advreid.data.synthetic import DemoSpec, generate_domain
from advreid.data.validation import validate_manifest

from .common import Measurement


def run() -> list[Measurement]:
    spec = DemoSpec(num_train_ids=40, num_test_ids=40, cameras=3, images_per_camera=4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        generate_domain(root, "a", spec, progress=False)
        read_dataset("market1501", root, name="warmup")  # page cache warm, imports done
        start = time.perf_counter()
        raw = read_dataset("market1501", root, name="bench")
        read_s = time.perf_counter() - start
        frame = pd.concat(list(raw.frames.values()), ignore_index=True)
        validate_manifest(frame, rules_for("market1501", raw), "warmup")
        start = time.perf_counter()
        validate_manifest(frame, rules_for("market1501", raw), "bench")
        validate_s = time.perf_counter() - start
        start = time.perf_counter()
        write_dataset(raw, Path(tmp) / "out", "demo")
        write_s = time.perf_counter() - start
    n = len(frame)
    total = read_s + validate_s + write_s
    note = f"{n} synthetic 128x64 JPEGs, Market-1501 layout"
    return [
        Measurement("read (hash + full decode)", n / read_s, "images/s", note),
        Measurement("GX validation", validate_s, "s", f"{n} rows, one suite"),
        Measurement("manifest write", write_s, "s", "parquet x3 + dataset.json"),
        Measurement("ingest end to end", n / total, "images/s", note),
    ]
