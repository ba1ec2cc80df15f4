import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from advreid.errors import DataSizeError
from advreid.reid.metrics import evaluate_rank, pairwise_distance
from advreid.reid.reranking import k_reciprocal_rerank
from tests.reranking_reference import re_ranking


def _reference(query, gallery, metric="euclidean", dtype=np.float32, **kw):
    q, g = query.double().numpy(), gallery.double().numpy()
    # plain (not squared) distances in: the reference squares them
    q_g, q_q, g_g = (cdist(a, b, metric) for a, b in ((q, g), (q, q), (g, g)))
    return torch.from_numpy(re_ranking(q_g, q_q, g_g, dtype=dtype, **kw).astype(np.float64))


def _features(seed, num_q=15, num_g=40, dim=8, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    # a few identity centres so that k-reciprocal sets and the 2/3 expansion are non-trivial
    centres = torch.randn(6, dim, generator=gen, dtype=dtype) * 2
    q = centres[torch.randint(0, 6, (num_q,), generator=gen)] + torch.randn(num_q, dim, generator=gen, dtype=dtype)
    g = centres[torch.randint(0, 6, (num_g,), generator=gen)] + torch.randn(num_g, dim, generator=gen, dtype=dtype)
    return q, g


@pytest.mark.parametrize(
    ("seed", "k1", "k2", "lambda_value", "metric"),
    [
        (0, 20, 6, 0.3, "euclidean"),
        (1, 5, 1, 0.3, "euclidean"),
        (2, 7, 3, 0.0, "euclidean"),
        (3, 10, 4, 0.8, "cosine"),
        (4, 3, 4, 1.0, "euclidean"),
    ],
)
def test_equals_the_dense_reference(seed, k1, k2, lambda_value, metric):
    q, g = _features(seed)
    expected = _reference(q, g, metric, dtype=np.float64, k1=k1, k2=k2, lambda_value=lambda_value)
    ours = k_reciprocal_rerank(q, g, k1, k2, lambda_value, metric=metric, chunk_size=16).matrix()
    assert ours.shape == (15, 40) and ours.dtype == torch.float64
    assert torch.allclose(ours, expected, atol=1e-9, rtol=0)


def test_float32_equals_the_float32_reference():
    q, g = _features(5, dtype=torch.float32)
    ours = k_reciprocal_rerank(q, g).matrix()
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), _reference(q, g), atol=1e-5, rtol=0)


def test_chunk_sizes_and_query_order_do_not_change_the_result():
    q, g = _features(6, num_q=23, num_g=57)
    whole = k_reciprocal_rerank(q, g, 9, 4, chunk_size=1000).matrix(chunk_size=1000)
    for chunk in (1, 5, 33):
        assert torch.allclose(k_reciprocal_rerank(q, g, 9, 4, chunk_size=chunk).matrix(chunk), whole, atol=1e-12)
    dist = k_reciprocal_rerank(q, g, 9, 4, chunk_size=7)
    order = torch.tensor([22, 0, 5, 5, 13])
    assert torch.allclose(dist(order), whole[order], atol=1e-12)


def test_evaluate_rank_with_the_distance_fn_matches_the_dense_reference():
    q, g = _features(7, num_q=20, num_g=60)
    gen = torch.Generator().manual_seed(7)
    ql, gl = torch.randint(1, 6, (20,), generator=gen), torch.randint(1, 6, (60,), generator=gen)
    qc, gc = torch.randint(1, 4, (20,), generator=gen), torch.randint(1, 4, (60,), generator=gen)
    expected = _reference(q, g, dtype=np.float64, k1=8, k2=3)
    ours = evaluate_rank(q, g, ql, gl, qc, gc, chunk_size=6, distance_fn=k_reciprocal_rerank(q, g, 8, 3))
    dense = evaluate_rank(q, g, ql, gl, qc, gc, distance_fn=lambda idx: expected[idx])
    assert torch.equal(ours.cmc, dense.cmc) and ours.mAP == pytest.approx(dense.mAP, abs=1e-12)


def _impostor_scene():
    """Two identities, each with one query, a cluster of true matches around it and one true match that is far
    from the query, beyond an impostor. The impostor sits at the edge of a tight cluster of another identity
    (label 9), so the query is not among its nearest; the far true match sits on the side of its own cluster.

    Returns features, labels, cameras for query (2) and gallery (2 x (4 + 1 + 6 + 1) = 24 images).
    """
    q, g, gl = [], [], []
    for offset, label in ((0.0, 1), (40.0, 2)):
        centre = torch.tensor([offset, 0.0])
        q.append(centre)
        near = [centre + torch.tensor([0.0, s]) for s in (-1.0, 1.1, -2.05, 2.0)]  # true matches, vertical line
        far = centre + torch.tensor([-2.4, 0.05])  # true match; the near ones count it among their neighbours
        impostor = centre + torch.tensor([2.2, 0.0])
        # the impostor's identity, packed around it so that the query is not among the impostor's neighbours
        crowd = [centre + torch.tensor([3.3 + 0.1 * i, 0.3 * (-1) ** i]) for i in range(6)]
        g += [*near, far, impostor, *crowd]
        gl += [label] * 5 + [9] * 7
    return torch.stack(q).double(), torch.stack(g).double(), torch.tensor([1, 2]), torch.tensor(gl)


def test_reranking_promotes_a_true_match_that_is_a_reciprocal_neighbour_of_the_query_neighbours():
    q, g, ql, gl = _impostor_scene()
    qc, gc = torch.zeros(2, dtype=torch.long), torch.ones(len(g), dtype=torch.long)
    plain = pairwise_distance(q, g)
    far, impostor = torch.tensor([4, 16]), torch.tensor([5, 17])
    # plain distance: every near match, then the impostor, then the far match
    assert (plain[[0, 1], impostor] < plain[[0, 1], far]).all()
    reranked = k_reciprocal_rerank(q, g, k1=5, k2=2, lambda_value=0.3).matrix()
    assert (reranked[[0, 1], far] < reranked[[0, 1], impostor]).all()
    before = evaluate_rank(q, g, ql, gl, qc, gc)
    after = evaluate_rank(q, g, ql, gl, qc, gc, distance_fn=k_reciprocal_rerank(q, g, k1=5, k2=2))
    assert before.mAP < 1.0 and after.mAP == pytest.approx(1.0)
    assert after.mAP > before.mAP


def test_bad_arguments_are_named():
    q, g = _features(8)
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_rerank(q, g, k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(q, g, lambda_value=1.5)
    with pytest.raises(ValueError, match="same D"):
        k_reciprocal_rerank(q, g[:, :4])
    with pytest.raises(DataSizeError, match=r"exceeds .* \(lower the re-ranking k1"):  # a user's error: exit 2
        k_reciprocal_rerank(q[:3], g[:4], k1=7)
    with pytest.raises(ValueError, match="chunk_size"):
        k_reciprocal_rerank(q, g, chunk_size=0)
    with pytest.raises(KeyError, match="metric"):
        k_reciprocal_rerank(q, g, metric="manhattan")
    with pytest.raises(TypeError, match="floating"):
        k_reciprocal_rerank(q.long(), g.long())
    with pytest.raises(ValueError, match="identical"):
        k_reciprocal_rerank(torch.ones(3, 2), torch.ones(5, 2), k1=2, k2=1)


def test_nan_features_are_named_as_such_not_as_identical_features():
    query, gallery = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    gallery[2, 0] = float("nan")
    with pytest.raises(ValueError, match="gallery features hold NaN") as info:
        k_reciprocal_rerank(query, gallery, k1=3, k2=2, lambda_value=0.3)
    assert "identical" not in str(info.value)
