"""ZO estimators against true gradients of f(z) = sum(sin z) + ||A z||^2 and exact finite-difference identities."""

from __future__ import annotations

import pytest
import torch

from advreid.certify.zeroth_order import cge_gradient, rge_gradient, zo_backward

DIM = 6


def _problem(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64) / DIM**0.5
    z = torch.randn(batch, DIM, generator=gen, dtype=torch.float64)
    return a, z


class _CountingLoss:
    """f(z) = sum(sin z) + ||A z||^2 per row, recording how many rows each call received."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a = a
        self.calls: list[int] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls.append(z.shape[0])
        flat = z.reshape(z.shape[0], -1)
        return flat.sin().sum(1) + (flat @ self.a.T).pow(2).sum(1)

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        return z.cos() + 2 * z @ self.a.T @ self.a


def _relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (estimate - truth).norm(dim=-1) / truth.norm(dim=-1)  # per sample


def test_rge_error_falls_as_q_grows() -> None:
    a, z = _problem(batch=1)
    loss = _CountingLoss(a)
    copies = z.expand(32, DIM).contiguous()  # 32 independent estimates at the same point
    truth = loss.gradient(copies)
    errors = [
        _relative_error(rge_gradient(loss, copies, q=q, mu=1e-4, generator=torch.Generator().manual_seed(q)), truth)
        .mean()
        .item()
        for q in (5, 50, 2000)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1  # variance ~ d / q


def test_rge_is_unbiased_with_the_dimension_factor() -> None:
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.5], dtype=torch.float64)

    def linear(z: torch.Tensor) -> torch.Tensor:
        return z @ c  # exact differences: the estimate's scale is all the d / (mu q) factor

    z = torch.zeros(1, DIM, dtype=torch.float64)
    estimate = rge_gradient(linear, z, q=20_000, mu=0.01, generator=torch.Generator().manual_seed(0))
    assert _relative_error(estimate, c[None]).item() < 0.06


def test_rge_error_grows_with_mu_for_the_same_directions() -> None:
    a, z = _problem(batch=4)
    loss = _CountingLoss(a)
    truth = loss.gradient(z)
    small = rge_gradient(loss, z, q=4000, mu=1e-3, generator=torch.Generator().manual_seed(5))
    large = rge_gradient(loss, z, q=4000, mu=2.0, generator=torch.Generator().manual_seed(5))
    assert (_relative_error(small, truth) < _relative_error(large, truth)).all()


def test_rge_queries_q_plus_one_rows_per_sample_in_one_call() -> None:
    a, z = _problem(batch=5)
    loss = _CountingLoss(a)
    rge_gradient(loss, z, q=7, generator=torch.Generator().manual_seed(0))
    assert loss.calls == [(7 + 1) * 5]


def test_rge_base_loss_saves_the_base_queries_and_gives_the_same_estimate() -> None:
    a, z = _problem(batch=3)
    loss = _CountingLoss(a)
    full = rge_gradient(loss, z, q=9, generator=torch.Generator().manual_seed(4))
    reused = rge_gradient(loss, z, q=9, generator=torch.Generator().manual_seed(4), base_loss=loss(z))
    assert loss.calls == [30, 3, 27]  # (q+1)B, then the caller's B, then qB
    assert torch.allclose(full, reused, rtol=1e-12, atol=1e-12)


def test_rge_per_sample_estimates_are_independent() -> None:
    a, z = _problem(batch=3)
    loss = _CountingLoss(a)
    g = rge_gradient(loss, z, q=20, generator=torch.Generator().manual_seed(1))
    moved = z.clone()
    moved[1] += 1.0
    g_moved = rge_gradient(loss, moved, q=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(g[0], g_moved[0]) and torch.equal(g[2], g_moved[2])  # other samples untouched
    assert not torch.allclose(g[1], g_moved[1])

    copies = z[:1].expand(2, DIM)
    twin = rge_gradient(loss, copies, q=20, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(twin[0], twin[1])  # each sample draws its own directions


def test_rge_fixed_seed_repeats() -> None:
    a, z = _problem(batch=2)
    loss = _CountingLoss(a)
    first = rge_gradient(loss, z, q=10, generator=torch.Generator().manual_seed(9))
    again = rge_gradient(loss, z, q=10, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, again)


def _rge_by_loops(loss_fn, z: torch.Tensor, q: int, mu: float, generator: torch.Generator) -> torch.Tensor:
    """Eq. 6.16 written out as in Zhang et al. 2022's training loop: one direction at a time, one query per
    sample and direction, the sum accumulated in Python; the directions are drawn as one (q, B, d) tensor so
    that a seeded generator gives both implementations the same u_k."""
    batch, dim = z.shape[0], z[0].numel()
    gaussian = torch.randn((q, batch, dim), generator=generator, dtype=z.dtype)
    estimate = torch.zeros(batch, dim, dtype=z.dtype)
    for b in range(batch):
        point = z[b].reshape(dim)
        base = loss_fn(point[None])[0]
        for k in range(q):
            u = gaussian[k, b] / gaussian[k, b].norm()
            estimate[b] += (dim / q) * (loss_fn((point + mu * u)[None])[0] - base) / mu * u
    return estimate.reshape(z.shape)


@pytest.mark.parametrize(("q", "mu"), [(1, 0.005), (7, 0.005), (40, 0.3)])
def test_rge_equals_the_loop_form_with_the_same_directions(q: int, mu: float) -> None:
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64) / DIM**0.5
    z = torch.randn(3, 2, 3, generator=gen, dtype=torch.float64)  # non-flat samples: d = 6
    loss = _CountingLoss(a)
    batched = rge_gradient(loss, z, q=q, mu=mu, generator=torch.Generator().manual_seed(q))
    looped = _rge_by_loops(loss, z, q, mu, torch.Generator().manual_seed(q))
    assert loss.calls[0] == (q + 1) * 3  # the batched form: one call
    assert torch.allclose(batched, looped, rtol=1e-9, atol=1e-12)
    other = rge_gradient(loss, z, q=q, mu=mu, generator=torch.Generator().manual_seed(q + 100))
    assert not torch.allclose(other, looped)  # the comparison can fail: other directions, other estimate


def test_cge_with_center_queries_z_first_in_the_same_call_and_keeps_the_estimate() -> None:
    a, z = _problem(batch=4)
    loss = _CountingLoss(a)
    seen: list[torch.Tensor] = []

    def recording(queries: torch.Tensor) -> torch.Tensor:
        seen.append(queries.clone())
        return loss(queries)

    with_center = cge_gradient(recording, z, mu=0.01, with_center=True)
    assert torch.equal(with_center, cge_gradient(loss, z, mu=0.01))
    assert loss.calls == [(2 * DIM + 1) * 4, 2 * DIM * 4]
    rows = seen[0].reshape(2 * DIM + 1, 4, DIM)
    assert torch.equal(rows[0], z)
    assert torch.allclose(rows[1 + 2] - z, 0.01 * torch.eye(DIM, dtype=z.dtype)[2].expand(4, DIM))  # + mu e_2
    assert torch.allclose(rows[1 + DIM + 2] - z, -0.01 * torch.eye(DIM, dtype=z.dtype)[2].expand(4, DIM))


@pytest.mark.parametrize("mu", [0.5, 0.005])
def test_cge_equals_the_central_difference_closed_form(mu: float) -> None:
    # (sin(z + mu) - sin(z - mu)) / (2 mu) = cos(z) sin(mu) / mu; quadratics are differenced exactly
    a, z = _problem(batch=4)
    loss = _CountingLoss(a)
    expected = z.cos() * (torch.sin(torch.tensor(mu, dtype=torch.float64)) / mu) + 2 * z @ a.T @ a
    assert torch.allclose(cge_gradient(loss, z, mu=mu), expected, rtol=1e-8, atol=1e-9)
    assert loss.calls == [2 * DIM * 4]


def test_cge_error_shrinks_with_mu() -> None:
    a, z = _problem(batch=4)
    loss = _CountingLoss(a)
    truth = loss.gradient(z)
    coarse = _relative_error(cge_gradient(loss, z, mu=0.5), truth)
    fine = _relative_error(cge_gradient(loss, z, mu=0.005), truth)
    assert (fine < coarse).all()
    assert fine.max().item() < 1e-4


def test_block_major_layout_matches_per_sample_targets() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)  # non-flat samples
    targets = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)

    def distance(queries: torch.Tensor) -> torch.Tensor:
        rows = targets.repeat(queries.shape[0] // targets.shape[0], 1, 1)
        return (queries - rows).pow(2).flatten(1).sum(1)

    assert torch.allclose(cge_gradient(distance, z, mu=0.01), 2 * (z - targets), atol=1e-9)
    rge = rge_gradient(distance, z, q=3000, mu=1e-4, generator=torch.Generator().manual_seed(0))
    assert (_relative_error(rge.flatten(1), (2 * (z - targets)).flatten(1)) < 0.15).all()


def test_zo_backward_chains_the_estimate_through_the_white_box() -> None:
    a, x = _problem(batch=5)
    loss = _CountingLoss(a)
    layer = torch.nn.Linear(DIM, DIM).double()

    true_layer = torch.nn.Linear(DIM, DIM).double()
    true_layer.load_state_dict(layer.state_dict())
    loss(true_layer(x)).mean().backward()

    z = layer(x)
    zo_backward(z, cge_gradient(loss, z, mu=1e-5))
    assert torch.allclose(layer.weight.grad, true_layer.weight.grad, rtol=1e-6, atol=1e-8)
    assert torch.allclose(layer.bias.grad, true_layer.bias.grad, rtol=1e-6, atol=1e-8)

    layer.zero_grad()
    z = layer(x)
    zo_backward(z, cge_gradient(loss, z, mu=1e-5), reduction="sum")
    assert torch.allclose(layer.weight.grad, 5 * true_layer.weight.grad, rtol=1e-6, atol=1e-8)


def test_zo_backward_and_estimators_reject_bad_input() -> None:
    a, z = _problem(batch=2)
    loss = _CountingLoss(a)
    with pytest.raises(ValueError, match="does not require grad"):
        zo_backward(z, torch.zeros_like(z))
    with pytest.raises(ValueError, match="shape"):
        zo_backward(z.clone().requires_grad_(), torch.zeros(2, DIM + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="per-sample losses"):
        cge_gradient(lambda q: q.sum(), z)
    with pytest.raises(ValueError, match="q must be"):
        rge_gradient(loss, z, q=0)
    with pytest.raises(ValueError, match="mu must be"):
        cge_gradient(loss, z, mu=0.0)
