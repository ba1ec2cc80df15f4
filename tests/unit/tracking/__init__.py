"""A tiny DVC project shared by the tracking tests: raw files -> manifest stage -> train stage.

``ingest@toy`` (a ``foreach`` stage) writes ``data/processed/toy`` with ``dataset.json``, a file manifest
(``train.parquet``, one row per raw file) and an array manifest (``test.parquet`` + ``test.npy``);
``train`` reads the manifest and writes ``models/model.json``, opening ``stage_run`` when ``TOY_TRACK``
is set in its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

DVC = str(Path(sys.executable).with_name("dvc"))
RAW = {"a.bin": b"alpha", "b.bin": b"bravo!", "c.bin": b"charlie"}

PARAMS = """\
ingest:
  scale: 2
train:
  lr: 0.5
  layers: [4, 2]
"""

INGEST = """\
import hashlib, json, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

name = sys.argv[1]
scale = yaml.safe_load(Path("params.yaml").read_text())["ingest"]["scale"]
raw, out = Path("raw") / name, Path("data/processed") / name
out.mkdir(parents=True, exist_ok=True)
files = sorted(raw.iterdir())
pd.DataFrame({
    "path": [f.name for f in files],
    "sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files],
    "label": [i * scale for i in range(len(files))],
}).to_parquet(out / "train.parquet", index=False)
images = (np.arange(2 * 4 * 4 * 3) % 251).astype(np.uint8).reshape(2, 4, 4, 3)
np.save(out / "test.npy", images)
pd.DataFrame({
    "path": ["test.npy#0", "test.npy#1"],
    "sha256": [hashlib.sha256(images[i].tobytes()).hexdigest() for i in range(2)],
    "array_file": ["test.npy", "test.npy"],
    "array_index": [0, 1],
}).to_parquet(out / "test.parquet", index=False)
splits = {
    s: {"rows": pq.read_metadata(out / f"{s}.parquet").num_rows,
        "sha256": hashlib.sha256((out / f"{s}.parquet").read_bytes()).hexdigest()}
    for s in ("train", "test")
}
(out / "dataset.json").write_text(json.dumps({"name": name, "kind": "reid", "root": str(raw), "splits": splits}))
"""

TRAIN = """\
import json, os
from pathlib import Path

import pyarrow.parquet as pq
import yaml

params = yaml.safe_load(Path("params.yaml").read_text())["train"]
# pyarrow's thread pools can abort the interpreter at exit after pandas' read (apache/arrow#34314): one thread
frame = pq.read_table("data/processed/toy/train.parquet", use_threads=False).to_pandas()
Path("models").mkdir(exist_ok=True)
Path("models/model.json").write_text(json.dumps({"n": len(frame), "lr": params["lr"]}))
if os.environ.get("TOY_TRACK"):
    from advreid.tracking.mlflow_run import stage_run

    with stage_run(None, params, manifests={"toy/train": "data/processed/toy/train.parquet"}) as run:
        run.log_metrics({"rows": len(frame)})
"""


def dvc_yaml() -> str:
    py = sys.executable
    return textwrap.dedent(
        f"""\
        stages:
          ingest:
            foreach: [toy]
            do:
              cmd: {py} ingest.py ${{item}}
              deps:
                - ingest.py
                - raw/${{item}}
              params:
                - ingest.scale
              outs:
                - data/processed/${{item}}
          train:
            cmd: {py} train.py
            deps: [train.py, data/processed/toy]
            params: [train]
            outs: [models/model.json]
        """
    )


def tool_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for dvc / git subprocesses: quiet, caches under ``tmp``, plus ``extra``."""
    env = dict(os.environ)
    env.update(
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site-cache"),
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def build_toy_project(root: Path, env: dict[str, str], git: bool = False) -> Path:
    """Write the toy project into ``root`` and run ``dvc repro`` once (with git: commit before and after)."""
    (root / "raw" / "toy").mkdir(parents=True)
    for name, data in RAW.items():
        (root / "raw" / "toy" / name).write_bytes(data)
    (root / "params.yaml").write_text(PARAMS)
    (root / "ingest.py").write_text(INGEST)
    (root / "train.py").write_text(TRAIN)
    (root / "dvc.yaml").write_text(dvc_yaml())
    if git:
        run(["git", "init", "-q"], root, env)
        run([DVC, "init", "-q"], root, env)
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "toy project"], root, env)
    else:
        run([DVC, "init", "-q", "--no-scm"], root, env)
    run([DVC, "repro"], root, env)
    if git:
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "repro"], root, env)
    return root
