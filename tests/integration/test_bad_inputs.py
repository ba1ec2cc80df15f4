"""The bad-input battery: every kind of wrong input a user can give ``advreid`` stops with exit status 2 and one
message naming the file or key and the problem, no traceback, nothing partial written, nothing else touched.

One tiny project is built per session (both synthetic demo domains ingested, an untrained ``small_cnn`` model
file, one broken dataset per reader case under ``data/raw``); each case edits params.yaml or breaks one file,
runs the command in-process (a few run as real subprocesses to prove no traceback reaches the terminal), then
compares the hashes of every file in the project with those before the run and undoes its edit.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from advreid import cli
from advreid.data.synthetic import DemoSpec
from advreid.errors import EXIT_BAD_INPUT
from advreid.models.reid import build_reid_model
from tests.fixtures_classification import (
    write_cifar10,
    write_cifar100,
    write_mnist,
    write_stl10,
    write_tinyimagenet,
)
from tests.fixtures_reid import (
    REID_WRITERS,
    truncate_file,
    write_demo_project,
    write_market1501,
    write_text_lines,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = DemoSpec(num_train_ids=4, num_test_ids=4, cameras=2, images_per_camera=2, height=32, width=16)
# not outputs: MLflow's own records of the failed run, Prefect's home, DVC's temp
UNTRACKED = ("params.yaml", "mlflow.db", "mlruns", "mlartifacts", ".prefect", ".dvc")
MISSING = object()  # a params value meaning "delete this key"


# ---------------------------------------------------------------------------------------------- broken datasets
def _first(written, predicate: Callable[[Any], bool] = lambda row: True) -> Path:
    rows = written.expected
    if "variant" in rows:
        rows = rows[rows["variant"] == "labeled"]
    for row in rows.itertuples():
        if predicate(row):
            return written.root / row.path
    raise AssertionError("no matching row")


def _market_bad_name(root: Path) -> None:
    written = write_market1501(root)
    _first(written).rename(written.root / "bounding_box_train" / "person7.jpg")


def _market_loop(root: Path) -> None:
    victim = _first(write_market1501(root))
    victim.unlink()
    victim.symlink_to(victim.name)


def _market_junk_query(root: Path) -> None:
    written = write_market1501(root)
    shutil.copy(_first(written), written.root / "query" / "-1_c1s1_000001_00.jpg")


def _duke_camera(root: Path) -> None:
    written = REID_WRITERS["dukemtmc"](root)
    _first(written).rename(written.root / "bounding_box_test" / "0004_c9_f0000001.jpg")


def _msmt_pid(root: Path) -> None:
    written = REID_WRITERS["msmt17"](root)
    lists = written.root / "MSMT17_V1" / "list_query.txt"
    lines = lists.read_text().splitlines()
    path, pid = lines[0].split()
    write_text_lines(lists, [f"{path} {int(pid) + 1}", *lines[1:]])


def _msmt_missing_list(root: Path) -> None:
    (REID_WRITERS["msmt17"](root).root / "MSMT17_V1" / "list_gallery.txt").unlink()


def _cuhk_not_an_image(root: Path) -> None:
    written = REID_WRITERS["cuhk03"](root)
    _first(written).write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image needs")


def _veri_listed_missing(root: Path) -> None:
    written = REID_WRITERS["veri776"](root)
    write_text_lines(written.root / "name_query.txt", ["0999_c001_00000001_0.jpg"])


def _cifar_malicious(root: Path) -> None:
    written = write_cifar10(root)
    command = f"touch {root / 'pwned'}"
    payload = b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command.encode() + b"\x85R."
    (written.root / "cifar-10-batches-py" / "data_batch_2").write_bytes(payload)


def _cifar_truncated(root: Path) -> None:
    truncate_file(write_cifar10(root).root / "cifar-10-batches-py" / "test_batch", keep=0.3)


def _cifar100_missing(root: Path) -> None:
    (write_cifar100(root).root / "cifar-100-python" / "train").unlink()


def _stl_short(root: Path) -> None:
    path = write_stl10(root).root / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-5])


def _tiny_size(root: Path) -> None:
    from PIL import Image

    written = write_tinyimagenet(root)
    victim = next(p for files in written.files.values() for p in files)
    Image.new("RGB", (32, 64)).save(victim, format="JPEG")


def _mnist_magic(root: Path) -> None:
    written = write_mnist(root)
    path = next(p for p in sorted(written.root.rglob("*")) if p.name.startswith("t10k-labels"))
    data = path.read_bytes()
    path.write_bytes(struct.pack(">I", 1234) + data[4:] if path.suffix != ".gz" else b"not gzip")


def _lonely_query(root: Path) -> None:
    written = write_market1501(root, size=(128, 64))
    for path in (written.root / "bounding_box_test").glob("0005_*.jpg"):
        path.unlink()


# case name -> (format, writer, options)
DATASETS: dict[str, tuple[str, Callable[[Path], None], dict]] = {
    "market_truncated": ("market1501", lambda r: truncate_file(_first(write_market1501(r))), {}),
    "market_bad_name": ("market1501", _market_bad_name, {}),
    "market_no_query": ("market1501", lambda r: shutil.rmtree(write_market1501(r).root / "query"), {}),
    "market_loop": ("market1501", _market_loop, {}),
    "market_junk_query": ("market1501", _market_junk_query, {}),
    "market_lonely": ("market1501", _lonely_query, {}),
    "duke_camera": ("dukemtmc", _duke_camera, {}),
    "duke_huge": ("dukemtmc", lambda r: REID_WRITERS["dukemtmc"](r), {"max_pixels": 100}),
    "msmt_pid": ("msmt17", _msmt_pid, {}),
    "msmt_missing_list": ("msmt17", _msmt_missing_list, {}),
    "cuhk_variant": ("cuhk03", lambda r: REID_WRITERS["cuhk03"](r), {"variant": "hand"}),
    "cuhk_not_an_image": ("cuhk03", _cuhk_not_an_image, {}),
    "veri_listed_missing": ("veri776", _veri_listed_missing, {}),
    "cifar_malicious": ("cifar10", _cifar_malicious, {}),
    "cifar_truncated": ("cifar10", _cifar_truncated, {}),
    "cifar100_missing": ("cifar100", _cifar100_missing, {}),
    "stl_short": ("stl10", _stl_short, {}),
    "tiny_size": ("tinyimagenet", _tiny_size, {}),
    "mnist_magic": ("mnist", _mnist_magic, {}),
    "market_option": ("market1501", lambda r: write_market1501(r), {"variant": "labeled"}),
}


# ------------------------------------------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` of ``advreid``, what the message must contain, and how the input is made bad."""

    name: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    params: dict[str, Any] | None = None  # dotted key -> value (MISSING deletes it)
    breaks: Callable[[Path], Callable[[], None]] | None = None  # breaks a file, returns the undo
    may_write: tuple[str, ...] = ()  # outputs the failing stage is meant to write (validation reports)

    def __str__(self) -> str:
        return self.name


def _replace(relative: str, make: Callable[[Path], None]) -> Callable[[Path], Callable[[], None]]:
    """Break ``relative`` (a file under the project) with ``make``; the undo puts the original back."""

    def breaks(root: Path) -> Callable[[], None]:
        path = root / relative
        backup = path.with_name(path.name + ".orig")
        existed = path.exists()
        if existed:
            shutil.copy2(path, backup)
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)

        def undo() -> None:
            path.unlink(missing_ok=True)
            if existed:
                backup.rename(path)

        return undo

    return breaks


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _RunsCommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _malicious_model(path: Path) -> None:
    torch.save({"model": _RunsCommand(), "meta": {}}, path)


def _other_architecture(path: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["meta"] = {**checkpoint["meta"], "arch": "osnet_x0_25"}  # small_cnn weights, OSNet's name
    torch.save(checkpoint, path)


def _no_meta(path: Path) -> None:
    torch.save({"model": {}}, path)


def _drop_camera(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop(["camera"]), path)


def _not_parquet(path: Path) -> None:
    path.write_text("path,label\nx.jpg,1\n")


MODEL = "models/reid/small_cnn/model.pt"
TRAIN = "reid.models.small_cnn.train"
DENOISER = "train_denoiser.settings"

CASES = [
    # readers: one ingest per broken dataset
    Case("market1501 truncated image", ("ingest", "market_truncated"), ("market_truncated/", "cannot decode image")),
    Case("market1501 file name", ("ingest", "market_bad_name"), ("person7.jpg", "does not match")),
    Case("market1501 missing split", ("ingest", "market_no_query"), ("query", "is missing")),
    Case("market1501 symlink loop", ("ingest", "market_loop"), (".jpg", "symbolic link loop")),
    Case("market1501 junk query", ("ingest", "market_junk_query"), ("-1_c1s1_000001_00.jpg", "junk label")),
    Case(
        "market1501 validation",
        ("ingest", "market_lonely"),
        ("every query id is present in the gallery", "reports/validation/market_lonely.md"),
        may_write=("reports/validation/market_lonely.json", "reports/validation/market_lonely.md"),
    ),
    Case("dukemtmc camera", ("ingest", "duke_camera"), ("0004_c9_f0000001.jpg", "camera 9 outside 1..8")),
    Case("dukemtmc max_pixels", ("ingest", "duke_huge"), (".jpg", "above max_pixels 100")),
    Case("msmt17 pid", ("ingest", "msmt_pid"), ("list_query.txt line 1", "pid")),
    Case("msmt17 list file", ("ingest", "msmt_missing_list"), ("list_gallery.txt", "is missing")),
    Case("cuhk03 variant", ("ingest", "cuhk_variant"), ("cuhk03", "variant must be 'labeled' or 'detected'")),
    Case("cuhk03 not an image", ("ingest", "cuhk_not_an_image"), (".png", "cannot decode image")),
    Case("veri776 list", ("ingest", "veri_listed_missing"), ("name_query.txt line 1", "does not exist")),
    Case("cifar10 malicious pickle", ("ingest", "cifar_malicious"), ("data_batch_2", "os.system", "refused")),
    Case("cifar10 truncated pickle", ("ingest", "cifar_truncated"), ("test_batch", "truncated pickle")),
    Case("cifar100 missing batch", ("ingest", "cifar100_missing"), ("cifar-100-python/train", "missing")),
    Case("stl10 short array", ("ingest", "stl_short"), ("train_X.bin",)),
    Case("tinyimagenet size", ("ingest", "tiny_size"), (".JPEG", "expected 64x64")),
    Case("mnist magic", ("ingest", "mnist_magic"), ("t10k-labels",)),
    Case("reader option", ("ingest", "market_option"), ("market1501", "unknown option(s) ['variant']")),
    Case(
        "unknown format",
        ("ingest", "market_option"),
        ("unknown dataset format 'market'",),
        params={"ingest.datasets.market_option.format": "market"},
    ),
    # params of every stage
    Case(
        "train-reid lr string",
        ("train-reid", "small_cnn"),
        (f"{TRAIN}.lr", "expected float", "'fast'"),
        params={f"{TRAIN}.lr": "fast"},
    ),  # fmt: skip
    Case("train-reid epochs", ("train-reid", "small_cnn"), (f"{TRAIN}.epochs", ">= 1"), params={f"{TRAIN}.epochs": 0}),
    Case(
        "train-reid unknown key",
        ("train-reid", "small_cnn"),
        (TRAIN, "unknown key(s) ['lrate']"),
        params={f"{TRAIN}.lrate": 0.1},
    ),  # fmt: skip
    Case("reid threads", ("eval-reid", "small_cnn"), ("reid.threads", ">= 0"), params={"reid.threads": -1}),
    Case(
        "eval-reid metric",
        ("eval-reid", "small_cnn"),
        ("reid.models.small_cnn.eval.metric", "'l7'"),
        params={"reid.models.small_cnn.eval.metric": "l7"},
    ),  # fmt: skip
    Case(
        "attack eps above 1",
        ("attack", "small_cnn"),
        ("attack.budgets.eps8.eps", "(0, 255]", "300"),
        params={"attack.budgets.eps8.eps": 300},
    ),  # fmt: skip
    Case(
        "attack steps string",
        ("attack", "small_cnn"),
        ("attack.budgets.eps8.steps", "expected int", "'four'"),
        params={"attack.budgets.eps8.steps": "four"},
    ),  # fmt: skip
    Case("attack batch size", ("attack", "small_cnn"), ("attack.batch_size", ">= 1"), params={"attack.batch_size": 0}),
    Case(
        "attack-report images", ("attack-report",), ("attack.report.images", ">= 1"), params={"attack.report.images": 0}
    ),  # fmt: skip
    Case(
        "certify sigma 0",
        ("certify", "baseline"),
        ("certify.settings.sigmas[0]", "> 0"),
        params={"certify.settings.sigmas": [0, 0.5]},
    ),  # fmt: skip
    Case(
        "certify n0 > n",
        ("certify", "baseline"),
        ("certify.settings.n0", "<= n = 50", "500"),
        params={"certify.settings.n0": 500, "certify.settings.n": 50},  # n set here: the demo's n may change
    ),  # fmt: skip
    Case(
        "certify alpha",
        ("certify", "baseline"),
        ("certify.settings.alpha", "(0, 1)", "1.5"),
        params={"certify.settings.alpha": 1.5},
    ),  # fmt: skip
    Case(
        "train-classifier batch size",
        ("train-classifier",),
        ("train_classifier.batch_size", ">= 1"),
        params={"train_classifier.batch_size": 0},
    ),  # fmt: skip
    Case(
        "train-classifier lr",
        ("train-classifier",),
        ("train_classifier.reconstruction.lr", "expected float"),
        params={"train_classifier.reconstruction.lr": "small"},
    ),  # fmt: skip
    Case(
        "train-denoiser sigmas",
        ("train-denoiser", "fo_ds"),
        (f"{DENOISER}.sigmas", "at least one"),
        params={f"{DENOISER}.sigmas": []},
    ),  # fmt: skip
    Case("train-denoiser q", ("train-denoiser", "fo_ds"), (f"{DENOISER}.q", ">= 1"), params={f"{DENOISER}.q": 0}),
    Case(
        "train-gan batch size",
        ("train-gan", "ipes_gan"),
        ("gan.runs.ipes_gan.batch_size", ">= 1"),
        params={"gan.settings.batch_size": 0},
    ),  # fmt: skip
    Case(
        "train-defense method",
        ("train-defense", "mp_snn"),
        ("defense.variants.mp_snn.method", "'magic'"),
        params={"defense.variants.mp_snn.method": "magic"},
    ),  # fmt: skip
    Case("pose workers", ("pose", "demo_a"), ("pose.workers", ">= 1"), params={"pose.workers": 0}),
    Case("demo-data cameras", ("demo-data",), ("demo", "cameras must be 2..9"), params={"demo.cameras": 1}),
    Case(
        "eval-defense queries",
        ("eval-defense", "vanilla"),
        ("defense.eval", "queries >= 0"),
        params={"defense.eval.queries": -1},
    ),  # fmt: skip
    Case(
        "defense-report budget",
        ("defense-report",),
        ("defense.report.budget", "'eps99'"),
        params={"defense.report.budget": "eps99"},
    ),  # fmt: skip
    Case("eval-gan seeds", ("eval-gan",), ("gan.seeds", "at least one seed"), params={"gan.seeds": []}),
    Case("certify-report inputs", ("certify-report",), ("reports/metrics/certify/baseline.json", "not found")),
    Case(
        "missing section",
        ("certify", "baseline"),
        ("params.yaml", "section 'certify.settings' not found"),
        params={"certify": MISSING},
    ),  # fmt: skip
    # checkpoints
    Case(
        "checkpoint missing",
        ("eval-reid", "small_cnn"),
        (MODEL, "not found", "run the train_reid stage"),
        breaks=_replace(MODEL, lambda p: p.unlink()),
    ),  # fmt: skip
    Case("checkpoint truncated", ("eval-reid", "small_cnn"), (MODEL, "truncated"), breaks=_replace(MODEL, _truncate)),
    Case(
        "checkpoint malicious",
        ("eval-reid", "small_cnn"),
        (MODEL, "refused", "posix.system"),
        breaks=_replace(MODEL, _malicious_model),
    ),  # fmt: skip
    Case(
        "checkpoint other architecture",
        ("eval-reid", "small_cnn"),
        (MODEL, "do not fit the osnet_x0_25"),
        breaks=_replace(MODEL, _other_architecture),
    ),  # fmt: skip
    Case(
        "checkpoint without meta",
        ("eval-reid", "small_cnn"),
        (MODEL, "not a train_reid model file"),
        breaks=_replace(MODEL, _no_meta),
    ),  # fmt: skip
    # manifests
    Case(
        "manifest without camera",
        ("eval-reid", "small_cnn"),
        ("demo_a/query.parquet", "['camera']"),
        breaks=_replace("data/processed/demo_a/query.parquet", _drop_camera),
    ),  # fmt: skip
    Case(
        "manifest not parquet",
        ("eval-reid", "small_cnn"),
        ("demo_a/gallery.parquet", "not a readable parquet"),
        breaks=_replace("data/processed/demo_a/gallery.parquet", _not_parquet),
    ),  # fmt: skip
    # command-line arguments
    Case("unknown command", ("trian-reid",), ("invalid choice: 'trian-reid'",)),
    Case("unknown model", ("train-reid", "resnet9000"), ("reid.models has no 'resnet9000'",)),
    Case("unknown dataset", ("ingest", "imagenet"), ("ingest.datasets has no 'imagenet'",)),
    Case("missing argument", ("eval-reid",), ("the following arguments are required: model",)),
    Case("unknown flag", ("eval-reid", "small_cnn", "--fast"), ("unrecognized arguments: --fast",)),
    Case("unknown defense", ("train-defense", "iron_dome"), ("unknown defense 'iron_dome'",)),
]
SUBPROCESS_CASES = ("train-reid lr string", "checkpoint malicious")


# ---------------------------------------------------------------------------------------------------- the project
@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    write_demo_project(root, SPEC)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, (fmt, writer, options) in DATASETS.items():
        writer(root / "data" / "raw" / name)
        params["ingest"]["datasets"][name] = {"format": fmt, "root": f"data/raw/{name}", "options": options}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model = build_reid_model("small_cnn", SPEC.num_train_ids)
    meta = {"arch": "small_cnn", "num_classes": SPEC.num_train_ids, "feature_dim": 0, "source": "demo_a"}
    meta.update(height=SPEC.height, width=SPEC.width)
    (root / MODEL).parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "meta": meta}, root / MODEL)
    return root


@pytest.fixture()
def env(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADVREID_ROOT", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.setenv("PREFECT_HOME", str(project / ".prefect"))
    monkeypatch.delenv("ADVREID_DEBUG", raising=False)
    monkeypatch.chdir(project)
    return project


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] in UNTRACKED or relative.startswith(UNTRACKED) or path.is_dir():
            continue
        out[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "link"
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree[key]
    if value is MISSING:
        del tree[last]
    else:
        tree[last] = value


@pytest.fixture()
def bad_input(env: Path, request: pytest.FixtureRequest):
    """Apply a case's edits for the test, undo them afterwards; yields (project, hashes before the run)."""
    case: Case = request.param
    original = (env / "params.yaml").read_text()
    params = copy.deepcopy(yaml.safe_load(original))
    for dotted, value in (case.params or {}).items():
        _set(params, dotted, value)
    (env / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    undo = case.breaks(env) if case.breaks else (lambda: None)
    try:
        yield case, _snapshot(env)
    finally:
        undo()
        (env / "params.yaml").write_text(original)
        for relative in case.may_write:
            (env / relative).unlink(missing_ok=True)


def _check(case: Case, code: int, err: str, before: dict[str, str], root: Path) -> None:
    assert code == EXIT_BAD_INPUT, err
    assert "Traceback" not in err and "weights_only" not in err, err
    for text in case.expect:
        assert text in err, f"{text!r} not in the message:\n{err}"
    after = _snapshot(root)
    written = sorted(set(after) - set(before) - set(case.may_write))
    assert not written, f"the failing command wrote {written}"
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"the failing command changed or removed {changed}"
    assert not (root / "data" / "raw" / "pwned").exists()


@pytest.mark.parametrize("bad_input", CASES, ids=str, indirect=True)
def test_bad_input_is_one_message_exit_2_and_touches_nothing(bad_input, env, capsys):
    case, before = bad_input
    try:
        code = cli.main(list(case.argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    _check(case, code, capsys.readouterr().err, before, env)


@pytest.mark.slow  # a fresh interpreter per case (~10 s of imports on a loaded 2-core machine)
@pytest.mark.parametrize("bad_input", [c for c in CASES if c.name in SUBPROCESS_CASES], ids=str, indirect=True)
def test_the_real_command_prints_no_traceback(bad_input, env):
    case, before = bad_input
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "advreid", *case.argv], cwd=env, env=environment, capture_output=True, text=True
    )
    _check(case, result.returncode, result.stderr, before, env)
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # the message and the hint, nothing else


def test_the_battery_is_big_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    readers = {fmt for fmt, _, _ in DATASETS.values()}
    assert readers >= {
        "market1501",
        "dukemtmc",
        "msmt17",
        "cuhk03",
        "veri776",
        "cifar10",
        "stl10",
        "tinyimagenet",
        "mnist",
    }
