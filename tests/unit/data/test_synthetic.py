"""The synthetic two-domain Re-ID generator: layout, determinism, keypoints, conventions, domain gap."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from advreid.data import synthetic
from advreid.data.images import load_image
from advreid.data.synthetic import (
    DOMAIN_STYLES,
    JOINTS,
    DemoSpec,
    draw_identity,
    face_visibility,
    generate_demo,
    generate_domain,
    render_person,
    walking_pose,
)

MARKET = re.compile(r"^(?P<pid>\d{4})_c(?P<cam>[1-9])s1_(?P<frame>\d{6})_01\.jpg$")
SPEC = DemoSpec(num_train_ids=3, num_test_ids=3, cameras=2, images_per_camera=2, seed=0)
GREEN = np.array([0, 255, 0], dtype=np.uint8)  # no skin, hair or clothing colour is pure green


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synthetic")
    summaries = generate_demo(base / "a", base / "b", SPEC, progress=False)
    return {"a": base / "a", "b": base / "b", "summaries": summaries}  # type: ignore[dict-item]


def _images(root: Path) -> dict[str, list[tuple[int, int, int, str]]]:
    """split dir -> [(pid, camera, frame, relative path)] parsed from the file names."""
    out: dict[str, list[tuple[int, int, int, str]]] = {}
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        rows = []
        for path in sorted((root / split).iterdir()):
            m = MARKET.match(path.name)
            assert m, f"{path.name} is not a Market-1501 name"
            rows.append((int(m["pid"]), int(m["cam"]), int(m["frame"]), f"{split}/{path.name}"))
        out[split] = rows
    return out


def _keypoints(root: Path) -> dict:
    return json.loads((root / "keypoints.json").read_text())


def test_layout_names_and_counts(demo: dict) -> None:
    for domain in ("a", "b"):
        root = demo[domain]
        assert sorted(p.name for p in root.iterdir()) == [
            "bounding_box_test",
            "bounding_box_train",
            "keypoints.json",
            "query",
        ]
        images = _images(root)
        per_id_cam = SPEC.images_per_camera
        assert len(images["bounding_box_train"]) == SPEC.num_train_ids * SPEC.cameras * per_id_cam
        assert len(images["query"]) == SPEC.num_test_ids * SPEC.cameras
        assert len(images["bounding_box_test"]) == SPEC.num_test_ids * SPEC.cameras * (per_id_cam - 1)
        train_ids = {pid for pid, *_ in images["bounding_box_train"]}
        test_ids = {pid for pid, *_ in images["query"] + images["bounding_box_test"]}
        assert train_ids == set(range(1, SPEC.num_train_ids + 1))
        assert test_ids == set(range(SPEC.num_train_ids + 1, SPEC.num_train_ids + SPEC.num_test_ids + 1))
        cams = {cam for rows in images.values() for _, cam, _, _ in rows}
        assert cams == set(range(1, SPEC.cameras + 1))
        # Frames are unique within a camera, as in a video.
        frames = [(cam, frame) for rows in images.values() for _, cam, frame, _ in rows]
        assert len(frames) == len(set(frames))
        summary = demo["summaries"][domain]
        for split, rows in images.items():
            assert summary[split] == len(rows)
        pixels = load_image(root / images["query"][0][3])
        assert pixels.shape == (SPEC.height, SPEC.width, 3)


def test_every_query_has_gallery_images_from_another_camera(demo: dict) -> None:
    for domain in ("a", "b"):
        images = _images(demo[domain])
        gallery = defaultdict(set)
        for pid, cam, _, _ in images["bounding_box_test"]:
            gallery[pid].add(cam)
        for pid, cam, _, _ in images["query"]:
            assert gallery[pid] - {cam}, f"query {pid} c{cam} has no gallery image from another camera"


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, demo: dict) -> None:
    generate_domain(tmp_path / "again", "a", SPEC, progress=False)
    files = sorted(p.relative_to(demo["a"]) for p in demo["a"].rglob("*") if p.is_file())
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert files == again
    for rel in files:
        assert (demo["a"] / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    other = DemoSpec(**{**SPEC.__dict__, "seed": 1})
    generate_domain(tmp_path / "other", "a", other, progress=False)
    first = _images(tmp_path / "other")["query"][0][3], _images(demo["a"])["query"][0][3]
    assert (tmp_path / "other" / first[0]).read_bytes() != (demo["a"] / first[1]).read_bytes()


def test_generation_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "domain"
    generate_domain(root, "b", SPEC, progress=False)
    before = (root / "keypoints.json").read_bytes()
    calls = []

    def failing_encode(image: np.ndarray) -> bytes:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk full")
        return b"partial"

    monkeypatch.setattr(synthetic, "_encode_jpeg", failing_encode)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_domain(root, "b", DemoSpec(**{**SPEC.__dict__, "seed": 7}), progress=False)
    # The old tree is untouched and no temporary sibling is left behind.
    assert (root / "keypoints.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["domain"]


def test_keypoints_file_matches_images(demo: dict) -> None:
    for domain in ("a", "b"):
        root = demo[domain]
        data = _keypoints(root)
        assert data["format"] == "coco18"
        assert data["joints"] == list(JOINTS)
        assert JOINTS[:3] == ("nose", "neck", "r_shoulder") and JOINTS[-1] == "l_ear"
        names = {rel for rows in _images(root).values() for *_, rel in rows}
        assert set(data["images"]) == names
        for name, kps in data["images"].items():
            kps = np.asarray(kps, dtype=float)
            assert kps.shape == (18, 3), name
            assert set(np.unique(kps[:, 2])) <= {0.0, 1.0}
            seen, missing = kps[kps[:, 2] == 1], kps[kps[:, 2] == 0]
            assert np.all((seen[:, 0] >= 0) & (seen[:, 0] < SPEC.width)), name
            assert np.all((seen[:, 1] >= 0) & (seen[:, 1] < SPEC.height)), name
            assert np.all(missing[:, :2] == 0), name
            # The body joints are always in view; only face points can be hidden by the viewpoint.
            assert np.all(kps[1:14, 2] == 1), name
        text = (root / "keypoints.json").read_text()
        assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"


def _render_on_green(pid: int, yaw: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
    identity = draw_identity(3, "a", pid)
    pose = walking_pose(identity, phase, yaw, pitch=0.2, height_px=108, centre_x=32, foot_y=120)
    background = np.broadcast_to(GREEN, (128, 64, 3)).copy()
    return render_person(identity, pose, background)


@pytest.mark.parametrize("yaw", [0.0, np.pi, 1.2, -1.2, 0.5])
def test_visible_keypoints_lie_on_the_drawn_figure(yaw: float) -> None:
    for pid, phase in ((1, 0.3), (2, 1.9), (3, 3.5), (4, 5.0)):
        image, kps = _render_on_green(pid, yaw, phase)
        off_figure = np.abs(image.astype(int) - GREEN).sum(axis=2) < 30
        assert off_figure[0, 0] and off_figure[-1, -1]  # the check does see the background
        assert off_figure.mean() > 0.5  # and the figure is a figure, not a filled frame
        for j, (x, y, v) in enumerate(kps):
            if v:
                assert not off_figure[int(y), int(x)], f"{JOINTS[j]} at ({x}, {y}) is on the background"


def test_left_right_follow_the_subject() -> None:
    identity = draw_identity(0, "a", 1)

    def pose(yaw: float, phase: float = 0.0) -> np.ndarray:
        return walking_pose(identity, phase, yaw, pitch=0.0, height_px=100, centre_x=32, foot_y=120).joints

    x = {name: i for i, name in enumerate(JOINTS)}
    front, back = pose(0.0), pose(np.pi)
    for joint in ("shoulder", "hip", "eye", "ear"):
        # Facing the camera, the subject's right side is on the image's left; from behind it is not.
        assert front[x[f"r_{joint}"], 0] < front[x[f"l_{joint}"], 0]
        assert back[x[f"r_{joint}"], 0] > back[x[f"l_{joint}"], 0]
    side = pose(np.pi / 2)
    assert side[x["nose"], 0] > side[x["neck"], 0]  # walking to the image's right
    assert side[x["r_shoulder"], 2] > side[x["l_shoulder"], 2]  # its right side faces the camera
    # Over a stride the right then the left foot leads in the walking direction.
    assert pose(np.pi / 2, np.pi / 2)[x["r_ankle"], 0] > pose(np.pi / 2, np.pi / 2)[x["l_ankle"], 0]
    assert pose(np.pi / 2, 3 * np.pi / 2)[x["r_ankle"], 0] < pose(np.pi / 2, 3 * np.pi / 2)[x["l_ankle"], 0]


def test_walking_pose_stands_on_the_ground_and_moves_with_phase() -> None:
    identity = draw_identity(0, "a", 2)
    lows, poses = [], []
    for phase in np.linspace(0, 2 * np.pi, 9)[:-1]:
        joints = walking_pose(identity, phase, 1.3, pitch=0.0, height_px=100, centre_x=32, foot_y=120).joints
        lows.append(joints[[JOINTS.index("r_ankle"), JOINTS.index("l_ankle")], 1].max())
        poses.append(joints)
    # The stance ankle is always ankle-height (0.038 of the standing height) above the ground line.
    np.testing.assert_allclose(lows, 120 - 0.038 * 100, atol=1e-9)
    assert min(np.abs(a - b).max() for a, b in zip(poses, poses[1:], strict=False)) > 1.0


def test_face_visibility_by_viewpoint() -> None:
    identity = draw_identity(0, "b", 1)

    def visible(yaw: float) -> dict[str, bool]:
        return face_visibility(walking_pose(identity, 0.0, yaw, 0.2, 100, 32, 120))

    assert all(visible(0.0).values())
    assert visible(np.pi) == {"nose": False, "r_eye": False, "l_eye": False, "r_ear": True, "l_ear": True}
    walking_right = visible(np.pi / 2)  # the right side faces the camera
    assert walking_right["r_eye"] and walking_right["r_ear"] and walking_right["nose"]
    assert not walking_right["l_eye"] and not walking_right["l_ear"]
    _, kps = _render_on_green(1, np.pi, 0.0)
    assert kps[JOINTS.index("nose"), 2] == 0 and kps[JOINTS.index("r_eye"), 2] == 0
    assert np.all(kps[JOINTS.index("nose"), :2] == 0)


def test_written_front_views_put_the_right_shoulder_left(demo: dict) -> None:
    checked = 0
    for domain in ("a", "b"):
        for kps in _keypoints(demo[domain])["images"].values():
            kps = np.asarray(kps)
            if kps[JOINTS.index("r_eye"), 2] and kps[JOINTS.index("l_eye"), 2]:  # both eyes: a front view
                assert kps[JOINTS.index("r_shoulder"), 0] < kps[JOINTS.index("l_shoulder"), 0]
                checked += 1
    assert checked >= 3


def test_domains_differ_in_colour_cast(demo: dict) -> None:
    # Domain A's cameras are warm (red gain > blue gain) and B's cool: red minus blue, averaged over an
    # image, separates the domains by a wide margin, and one threshold tells nearly every image's domain.
    assert not set(DOMAIN_STYLES["a"].backgrounds) & set(DOMAIN_STYLES["b"].backgrounds)
    warmth = {}
    for domain in ("a", "b"):
        pixels = [load_image(demo[domain] / n).astype(float) for n in _keypoints(demo[domain])["images"]]
        warmth[domain] = np.array([np.mean(p[..., 0] - p[..., 2]) for p in pixels])
    assert warmth["a"].mean() - warmth["b"].mean() > 30
    accuracy = max(
        (np.mean(warmth["a"] > t) + np.mean(warmth["b"] <= t)) / 2 for t in np.concatenate([warmth["a"], warmth["b"]])
    )
    assert accuracy >= 0.95


def test_identities_differ_more_than_views_of_one_identity(demo: dict) -> None:
    # Torso colour (a patch on the spine, read where the keypoints say the torso is) is closer between
    # two images of one person than between images of two people.
    for domain in ("a", "b"):
        features = defaultdict(list)
        for name, kps in _keypoints(demo[domain])["images"].items():
            kps = np.asarray(kps)
            neck, hips = kps[1, :2], (kps[8, :2] + kps[11, :2]) / 2
            patch = []
            for t in (0.25, 0.4, 0.55):
                x, y = (neck + t * (hips - neck)).astype(int)
                patch.append(load_image(demo[domain] / name)[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3))
            features[int(Path(name).name[:4])].append(np.concatenate(patch).mean(axis=0))
        within, between = [], []
        ids = sorted(features)
        for i in ids:
            for j in ids:
                dists = [np.linalg.norm(a - b) for a in features[i] for b in features[j]]
                (within if i == j else between).extend(dists)
        assert np.mean(between) > 1.5 * np.mean(within)


def test_identity_depends_on_seed_domain_and_pid_only() -> None:
    assert draw_identity(0, "a", 5) == draw_identity(0, "a", 5)
    assert draw_identity(0, "a", 5) != draw_identity(0, "b", 5)
    assert draw_identity(0, "a", 5) != draw_identity(1, "a", 5)
    people = [draw_identity(0, "a", pid) for pid in range(1, 21)]
    assert len({(p.upper, p.lower, p.skin) for p in people}) == 20
    assert {p.pattern for p in people} == {"plain", "stripes", "checks", "two_tone"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cameras": 1}, "cameras"),
        ({"images_per_camera": 1}, "images_per_camera"),
        ({"num_test_ids": 0}, "num_test_ids"),
        ({"num_train_ids": 9000, "num_test_ids": 1000}, "num_train_ids + num_test_ids"),
    ],
)
def test_bad_spec_is_rejected_with_the_field_named(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"DemoSpec.{field} ")):
        DemoSpec(**{**SPEC.__dict__, **changes})


def test_unknown_domain_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown domain 'c'; known: \['a', 'b'\]"):
        generate_domain(tmp_path / "c", "c", SPEC, progress=False)
    assert not (tmp_path / "c").exists()
