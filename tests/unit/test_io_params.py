import json
from dataclasses import dataclass, field

import pytest

from advreid.io import atomic_path, md5_file, sha256_file, write_json
from advreid.params import ParamsError, build, load_params


def test_atomic_file_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "stale.txt").write_text("x")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_write_json_is_stable_and_hashes_match_known_values(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "a.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert md5_file(tmp_path / "abc") == "900150983cd24fb0d6963f7d28e17f72"


@dataclass(frozen=True)
class _Section:
    steps: int
    rate: float
    name: str = "x"
    sizes: tuple[int, ...] = (1,)


def test_build_coerces_and_names_bad_keys(tmp_path):
    section = build(_Section, {"steps": 3, "rate": 1, "sizes": [2, 3]}, "train")
    assert section == _Section(steps=3, rate=1.0, sizes=(2, 3))
    with pytest.raises(ParamsError, match=r"train: unknown key\(s\) \['stepz'\]"):
        build(_Section, {"stepz": 3, "rate": 1.0}, "train")
    with pytest.raises(ParamsError, match="train.steps: expected int"):
        build(_Section, {"steps": "3", "rate": 1.0}, "train")
    (tmp_path / "params.yaml").write_text("a:\n  b: {c: 1}\n")
    assert load_params("a.b", tmp_path / "params.yaml") == {"c": 1}
    with pytest.raises(ParamsError, match="missing key 'z'"):
        load_params("a.z", tmp_path / "params.yaml")


def test_atomic_path_removes_only_its_own_stale_temporaries(tmp_path):
    """A stage killed mid-write leaves .<name>.<random>.tmp beside its output; the next write of that output
    removes it (file and directory forms) and leaves other outputs' temporaries alone."""
    stale_file = tmp_path / ".out.json.ab12cd_9.tmp"
    stale_file.write_text("partial")
    stale_dir = tmp_path / ".out.json.zz99yy00.tmp"
    stale_dir.mkdir()
    (stale_dir / "part").write_text("x")
    other = tmp_path / ".other.json.ab12cd_9.tmp"
    other.write_text("someone else's")
    write_json(tmp_path / "out.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.ab12cd_9.tmp", "out.json"]


@dataclass(frozen=True)
class _Typed:
    lr: float
    steps: int = 1
    name: str | None = None
    sizes: tuple[int, int] = (1, 2)
    options: dict = field(default_factory=dict)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": "fast"}, r"s\.lr: expected float, got 'fast'"),
        ({"lr": True}, r"s\.lr: expected float, got True"),
        ({"lr": 1, "steps": 2.5}, r"s\.steps: expected int, got 2\.5"),
        ({"lr": 1, "steps": False}, r"s\.steps: expected int, got False"),
        ({"lr": 1, "name": 3}, r"s\.name: expected str or null, got 3"),
        ({"lr": 1, "sizes": [1]}, r"s\.sizes: expected a list of 2 values, got \[1\]"),
        ({"lr": 1, "sizes": [1, "b"]}, r"s\.sizes\[1\]: expected int, got 'b'"),
        ({"lr": 1, "options": [1]}, r"s\.options: expected a mapping, got \[1\]"),
    ],
)
def test_build_names_the_key_the_expected_type_and_the_value(values, message):
    with pytest.raises(ParamsError, match=message):
        build(_Typed, values, "s")


def test_build_accepts_ints_for_floats_and_keeps_types():
    built = build(_Typed, {"lr": 1, "sizes": [3, 4], "name": None}, "s")
    assert built.lr == 1.0 and isinstance(built.lr, float) and built.sizes == (3, 4) and built.name is None


def test_load_torch_names_the_file_and_never_echoes_weights_only(tmp_path):
    import os

    import torch

    from advreid.errors import CheckpointError
    from advreid.io import load_torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    torch.save({"model": {"w": torch.arange(1000.0)}}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert torch.equal(load_torch(tmp_path / "good.pt")["model"]["w"], torch.arange(1000.0))
    for name, problem in (("evil.pt", "posix.system"), ("cut.pt", "truncated")):
        with pytest.raises(CheckpointError, match=problem) as info:
            load_torch(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "weights_only" not in str(info.value)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_torch(tmp_path / "missing.pt")
