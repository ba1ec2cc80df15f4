"""Stage ``claims``: the thesis' directional claims the demo can test, each judged on the robustness matrix by the
interval of a difference (advreid.robustness.claims); the verdicts are computed, never written by hand.

Outputs: ``reports/claims.json`` (per claim: the words, the thesis table, the parts with their numbers and
intervals, the seeds, the verdict, the MLflow run ids of the cells behind it) and ``reports/claims.md``.
"""

from __future__ import annotations

import argparse
import json
import sys

from advreid.io import write_json, write_text
from advreid.params import build, load_params
from advreid.robustness.settings import RobustnessParams
from advreid.settings import apply_environment
from advreid.stats import VERDICTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid claims", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = apply_environment()
    params = build(RobustnessParams, load_params("robustness", root / "params.yaml"), "robustness").check()
    matrix_path = root / "reports" / "metrics" / "robustness_matrix.json"
    if not matrix_path.is_file():
        raise FileNotFoundError(f"{matrix_path} not found: run the robustness_matrix stage first")

    from advreid.robustness.claims import claims_markdown, judge_claims
    from advreid.tracking.mlflow_run import stage_run

    with stage_run("claims", {"seeds": list(params.seeds)}) as run:
        entries = judge_claims(json.loads(matrix_path.read_text()))
        write_json(root / "reports" / "claims.json", {"claims": entries})
        write_text(root / "reports" / "claims.md", claims_markdown(entries))
        counts = {v: sum(e["verdict"] == v for e in entries) for v in VERDICTS}
        run.log_metrics({f"claims_{v.replace(' ', '_')}": n for v, n in counts.items()})
        run.set_tags({f"advreid.claim.{e['id']}": e["verdict"] for e in entries})
        for name in ("claims.json", "claims.md"):
            run.log_artifact(root / "reports" / name, "claims")
    for entry in entries:
        print(f"claims: {entry['id']}: {entry['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
