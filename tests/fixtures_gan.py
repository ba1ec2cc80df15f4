"""A tiny IPES-GAN project: both synthetic demo domains ingested, their pose tables (from the shipped
annotations), a small_cnn teacher ``models/reid/<name>/model.pt`` and a params.yaml with tiny ``gan`` settings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from advreid.data.torch_data import load_split
from advreid.models.reid import build_reid_model
from advreid.pose.keypoints import poses_frame, read_annotations, write_poses
from advreid.reid.engine import save_checkpoint
from tests.fixtures_reid import write_demo_project

GAN_SETTINGS = {
    "max_iter": 4,
    "batch_size": 4,
    "source_k": 2,
    "height": 64,
    "width": 32,
    "pose_width": 2,
    "res_blocks": 1,
    "style_width": 2,
    "style_dim": 4,
    "mlp_dim": 8,
    "dis_width": 2,
    "dis_scales": 1,
    "dis_res_blocks": 0,
    "decoder_kernel": 3,
    "ramp_start": 1,
    "ramp_length": 2,
    "checkpoint_every": 2,
    "log_every": 1,
}


def write_pose_table(root: Path, name: str) -> Path:
    """``data/processed/pose/<name>.parquet`` from the raw domain's ``keypoints.json``, as the pose stage writes it."""
    annotations = read_annotations(root / "data" / "raw" / name / "keypoints.json")
    frames = [load_split(root / "data" / "processed" / name, s, root)[0] for s in ("train", "query", "gallery")]
    frame = pd.concat(frames, ignore_index=True)
    keypoints = np.stack([annotations[p] for p in frame["path"]])
    table = poses_frame(
        frame["sha256"].tolist(), frame["path"].tolist(), keypoints, ["annotations"] * len(frame), ["ok"] * len(frame)
    )
    path = root / "data" / "processed" / "pose" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_poses(table, path)
    return path


def write_teacher(root: Path, name: str, arch: str, num_classes: int, size: tuple[int, int]) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are the point: "starts from scratch"
        model = build_reid_model(arch, num_classes)
    meta = {
        "arch": arch,
        "num_classes": num_classes,
        "feature_dim": model.feature_dim,
        "height": size[0],
        "width": size[1],
        "source": "demo_a",
        "pretrained": None,
    }
    path = root / "models" / "reid" / name / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, epoch=1, history=[], meta=meta)
    return path


def write_gan_project(root: Path, spec, **overrides) -> Path:
    write_demo_project(root, spec)
    for name in ("demo_a", "demo_b"):
        write_pose_table(root, name)
    write_teacher(root, "tiny", "small_cnn", spec.num_train_ids, (spec.height, spec.width))
    write_gan_params(root, **overrides)
    return root


def write_gan_params(root: Path, seeds: tuple[int, ...] = (0, 1), **settings) -> None:
    reid = {"source": "demo_a", "targets": ["demo_b"], "models": {"tiny": {"arch": "small_cnn"}}, "threads": 1}
    gan = {
        "source": "demo_a",
        "target": "demo_b",
        "teacher": "tiny",
        "seeds": list(seeds),
        "device": "cpu",
        "threads": 1,
        "demo_runs": ["ipes_gan"],
        "eval_images": 8,
        "grid_rows": 2,
        "eval": {"flip": False, "batch_size": 64},
        "settings": {**GAN_SETTINGS, **settings},
        "runs": {"ipes_gan": {}, "no_cyc": {"losses": ["con", "cam", "adv", "ce", "soft_ce", "kl"]}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"reid": reid, "gan": gan}))


def write_lpips_weights(tmp_path: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random LPIPS weight files in the on-disk formats (torchvision AlexNet; lpips v0.1 alex.pth)."""
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    alex, lin = tmp_path / "alexnet.pth", tmp_path / "alex_lin.pth"
    torch.save(alexnet(weights=None).state_dict(), alex)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}, lin)
    return alex, lin
