"""Synthetic two-domain person Re-ID data: procedurally drawn pedestrians in Market-1501 layout.

The thesis' unsupervised domain adaptation setting (ch. 3) has a labelled source domain A and an
unlabelled target domain B with the same task but different cameras. This module draws that setting
on the CPU in seconds:

* an **identity** is a set of persistent attributes (clothing colours and pattern, skin, hair, body
  shape, bag) drawn from an RNG seeded with (seed, domain, person id), so the two domains hold
  disjoint people and a person does not change when the dataset grows;
* a **pose** is an 18-joint skeleton (OpenPose / COCO-18 order) in a walking cycle, built in 3D and
  projected orthographically for a yaw (front, back, side-ish views) and a camera pitch;
* a **camera** is an environment: a background photograph from scikit-image's bundled images,
  illumination gain, colour cast, blur, sensor noise, person scale and viewpoint distribution.
  Domains A and B draw their cameras from disjoint styles, which is the domain gap.

Figures are drawn with PIL at ``SUPERSAMPLE`` times the output size on a transparent layer, reduced with
a box filter (exact antialiasing of the coverage) and composited over the background, so a real pose
estimator (MediaPipe Pose) finds them. Each domain is written as ``bounding_box_train/``,
``bounding_box_test/`` and ``query/`` with Market-1501 file names, plus ``keypoints.json`` holding the
ground-truth joints in pixels of the saved images.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFilter

from advreid.io import atomic_path, write_json
from advreid.pose.keypoints import JOINT_INDEX, JOINTS
from advreid.progress import progress as progress_bar

J = JOINT_INDEX
SUPERSAMPLE = 4
JPEG_QUALITY = 95
SPLIT_DIRS = ("bounding_box_train", "bounding_box_test", "query")
_BACKGROUND_BLUR, _BACKGROUND_CONTRAST = 1.0, 0.7
_FRAME_STRIDE = 8

RGB = tuple[int, int, int]
T = TypeVar("T")

# Body proportions in units of standing height (feet at 0, top of the head at 1). The body frame is the
# subject's: x towards the subject's left, y up, z forward (the way the subject faces).
_SHOULDER_Y, _HIP_Y = 0.81, 0.52
_HEAD_Y = 0.925
_HEAD_HALF_WIDTH, _HEAD_HALF_DEPTH, _HEAD_HALF_HEIGHT = 0.058, 0.066, 0.075
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.175, 0.150, 0.245, 0.245
_ANKLE_HEIGHT = 0.038
# A face keypoint is visible when its surface normal points towards the camera by more than this
# (cosine of the angle); ears stay visible from behind, eyes do not.
_FACE_NORMALS = {
    "nose": ((0.0, 0.0, 1.0), -0.05),
    "r_eye": ((-0.5, 0.1, 0.86), 0.15),
    "l_eye": ((0.5, 0.1, 0.86), 0.15),
    "r_ear": ((-1.0, 0.0, 0.0), -0.3),
    "l_ear": ((1.0, 0.0, 0.0), -0.3),
}


# --------------------------------------------------------------------------------------------------
# Identities


@dataclass(frozen=True)
class Identity:
    """Persistent appearance of one person (colours are RGB 0..255)."""

    pid: int
    skin: RGB
    hair: RGB
    hair_length: Literal["short", "long"]
    upper: RGB
    upper_second: RGB
    pattern: Literal["plain", "stripes", "checks", "two_tone"]
    sleeves: Literal["short", "long"]
    lower: RGB
    lower_kind: Literal["trousers", "shorts", "skirt"]
    shoes: RGB
    height: float  # relative standing height, ~1
    build: float  # relative body width, ~1
    bag: Literal["none", "backpack", "shoulder"]
    bag_colour: RGB


_SKIN_TONES = ((255, 219, 190), (241, 194, 160), (224, 172, 125), (198, 134, 90), (141, 85, 54), (92, 58, 38))
_HAIR_COLOURS = ((22, 18, 16), (48, 32, 22), (85, 55, 30), (120, 60, 30), (150, 115, 60), (130, 130, 130))
_HAIR_WEIGHTS = (0.35, 0.25, 0.15, 0.08, 0.1, 0.07)


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _clothing_colour(rng: np.random.Generator) -> RGB:
    # Real crowds wear many blacks, whites and greys; the rest spread over hues.
    if rng.random() < 0.3:
        return _hsv(0.0, 0.0, _pick(rng, (0.1, 0.25, 0.45, 0.7, 0.92)) + rng.uniform(-0.04, 0.04))
    return _hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))


def _pick(rng: np.random.Generator, options: tuple[T, ...], p: tuple[float, ...] | None = None) -> T:
    return options[int(rng.choice(len(options), p=p))]


def _seed_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _domain_code(domain: str) -> int:
    return int.from_bytes(domain.encode("utf-8"), "big")


_TAG_IDENTITY, _TAG_CAMERA, _TAG_TRACKLET, _TAG_IMAGE = 1, 2, 3, 4


def draw_identity(seed: int, domain: str, pid: int) -> Identity:
    """The appearance of person ``pid`` of ``domain``, from an RNG seeded with (seed, domain, pid) only."""
    rng = _seed_rng(seed, _domain_code(domain), _TAG_IDENTITY, pid)
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo, frac = int(tone), tone - int(tone)
    hi = min(lo + 1, len(_SKIN_TONES) - 1)
    r, g, b = ((1 - frac) * a + frac * b for a, b in zip(_SKIN_TONES[lo], _SKIN_TONES[hi], strict=True))
    skin = (round(r), round(g), round(b))
    hair = _pick(rng, _HAIR_COLOURS, _HAIR_WEIGHTS)
    upper = _clothing_colour(rng)
    # The second colour of a pattern contrasts with the first: shifted hue, or inverted brightness.
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in upper))
    if s < 0.2:
        upper_second = _hsv(rng.random(), rng.uniform(0.5, 0.9), 1.05 - v if v < 0.5 else 0.2)
    else:
        upper_second = _hsv(h + rng.uniform(0.3, 0.7), s, min(1.0, 1.2 - v + 0.3))
    if rng.random() < 0.25:  # denim
        lower = _hsv(0.6 + rng.uniform(-0.02, 0.02), rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.6))
    else:
        lower = _clothing_colour(rng)
    return Identity(
        pid=pid,
        skin=skin,
        hair=hair,
        hair_length=_pick(rng, ("short", "long"), (0.6, 0.4)),
        upper=upper,
        upper_second=upper_second,
        pattern=_pick(rng, ("plain", "stripes", "checks", "two_tone"), (0.4, 0.25, 0.15, 0.2)),
        sleeves=_pick(rng, ("short", "long")),
        lower=lower,
        lower_kind=_pick(rng, ("trousers", "shorts", "skirt"), (0.6, 0.2, 0.2)),
        shoes=_hsv(rng.random(), rng.uniform(0, 0.3), _pick(rng, (0.12, 0.3, 0.85))),
        height=float(rng.uniform(0.94, 1.05)),
        build=float(rng.uniform(0.88, 1.15)),
        bag=_pick(rng, ("none", "backpack", "shoulder"), (0.5, 0.3, 0.2)),
        bag_colour=_clothing_colour(rng),
    )


# --------------------------------------------------------------------------------------------------
# Cameras


@dataclass(frozen=True)
class DomainStyle:
    """The range a domain's cameras are drawn from.

    Attributes:
        backgrounds: names of ``skimage.data`` photographs used as scenery.
        gain: illumination multiplier range.
        cast_low, cast_high: per-channel (R, G, B) colour-cast multiplier ranges.
        blur: Gaussian blur radius range in output pixels.
        noise: standard deviation of the Gaussian sensor noise (0..255 scale).
        scale: person height as a fraction of the image height.
        pitch: camera elevation range in radians (the camera looks down on people).
        views: probabilities of front, back and side-ish tracklets.
    """

    backgrounds: tuple[str, ...]
    gain: tuple[float, float]
    cast_low: tuple[float, float, float]
    cast_high: tuple[float, float, float]
    blur: tuple[float, float]
    noise: float
    scale: tuple[float, float]
    pitch: tuple[float, float]
    views: tuple[float, float, float]


# Disjoint photo pools and cast ranges (A warm, bright and sharp; B cool, dim, blurred and noisy).
# Photographs that show people (astronaut, camera) are left out so no second person appears.
DOMAIN_STYLES: dict[str, DomainStyle] = {
    "a": DomainStyle(
        backgrounds=("coffee", "rocket", "chelsea", "brick", "grass"),
        gain=(1.0, 1.12),
        cast_low=(1.05, 0.98, 0.78),
        cast_high=(1.14, 1.04, 0.88),
        blur=(0.0, 0.3),
        noise=2.0,
        scale=(0.8, 0.9),
        pitch=(0.1, 0.3),
        views=(0.4, 0.4, 0.2),
    ),
    "b": DomainStyle(
        backgrounds=("immunohistochemistry", "retina", "gravel", "moon", "page", "text"),
        gain=(0.76, 0.9),
        cast_low=(0.78, 0.94, 1.08),
        cast_high=(0.88, 1.02, 1.2),
        blur=(0.3, 0.45),
        noise=3.0,
        scale=(0.72, 0.84),
        pitch=(0.3, 0.5),
        views=(0.3, 0.3, 0.4),
    ),
}


@dataclass(frozen=True)
class Camera:
    """One camera of a domain: its scenery and image formation."""

    background: str
    crop: tuple[float, float, float]  # (top, left, height) of the base crop, as fractions of the photo
    gain: float
    cast: tuple[float, float, float]
    blur: float
    noise: float
    scale: tuple[float, float]
    pitch: float
    views: tuple[float, float, float]


def draw_camera(style: DomainStyle, seed: int, domain: str, camera: int) -> Camera:
    """Camera ``camera`` (1-based) of ``domain``; cameras cycle through the style's photo pool."""
    rng = _seed_rng(seed, _domain_code(domain), _TAG_CAMERA, camera)
    order = _seed_rng(seed, _domain_code(domain), _TAG_CAMERA).permutation(len(style.backgrounds))
    height = rng.uniform(0.4, 0.75)
    cast = rng.uniform(np.array(style.cast_low), np.array(style.cast_high))
    return Camera(
        background=style.backgrounds[int(order[(camera - 1) % len(order)])],
        crop=(float(rng.uniform(0, 1 - height)), float(rng.uniform(0, 1 - height / 2)), float(height)),
        gain=float(rng.uniform(*style.gain)),
        cast=(float(cast[0]), float(cast[1]), float(cast[2])),
        blur=float(rng.uniform(*style.blur)),
        noise=style.noise,
        scale=style.scale,
        pitch=float(rng.uniform(*style.pitch)),
        views=style.views,
    )


@lru_cache(maxsize=32)
def _photo(name: str) -> Image.Image:
    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"background {name!r} is not a skimage.data image")
    pixels = np.asarray(loader())
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels[:, :, :3].astype(np.uint8)), "RGB")


@lru_cache(maxsize=64)
def _scenery(name: str, crop_height: float, height: int) -> Image.Image:
    """The photo scaled so that a crop ``crop_height`` (fraction of the photo) tall is ``height`` pixels.

    Scenery is out of focus and flatter than the subject (depth of field): busy textures (gravel,
    grass) otherwise hide the figure from pose estimators (MediaPipe found ~65% of figures on them
    before, ~90% after). Done once per camera, not per image.
    """
    photo = _photo(name)
    scale = height / (crop_height * photo.height)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    soft = photo.resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(_BACKGROUND_BLUR))
    pixels = np.asarray(soft, dtype=np.float32)
    mean = pixels.mean(axis=(0, 1))
    flat = mean + _BACKGROUND_CONTRAST * (pixels - mean)
    return Image.fromarray(np.clip(flat + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_background(camera: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ``height x width x 3`` uint8 crop of the camera's scenery, jittered around its base crop."""
    top, left, frac = camera.crop
    scenery = _scenery(camera.background, frac, height)
    pw, ph = scenery.size
    crop_h = min(ph, pw * height / width, height * rng.uniform(0.9, 1.1))
    crop_w = crop_h * width / height
    y0 = float(np.clip(top * ph + rng.uniform(-0.08, 0.08) * crop_h, 0, ph - crop_h))
    x0 = float(np.clip(left * pw + rng.uniform(-0.15, 0.15) * crop_w, 0, pw - crop_w))
    box = (x0, y0, x0 + crop_w, y0 + crop_h)
    return np.asarray(scenery.resize((width, height), Image.Resampling.BILINEAR, box=box))


def apply_camera(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Image formation: gain and colour cast, optical blur, then sensor noise; uint8 in and out."""
    lit = image.astype(np.float32) * (camera.gain * np.asarray(camera.cast, dtype=np.float32))
    out = Image.fromarray(np.clip(lit + 0.5, 0, 255).astype(np.uint8), "RGB")
    if camera.blur > 0.05:
        out = out.filter(ImageFilter.GaussianBlur(camera.blur))
    noise = rng.standard_normal(size=image.shape, dtype=np.float32) * np.float32(camera.noise)
    noisy = np.asarray(out, dtype=np.float32) + noise
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Poses


@dataclass(frozen=True, eq=False)
class Pose:
    """A posed skeleton in output-image coordinates.

    Attributes:
        joints: (18, 3) COCO-18 joints; x right and y down in pixels, z towards the camera in pixels.
        axes: (3, 3) image displacement (columns) of one standing height along the body's left, up and
            forward directions; it places body parts that are not joints (head, feet, bag).
    """

    joints: np.ndarray
    axes: np.ndarray


def walking_pose(
    identity: Identity,
    phase: float,
    yaw: float,
    pitch: float,
    height_px: float,
    centre_x: float,
    foot_y: float,
) -> Pose:
    """Skeleton of ``identity`` at walking ``phase`` (radians), seen with ``yaw`` and camera ``pitch``.

    Args:
        yaw: 0 faces the camera, pi shows the back, +pi/2 walks to the image's right.
        pitch: camera elevation in radians (positive looks down).
        height_px: standing height in output pixels; centre_x: the body axis; foot_y: the ground line.
    """
    b = identity.build
    body = np.zeros((18, 3))
    body[J["nose"]] = (0.0, _HEAD_Y - 0.012, 0.058)
    body[J["r_eye"]] = (-0.026, _HEAD_Y + 0.008, 0.05)
    body[J["l_eye"]] = (0.026, _HEAD_Y + 0.008, 0.05)
    body[J["r_ear"]] = (-0.05, _HEAD_Y, 0.0)
    body[J["l_ear"]] = (0.05, _HEAD_Y, 0.0)
    body[J["neck"]] = (0.0, _SHOULDER_Y, 0.0)
    sin_p, cos_p = np.sin(phase), np.cos(phase)
    for side, sign in (("r", -1.0), ("l", 1.0)):
        # The right leg leads at phase pi/2; each arm swings against the leg on its side.
        lead = -sign
        shoulder = np.array([sign * 0.112 * b, _SHOULDER_Y, 0.0])
        hip = np.array([sign * 0.072 * b, _HIP_Y, 0.0])
        thigh_angle = 0.42 * lead * sin_p
        knee_flex = 0.08 + 0.7 * max(0.0, lead * cos_p) ** 2  # the knee bends while the leg swings forward
        knee = hip + _THIGH * _unit((sign * 0.02, -np.cos(thigh_angle), np.sin(thigh_angle)))
        shin_angle = thigh_angle - knee_flex
        ankle = knee + _SHIN * _unit((0.0, -np.cos(shin_angle), np.sin(shin_angle)))
        arm_angle = -0.4 * lead * sin_p
        elbow_flex = 0.15 + 0.4 * max(0.0, arm_angle)
        # Arms slightly abducted so they stay clear of the waist, as people walk.
        elbow = shoulder + _UPPER_ARM * _unit((sign * 0.16, -np.cos(arm_angle), np.sin(arm_angle)))
        fore = arm_angle + elbow_flex
        wrist = elbow + _FOREARM * _unit((sign * 0.08, -np.cos(fore), np.sin(fore)))
        for name, point in (
            ("shoulder", shoulder),
            ("elbow", elbow),
            ("wrist", wrist),
            ("hip", hip),
            ("knee", knee),
            ("ankle", ankle),
        ):
            body[J[f"{side}_{name}"]] = point
    # The stance foot rests on the ground, which gives the vertical bob of walking.
    body[:, 1] += _ANKLE_HEIGHT - min(body[J["r_ankle"], 1], body[J["l_ankle"], 1])
    axes = _view_axes(yaw, pitch) * height_px
    joints = body @ axes.T
    joints[:, 0] += centre_x
    joints[:, 1] += foot_y
    return Pose(joints=joints, axes=axes)


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


def _view_axes(yaw: float, pitch: float) -> np.ndarray:
    """Body frame (left, up, forward) -> image (x right, y down, z towards the camera), unit height."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    # Yaw about the vertical axis; at yaw 0 the subject faces the camera, so its left is image right.
    rot_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    # A camera looking down sees nearer points lower in the image.
    rot_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    flip_y = np.diag([1.0, -1.0, 1.0])
    return flip_y @ rot_pitch @ rot_yaw


def face_visibility(pose: Pose) -> dict[str, bool]:
    """Whether the nose, eyes and ears face the camera enough to be seen."""
    unit = pose.axes / np.linalg.norm(pose.axes[:, 1])
    return {name: bool((unit @ _unit(n))[2] > limit) for name, (n, limit) in _FACE_NORMALS.items()}


# --------------------------------------------------------------------------------------------------
# Drawing


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (min(255, max(0, round(c * factor))) for c in colour)
    return (r, g, b)


class _Canvas:
    """A supersampled RGBA layer; takes output-pixel coordinates."""

    def __init__(self, height: int, width: int, unit: float) -> None:
        self.size = (width * SUPERSAMPLE, height * SUPERSAMPLE)
        self.image = Image.new("RGBA", self.size, (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)
        self.outline = max(1.0, 0.006 * unit * SUPERSAMPLE)  # contour width in supersampled pixels

    @staticmethod
    def _xy(p: np.ndarray) -> tuple[float, float]:
        # PIL puts pixel centres at integers; output pixel i spans [i, i+1).
        return (float(p[0]) * SUPERSAMPLE - 0.5, float(p[1]) * SUPERSAMPLE - 0.5)

    def ellipse(self, centre: np.ndarray, rx: float, ry: float, colour: RGB, outline: bool = True) -> None:
        x, y = self._xy(centre)
        rx, ry = rx * SUPERSAMPLE, ry * SUPERSAMPLE
        if outline:
            o = self.outline
            self.draw.ellipse((x - rx - o, y - ry - o, x + rx + o, y + ry + o), fill=(*_shade(colour, 0.55), 255))
        self.draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(*colour, 255))

    def shadow(self, centre: np.ndarray, rx: float, ry: float, opacity: int) -> None:
        """Translucent black: darkens what lies under it once composited."""
        x, y = self._xy(centre)
        rx, ry = rx * SUPERSAMPLE, ry * SUPERSAMPLE
        self.draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(0, 0, 0, opacity))

    def capsule(self, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, colour: RGB) -> None:
        """A tapered limb with round caps, with a darker contour so overlapping limbs stay distinct."""
        for grow, fill in ((self.outline, _shade(colour, 0.55)), (0.0, colour)):
            self._capsule(p0, p1, r0 * SUPERSAMPLE + grow, r1 * SUPERSAMPLE + grow, fill)

    def _capsule(self, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, fill: RGB) -> None:
        (ax, ay), (bx, by) = self._xy(p0), self._xy(p1)
        length = max(math.hypot(bx - ax, by - ay), 1e-6)
        nx, ny = (ay - by) / length, (bx - ax) / length  # unit normal of the limb axis
        quad = [
            (ax + nx * r0, ay + ny * r0),
            (bx + nx * r1, by + ny * r1),
            (bx - nx * r1, by - ny * r1),
            (ax - nx * r0, ay - ny * r0),
        ]
        colour = (*fill, 255)
        self.draw.polygon(quad, fill=colour)
        for cx, cy, r in ((ax, ay, r0), (bx, by, r1)):
            self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)

    def polygon(self, points: list[np.ndarray], colour: RGB, outline: bool = True) -> None:
        xy = [self._xy(p) for p in points]
        width = round(self.outline) if outline else 0
        self.draw.polygon(xy, fill=(*colour, 255), outline=(*_shade(colour, 0.55), 255), width=width)

    def patterned_polygon(self, points: list[np.ndarray], identity: Identity, unit: float) -> None:
        """The upper garment: the identity's pattern clipped to the garment's outline."""
        self.polygon(points, identity.upper)
        if identity.pattern == "plain":
            return
        xy = [self._xy(p) for p in points]
        x0, y0 = math.floor(min(p[0] for p in xy)), math.floor(min(p[1] for p in xy))
        x1, y1 = math.ceil(max(p[0] for p in xy)) + 1, math.ceil(max(p[1] for p in xy)) + 1
        # The second colour is drawn into a mask of the garment's bounding box, then filled through it.
        mask = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in xy], fill=255)
        motif = Image.new("L", mask.size, 0)
        draw = ImageDraw.Draw(motif)
        period = 0.05 * unit * SUPERSAMPLE
        if identity.pattern == "stripes":
            for y in np.arange(0, y1 - y0, period):
                draw.rectangle((0, y, x1 - x0, y + period / 2), fill=255)
        elif identity.pattern == "checks":
            for i, y in enumerate(np.arange(0, y1 - y0, period)):
                for k, x in enumerate(np.arange(0, x1 - x0, period)):
                    if (i + k) % 2:
                        draw.rectangle((x, y, x + period, y + period), fill=255)
        else:  # two_tone: a yoke over the chest and shoulders
            draw.rectangle((0, 0, x1 - x0, 0.4 * (y1 - y0)), fill=255)
        mask = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(motif)))
        self.image.paste((*identity.upper_second, 255), (x0, y0, x1, y1), mask)
        width = round(self.outline)
        self.draw.polygon(xy, outline=(*_shade(identity.upper, 0.55), 255), width=width)


def _silhouette_half_width(axes: np.ndarray, half_width: float, half_depth: float) -> float:
    """Image half-width of a horizontal elliptic cross-section (body units) seen through ``axes``."""
    return float(np.hypot(half_width * axes[0, 0], half_depth * axes[0, 2]))


def _body_point(pose: Pose, anchor: np.ndarray, offset: tuple[float, float, float]) -> np.ndarray:
    return anchor + pose.axes @ np.asarray(offset, dtype=float)


def _torso_outline(pose: Pose, identity: Identity, levels: list[tuple[float, float, float, float]]) -> list:
    """Outline through horizontal sections (t along neck->mid-hip, dy, half-width, half-depth)."""
    neck, mid_hip = pose.joints[J["neck"]], (pose.joints[J["r_hip"]] + pose.joints[J["l_hip"]]) / 2
    left, right = [], []
    for t, dy, half_width, half_depth in levels:
        centre = _body_point(pose, neck + t * (mid_hip - neck), (0.0, dy, 0.0))
        w = _silhouette_half_width(pose.axes, half_width * identity.build, half_depth)
        left.append(centre - np.array([w, 0.0, 0.0]))
        right.append(centre + np.array([w, 0.0, 0.0]))
    return left + right[::-1]


def _draw_leg(canvas: _Canvas, pose: Pose, identity: Identity, side: str, shade: float) -> None:
    unit = float(np.linalg.norm(pose.axes[:, 1]))
    b = identity.build
    hip, knee, ankle = (pose.joints[J[f"{side}_{n}"]] for n in ("hip", "knee", "ankle"))
    skin, lower = _shade(identity.skin, shade), _shade(identity.lower, shade)
    thigh_r, knee_r, ankle_r = 0.046 * b * unit, 0.034 * b * unit, 0.026 * b * unit
    shoe = _shade(identity.shoes, shade)
    heel = _body_point(pose, ankle, (0.0, -0.018, -0.015))
    toe = _body_point(pose, ankle, (0.0, -0.022, 0.07))
    if identity.lower_kind == "trousers":
        canvas.capsule(hip, knee, thigh_r, knee_r, lower)
        canvas.capsule(knee, ankle, knee_r, ankle_r, lower)
    else:
        canvas.capsule(hip, knee, thigh_r, knee_r, skin)
        canvas.capsule(knee, ankle, knee_r, ankle_r, skin)
        if identity.lower_kind == "shorts":
            canvas.capsule(hip, hip + 0.55 * (knee - hip), thigh_r * 1.08, thigh_r, lower)
    canvas.capsule(heel, toe, 0.024 * unit, 0.022 * unit, shoe)


def _draw_arm(canvas: _Canvas, pose: Pose, identity: Identity, side: str, shade: float) -> None:
    unit = float(np.linalg.norm(pose.axes[:, 1]))
    b = identity.build
    shoulder, elbow, wrist = (pose.joints[J[f"{side}_{n}"]] for n in ("shoulder", "elbow", "wrist"))
    skin, sleeve = _shade(identity.skin, shade), _shade(identity.upper, shade)
    upper_r, elbow_r, wrist_r = 0.032 * b * unit, 0.027 * b * unit, 0.021 * b * unit
    forearm = skin if identity.sleeves == "short" else sleeve
    canvas.capsule(elbow, wrist, elbow_r, wrist_r, forearm)
    if identity.sleeves == "short":
        canvas.capsule(shoulder, elbow, upper_r, elbow_r, skin)
        canvas.capsule(shoulder, shoulder + 0.5 * (elbow - shoulder), upper_r * 1.12, upper_r * 1.05, sleeve)
    else:
        canvas.capsule(shoulder, elbow, upper_r, elbow_r, sleeve)
    hand = wrist + 0.45 * (wrist - elbow) * (0.05 * unit / max(float(np.linalg.norm(wrist - elbow)), 1e-6))
    canvas.ellipse(hand, 0.026 * unit, 0.03 * unit, skin)


def _draw_box(canvas: _Canvas, pose: Pose, anchor: np.ndarray, centre, half, colour: RGB) -> None:
    """An axis-aligned box in the body frame, its camera-facing faces shaded by their angle."""
    unit_axes = pose.axes / np.linalg.norm(pose.axes[:, 1])
    c = np.asarray(centre, dtype=float)
    h = np.asarray(half, dtype=float)
    faces = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            normal = np.zeros(3)
            normal[axis] = sign
            facing = float((unit_axes @ normal)[2])
            if facing <= 0:
                continue
            u, v = [a for a in range(3) if a != axis]
            corners = []
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                offset = c.copy()
                offset[axis] += sign * h[axis]
                offset[u] += du * h[u]
                offset[v] += dv * h[v]
                corners.append(_body_point(pose, anchor, tuple(offset)))
            faces.append((facing, corners))
    for facing, corners in sorted(faces, key=lambda f: f[0]):
        canvas.polygon(corners, _shade(colour, 0.7 + 0.3 * facing))


def _draw_head(canvas: _Canvas, pose: Pose, identity: Identity) -> None:
    unit = float(np.linalg.norm(pose.axes[:, 1]))
    unit_axes = pose.axes / unit
    centre = (pose.joints[J["r_ear"]] + pose.joints[J["l_ear"]]) / 2
    rx = _silhouette_half_width(pose.axes, _HEAD_HALF_WIDTH, _HEAD_HALF_DEPTH)
    ry = _HEAD_HALF_HEIGHT * unit
    visible = face_visibility(pose)
    hair = identity.hair
    canvas.ellipse(centre, rx, ry, hair)
    forward = float(unit_axes[2, 2])  # how much the face turns towards the camera
    if forward > -0.3:
        # Face below a hair cap; in profile it moves forward and reaches past the skull a little (the nose).
        face = _body_point(pose, centre, (0.0, -0.02, 0.026))
        frx = _silhouette_half_width(pose.axes, 0.05, 0.052)
        canvas.ellipse(face, frx, 0.054 * unit, identity.skin, outline=False)
        fringe = _body_point(pose, centre, (0.0, 0.045, 0.01))
        canvas.ellipse(fringe, rx * 0.92, 0.032 * unit, hair, outline=False)
    for ear in ("r_ear", "l_ear"):
        if visible[ear] and identity.hair_length == "short":
            canvas.ellipse(pose.joints[J[ear]], 0.009 * unit, 0.016 * unit, _shade(identity.skin, 0.92))
    dark = (25, 18, 15)
    for eye in ("r_eye", "l_eye"):
        if visible[eye]:
            p = pose.joints[J[eye]]
            canvas.ellipse(p, 0.011 * unit, 0.008 * unit, dark, outline=False)
            brow = _body_point(pose, p, (0.0, 0.016, 0.0))
            half = np.array([0.012 * unit, 0.0, 0.0])
            canvas.capsule(brow - half, brow + half, 0.004 * unit, 0.004 * unit, _shade(hair, 0.8))
    if visible["nose"] and forward > 0.3:
        mouth = _body_point(pose, centre, (0.0, -0.045, 0.05))
        half = np.array([0.014 * unit * abs(unit_axes[0, 0]), 0.0, 0.0])
        canvas.capsule(mouth - half, mouth + half, 0.004 * unit, 0.004 * unit, (150, 60, 60))
        nose = pose.joints[J["nose"]]
        canvas.ellipse(nose, 0.008 * unit, 0.006 * unit, _shade(identity.skin, 0.78), outline=False)


def _draw_long_hair(canvas: _Canvas, pose: Pose, identity: Identity) -> None:
    centre = (pose.joints[J["r_ear"]] + pose.joints[J["l_ear"]]) / 2
    top = _body_point(pose, centre, (0.0, 0.0, -0.02))
    bottom = _body_point(pose, centre, (0.0, -0.13, -0.035))
    width = _silhouette_half_width(pose.axes, 0.064, 0.05)
    canvas.capsule(top, bottom, width, width * 0.85, identity.hair)


def render_person(identity: Identity, pose: Pose, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``identity`` in ``pose`` over ``background``.

    Args:
        identity: the person's appearance.
        pose: skeleton in output pixels (see :func:`walking_pose`).
        background: H x W x 3 uint8 scenery; the output has its size.

    Returns:
        (image H x W x 3 uint8, keypoints (18, 3) float: x, y in pixels of the image, where pixel (i, j)
        spans x in [j, j+1) and y in [i, i+1), and v = 1 visible or 0 missing with x = y = 0).
    """
    height, width = background.shape[:2]
    unit = float(np.linalg.norm(pose.axes[:, 1]))
    canvas = _Canvas(height, width, unit)
    joints = pose.joints
    b = identity.build

    # Contact shadow on the ground, drawn first so the feet cover it.
    ankles = joints[[J["r_ankle"], J["l_ankle"]]]
    canvas.shadow(np.array([ankles[:, 0].mean(), ankles[:, 1].max() + 0.03 * unit]), 0.16 * unit, 0.03 * unit, 80)

    # Painter's algorithm: parts further from the camera first, ties in list order. The core (pelvis,
    # torso, neck, head) sits at the spine's depth; legs always go behind it, since the pelvis covers
    # the tops of the thighs. Limbs on the far side are shaded darker so left and right stay distinct.
    core_z = float(joints[J["neck"], 2])
    parts: list[tuple[float, Callable[[], None]]] = []
    for side in ("r", "l"):
        leg_z = float(joints[[J[f"{side}_hip"], J[f"{side}_knee"], J[f"{side}_ankle"]], 2].mean())
        shade = 0.82 if leg_z < core_z - 0.01 * unit else 1.0
        parts.append((min(leg_z, core_z - 1.0), partial(_draw_leg, canvas, pose, identity, side, shade)))
    for side in ("r", "l"):
        arm_z = float(joints[[J[f"{side}_shoulder"], J[f"{side}_elbow"], J[f"{side}_wrist"]], 2].mean())
        far = arm_z < core_z - 0.01 * unit
        depth = arm_z if far else max(arm_z, core_z + 0.001)
        parts.append((depth, partial(_draw_arm, canvas, pose, identity, side, 0.82 if far else 1.0)))
    neck = joints[J["neck"]]
    if identity.hair_length == "long":
        hair_z = float(_body_point(pose, neck, (0.0, 0.0, -0.035))[2])
        parts.append((hair_z, partial(_draw_long_hair, canvas, pose, identity)))
    if identity.bag == "backpack":
        bag_z = float(_body_point(pose, neck, (0.0, 0.0, -0.1))[2])
        box = ((0.0, -0.13, -0.1), (0.085 * b, 0.11, 0.04))
        parts.append((bag_z, partial(_draw_box, canvas, pose, neck, *box, identity.bag_colour)))
    elif identity.bag == "shoulder":
        bag_z = float(_body_point(pose, neck, (0.13 * b, 0.0, 0.0))[2]) + 0.002 * unit
        box = ((0.135 * b, -0.32, 0.0), (0.03, 0.06, 0.075))
        parts.append((bag_z, partial(_draw_box, canvas, pose, neck, *box, identity.bag_colour)))
    parts.append((core_z, partial(_draw_core, canvas, pose, identity)))
    order = sorted(range(len(parts)), key=lambda i: (parts[i][0], i))
    for i in order:
        parts[i][1]()

    # PIL's reduce averages premultiplied colour (a box filter: exact antialiasing of the coverage) and
    # returns straight colour and coverage, hence "over" compositing below.
    layer = np.asarray(canvas.image.reduce(SUPERSAMPLE), dtype=np.float32)
    alpha = layer[:, :, 3:] / 255.0
    composite = background.astype(np.float32) * (1.0 - alpha) + layer[:, :, :3] * alpha
    image = np.clip(composite + 0.5, 0, 255).astype(np.uint8)
    return image, _keypoints(pose, height, width)


def _draw_core(canvas: _Canvas, pose: Pose, identity: Identity) -> None:
    unit = float(np.linalg.norm(pose.axes[:, 1]))
    joints = pose.joints
    b = identity.build
    neck = joints[J["neck"]]
    head_centre = (joints[J["r_ear"]] + joints[J["l_ear"]]) / 2
    # Lower garment (pelvis; a skirt reaches the knees), then the upper garment over it.
    if identity.lower_kind == "skirt":
        lower = [(0.75, 0.0, 0.095, 0.058), (1.0, 0.0, 0.12, 0.075), (1.0, -0.17, 0.15, 0.1)]
    else:
        lower = [(0.75, 0.0, 0.095, 0.058), (1.0, 0.0, 0.108, 0.062), (1.0, -0.035, 0.09, 0.06)]
    canvas.polygon(_torso_outline(pose, identity, lower), identity.lower)
    neck_top = _body_point(pose, head_centre, (0.0, -0.03, -0.005))
    canvas.capsule(neck, neck_top, 0.03 * b * unit, 0.027 * unit, _shade(identity.skin, 0.9))
    upper = [
        (0.0, 0.028, 0.085, 0.045),
        (0.0, 0.0, 0.128, 0.06),
        (0.35, 0.0, 0.118, 0.066),
        (0.72, 0.0, 0.096, 0.058),
        (0.86, 0.0, 0.1, 0.06),
    ]
    canvas.patterned_polygon(_torso_outline(pose, identity, upper), identity, unit)
    unit_axes = pose.axes / unit
    if identity.bag == "backpack" and unit_axes[2, 2] > 0:  # straps over the chest when the front shows
        for sign in (-1.0, 1.0):
            top = _body_point(pose, neck, (sign * 0.06 * b, 0.015, 0.05))
            bottom = _body_point(pose, neck, (sign * 0.075 * b, -0.2, 0.066))
            canvas.capsule(top, bottom, 0.012 * unit, 0.012 * unit, _shade(identity.bag_colour, 0.8))
    elif identity.bag == "shoulder":
        facing = 1.0 if unit_axes[2, 2] >= 0 else -1.0
        top = _body_point(pose, neck, (-0.07 * b, 0.015, 0.06 * facing))
        bottom = _body_point(pose, neck, (0.12 * b, -0.26, 0.06 * facing))
        canvas.capsule(top, bottom, 0.009 * unit, 0.009 * unit, _shade(identity.bag_colour, 0.8))
    _draw_head(canvas, pose, identity)


def _keypoints(pose: Pose, height: int, width: int) -> np.ndarray:
    visible = face_visibility(pose)
    kps = np.zeros((18, 3))
    for i, name in enumerate(JOINTS):
        x, y = pose.joints[i, :2]
        inside = 0.0 <= x < width and 0.0 <= y < height
        if inside and visible.get(name, True):
            kps[i] = (round(float(x), 2), round(float(y), 2), 1.0)
    return kps


# --------------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class DemoSpec:
    """Size of a synthetic domain. Person ids 1..num_train_ids train, the next num_test_ids test."""

    num_train_ids: int
    num_test_ids: int
    cameras: int
    images_per_camera: int
    height: int = 128
    width: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("num_train_ids", self.num_train_ids >= 1, "must be >= 1"),
            ("num_test_ids", self.num_test_ids >= 1, "must be >= 1"),
            ("cameras", 2 <= self.cameras <= 9, "must be 2..9 (Market-1501 names hold one camera digit)"),
            ("images_per_camera", self.images_per_camera >= 2, "must be >= 2 (one query plus gallery per camera)"),
            ("height", self.height >= 32, "must be >= 32 pixels"),
            ("width", self.width >= 16, "must be >= 16 pixels"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("num_train_ids + num_test_ids", self.num_train_ids + self.num_test_ids <= 9999, "must be <= 9999"),
            (
                "images_per_camera",
                (self.num_train_ids + self.num_test_ids) * self.images_per_camera * _FRAME_STRIDE < 10**6,
                "times the number of ids must stay below 10**6 / 8 (six-digit frame numbers)",
            ),
        )
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"DemoSpec.{name} {what}, got {self}")


def market_name(pid: int, camera: int, frame: int) -> str:
    """Market-1501 file name ``PPPP_cCs1_FFFFFF_01.jpg``."""
    return f"{pid:04d}_c{camera}s1_{frame:06d}_01.jpg"


def _draw_yaw(camera: Camera, rng: np.random.Generator) -> float:
    view = int(rng.choice(3, p=np.asarray(camera.views) / sum(camera.views)))
    if view == 0:
        return float(rng.uniform(-0.35, 0.35))
    if view == 1:
        return float(np.pi + rng.uniform(-0.35, 0.35))
    return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.95, 1.4))


def render_sample(
    identity: Identity, camera: Camera, rng: np.random.Generator, yaw: float, phase: float, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``identity`` seen by ``camera``: scale and position jitter, scenery, figure, optics."""
    height_px = rng.uniform(*camera.scale) * identity.height * height
    margin = (height - height_px * 1.02) / 2
    foot_y = height - margin + rng.uniform(-0.4, 0.4) * margin
    centre_x = width / 2 + rng.uniform(-0.06, 0.06) * width
    pose = walking_pose(identity, phase, yaw + rng.uniform(-0.12, 0.12), camera.pitch, height_px, centre_x, foot_y)
    background = render_background(camera, rng, height, width)
    image, keypoints = render_person(identity, pose, background)
    return apply_camera(image, camera, rng), keypoints


def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def generate_domain(
    root: str | os.PathLike, domain: str, spec: DemoSpec, progress: bool = True
) -> dict[str, int | str]:
    """Write one synthetic domain in Market-1501 layout with ``keypoints.json``, atomically.

    Each (test id, camera) puts its first image in ``query/`` and the rest in ``bounding_box_test/``,
    so every query has gallery images of its id from the other cameras.

    Returns:
        counts: ``{"domain", "train_ids", "test_ids", "cameras", "bounding_box_train", "query",
        "bounding_box_test", "images"}``.
    """
    if domain not in DOMAIN_STYLES:
        raise ValueError(f"unknown domain {domain!r}; known: {sorted(DOMAIN_STYLES)}")
    style = DOMAIN_STYLES[domain]
    cameras = [draw_camera(style, spec.seed, domain, c) for c in range(1, spec.cameras + 1)]
    code = _domain_code(domain)
    total_ids = spec.num_train_ids + spec.num_test_ids
    counts = dict.fromkeys(SPLIT_DIRS, 0)
    keypoints: dict[str, list] = {}
    with atomic_path(root, is_dir=True) as tmp:
        for split in SPLIT_DIRS:
            (tmp / split).mkdir()
        bar = progress_bar(
            total=total_ids * spec.cameras * spec.images_per_camera,
            desc=f"synthetic domain {domain}",
            unit="img",
            enabled=progress,
        )
        with bar:
            for pid in range(1, total_ids + 1):
                identity = draw_identity(spec.seed, domain, pid)
                for cam_index, camera in enumerate(cameras, start=1):
                    # A tracklet: one walking direction per camera pass, the gait advancing frame by frame.
                    track = _seed_rng(spec.seed, code, _TAG_TRACKLET, pid, cam_index)
                    yaw, phase = _draw_yaw(camera, track), float(track.uniform(0, 2 * np.pi))
                    offset = int(track.integers(0, _FRAME_STRIDE))
                    for k in range(spec.images_per_camera):
                        rng = _seed_rng(spec.seed, code, _TAG_IMAGE, pid, cam_index, k)
                        phase_k = phase + k * rng.uniform(0.7, 1.3)
                        image, kps = render_sample(identity, camera, rng, yaw, phase_k, spec.height, spec.width)
                        if pid <= spec.num_train_ids:
                            split = "bounding_box_train"
                        else:
                            split = "query" if k == 0 else "bounding_box_test"
                        # Frames increase through a camera's video and never repeat within it.
                        frame = 1 + ((pid - 1) * spec.images_per_camera + k) * _FRAME_STRIDE + offset
                        name = f"{split}/{market_name(pid, cam_index, frame)}"
                        (tmp / name).write_bytes(_encode_jpeg(image))
                        keypoints[name] = [[float(x), float(y), int(v)] for x, y, v in kps]
                        counts[split] += 1
                        bar.update()
        write_json(tmp / "keypoints.json", {"format": "coco18", "joints": list(JOINTS), "images": keypoints})
    return {
        "domain": domain,
        "train_ids": spec.num_train_ids,
        "test_ids": spec.num_test_ids,
        "cameras": spec.cameras,
        **counts,
        "images": sum(counts.values()),
    }


def generate_demo(
    root_a: str | os.PathLike, root_b: str | os.PathLike, spec: DemoSpec, progress: bool = True
) -> dict[str, dict[str, int | str]]:
    """Write source domain A (labelled in the thesis' setting) and target domain B with the same spec."""
    return {
        "a": generate_domain(Path(root_a), "a", spec, progress),
        "b": generate_domain(Path(root_b), "b", spec, progress),
    }
