"""``reports/index.html``: one self-contained page (images embedded as base64, no external file or script) with the
claims and their verdicts, the robustness matrix per task, each chapter's tables and the pipeline's figures.

Every matrix number links to its MLflow cell run and shows the ``dvc.lock`` hash of the output it was read from; a
small inline script counts images that failed to decode into ``<body data-broken-images>`` so a headless browser
can check the page.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import jinja2
import markdown

VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "bad", "inconclusive": "unsure"}

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>advreid: the robustness picture</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.82em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.45em; vertical-align: top; }
th { background: #f2f2f2; }
.ok { background: #d8f0d8; } .bad { background: #f6d5d5; } .unsure { background: #f3efd0; }
.small { font-size: 0.78em; color: #555; } img { max-width: 100%; }
a { color: #1a4f9c; text-decoration: none; }
</style></head>
<body data-broken-images="unknown">
<h1>advreid: the robustness picture</h1>
<p class="small">git {{ commit }} &middot; dvc.lock md5 {{ lock_md5 }} &middot; MLflow {{ mlflow_ui }}
(experiment {{ experiment }}) &middot; every number links to its MLflow run; hover a cell for its lineage.</p>
<h2 id="claims">The thesis' claims</h2>
<table><tr><th>ch.</th><th>claim</th><th>thesis</th><th>demo: difference [95% interval]</th><th>verdict</th></tr>
{% for c in claims %}<tr><td>{{ c.chapter }}</td><td>{{ c.claim }}</td><td>{{ c.thesis }}</td><td>
{% for p in c.parts %}<div>{{ p.label }}: {{ p.text }}{% for r in p.run_ids %}
<a href="{{ run_url(r) }}" title="MLflow run {{ r }}">[{{ loop.index }}]</a>{% endfor %}</div>{% endfor %}
<div class="small">seeds {{ c.seeds }}</div></td><td class="{{ c.css }}"><b>{{ c.verdict }}</b></td></tr>
{% endfor %}</table>
<h2 id="matrix">The robustness matrix</h2>
<p class="small">{{ missing|length }} cells no stage produces: {% for m in missing %}{{ m.task }}/{{ m.model }}/{{
m.attack }}/{{ m.budget }}{% if not loop.last %}, {% endif %}{% endfor %}</p>
{% for t in tasks %}<h3>{{ t.name }} ({{ t.metric }})</h3>
{% if t.image %}<img alt="heatmap {{ t.name }}" src="data:image/png;base64,{{ t.image }}">{% endif %}
<table><tr><th>model</th>{% for col in t.columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr><th>{{ row.model }}</th>{% for cell in row.cells %}<td{% if cell %}
title="{{ cell.lineage }}"{% endif %}>{% if cell %}<a href="{{ run_url(cell.run_id) }}">{{ cell.text }}</a>{% endif %}
</td>{% endfor %}</tr>{% endfor %}</table>{% endfor %}
<h2 id="tables">Each chapter's tables</h2>
{% for name, body in tables %}<h3>{{ name }}</h3>{{ body|safe }}{% endfor %}
<h2 id="figures">Figures</h2>
{% for name, image in figures %}<h3>{{ name }}</h3><img alt="{{ name }}" src="data:image/png;base64,{{ image }}">
{% endfor %}
<script>
window.addEventListener("load", function () {
  var broken = 0;
  document.querySelectorAll("img").forEach(function (img) { if (!img.complete || img.naturalWidth === 0) broken++; });
  document.body.setAttribute("data-broken-images", String(broken));
});
</script>
</body></html>
"""


def embed_png(path: Path) -> str:
    """The base64 text of a PNG file; raises FileNotFoundError naming a missing one."""
    if not path.is_file():
        raise FileNotFoundError(f"report: figure {path} does not exist")
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"report: {path} is not a PNG file")
    return base64.b64encode(data).decode("ascii")


def _interval_text(d: dict[str, Any]) -> str:
    if d.get("low") is None or d.get("estimate") is None:
        return "not measured"
    return f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({d['method']}, n={d['n']})"


def cell_text(spread: dict[str, Any]) -> str:
    low, high = spread.get("low"), spread.get("high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{100 * spread['estimate']:.1f}"
    return f"{100 * spread['estimate']:.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def task_tables(matrix: dict[str, Any], heatmaps: dict[str, Path]) -> list[dict[str, Any]]:
    """Per task: models x (attack, budget) cells as text with the run id and the lineage shown on hover."""
    from advreid.robustness.plots import HEATMAPS

    tasks = []
    for task, (metric, title) in HEATMAPS.items():
        cells = [c for c in matrix["cells"].values() if c["task"] == task and metric in c["metrics"]]
        if not cells:
            continue
        columns = sorted({_column(c) for c in cells}, key=lambda name: (name != "clean", name))
        by_model: dict[str, dict[str, dict]] = {}
        for c in cells:
            by_model.setdefault(c["model"], {})[_column(c)] = {
                "text": cell_text(c["metrics"][metric]),
                "run_id": c.get("run_id", ""),
                "lineage": f"{c.get('stage', '?')}: {c['source']} md5 {c.get('source_md5', '-')}; "
                f"model {c.get('model_md5', '-')}; data {c.get('data_md5', '-')}",
            }
        rows = [{"model": m, "cells": [by_model[m].get(col) for col in columns]} for m in sorted(by_model)]
        image = embed_png(heatmaps[task]) if task in heatmaps else None
        tasks.append({"name": title, "metric": metric, "columns": columns, "rows": rows, "image": image})
    return tasks


def _column(cell: dict[str, Any]) -> str:
    return cell["attack"] if cell["budget"] == "-" else f"{cell['attack']} {cell['budget']}"


def render(
    *,
    claims: list[dict[str, Any]],
    matrix: dict[str, Any],
    heatmaps: dict[str, Path],
    tables: dict[str, str],
    figures: dict[str, Path],
    commit: str,
    lock_md5: str,
    mlflow_ui: str,
    experiment: str,
) -> str:
    """The HTML text of the report; ``tables`` maps a title to Markdown, ``figures`` a title to a PNG path."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(TEMPLATE)
    claim_rows = [
        {**c, "css": VERDICT_CLASS[c["verdict"]], "seeds": c.get("seeds", []),
         "parts": [{**p, "text": _interval_text(p["difference"])} for p in c["parts"]]}
        for c in claims
    ]  # fmt: skip
    return template.render(
        claims=claim_rows,
        missing=matrix.get("missing", []),
        tasks=task_tables(matrix, heatmaps),
        tables=[(name, markdown.markdown(text, extensions=["tables"])) for name, text in tables.items()],
        figures=[(name, embed_png(path)) for name, path in figures.items()],
        commit=commit,
        lock_md5=lock_md5,
        mlflow_ui=mlflow_ui,
        experiment=experiment,
        run_url=lambda run_id: f"{mlflow_ui.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}",
    )
