"""eval_reid's figures: the CMC curves as CSV (DVC draws source->source against source->target) and the ranked
lists of a few queries per domain, framed green (right identity) or red (wrong), as in thesis Figs. 4.2 and 5.2."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from advreid.plots import to_uint8_image
from advreid.reid.evaluation import DomainEvaluation, EvalSettings
from advreid.reid.metrics import pairwise_distance
from advreid.reid.ranked_list import ranked_gallery, ranked_list_figure


def cmc_csv(source: DomainEvaluation, target: DomainEvaluation) -> str:
    """CSV text: rank, source, target[, source_rerank, target_rerank] (CMC values in [0, 1])."""
    columns = {"source": source.result.cmc, "target": target.result.cmc}
    if source.reranked is not None and target.reranked is not None:
        columns.update(source_rerank=source.reranked.cmc, target_rerank=target.reranked.cmc)
    length = min(len(values) for values in columns.values())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", *columns])
    for i in range(length):
        writer.writerow([i + 1, *(f"{float(values[i]):.6f}" for values in columns.values())])
    return buffer.getvalue()


def ranked_list(evaluations: list[DomainEvaluation], settings: EvalSettings, path: Path, title: str) -> Path:
    """The ranked-list picture: ``settings.ranked_queries`` evenly spaced queries of each domain, each with its
    ``settings.top_k`` nearest gallery images by the plain (not re-ranked) distance."""
    queries, ranked, matches, labels = [], [], [], []
    for ev in evaluations:
        count = min(settings.ranked_queries, len(ev.query))
        picks = torch.linspace(0, len(ev.query) - 1, count).round().long().unique()
        distances = pairwise_distance(ev.query_features[picks], ev.gallery_features, settings.metric)
        q_labels, q_cams = torch.as_tensor(ev.query.labels)[picks], torch.as_tensor(ev.query.cameras)[picks]
        top, hit = ranked_gallery(
            distances,
            q_labels,
            q_cams,
            torch.as_tensor(ev.gallery.labels),
            torch.as_tensor(ev.gallery.cameras),
            settings.top_k,
        )
        for row, query_index in enumerate(picks.tolist()):
            queries.append(to_uint8_image(ev.query.image(query_index)))
            ranked.append([to_uint8_image(ev.gallery.image(g)) for g in top[row].tolist()])
            labels.append(f"{ev.name}\nid {int(q_labels[row])}")
        matches.append(hit)
    return ranked_list_figure(queries, ranked, torch.cat(matches), path, row_labels=labels, title=title)
