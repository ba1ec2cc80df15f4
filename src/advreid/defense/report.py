"""Chapter-5 tables from the eval_defense metrics: demo rows beside the thesis' rows (quoted, labelled "thesis"),
the claims of the chapter judged on the demo, and the rank-1 vs eps figure."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

# Table 5.1 / 5.2 columns: (heading, attack name in defense.eval.attacks); "clean" is the no-attack cell
TABLE_5_1_COLUMNS = (
    ("No attack", "clean"), ("FGSM", "fgsm"), ("PGD", "pgd"), ("SMA", "sma"), ("AMA", "ama"), ("MI-FGSM", "mi_fgsm"),
    ("NI-FGSM", "ni_fgsm"), ("SI-NI-FGSM", "si_ni_fgsm"), ("EOT-FGSM", "eot_fgsm"), ("EOT-PGD", "eot_pgd"),
)  # fmt: skip
# thesis Tables 5.1 (Market, R-50) and 5.2 (Market, OS) [L4548, L4578]: CMC-1 / mAP in the column order above
THESIS_5_1 = {
    "R-50 (thesis, Market)": "89.96/73.65 58.55/39.85 18.94/14.15 22.68/17.12 0.02/0.08 17.54/13.64 28.23/19.34 "
    "27.22/18.50 58.55/39.85 15.08/11.78",
    "MP-SNN (R-50) (thesis, Market)": "86.82/66.56 71.22/51.93 74.55/56.01 77.58/57.81 48.42/34.67 70.48/51.92 "
    "69.53/50.79 68.05/49.61 70.27/51.72 63.36/45.26",
    "OS (thesis, Market)": "94.23/83.60 59.08/46.73 45.48/36.13 54.45/43.74 1.51/0.87 50.80/40.21 56.82/44.14 "
    "58.28/45.51 59.08/46.73 42.42/33.13",
    "MP-SNN (OS) (thesis, Market)": "89.81/74.38 75.83/58.59 72.44/56.47 81.20/64.67 53.68/31.24 78.97/61.84 "
    "74.31/58.25 75.95/59.56 75.79/58.71 68.31/53.08",
}
# Table 5.3 [L4604]: clean -> WMA (Market)
THESIS_5_3 = {
    "R-50 (thesis, Market)": ("89.96/73.65", "13.25/10.55"),
    "MP-SNN (R-50) (thesis, Market)": ("86.82/66.56", "60.64/44.21"),
    "OS (thesis, Market)": ("94.23/83.60", "42.07/30.25"),
    "MP-SNN (OS) (thesis, Market)": ("89.81/74.38", "64.32/52.71"),
}
# Table 5.4 [L4653]: CMC-1, columns Clean FGSM PGD MI NI SI-NI EOT-FGSM EOT-PGD SMA AMA
TABLE_5_4_COLUMNS = (
    ("Clean", "clean"), ("FGSM", "fgsm"), ("PGD", "pgd"), ("MI", "mi_fgsm"), ("NI", "ni_fgsm"), ("SI-NI", "si_ni_fgsm"),
    ("EOT-FGSM", "eot_fgsm"), ("EOT-PGD", "eot_pgd"), ("SMA", "sma"), ("AMA", "ama"),
)  # fmt: skip
THESIS_5_4 = {
    "R-50 (thesis)": "89.96 58.55 18.94 17.54 28.23 27.22 58.55 15.08 22.68 0.02",
    "PGD-AT (thesis)": "86.60 62.11 27.49 24.64 36.72 37.82 62.11 24.16 28.02 0.05",
    "MP-SNN (thesis)": "86.82 71.22 74.19 70.48 69.53 68.05 70.27 63.36 77.58 48.42",
}
# Table 5.5 [L4687]: Market-1501, eps 5/255 (15 steps), CMC-1 Clean / MI-FGSM / SMA; "*" = k-reciprocal re-ranking
THESIS_5_5 = {
    "Baseline R-50 (thesis)": "89.96 17.54 22.68",
    "Meta-Def R-50 (thesis)": "88.90 53.34 62.40",
    "Meta-Def* R-50 (thesis)": "89.23 56.81 64.71",
    "MP-SNN R-50 (thesis)": "86.82 69.09 75.44",
    "MP-SNN* R-50 (thesis)": "87.36 74.55 79.29",
    "Baseline OS (thesis)": "94.23 50.80 54.45",
    "MP-SNN OS (thesis)": "89.81 77.01 80.31",
    "MP-SNN* OS (thesis)": "89.75 80.26 81.99",
}
TABLE_5_5_ATTACKS = ("clean", "mi_fgsm", "sma")
# Tables 5.6 [L4737] and 5.7 [L4748]: Clean / PGD / SMA CMC-1
THESIS_5_6 = {"w/o FCA (thesis)": "84.20 73.45 75.77", "w/ FCA (thesis)": "86.82 74.19 77.58"}
THESIS_5_7 = {
    "w/o ML: L_V (thesis)": "89.96 18.94 22.68",
    "w/o ML: L_Adv (thesis)": "86.60 27.49 28.02",
    "w/o ML: L_Tot (thesis)": "82.69 67.66 74.61",
    "w/ ML: L_Meta (thesis)": "86.82 74.19 77.58",
}
DEMO_5_6 = {"w/o FCA": "mp_snn_no_fca", "w/ FCA": "mp_snn"}
DEMO_5_7 = {
    "w/o ML: L_V (vanilla)": "vanilla",
    "w/o ML: L_Adv (PGD-AT)": "pgd_at",
    "w/o ML: L_Tot": "l_tot",
    "w/ ML: L_Meta (MP-SNN)": "mp_snn",
    "L_Meta, isotropic noise only": "iso_only",
    "L_Meta, anisotropic noise only": "aniso_only",
}


_CELL_KEYS = ("rank1", "mAP", "rank1_std", "rank1_rerank", "mAP_rerank", "rank1_rerank_std")


def cell_table(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {cell: {rank1, mAP, rank1_std[, *_rerank]}}} (percent) of every model's cells, ``clean`` included."""
    table = {}
    for model, m in metrics.items():
        table[model] = {
            name: {key: 100 * cell[key] for key in _CELL_KEYS if key in cell} for name, cell in m["cells"].items()
        }
    return table


def _reranked(cell: dict[str, float] | None) -> dict[str, float] | None:
    if cell is None or "rank1_rerank" not in cell:
        return None
    return {"rank1": cell["rank1_rerank"], "rank1_std": cell.get("rank1_rerank_std", 0.0), "mAP": cell["mAP_rerank"]}


def table_5_5(table: dict, budget: str) -> list[str]:
    """Table 5.5 (eps ``budget``, with and without re-ranking, "*" rows) when the budget was evaluated."""
    names = {"vanilla": "vanilla (demo)", "pgd_at": "PGD-AT (demo)", "mp_snn": "MP-SNN (demo)"}
    demo = []
    for model, label in names.items():
        cells = [_get(table, model, a, budget) for a in TABLE_5_5_ATTACKS]
        if model not in table or any(c is None for c in cells[1:]):
            continue
        demo.append([label, *(_fmt(c, False) for c in cells)])
        if all(_reranked(c) is not None for c in cells):
            demo.append([label.replace(" (demo)", "* (demo)"), *(_fmt(_reranked(c), False) for c in cells)])
    if not demo:
        return []
    thesis = [[k, *v.split()] for k, v in THESIS_5_5.items()]
    return _rows(f"Table 5.5: budget `{budget}`, * = k-reciprocal re-ranking (CMC-1)", ["Clean", "MI-FGSM", "SMA"],
                 demo, thesis)  # fmt: skip


def _get(table: dict, model: str, attack: str, budget: str) -> dict[str, float] | None:
    cells = table.get(model, {})
    return cells.get("clean" if attack == "clean" else f"{attack}-{budget}")


def _fmt(cell: dict[str, float] | None, with_map: bool = True) -> str:
    if cell is None:
        return "–"
    text = f"{cell['rank1']:.1f}±{cell.get('rank1_std', 0.0):.1f}"
    return f"{text}/{cell['mAP']:.1f}" if with_map else text


def _rows(title: str, headings: list[str], demo: list[list[str]], thesis: list[list[str]]) -> list[str]:
    lines = [f"### {title}", "", "| model | " + " | ".join(headings) + " |", "|---" * (len(headings) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in demo + thesis]
    return [*lines, ""]


def tables_markdown(
    table: dict, budget: str, masking: dict[str, dict], claims: list[str], rerank_budget: str | None = None
) -> str:
    """Tables 5.1-5.7 (demo rows with rank-1 ± std over the evaluation draws, then thesis rows); Table 5.5 from
    ``rerank_budget`` when given."""
    heads = [h for h, _ in TABLE_5_1_COLUMNS]
    names = {"vanilla": "vanilla (demo)", "mp_snn": "MP-SNN (demo)", "pgd_at": "PGD-AT (demo)"}
    demo = [[names[m], *(_fmt(_get(table, m, a, budget)) for _, a in TABLE_5_1_COLUMNS)] for m in ("vanilla", "mp_snn")
            if m in table]  # fmt: skip
    thesis = [[k, *v.split()] for k, v in THESIS_5_1.items()]
    out = ["# Chapter 5 on the demo: MP-SNN and its baselines", "",
           f"CMC rank-1 ± std over the evaluation draws / mAP, %, budget `{budget}`. Thesis rows are quoted from the "
           "thesis (Market-1501, ResNet-50 / OSNet, eps 8/255, 7 steps) and labelled so.", ""]  # fmt: skip
    out += _rows("Tables 5.1 / 5.2: attacks on the vanilla model and on MP-SNN", heads, demo, thesis)
    demo = [[names[m], _fmt(_get(table, m, "clean", budget)), _fmt(_get(table, m, "wma", budget))]
            for m in ("vanilla", "mp_snn") if m in table]  # fmt: skip
    out += _rows("Table 5.3: WMA", ["Clean", "WMA"], demo, [[k, *v] for k, v in THESIS_5_3.items()])
    heads = [h for h, _ in TABLE_5_4_COLUMNS]
    demo = [[names[m], *(_fmt(_get(table, m, a, budget), False) for _, a in TABLE_5_4_COLUMNS)]
            for m in ("vanilla", "pgd_at", "mp_snn") if m in table]  # fmt: skip
    out += _rows("Table 5.4: generalisation (CMC-1)", heads, demo, [[k, *v.split()] for k, v in THESIS_5_4.items()])
    if rerank_budget is not None:
        out += table_5_5(table, rerank_budget)
    ablations = (
        ("Table 5.6: effect of FCA (CMC-1)", DEMO_5_6, THESIS_5_6),
        ("Table 5.7: losses and meta-learning (CMC-1)", DEMO_5_7, THESIS_5_7),
    )
    for title, rows, thesis_rows in ablations:
        demo = [[label, *(_fmt(_get(table, m, a, budget), False) for a in ("clean", "pgd", "sma"))]
                for label, m in rows.items() if m in table]  # fmt: skip
        out += _rows(title, ["Clean", "PGD", "SMA"], demo, [[k, *v.split()] for k, v in thesis_rows.items()])
    out += ["### Gradient-masking check", "", "| model | rank-1 at max eps | white-box PGD | transfer PGD | passed |",
            "|---|---|---|---|---|"]  # fmt: skip
    for model, check in masking.items():
        w, t = check.get("whitebox_rank1"), check.get("transfer_rank1")
        out.append(f"| {model} | {100 * check['rank1_at_eps_max']:.1f} (eps {check['eps_max']:g}) | "
                   f"{'–' if w is None else f'{100 * w:.1f}'} | {'–' if t is None else f'{100 * t:.1f}'} | "
                   f"{'yes' if check['passed'] else '**FLAGGED**'} |")  # fmt: skip
    return "\n".join([*out, "", "### The chapter's claims on the demo", "", *claims, ""])


def judge_claims(table: dict, budget: str) -> list[str]:
    """The directional claims of chapter 5 (spec section 5), each with the demo's numbers and a verdict."""

    def r1(model: str, attack: str) -> float | None:
        cell = _get(table, model, attack, budget)
        return None if cell is None else cell["rank1"]

    claims = []
    v_clean, v_pgd, m_clean, m_pgd = (
        r1("vanilla", "clean"),
        r1("vanilla", "pgd"),
        r1("mp_snn", "clean"),
        r1("mp_snn", "pgd"),
    )
    if None not in (v_clean, v_pgd, m_clean, m_pgd):
        ratio = m_pgd / v_pgd if v_pgd > 0 else float("inf")
        drop = v_clean - m_clean
        claims.append(f"- MP-SNN rank-1 under PGD {m_pgd:.1f} vs vanilla {v_pgd:.1f} (x{ratio:.2f}, goal >= 3): "
                      f"{'holds' if ratio >= 3 else 'does not hold'}; clean drop {drop:.1f} points (goal <= 5): "
                      f"{'holds' if drop <= 5 else 'does not hold'}.")  # fmt: skip
    attacks = [a for _, a in TABLE_5_4_COLUMNS if a not in ("clean", "pgd")]
    pairs = [(a, r1("mp_snn", a), r1("pgd_at", a)) for a in attacks]
    pairs = [(a, m, p) for a, m, p in pairs if m is not None and p is not None]
    if pairs:
        wins = sum(m >= p for _, m, p in pairs)
        detail = ", ".join(f"{a} {m:.1f} vs {p:.1f}" for a, m, p in pairs)
        claims.append(f"- MP-SNN >= PGD-AT on attacks not used in training: {wins}/{len(pairs)} ({detail}).")
    for label, better, worse in (("FCA helps (MP-SNN vs w/o FCA)", "mp_snn", "mp_snn_no_fca"),
                                 ("meta-learning helps (MP-SNN vs L_Tot w/o ML)", "mp_snn", "l_tot")):  # fmt: skip
        values = [(a, r1(better, a), r1(worse, a)) for a in ("clean", "pgd", "sma")]
        if all(b is not None and w is not None for _, b, w in values):
            detail = ", ".join(f"{a} {b:.1f} vs {w:.1f}" for a, b, w in values)
            verdict = "holds" if all(b >= w for _, b, w in values) else "does not hold on every column"
            claims.append(f"- {label}: {verdict} ({detail}).")
    return claims


def eps_figure(metrics: dict[str, dict[str, Any]], path) -> Any:
    """Rank-1 against the L-inf radius (white-box PGD sweep, eps 0 = clean), one line per model."""
    from advreid.plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for model, m in metrics.items():
        points = sorted([(0.0, m["cells"]["clean"]["rank1"])] + [(float(e), r) for e, r in m["sweep"].items()])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
    ax.set_xlabel("L-inf radius eps (1/255)")
    ax.set_ylabel("CMC rank-1 (white-box PGD)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Robust rank-1 vs eps per defense (EOT on stochastic models)", fontsize=9)
    return save_figure(fig, path)
