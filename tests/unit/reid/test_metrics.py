import pytest
import torch

from advreid.reid.metrics import average_precision, evaluate_rank, pairwise_distance


def _hand_case():
    # query: label 1, camera 1. Gallery (distance): g0 same id same cam (0.1, removed), g1 other id (0.2),
    # g2 true match (0.3), g3 junk -1 (0.35, removed), g4 true match (0.5), g5 distractor 0 (0.4)
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.35, 0.5, 0.4]])
    g_labels = torch.tensor([1, 2, 1, -1, 1, 0])
    g_cams = torch.tensor([1, 2, 2, 2, 3, 2])
    return dist, g_labels, g_cams


def _eval(dist, g_labels, g_cams, q_labels=None, q_cams=None, **kw):
    q_labels = torch.tensor([1]) if q_labels is None else q_labels
    q_cams = torch.tensor([1]) if q_cams is None else q_cams
    return evaluate_rank(
        torch.zeros(len(q_labels), 1),
        torch.zeros(len(g_labels), 1),
        q_labels,
        g_labels,
        q_cams,
        g_cams,
        distance_fn=lambda idx: dist[idx],
        **kw,
    )


def test_hand_computed_cmc_map_minp_both_conventions():
    dist, g_labels, g_cams = _hand_case()
    # ranked after removal: g1 (miss), g2 (hit), g5 (miss), g4 (hit)
    res = _eval(dist, g_labels, g_cams, max_rank=4)
    assert res.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert res.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res.mINP == pytest.approx(2 / 4)
    trap = _eval(dist, g_labels, g_cams, ap_convention="trapezoid")
    # official Market code: (0/1 + 1/2)/2 at the first hit, (1/3 + 2/4)/2 at the second, each weighted 1/2
    assert trap.mAP == pytest.approx(((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2)
    assert trap.ap_convention == "trapezoid"


def test_queries_without_a_match_are_skipped_and_junk_never_counts():
    dist, g_labels, g_cams = _hand_case()
    dist = torch.cat([dist, dist])
    # second query: identity 2 seen only by camera 2, and the query is on camera 2 -> no valid match
    res = _eval(dist, g_labels, g_cams, q_labels=torch.tensor([1, 2]), q_cams=torch.tensor([1, 2]))
    assert res.num_valid_queries == 1
    junk_first = torch.tensor([[0.9, 0.9, 0.3, 0.0, 0.5, 0.9]])
    assert _eval(junk_first, g_labels, g_cams).rank(1) == 1.0  # junk at distance 0 is removed, g2 is rank 1


def test_average_precision_matches_sklearn_for_noninterp():
    from sklearn.metrics import average_precision_score

    gen = torch.Generator().manual_seed(0)
    matches = torch.rand(20, 30, generator=gen) < 0.2
    matches[:, 0] |= ~matches.any(1)
    ours = average_precision(matches, "noninterp")
    scores = torch.arange(30, 0, -1).float()  # ranked order == descending score
    for row in range(20):
        assert ours[row].item() == pytest.approx(average_precision_score(matches[row].numpy(), scores.numpy()))
    assert (average_precision(matches, "trapezoid") <= ours + 1e-12).all()


def test_chunked_equals_unchunked_exactly():
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-3, 4, (37, 8), generator=gen).float()  # small integers: exact arithmetic, many ties
    g = torch.randint(-3, 4, (91, 8), generator=gen).float()
    ql, gl = torch.randint(1, 6, (37,), generator=gen), torch.randint(0, 6, (91,), generator=gen)
    qc, gc = torch.randint(1, 4, (37,), generator=gen), torch.randint(1, 4, (91,), generator=gen)
    whole = evaluate_rank(q, g, ql, gl, qc, gc, chunk_size=1000)
    for chunk in (1, 5, 16):
        part = evaluate_rank(q, g, ql, gl, qc, gc, chunk_size=chunk)
        assert torch.equal(part.cmc, whole.cmc)
        assert part.mAP == whole.mAP and part.mINP == whole.mINP
        assert torch.equal(part.per_query_ap, whole.per_query_ap)


def test_pairwise_distances_match_cdist_and_cosine_definition():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 7, generator=gen, dtype=torch.float64), torch.randn(6, 7, generator=gen, dtype=torch.float64)
    assert torch.allclose(pairwise_distance(a, b), torch.cdist(a, b))
    cos = torch.nn.functional.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=2)
    assert torch.allclose(pairwise_distance(a, b, "cosine"), 1 - cos)
    with pytest.raises(KeyError, match="valid"):
        pairwise_distance(a, b, "manhattan")


def test_single_shot_cmc_keeps_one_image_per_identity():
    # gallery: identity 2 has three images closer than the only true match -> multi-shot rank 4,
    # single-shot (one image per identity) rank 2, whatever image is drawn
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    g_labels, g_cams = torch.tensor([2, 2, 2, 1]), torch.tensor([2, 2, 2, 2])
    assert _eval(dist, g_labels, g_cams).rank(1) == 0.0
    res = _eval(dist, g_labels, g_cams, single_shot_repeats=5, generator=torch.Generator().manual_seed(0))
    assert res.cmc.tolist()[:2] == [0.0, 1.0]


def test_trapezoid_ap_with_a_rank1_hit_uses_precision_one_before_it():
    """Catches a trapezoid AP that takes the precision 'before' a rank-1 hit as 0 instead of 1 (Market code:
    old_precision starts at 1). Hits at ranks 1 and 3 of 3: ((1 + 1) / 2 + (1/2 + 2/3) / 2) / 2 = 19/24."""
    matches = torch.tensor([[True, False, True]])
    assert average_precision(matches, "trapezoid").item() == pytest.approx(19 / 24)
    assert average_precision(matches, "noninterp").item() == pytest.approx((1 + 2 / 3) / 2)


def test_single_shot_cmc_depends_on_the_random_gallery_draw():
    """Catches a single-shot CMC that always keeps the first (or last) image of an identity instead of a random
    one: identity 2 has one image nearer (0.1) and one farther (0.5) than the true match (0.3), so the match is
    rank 1 exactly when the far image is drawn, in about half of the draws."""
    dist = torch.tensor([[0.1, 0.3, 0.5]])
    g_labels, g_cams = torch.tensor([2, 1, 2]), torch.tensor([2, 2, 2])
    rank1 = [
        _eval(dist, g_labels, g_cams, single_shot_repeats=200, generator=torch.Generator().manual_seed(s)).rank(1)
        for s in (0, 1)
    ]
    assert all(0.35 < r < 0.65 for r in rank1)  # Binomial(200, 1/2): 0.35 and 0.65 are > 4 standard deviations
    assert rank1[0] != rank1[1]  # the draw follows the generator


def _features(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("side", "extra_label"),
    [("gallery", 1), ("query", -1)],
    ids=["gallery label without a feature row", "query feature row without a label"],
)
def test_evaluate_rank_refuses_labels_that_do_not_match_feature_rows(side, extra_label):
    """Catches counts taken from the labels alone: a 4 x 10 case with one label too many or too few used to
    give another mAP silently."""
    qf, gf = _features(4, 0), _features(10, 1)
    ql, gl = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 4, 1, 2, 3, 4, 5, 5])
    qc, gc = torch.ones(4, dtype=torch.long), torch.full((10,), 2)
    if side == "gallery":
        gl, gc = torch.cat([gl, torch.tensor([1])]), torch.cat([gc, torch.tensor([2])])
    else:
        ql, qc = ql[:-1], qc[:-1]
    with pytest.raises(ValueError, match=f"the {side} side has"):
        evaluate_rank(qf, gf, ql, gl, qc, gc)


def test_evaluate_rank_refuses_a_distance_fn_with_the_wrong_chunk_shape_and_nan_features():
    qf, gf = _features(4, 0), _features(10, 1)
    ql, gl = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 4, 1, 2, 3, 4, 5, 5])
    qc, gc = torch.ones(4, dtype=torch.long), torch.full((10,), 2)
    full = pairwise_distance(qf, gf)
    with pytest.raises(ValueError, match=r"distance_fn returned shape \(2, 9\).*expected \(2, 10\)"):
        evaluate_rank(qf, gf, ql, gl, qc, gc, chunk_size=2, distance_fn=lambda idx: full[idx][:, :9])
    nan = qf.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="query features hold NaN"):
        evaluate_rank(nan, gf, ql, gl, qc, gc)
    # the check must not change a valid result: same numbers with and without a distance_fn
    plain = evaluate_rank(qf, gf, ql, gl, qc, gc)
    assert evaluate_rank(qf, gf, ql, gl, qc, gc, distance_fn=lambda idx: full[idx]).mAP == plain.mAP
