"""MediaPipe Pose as an 18-keypoint estimator, run over image files by parallel worker processes.

Only ``model_complexity=1`` is used: ``mediapipe==0.10.14`` ships ``pose_landmark_full.tflite`` in its
wheel, while complexities 0 and 2 download their models at run time. MediaPipe is imported lazily (in
the worker processes), after its log switches are set, and its start-up chatter on stderr (TFLite's
delegate line, absl's feedback-manager warnings) is silenced while the graph is built and warmed up.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from advreid.data.images import ImageReadError, load_image
from advreid.pose.keypoints import from_mediapipe, missing_keypoints, poses_frame, present
from advreid.progress import progress as progress_bar

MODEL_COMPLEXITY = 1  # the only MediaPipe Pose model in the wheel (pose_landmark_full); see module doc


@dataclass(frozen=True)
class EstimatorSettings:
    """What determines an estimate; stored with the estimates so a change invalidates them.

    Attributes:
        min_visibility: landmarks with a lower MediaPipe visibility are missing (in [0, 1]).
        upscale: integer factor the image is enlarged by (bicubic) before estimation; coordinates are
            always reported in the original image's pixels.
        min_detection_confidence: MediaPipe's person-detector threshold (in [0, 1]).
    """

    min_visibility: float = 0.5
    upscale: int = 1
    min_detection_confidence: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_visibility <= 1.0:
            raise ValueError(f"min_visibility must be in [0, 1], got {self.min_visibility}")
        if not 0.0 <= self.min_detection_confidence <= 1.0:
            raise ValueError(f"min_detection_confidence must be in [0, 1], got {self.min_detection_confidence}")
        if not (isinstance(self.upscale, int) and 1 <= self.upscale <= 8):
            raise ValueError(f"upscale must be an integer in 1..8, got {self.upscale!r}")

    def describe(self) -> dict[str, str | float | int]:
        """The settings plus the model identity, as stored beside the estimates."""
        return {
            "model": "mediapipe.solutions.pose/pose_landmark_full",
            "mediapipe": version("mediapipe"),
            "model_complexity": MODEL_COMPLEXITY,
            **asdict(self),
        }


@dataclass(frozen=True)
class PoseResult:
    """The estimate for one image: (18, 3) keypoints, status ok / no_detection / failed, and an error."""

    keypoints: np.ndarray
    status: str
    error: str = ""


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: MediaPipe's C++ logging ignores Python's logging setup."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_mediapipe() -> None:
    # Read by MediaPipe's and TensorFlow Lite's native code when first loaded; user settings win.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)


def _ignore_protobuf_deprecation() -> None:
    # MediaPipe 0.10.14 calls a protobuf API that newer protobuf releases deprecate, once per result.
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning)


class PoseEstimator:
    """One MediaPipe Pose graph (full model, static images) giving 18 OpenPose-order keypoints.

    Not thread-safe; use one per process (see :func:`estimate_files`). Usable as a context manager.
    """

    def __init__(self, settings: EstimatorSettings | None = None) -> None:
        self.settings = settings or EstimatorSettings()
        _quiet_mediapipe()
        with _stderr_silenced():
            from mediapipe.python.solutions import pose as mp_pose

            self._pose = mp_pose.Pose(
                static_image_mode=True,
                model_complexity=MODEL_COMPLEXITY,
                enable_segmentation=False,
                min_detection_confidence=self.settings.min_detection_confidence,
            )
            # The graph logs while it initialises its models on the first image, so warm up here.
            self._pose.process(np.zeros((64, 32, 3), dtype=np.uint8))

    def estimate(self, image: np.ndarray) -> np.ndarray:
        """Keypoints (18, 3) in pixels of ``image`` (H x W x 3 uint8 RGB); all missing if nobody is found."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        if self.settings.upscale > 1:
            size = (width * self.settings.upscale, height * self.settings.upscale)
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
        with warnings.catch_warnings():
            _ignore_protobuf_deprecation()
            result = self._pose.process(np.ascontiguousarray(image))
        landmarks = result.pose_landmarks.landmark if result.pose_landmarks is not None else None
        # Landmarks are normalised to the image, so the original size maps them back whatever the upscale.
        return from_mediapipe(landmarks, height, width, self.settings.min_visibility)

    def estimate_file(self, path: str | os.PathLike) -> PoseResult:
        """Estimate the pose in an image file; an unreadable file gives status ``failed`` and its error."""
        try:
            keypoints = self.estimate(load_image(path))
        except ImageReadError as err:
            return PoseResult(missing_keypoints(), "failed", str(err))
        return PoseResult(keypoints, "ok" if present(keypoints).any() else "no_detection")

    def close(self) -> None:
        self._pose.close()

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# One estimator per worker process, built by the pool's initializer.
_WORKER_ESTIMATOR: PoseEstimator | None = None


def _init_worker(settings: EstimatorSettings) -> None:
    global _WORKER_ESTIMATOR
    _WORKER_ESTIMATOR = PoseEstimator(settings)


def _estimate_in_worker(path: str) -> PoseResult:
    if _WORKER_ESTIMATOR is None:
        raise RuntimeError("estimate worker used without its initializer (_init_worker)")
    return _WORKER_ESTIMATOR.estimate_file(path)


def estimate_files(
    paths: Sequence[str | os.PathLike],
    settings: EstimatorSettings | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    desc: str = "pose",
) -> list[PoseResult]:
    """Estimate poses in image files with ``workers`` processes, each holding one MediaPipe graph.

    Results come back in the order of ``paths``; advreid.progress shows the rate and the time left. Workers are
    spawned, not forked: a fork of a process whose native libraries run threads can deadlock.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not paths:
        return []
    settings = settings or EstimatorSettings()
    workers = min(workers, len(paths))
    # Chunks amortise inter-process traffic yet stay small enough to keep every worker busy to the end.
    chunksize = max(1, min(8, len(paths) // (4 * workers)))
    results = []
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(settings,)) as pool,
        progress_bar(total=len(paths), desc=desc, unit="img", enabled=progress) as bar,
    ):
        for result in pool.map(_estimate_in_worker, [os.fspath(p) for p in paths], chunksize=chunksize):
            results.append(result)
            bar.update()
    return results


def update_estimates(
    images: pd.DataFrame,
    raw_root: str | os.PathLike,
    previous: pd.DataFrame | None,
    estimate: Callable[[list[Path]], list[PoseResult]],
) -> tuple[pd.DataFrame, dict[str, str], int]:
    """Estimator keypoints for every image, estimating only sha256s ``previous`` lacks.

    Args:
        images: one row per image with ``sha256`` (unique) and ``path`` (relative to ``raw_root``).
        raw_root: directory the paths are relative to.
        previous: the estimates table of an earlier run with the same :class:`EstimatorSettings`, or None.
            Its ``ok`` and ``no_detection`` rows are reused; ``failed`` rows are tried again.
        estimate: maps image files to results in order (e.g. :func:`estimate_files` with its settings bound).

    Returns:
        (estimates table (sorted by path, source ``estimator``), {path: error} of failed images, number
        of images estimated in this call).
    """
    if images["sha256"].duplicated().any():
        raise ValueError("update_estimates: images must have unique sha256 values")
    reusable = pd.DataFrame()
    if previous is not None and len(previous):
        reusable = previous[previous["status"].isin(("ok", "no_detection"))].set_index("sha256")
    known = images["sha256"].isin(reusable.index) if len(reusable) else pd.Series(False, index=images.index)
    todo = images[~known]
    results = estimate([Path(raw_root) / p for p in todo["path"]])
    if len(results) != len(todo):
        raise RuntimeError(f"update_estimates: asked for {len(todo)} estimates, got {len(results)}")
    fresh = poses_frame(
        todo["sha256"].tolist(),
        todo["path"].tolist(),
        np.stack([r.keypoints for r in results]) if results else missing_keypoints(0),
        ["estimator"] * len(results),
        [r.status for r in results],
    )
    parts = [fresh] if len(fresh) or not known.any() else []
    if known.any():
        kept = reusable.loc[images.loc[known, "sha256"]].reset_index()
        # The key is the content: a file that moved keeps its estimate under its new path.
        kept["path"] = images.loc[known, "path"].to_numpy()
        parts.append(kept[fresh.columns])
    table = pd.concat(parts, ignore_index=True).sort_values("path", kind="stable").reset_index(drop=True)
    failed = {p: r.error for p, r in zip(todo["path"], results, strict=True) if r.status == "failed"}
    return table, failed, len(todo)
