"""The robustness_matrix and claims stages on a tiny project of hand-made stage outputs: cells as MLflow runs with
lineage, a second run recomputes nothing, a changed output recomputes only its cells, audit follows a cell run."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from advreid.stages import claims as claims_stage
from advreid.stages import report, robustness_matrix
from advreid.tracking.audit import audit
from advreid.tracking.mlflow_run import get_client
from tests.fixtures_robustness import attack_metrics, write_lock, write_matrix_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_matrix_project(tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.setenv("ADVREID_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.delenv("ADVREID_MLFLOW_PARENT_RUN_ID", raising=False)
    return root


def _cell_runs(root: Path) -> list:
    client = get_client(root)
    experiment = client.get_experiment_by_name("advreid")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`advreid.cell.task` != ''")


def test_matrix_cells_are_runs_created_once(project: Path, capsys: pytest.CaptureFixture):
    assert robustness_matrix.main([]) == 0
    data = json.loads((project / "reports/metrics/robustness_matrix.json").read_text())
    cells = data["cells"]
    runs = _cell_runs(project)
    assert len(runs) == len(cells) == 3 + 4 + 2 + 6  # attack, defense, adaptation, certify (2 methods x 3 radii)
    pgd = cells["attack/m1/pgd/eps8"]
    run = get_client(project).get_run(pgd["run_id"])
    assert run.data.tags["advreid.stage"] == "attack@m1" == pgd["stage"]
    assert run.data.tags["advreid.cell.config.method"] == "pgd"
    assert run.data.tags["advreid.cell.model_md5"].startswith("models/reid/m1/model.pt=")
    assert run.data.metrics["rank1"] == 0.25 and run.data.metrics["rank1_high"] == pytest.approx(pgd["metrics"][
        "rank1"]["high"])  # fmt: skip
    assert all((project / "reports/matrix" / f"{t}.png").stat().st_size > 0 for t in ("attack", "defense"))
    # the cell run's lineage is the producing stage's: audit verifies it against dvc.lock and the files
    report = audit(pgd["run_id"], project)
    assert report.ok and report.stage == "attack@m1"
    assert any(link.kind == "run" and "models/reid/m1/model.pt" in link.name for link in report.links)

    # the chapter's final model is registered with its lineage and its matrix row
    client = get_client(project)
    (version,) = client.search_model_versions("name = 'tiny-m1'")
    assert (
        version.tags["advreid.model.md5"] == hashlib.md5((project / "models/reid/m1/model.pt").read_bytes()).hexdigest()
    )
    assert version.tags["advreid.model.stage"] == "train_reid@m1"
    assert "| pgd | eps8 | 25.0 [" in version.description and pgd["run_id"] in version.description

    capsys.readouterr()
    assert robustness_matrix.main([]) == 0  # nothing changed: no new run, the same run ids, no new model version
    assert "(0 new MLflow cell runs" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'tiny-m1'")) == 1
    assert len(_cell_runs(project)) == len(cells)
    again = json.loads((project / "reports/metrics/robustness_matrix.json").read_text())["cells"]
    assert {k: c["run_id"] for k, c in again.items()} == {k: c["run_id"] for k, c in cells.items()}

    # a new attack output (clean rank-1 changed): only that file's cells are recomputed
    (project / "reports/metrics/attack/m1.json").write_text(json.dumps(attack_metrics(clean_rank1=0.5)))
    write_lock(project)
    assert robustness_matrix.main([]) == 0
    assert "(3 new MLflow cell runs" in capsys.readouterr().out  # the attack output's 3 cells (clean, pgd, wma)
    third = json.loads((project / "reports/metrics/robustness_matrix.json").read_text())["cells"]
    assert third["defense/mp_snn/pgd/eps8"]["run_id"] == cells["defense/mp_snn/pgd/eps8"]["run_id"]
    assert third["attack/m1/clean/-"]["run_id"] != cells["attack/m1/clean/-"]["run_id"]


def test_claims_stage_writes_computed_verdicts(project: Path):
    robustness_matrix.main([])
    assert claims_stage.main([]) == 0
    entries = json.loads((project / "reports/claims.json").read_text())["claims"]
    by_id = {e["id"]: e for e in entries}
    assert by_id["ipes_gan_beats_direct_transfer"]["verdict"] == "reproduced"
    assert by_id["ipes_gan_beats_direct_transfer"]["seeds"] == [0, 1, 2]
    cells = json.loads((project / "reports/metrics/robustness_matrix.json").read_text())["cells"]
    assert set(by_id["ipes_gan_beats_direct_transfer"]["run_ids"]) <= {c["run_id"] for c in cells.values()}
    assert "| 3 |" in (project / "reports/claims.md").read_text()


def test_missing_matrix_is_a_clear_error(project: Path):
    with pytest.raises(FileNotFoundError, match="robustness_matrix.json not found"):
        claims_stage.main([])


class _Page(HTMLParser):
    """Collects the images and links of the report."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "a":
            self.links.append(values.get("href") or "")
        assert tag not in ("link", "iframe") and not (tag == "script" and values.get("src")), f"external {tag}"


def test_report_is_one_self_contained_page(project: Path):
    robustness_matrix.main([])
    claims_stage.main([])
    assert report.main([]) == 0
    html = (project / "reports/index.html").read_text()
    page = _Page()
    page.feed(html)
    # 4 heatmaps and the figure, each a PNG embedded in the page
    assert len(page.images) == 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.removeprefix("data:image/png;base64,")).startswith(b"\x89PNG")
    cells = json.loads((project / "reports/metrics/robustness_matrix.json").read_text())["cells"]
    pgd = cells["attack/m1/pgd/eps8"]
    assert any(link.endswith(f"/runs/{pgd['run_id']}") and link.startswith("http://mlflow.test:5000/")
               for link in page.links)  # fmt: skip
    assert pgd["source_md5"] in html  # the dvc.lock hash of the output behind the number
    assert "<td>pgd</td>" in html  # the chapter's Markdown table rendered
    assert "IPES-GAN" in html and "reproduced" in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (Debian package `chromium`)")
def test_report_renders_in_headless_chromium_with_no_broken_image(project: Path):
    robustness_matrix.main([])
    claims_stage.main([])
    report.main([])
    url = (project / "reports/index.html").as_uri()
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    assert 'data-broken-images="0"' in dom
