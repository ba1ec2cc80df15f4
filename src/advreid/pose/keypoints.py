"""The 18 COCO / OpenPose keypoints: names, limbs, MediaPipe's 33 landmarks mapped onto them, and the
keypoints table (parquet) the pose stage writes and IPES-GAN's data loader reads.

Conventions: a keypoint array is float ``(..., 18, 3)`` holding ``(x, y, confidence)`` in pixels of the
original image, x right and y down, with pixel ``(i, j)`` spanning ``x in [j, j+1)``, ``y in [i, i+1)``
(the synthetic demo's annotation convention; MediaPipe's normalised coordinates times the image size
give the same). A missing joint has ``confidence = 0`` and ``x = y = NaN``. "Left" and "right" are the
subject's own sides, so a person facing the camera has the left shoulder on the image's right.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from advreid.io import atomic_path

JOINTS: tuple[str, ...] = (
    "nose",
    "neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
    "r_eye",
    "l_eye",
    "r_ear",
    "l_ear",
)
NUM_JOINTS = len(JOINTS)
JOINT_INDEX = {name: i for i, name in enumerate(JOINTS)}

# OpenPose's COCO skeleton (its limbSeq without the two ear-shoulder links used only for part affinity).
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# MediaPipe Pose landmark index (mediapipe.solutions.pose.PoseLandmark) of each COCO-18 joint; the neck,
# which MediaPipe lacks, is the midpoint of its shoulders (11 = LEFT_SHOULDER, 12 = RIGHT_SHOULDER).
NECK_FROM_MEDIAPIPE = (11, 12)
MEDIAPIPE_INDEX: dict[str, int | tuple[int, int]] = {
    "nose": 0,
    "neck": NECK_FROM_MEDIAPIPE,
    "r_shoulder": 12,
    "r_elbow": 14,
    "r_wrist": 16,
    "l_shoulder": 11,
    "l_elbow": 13,
    "l_wrist": 15,
    "r_hip": 24,
    "r_knee": 26,
    "r_ankle": 28,
    "l_hip": 23,
    "l_knee": 25,
    "l_ankle": 27,
    "r_eye": 5,
    "l_eye": 2,
    "r_ear": 8,
    "l_ear": 7,
}
MEDIAPIPE_LANDMARKS = 33

# Limb colours when drawn: the subject's right side red, left side blue, the midline yellow.
_RIGHT, _LEFT, _MIDDLE = (230, 40, 20), (20, 110, 240), (240, 200, 0)

STATUSES = ("ok", "no_detection", "failed")
SOURCES = ("estimator", "annotations")


class Landmark(Protocol):
    """What MediaPipe's ``NormalizedLandmark`` offers: x, y in [0, 1] of the image, visibility in [0, 1]."""

    x: float
    y: float
    visibility: float


def missing_keypoints(n: int | None = None) -> np.ndarray:
    """All-missing keypoints: ``(18, 3)``, or ``(n, 18, 3)`` when ``n`` is given."""
    shape = (NUM_JOINTS, 3) if n is None else (n, NUM_JOINTS, 3)
    out = np.full(shape, np.nan, dtype=np.float32)
    out[..., 2] = 0.0
    return out


def from_mediapipe(
    landmarks: Sequence[Landmark] | None, height: int, width: int, min_visibility: float = 0.5
) -> np.ndarray:
    """Map MediaPipe's 33 landmarks to the 18 OpenPose-order keypoints in pixels.

    A joint is kept with ``confidence = visibility`` when its visibility is at least ``min_visibility``
    and it lies inside the image; otherwise it is missing. The neck is the midpoint of the shoulders
    with the lower of their two visibilities. ``None`` (no person detected) gives all 18 missing.

    Args:
        landmarks: the 33 landmarks of one person (``results.pose_landmarks.landmark``) or None.
        height, width: size of the image the landmarks are normalised to, in pixels.
        min_visibility: visibility threshold in [0, 1].
    """
    if not 0.0 <= min_visibility <= 1.0:
        raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
    out = missing_keypoints()
    if landmarks is None:
        return out
    if len(landmarks) != MEDIAPIPE_LANDMARKS:
        raise ValueError(f"expected {MEDIAPIPE_LANDMARKS} MediaPipe landmarks, got {len(landmarks)}")
    raw = np.array([(lm.x, lm.y, lm.visibility) for lm in landmarks], dtype=np.float64)  # (33, 3)
    for j, name in enumerate(JOINTS):
        index = MEDIAPIPE_INDEX[name]
        if isinstance(index, tuple):
            a, b = raw[index[0]], raw[index[1]]
            nx, ny, vis = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2, min(a[2], b[2])
        else:
            nx, ny, vis = raw[index]
        x, y = nx * width, ny * height
        if vis >= min_visibility and 0.0 <= x < width and 0.0 <= y < height:
            out[j] = (x, y, vis)
    return out


def present(keypoints: np.ndarray) -> np.ndarray:
    """Boolean mask ``(..., 18)`` of joints that are there (confidence > 0 and finite coordinates)."""
    kp = np.asarray(keypoints)
    return (kp[..., 2] > 0) & np.isfinite(kp[..., 0]) & np.isfinite(kp[..., 1])


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, scale: int = 3) -> np.ndarray:
    """The image enlarged ``scale`` times with the present joints and OpenPose limbs drawn on it.

    Args:
        image: H x W x 3 uint8 RGB; keypoints: (18, 3) in its pixels.

    Returns:
        (scale * H) x (scale * W) x 3 uint8 RGB.
    """
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    canvas = Image.fromarray(image).resize((width * scale, height * scale), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    kp = np.asarray(keypoints, dtype=np.float64)
    there = present(kp)
    xy = kp[:, :2] * scale - 0.5  # PIL puts pixel centres at integers

    def colour(*joints: int) -> tuple[int, int, int]:
        names = [JOINTS[j] for j in joints]
        if all(n.startswith("r_") or n in ("neck", "nose") for n in names) and any(n.startswith("r_") for n in names):
            return _RIGHT
        if all(n.startswith("l_") or n in ("neck", "nose") for n in names) and any(n.startswith("l_") for n in names):
            return _LEFT
        return _MIDDLE

    for a, b in LIMBS:
        if there[a] and there[b]:
            draw.line([tuple(xy[a]), tuple(xy[b])], fill=colour(a, b), width=max(1, scale - 1))
    r = max(1.5, scale * 0.8)
    for j in np.flatnonzero(there):
        x, y = xy[j]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour(j), outline=(0, 0, 0))
    return np.asarray(canvas)


# --------------------------------------------------------------------------------------------------
# Annotations shipped with a dataset


def read_annotations(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``keypoints.json`` (``{"format": "coco18", "joints": [...], "images": {path: [[x, y, v]] * 18}}``).

    Returns:
        relative image path -> ``(18, 3)`` float32 keypoints; ``v = 1`` becomes confidence 1, ``v = 0`` a
        missing joint (NaN coordinates, confidence 0).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read keypoint annotations ({err})") from err
    if not isinstance(data, dict) or data.get("format") != "coco18":
        raise ValueError(f"{path}: field 'format' must be 'coco18'")
    if tuple(data.get("joints", ())) != JOINTS:
        raise ValueError(f"{path}: field 'joints' must list the 18 OpenPose-order joints {list(JOINTS)}")
    images = data.get("images")
    if not isinstance(images, dict):
        raise ValueError(f"{path}: field 'images' must map image paths to keypoint lists")
    out = {}
    for name, joints in images.items():
        kp = np.asarray(joints, dtype=np.float32)
        if kp.shape != (NUM_JOINTS, 3):
            raise ValueError(f"{path}: images[{name!r}] must be 18 [x, y, v] triples, got shape {kp.shape}")
        if not np.isin(kp[:, 2], (0.0, 1.0)).all():
            raise ValueError(f"{path}: images[{name!r}] has a visibility flag other than 0 or 1")
        visible = kp[:, 2] == 1.0
        kp[~visible] = missing_keypoints()[~visible]
        out[name] = kp
    return out


# --------------------------------------------------------------------------------------------------
# The keypoints table: sha256, path, source, status, x_0..x_17, y_0..y_17, c_0..c_17


def _coordinate_columns() -> list[str]:
    return [f"{axis}_{j}" for axis in ("x", "y", "c") for j in range(NUM_JOINTS)]


POSE_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        *(pa.field(name, pa.float32(), nullable=False) for name in _coordinate_columns()),
    ]
)


def poses_frame(
    sha256: Sequence[str], paths: Sequence[str], keypoints: np.ndarray, sources: Sequence[str], statuses: Sequence[str]
) -> pd.DataFrame:
    """Build the keypoints table (one row per image, sorted by path) from ``(N, 18, 3)`` keypoints."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
    n = len(sha256)
    if not (len(paths) == len(sources) == len(statuses) == kp.shape[0] == n):
        raise ValueError(
            f"poses_frame: lengths differ (sha256 {n}, paths {len(paths)}, keypoints {kp.shape[0]}, "
            f"sources {len(sources)}, statuses {len(statuses)})"
        )
    if bad := sorted(set(sources) - set(SOURCES)):
        raise ValueError(f"poses_frame: unknown source(s) {bad}; valid: {list(SOURCES)}")
    if bad := sorted(set(statuses) - set(STATUSES)):
        raise ValueError(f"poses_frame: unknown status(es) {bad}; valid: {list(STATUSES)}")
    # Object dtype keeps the text columns text even when the table is empty.
    text = {"sha256": sha256, "path": paths, "source": sources, "status": statuses}
    columns = {name: np.asarray(list(values), dtype=object) for name, values in text.items()}
    coords = kp.transpose(2, 1, 0).reshape(3 * NUM_JOINTS, n)  # rows x_0.., y_0.., c_0..
    columns.update(dict(zip(_coordinate_columns(), coords, strict=True)))
    frame = pd.DataFrame(columns)
    if frame["sha256"].duplicated().any():
        dup = frame.loc[frame["sha256"].duplicated(), "path"].iloc[0]
        raise ValueError(f"poses_frame: sha256 is the key but repeats (e.g. {dup})")
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def frame_keypoints(frame: pd.DataFrame) -> np.ndarray:
    """The ``(N, 18, 3)`` float32 keypoints of the rows of a keypoints table."""
    values = frame[_coordinate_columns()].to_numpy(dtype=np.float32)  # (N, 54)
    return np.ascontiguousarray(values.reshape(-1, 3, NUM_JOINTS).transpose(0, 2, 1))


def write_poses(frame: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write a keypoints table atomically with stable bytes (no pandas metadata, no statistics).

    ``metadata`` is stored as the parquet file's key-value metadata (see :func:`read_poses_metadata`).
    """
    try:
        # Column by column from numpy: pandas conversion would turn the NaN of missing joints into nulls.
        columns = [pa.array(frame[f.name].to_numpy(), type=f.type) for f in POSE_SCHEMA]
        table = pa.Table.from_arrays(columns, schema=POSE_SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"{path}: frame does not fit the keypoints schema ({err})") from err
    table = table.replace_schema_metadata(dict(metadata) if metadata else None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def read_poses_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key-value metadata :func:`write_poses` stored (without Arrow's own schema entry)."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"ARROW:schema"}


def read_poses(path: str | os.PathLike) -> pd.DataFrame:
    """Read a keypoints table written by :func:`write_poses`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoints table {path} does not exist (run the pose stage first)")
    frame = pq.read_table(path).to_pandas()
    missing = [c for c in POSE_SCHEMA.names if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a keypoints table, lacks column(s) {missing[:5]}")
    return frame


def lookup_keypoints(manifest: pd.DataFrame, poses: pd.DataFrame) -> np.ndarray:
    """Keypoints ``(N, 18, 3)`` for the N rows of a manifest frame, matched by ``sha256``.

    Raises:
        KeyError: naming how many manifest images the keypoints table lacks and one of their paths.
    """
    index = pd.Index(poses["sha256"])
    positions = index.get_indexer(manifest["sha256"])
    if (positions < 0).any():
        lacking = manifest.loc[positions < 0, "path"]
        raise KeyError(
            f"keypoints table lacks {len(lacking)} of {len(manifest)} manifest images (e.g. {lacking.iloc[0]}); "
            "re-run the pose stage for this dataset"
        )
    return frame_keypoints(poses.iloc[positions])
