import json
from dataclasses import dataclass

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
