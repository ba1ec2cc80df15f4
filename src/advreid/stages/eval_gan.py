"""Stage ``eval_gan``: every trained run of ``gan.demo_runs`` against direct transfer on the target domain.

Per run and seed: the adapted E_id's target query/gallery retrieval (the evaluator of eval_reid), MMD(target,
generated S->T) on the teacher's features beside MMD(target, source) (thesis Table 3.8), SSIM of each image and its
cyclic reconstruction; mean +- std over seeds. Outputs: ``reports/metrics/ipes_gan.json``, ``reports/gan/tables.md``
(thesis Tables 3.1, 3.3, 3.4, 3.5, 3.8: demo rows, thesis rows quoted) and ``reports/gan/translations.png`` (like
thesis Figs. 3.4-3.6). LPIPS and FID (Table 3.6) only from local weights named in ``gan.quality`` (never downloaded),
else "not computed".
"""

from __future__ import annotations

import argparse
import sys

from advreid.device import select_device, set_threads
from advreid.gan.experiment import GANParams, evaluate_runs
from advreid.gan.tables import gan_tables
from advreid.io import write_json, write_text
from advreid.params import build, load_params
from advreid.settings import apply_environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid eval-gan", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    root = apply_environment()
    params = build(GANParams, load_params("gan", root / "params.yaml"), "gan").check()
    set_threads(params.threads, "gan.threads")
    device = select_device(params.device)
    from advreid.tracking.mlflow_run import numeric_leaves, stage_run

    logged = {
        "source": params.source,
        "target": params.target,
        "runs": list(params.demo_runs),
        "seeds": list(params.seeds),
        "eval": params.eval,
    }
    processed = root / "data" / "processed" / params.target
    manifests = {f"{params.target}/{s}": processed / f"{s}.parquet" for s in ("query", "gallery")}
    with stage_run("eval_gan", logged, manifests=manifests) as run:
        grid = root / "reports" / "gan" / "translations.png"
        metrics = evaluate_runs(params, root, device, grid)
        metrics_path = root / "reports" / "metrics" / "ipes_gan.json"
        write_json(metrics_path, metrics)
        tables = root / "reports" / "gan" / "tables.md"
        write_text(tables, gan_tables(metrics, params.source, params.target, params.main_run, len(params.seeds)))
        run.log_metrics(numeric_leaves(metrics))
        for path in (metrics_path, tables, grid):
            run.log_artifact(path, "gan")
    direct, main_run = metrics["direct_transfer"], metrics[params.main_run]
    print(
        f"eval_gan: {params.source}->{params.target}: direct transfer rank-1 {direct['rank1']:.3f} mAP "
        f"{direct['mAP']:.3f}; {params.main_run} rank-1 {main_run['rank1']:.3f} +- {main_run['rank1_std']:.3f} "
        f"mAP {main_run['mAP']:.3f} +- {main_run['mAP_std']:.3f} over {len(params.seeds)} seeds; MMD(T,S) "
        f"{metrics['mmd']['target_source']:.4f} MMD(T,G) {metrics['mmd']['target_generated']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
